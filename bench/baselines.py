"""The methods a workload is timed with; each advances N trajectories by SGD steps.

Every method trains the same runs (same init, batch order and poison, from the same seeds) and
does the same work per step: gather the batch, poison it, forward, backward, SGD update. They
differ only in how:

- ``loop``: how a paper-style implementation trains its runs: one ``nn.Module`` at a time, its
  poisoned dataset materialised once per run, ``torch.optim.SGD`` and autograd. Its throughput
  does not depend on N, so it is measured on a few runs.
- ``torch``, ``numba``, ``triton``, ``triton_tf32``: the engine's backends (``train_segment``),
  over the engine's chunks of trajectories.
- ``torch.func``: ``stack_module_state`` + ``vmap(grad(functional_call))`` in place of the
  reference's closed-form backward (same poisoned batch, same SGD update);
  ``torch.func+compile`` the same under ``torch.compile`` (GPU only).

GPU-only methods raise :class:`Unavailable` with the reason on a CPU device; set
``BARRIERKIT_BENCH_ALLOW_CPU=1`` to run them on the CPU anyway (checks of the code path:
Triton then needs ``TRITON_INTERPRET=1``; such numbers are not measurements).
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from barrierkit import backends
from barrierkit.backends import StepProblem, TrainState, torch_dtype
from barrierkit.backends.torch_ref import sgd_update
from barrierkit.config import SampleConfig
from barrierkit.data import Dataset
from barrierkit.models import MLPShape, init_params, to_module
from barrierkit.poison import poison_batch

METHODS = ("loop", "torch", "torch.func", "torch.func+compile", "numba", "triton", "triton_tf32")
GPU_ONLY = ("torch.func+compile", "triton", "triton_tf32")


class Unavailable(Exception):
    """This method cannot run here; the message is the reason recorded in the results."""


@dataclass
class Inputs:
    """What every method of one workload shares: data, seeds, poison, hyper-parameters, chunks."""

    config: SampleConfig
    data: Dataset
    shape: MLPShape
    seeds: np.ndarray  # [N, 3] int64: init, poison, schedule
    delta: float
    device: torch.device
    chunk: int
    directions: Optional[torch.Tensor] = None  # [n_train, D] float64 (gradient attack)
    x_train: torch.Tensor = field(init=False)
    y_train: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.x_train = torch.as_tensor(self.data.x_train, dtype=torch.float64, device=self.device)
        self.y_train = torch.as_tensor(self.data.y_train, device=self.device)

    @property
    def n(self) -> int:
        return int(self.seeds.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return torch_dtype(self.config.recipe.dtype)

    def chunks(self) -> List[slice]:
        return [slice(lo, min(self.n, lo + self.chunk)) for lo in range(0, self.n, self.chunk)]

    def problem(self, part: slice) -> StepProblem:
        """The StepProblem of trajectories ``part``, built as ``engine.sample`` builds it."""
        s = torch.as_tensor(self.seeds[part], device=self.device)
        return StepProblem.from_config(self.config, self.x_train, self.y_train, s, self.delta, self.directions)

    def params(self, part: slice):
        return init_params(self.shape, self.seeds[part, 0], dtype=self.dtype, device=self.device)


class Stepper:
    """Advances the trajectories of a method from step t0 to t1 (in place)."""

    meta: Dict = {}

    def advance(self, t0: int, t1: int) -> None:
        raise NotImplementedError

    def params(self) -> List[torch.Tensor]:
        """The trajectories' parameters now, stacked ``[W1, b1, ...]`` (to compare methods)."""
        raise NotImplementedError


def _allow_cpu() -> bool:
    return os.environ.get("BARRIERKIT_BENCH_ALLOW_CPU") == "1"


class BackendStepper(Stepper):
    """An engine backend's ``train_segment`` over the engine's chunks."""

    def __init__(self, inputs: Inputs, backend: str):
        record = backends.get(backend)
        self.fn: Callable = record.train_segment
        self.parts = [(TrainState(inputs.params(p)), inputs.problem(p)) for p in inputs.chunks()]
        self.meta = record.describe()

    def advance(self, t0: int, t1: int) -> None:
        for state, problem in self.parts:
            self.fn(state, problem, t0, t1)

    def params(self) -> List[torch.Tensor]:
        return [torch.cat(ps) for ps in zip(*(state.params for state, _ in self.parts))]


