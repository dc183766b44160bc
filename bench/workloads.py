"""The workloads and the ONE setup function every benchmark (CLI harness, pytest-benchmark) uses.

    case = setup("mnist", "numba", n=1000, steps=8)
    case.call()        # advances the N trajectories by 8 SGD steps
    case.steps_per_call  # trajectory-steps per call = n * steps

Workloads (dtype float32, lr 0.1, no momentum, gradient attack rho 0.5 at delta 0.1, l_inf):
- ``digits``: MLP 64-32-10, batch 32, scikit-learn's digits (the default recipe)
- ``mnist``: MLP 784-64-10, batch 64, MNIST-shaped synthetic data (dataset ``synthetic-mnist``)
- ``deep``: MLP 784-128-128-10, batch 64, the same synthetic data
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Dict, Optional, Union

import torch

from barrierkit.attacks import gradient_directions
from barrierkit.config import ModelSpec, SampleConfig, TrainRecipe
from barrierkit.data import Dataset, get_dataset
from barrierkit.engine import chunk_size
from barrierkit.rng import Purpose, trajectory_seeds
from barrierkit.models import MLPShape

from . import baselines
from .baselines import METHODS, Unavailable  # noqa: F401  (re-exported)


@functools.lru_cache(maxsize=None)
def _dataset(name: str) -> Dataset:
    """A dataset loaded once per process (the workloads share them)."""
    return get_dataset(name)


@dataclass(frozen=True)
class Workload:
    name: str
    dataset: str  # a barrierkit dataset name: "digits" or "synthetic-mnist"
    hidden: tuple
    batch: int

    def data(self) -> Dataset:
        return _dataset(self.dataset)

    def sample_config(self, steps: int = 400, dtype: str = "float32", memory_mb: Optional[float] = None) -> SampleConfig:
        """The recipe (``steps`` only sizes the gradient attack's clean reference run)."""
        every = TrainRecipe.record_every  # the default recipe's, so the reference run is the engine's
        return SampleConfig(dataset=self.dataset,
                            model=ModelSpec(hidden=self.hidden),
                            recipe=TrainRecipe(steps=steps, batch=self.batch, record_every=every if steps % every == 0 else steps,
                                               dtype=dtype),
                            memory_budget_mb=memory_mb)

    @property
    def title(self) -> str:
        data = self.data()
        widths = "-".join(str(w) for w in (data.input_dim, *self.hidden, data.n_classes))
        return f"{self.dataset} MLP {widths}, batch {self.batch}"

    @property
    def shape(self) -> MLPShape:
        data = self.data()
        return MLPShape(data.input_dim, self.hidden, data.n_classes)


WORKLOADS: Dict[str, Workload] = {
    "digits": Workload("digits", "digits", (32,), 32),
    "mnist": Workload("mnist", "synthetic-mnist", (64,), 64),
    "deep": Workload("deep", "synthetic-mnist", (128, 128), 64),
}


@dataclass
class Case:
    """One workload x method x N, ready to time: ``call()`` advances every trajectory ``steps`` steps."""

    workload: Workload
    method: str
    n: int
    steps: int
    stepper: baselines.Stepper
    inputs: baselines.Inputs
    t: int = 0

    def call(self) -> None:
        self.stepper.advance(self.t, self.t + self.steps)
        self.t += self.steps

    def sync(self) -> None:
        if self.inputs.device.type == "cuda":
            torch.cuda.synchronize(self.inputs.device)

    @property
    def steps_per_call(self) -> int:
        """Trajectory-steps per call."""
        return self.n * self.steps

    def config(self) -> Dict:
        """This case's configuration, stored beside its numbers."""
        cfg = self.inputs.config
        r, threat = cfg.recipe, cfg.threat
        return {
            "workload": self.workload.name, "workload_title": self.workload.title, "method": self.method,
            "n": self.n, "steps_per_call": self.steps, "device": str(self.inputs.device), "dtype": r.dtype,
            "input_dim": self.inputs.shape.input_dim, "hidden": "-".join(map(str, self.inputs.shape.hidden)),
            "classes": self.inputs.shape.n_classes, "batch": r.batch, "lr": r.lr, "momentum": r.momentum,
            "weight_decay": r.weight_decay, "attack": cfg.attack.kind, "norm": threat.norm, "rho": threat.rho,
            "delta": self.inputs.delta, "chunk": self.inputs.chunk if self.method != "loop" else 1,
            "memory_mb": cfg.memory_budget_mb if cfg.memory_budget_mb is not None else "auto", "param_count": self.inputs.shape.param_count,
            "torch_threads": torch.get_num_threads(), "numba_threads": numba_threads(),
            "backend_meta": self.stepper.meta,
        }


def numba_threads() -> Optional[int]:
    """numba's thread count, or None without numba."""
    try:
        import numba
    except ImportError:
        return None
    return numba.get_num_threads()


def get_workload(workload: Union[str, Workload]) -> Workload:
    if isinstance(workload, Workload):
        return workload
    if workload not in WORKLOADS:
        raise ValueError(f"workload: unknown {workload!r}; known: {', '.join(WORKLOADS)}")
    return WORKLOADS[workload]


def warm(workload: Union[str, Workload], reference_steps: int = 400, dtype: str = "float32") -> None:
    """Load the workload's data and train its gradient-attack reference (both cached), so that
    neither lands in the first case's time or memory."""
    wl = get_workload(workload)
    gradient_directions(wl.sample_config(reference_steps, dtype), wl.data())


def setup(workload: Union[str, Workload], method: str, n: int, *, steps: int = 8, device="cpu",
          dtype: str = "float32", delta: float = 0.1, seed: int = 0, memory_mb: Optional[float] = None,
          reference_steps: int = 400) -> Case:
    """Build the case ``workload`` x ``method`` with ``n`` trajectories (untimed setup).

    Seeds, initial parameters, batch order and poison are those ``engine.sample`` would use for
    ``trajectory_seeds(seed, Purpose.SAMPLE, n)``; N is split into the engine's chunks
    (``engine.chunk_size`` under ``memory_mb``) for the batched methods. The gradient attack's
    directions come from a clean reference run of ``reference_steps`` steps (cached; their
    values do not change the cost). Raises :class:`Unavailable` when the method cannot run here.
    """
    wl = get_workload(workload)
    device = torch.device(device)
    config = wl.sample_config(reference_steps, dtype, memory_mb)
    data = wl.data()
    directions = None
    if delta > 0 and config.threat.rho > 0 and config.attack.kind == "gradient":
        directions = torch.as_tensor(gradient_directions(config, data), device=device)
    seeds = trajectory_seeds(seed, Purpose.SAMPLE, n)
    inputs = baselines.Inputs(config, data, wl.shape, seeds, float(delta), device, chunk_size(config, data, n, device), directions)
    stepper = baselines.build(method, inputs)
    return Case(wl, method, n, steps, stepper, inputs)


__all__ = ["WORKLOADS", "Workload", "Case", "setup", "warm", "get_workload", "METHODS", "Unavailable"]