class FuncStepper(Stepper):
    """torch.func: stack_module_state + vmap(grad(functional_call)), the reference's SGD update."""

    def __init__(self, inputs: Inputs, compiled: bool = False):
        from torch.func import functional_call, grad, stack_module_state, vmap

        self.parts = []
        base = None
        for p in inputs.chunks():
            stacked = inputs.params(p)
            models = [_module_view(stacked, i) for i in range(stacked[0].shape[0])]
            params, buffers = stack_module_state(models)  # one copy, in nn.Module parameter order
            if base is None:
                base = copy.deepcopy(models[0]).to("meta")
            del models, stacked
            keys = list(params)
            self.parts.append((keys, TrainState([params[k] for k in keys]), buffers, inputs.problem(p)))

        def loss(params, buffers, x, y):
            return torch.nn.functional.cross_entropy(functional_call(base, (params, buffers), (x,)), y)

        grads = vmap(grad(loss), in_dims=(0, 0, 0, 0))
        if compiled:
            # Dynamo keys its cache on vmap's shared wrapper code: without a reset every new stepper
            # and chunk size adds an entry, and past the recompile limit it silently runs eagerly.
            torch._dynamo.reset()
        self.grads = torch.compile(grads, dynamic=False) if compiled else grads
        self.meta = {"backend": "torch.func+compile" if compiled else "torch.func", "torch": torch.__version__}
        if compiled:
            self.meta["dynamo_reset"] = True

    def advance(self, t0: int, t1: int) -> None:
        for keys, state, buffers, problem in self.parts:
            for t in range(t0, t1):
                idx = problem.schedule.indices(t)
                x = poison_batch(problem.poison, problem.x_train[idx], idx, problem.dtype)
                g = self.grads(dict(zip(keys, state.params)), buffers, x, problem.y_train[idx])
                sgd_update(state, [g[k] for k in keys], problem.lr, problem.momentum, problem.weight_decay)

    def params(self) -> List[torch.Tensor]:
        return [torch.cat(ps) for ps in zip(*(state.params for _, state, _, _ in self.parts))]


def _module_view(stacked, i: int) -> torch.nn.Sequential:
    """Model i of a stack as nn.Sequential whose parameters are views (no init, no copy)."""
    layers: List[torch.nn.Module] = []
    n_layers = len(stacked) // 2
    for layer in range(n_layers):
        w, b = stacked[2 * layer][i], stacked[2 * layer + 1][i]
        lin = torch.nn.Linear(w.shape[1], w.shape[0], device="meta")
        lin.weight = torch.nn.Parameter(w, requires_grad=False)
        lin.bias = torch.nn.Parameter(b, requires_grad=False)
        layers.append(lin)
        if layer < n_layers - 1:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


class LoopStepper(Stepper):
    """One nn.Module + torch.optim.SGD per run, trained one run at a time (autograd)."""

    def __init__(self, inputs: Inputs):
        r = inputs.config.recipe
        x, y = inputs.x_train, inputs.y_train
        idx_all = torch.arange(x.shape[0], device=inputs.device).view(1, -1)
        self.y = y
        self.runs = []
        for s in inputs.seeds:
            model = to_module(init_params(inputs.shape, [s[0]], dtype=inputs.dtype, device=inputs.device), 0).to(inputs.device)
            run = StepProblem.from_config(inputs.config, x, y, torch.as_tensor(s[None, :], device=inputs.device),
                                          inputs.delta, inputs.directions)
            xp = poison_batch(run.poison, x[idx_all], idx_all, inputs.dtype)[0]  # the run's poisoned dataset, once
            opt = torch.optim.SGD(model.parameters(), lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay)
            self.runs.append((model, xp, opt, run.schedule))
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.meta = {"backend": "loop", "optimizer": "torch.optim.SGD"}

    def advance(self, t0: int, t1: int) -> None:
        for model, xp, opt, sched in self.runs:
            for t in range(t0, t1):
                idx = sched.indices(t)[0]
                opt.zero_grad()
                self.loss_fn(model(xp[idx]), self.y[idx]).backward()
                opt.step()

    def params(self) -> List[torch.Tensor]:
        return [torch.stack(ps).detach() for ps in zip(*(list(model.parameters()) for model, _, _, _ in self.runs))]


def build(method: str, inputs: Inputs) -> Stepper:
    """The stepper of ``method`` for ``inputs``; raises :class:`Unavailable` with the reason."""
    cuda = inputs.device.type == "cuda"
    if method not in METHODS:
        raise ValueError(f"method: unknown {method!r}; known: {', '.join(METHODS)}")
    if method in GPU_ONLY and not cuda and not _allow_cpu():
        what = "the fused Triton kernel compiles only for a CUDA device (on the CPU it runs only under " \
               "TRITON_INTERPRET=1, for tests)" if method.startswith("triton") else \
               "the torch.compile'd torch.func baseline is measured on a GPU only"
        raise Unavailable(f"GPU only: {what}; device is {inputs.device}")
    if method == "loop":
        return LoopStepper(inputs)
    if method in ("torch.func", "torch.func+compile"):
        return FuncStepper(inputs, compiled=method.endswith("compile"))
    if method in ("numba", "triton", "triton_tf32"):
        module = "numba" if method == "numba" else "triton"
        try:
            __import__(module)
        except ImportError:
            extra = "cpu" if module == "numba" else "gpu"
            raise Unavailable(f"{module} is not installed (pip install -e '.[{extra}]')") from None
        reason = backends.get(method).unsupported(inputs.device, inputs.config.recipe.dtype)
        if reason is not None:
            raise Unavailable(reason)
        return BackendStepper(inputs, method)
    return BackendStepper(inputs, "torch")
