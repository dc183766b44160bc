"""The Triton backend: the fused per-trajectory SGD kernel of ``kernels/mlp_step.py``.

``train_segment(state, problem, t0, t1)`` keeps the contract of :mod:`barrierkit.backends.base`: it advances every
trajectory from step t0 to t1 in place. The host builds the ``[N, S, B]`` batch indices from
``problem.schedule`` (so the batch order is the reference's by construction) and launches one
program per trajectory for up to ``max_steps`` steps at a time; the poison is regenerated inside
the kernel from the poison seeds with the same Philox streams as :mod:`barrierkit.poison`.

Scope and deviations (all deliberate, all tested against ``torch_ref`` in float32):

- float32 only: a float64 recipe raises :class:`ConfigError` (the kernel trains in fp32; use the
  torch backend for float64). Parameters must be fp32 and contiguous (updated in place).
- The clean data is used as an fp32 copy of the float64 training set (cached per data tensor),
  so a poisoned input is ``fp32(x) + fp32(Delta)`` clipped in fp32, where the reference adds in
  float64 and rounds once: the two differ by at most ~2 ulp of the input. Unpoisoned inputs are
  identical.
- Dots run with ``input_precision`` "ieee" (default: fp32 operands, like torch's bmm with TF32
  off) or "tf32" (tensor cores; changes the simulated dynamics, which docs/METHOD.md §9 allows,
  so the choice is the backend record's ``precision``). Summation order differs from torch's bmm.
- Fallback to ``torch_ref.train_segment`` (same contract, so results stay valid; ``train_segment``
  returns the reason and the engine records it): the ``uniform`` attack in l_2 (Box-Muller plus a per-point norm,
  not fused), and batch or layer widths above ``mlp_step.MAX_WIDTH``. MLPs with 1 or 2 hidden
  layers run fused.
- Validation: the launcher checks shapes, dtypes and devices on every launch; value checks
  (finite parameters and data, data inside the domain, index and label ranges) run on the first
  launch for each data tensor (``validate="first"``), or on every launch (``"always"``).
- CUDA tensors compile; CPU tensors work only under ``TRITON_INTERPRET=1`` (tests).

The features phi at recording steps and the terminal test accuracy come from the second kernel,
``kernels/mlp_features.py`` (:class:`FusedFeatureMap`, float64, one program per model; chosen by
``backends.feature_map``): one launch per recording step instead of torch's blocked ops.

``kernels/`` is imported lazily, so importing barrierkit never needs Triton.
"""
from __future__ import annotations

import warnings
import weakref
from typing import Callable, Dict, Optional, Tuple

import torch

from ..config import NORMS, ConfigError, FeatureSpec
from ..data import Dataset
from ..features import FeatureMap
from ..models import MLPShape
from ..poison import RUN_AWARE_ATTACKS
from . import torch_ref
from .base import ALL_ATTACKS, Backend, Capabilities, StepProblem, TrainState

NAME = "triton"
DEFAULT_PRECISION = "ieee"
MAX_STEPS_PER_LAUNCH = 64

_CACHE: Dict[Tuple[int, str], Tuple[weakref.ref, int, torch.Tensor]] = {}
_CACHE_LIMIT = 8


def kernel_module(module: str = "mlp_step"):
    """kernels/<module>.py, imported lazily (Triton is an optional dependency)."""
    import importlib

    try:  # installed: setup.py maps kernels/ to barrierkit.kernels
        return importlib.import_module(f"..kernels.{module}", __package__)
    except ImportError:  # a source checkout on sys.path without installation
        return importlib.import_module(f"kernels.{module}")


def _cached(t: torch.Tensor, what: str, make: Callable[[torch.Tensor], torch.Tensor]) -> Tuple[torch.Tensor, bool]:
    """``make(t)``, cached per tensor object and version; (value, was it freshly made).

    An entry is dropped when its source tensor is freed (so a dataset's fp32 copy on the GPU lives
    no longer than the dataset) and the cache holds at most ``_CACHE_LIMIT`` entries.
    """
    key = (id(t), what)
    hit = _CACHE.get(key)
    if hit is not None and hit[0]() is t and hit[1] == t._version:
        return hit[2], False
    value = make(t)
    if len(_CACHE) >= _CACHE_LIMIT:
        _CACHE.pop(next(iter(_CACHE)))

    def _drop(ref, key=key):
        entry = _CACHE.get(key)
        if entry is not None and entry[0] is ref:
            del _CACHE[key]

    _CACHE[key] = (weakref.ref(t, _drop), t._version, value)
    return value, True


def _attack(problem: StepProblem) -> Tuple[str, str]:
    spec = problem.poison
    if not spec.active:
        return "none", spec.norm
    return spec.kind, spec.norm


def make_train_segment(input_precision: str = DEFAULT_PRECISION, max_steps: int = MAX_STEPS_PER_LAUNCH,
                       validate: str = "first", block_d: Optional[int] = None, num_warps: Optional[int] = None,
                       num_stages: Optional[int] = None):
    """A ``train_segment`` bound to a dot precision and tuning (see :func:`backend`)."""
    if input_precision not in ("ieee", "tf32"):
        raise ConfigError("input_precision", f"must be 'ieee' or 'tf32', got {input_precision!r}")
    if validate not in ("first", "always"):
        raise ConfigError("validate", f"must be 'first' or 'always', got {validate!r}")
    if not (isinstance(max_steps, int) and max_steps >= 1):
        raise ConfigError("max_steps", f"must be an int >= 1, got {max_steps!r}")

    def train_segment(state: TrainState, problem: StepProblem, t0: int, t1: int) -> Optional[str]:
        """Advance all trajectories from step t0 to step t1 (exclusive), in place (fused Triton
        kernel); the reason when the steps ran on the torch reference instead, else None."""
        if t1 <= t0:
            return None
        if problem.dtype != torch.float32 or any(p.dtype != torch.float32 for p in state.params):
            raise ConfigError("dtype", "the triton backend trains in float32; use recipe dtype 'float32' "
                                       "(or the torch backend for float64)")
        ms = kernel_module()
        attack, norm = _attack(problem)
        hidden = [int(state.params[2 * k].shape[1]) for k in range(len(state.params) // 2 - 1)]
        n_classes = int(state.params[-2].shape[1])
        reason = ms.unsupported_reason(attack, norm, hidden, problem.schedule.batch, n_classes)
        if reason is None and attack != "none" and problem.poison.chosen is not None:
            reason = "the chosen subset: the fused kernel draws the Bernoulli(rho) subset itself"
        if reason is not None:
            if not (attack == "uniform" and norm == "2"):
                warnings.warn(f"triton backend falls back to torch_ref: {reason}", RuntimeWarning, stacklevel=2)
            torch_ref.train_segment(state, problem, t0, t1)
            return reason
        for k, p in enumerate(state.params):
            if not p.is_contiguous():
                raise ValueError(f"params[{k}]: the triton backend updates parameters in place; they must be contiguous")
        if problem.momentum and state.momentum is None:
            state.momentum = [torch.zeros_like(p) for p in state.params]
        x32, fresh = _cached(problem.x_train, "x32", lambda t: t.to(torch.float32).contiguous())
        y32, fresh_y = _cached(problem.y_train, "y32", lambda t: t.to(torch.int32).contiguous())
        spec = problem.poison
        directions = None
        fresh_d = False
        if attack == "gradient":
            if spec.directions is None:
                raise ValueError("attack: the gradient attack needs reference directions")
            directions, fresh_d = _cached(spec.directions, "dir32", lambda t: t.to(torch.float32).contiguous())
        check = validate == "always" or fresh or fresh_y or fresh_d
        seeds = spec.seeds.to(torch.int64).contiguous() if attack != "none" else None
        for s0 in range(t0, t1, max_steps):
            s1 = min(t1, s0 + max_steps)
            idx = torch.stack([problem.schedule.indices(t) for t in range(s0, s1)], dim=1).to(torch.int32).contiguous()
            ms.mlp_sgd_steps(
                state.params, idx, x32, y32, lr=problem.lr, momentum=problem.momentum,
                weight_decay=problem.weight_decay, momentum_buffers=state.momentum if problem.momentum else None,
                attack=attack, norm=norm, seeds=seeds, rho=spec.rho, delta=spec.delta, sign_noise=spec.sign_noise,
                domain=spec.domain, directions=directions, input_precision=input_precision, block_d=block_d,
                num_warps=num_warps, num_stages=num_stages, validate=check,
            )
            check = validate == "always"
        return None

    return train_segment


def backend(input_precision: str = DEFAULT_PRECISION, **tuning) -> Backend:
    """The record of the fused backend with ``input_precision`` dots ("ieee": ``triton``, "tf32":
    ``triton_tf32``); ``tuning`` (max_steps, validate, block_d, num_warps, num_stages) changes
    launches, not results."""
    name = NAME if input_precision == DEFAULT_PRECISION else f"{NAME}_{input_precision}"
    settings = {"max_steps": MAX_STEPS_PER_LAUNCH, "validate": "first", **tuning}
    return Backend(
        name=name, precision=input_precision, train_segment=make_train_segment(input_precision, **settings),
        feature_map=FusedFeatureMap,
        capabilities=Capabilities(devices=frozenset({"cuda"}), dtypes=frozenset({"float32"}),
                                  native_attacks=ALL_ATTACKS - {("uniform", "2")} - {(k, n) for k in RUN_AWARE_ATTACKS for n in NORMS},
                                  cpu_needs_interpreter=True),
        summary=f"the fused Triton kernel per trajectory ({input_precision} dots), fp32 training",
        tuning={"data_dtype": "float32", "param_dtype": "float32", **settings},
    )


train_segment = make_train_segment()


class FusedFeatureMap(FeatureMap):
    """phi and the terminal accuracy from ``kernels/mlp_features.py``: one launch per recording
    step, one program per model (so chunking cannot change a bit), all arithmetic in float64.

    Its torch twin is :class:`barrierkit.features.FeatureMap` (the tests compare the two); models
    the kernel does not take (more than 2 hidden layers, widths above its register tiles, or
    operands too large for the device's shared memory, found by one trial launch on a zero model
    when the map is built) use that twin for the whole run, and ``name`` says which one ran.
    """

    def __init__(self, spec: FeatureSpec, shape: MLPShape, data: Dataset, device: torch.device | str = "cpu"):
        super().__init__(spec, shape, data, device=device)
        self.kernel = kernel_module("mlp_features")
        self.fallback = self.kernel.unsupported_reason(shape.hidden, shape.n_classes, spec.projection_dim)
        if self.fallback is None and not self.kernel.interpreting():  # the interpreter has no resource limits
            self.fallback = self._trial_launch(shape)
        if self.fallback:
            warnings.warn(f"features are computed by the torch FeatureMap: {self.fallback}", RuntimeWarning, stacklevel=2)
        self.name = "torch" if self.fallback else NAME

    def _trial_launch(self, shape: MLPShape) -> Optional[str]:
        """Compile and launch once on a single zero model of this shape (the compiled kernel is
        what the run reuses); the reason when the device cannot hold it, else None."""
        from triton.runtime.errors import OutOfResources

        device = self.probe_x.device
        params = [torch.zeros((1, *s), dtype=torch.float32, device=device) for s in shape.layer_shapes]
        theta0 = torch.zeros((1, shape.param_count), dtype=torch.float64, device=device)
        try:
            self.kernel.mlp_features(params, self.probe_x, self.probe_y, self.projection, theta0, validate=False)
        except OutOfResources as exc:
            return f"the feature kernel does not fit this device ({exc})"
        return None

    def __call__(self, params, theta0: torch.Tensor) -> torch.Tensor:
        if self.fallback:
            return super().__call__(params, theta0)
        # values need no check here: a diverged run shows up as non-finite features in the engine
        return self.kernel.mlp_features(params, self.probe_x, self.probe_y, self.projection, theta0, validate=False)

    def accuracy(self, params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.fallback:
            return super().accuracy(params, x, y)
        return self.kernel.mlp_features(params, x, y, validate=False)[:, 1]


__all__ = ["train_segment", "make_train_segment", "backend", "kernel_module", "FusedFeatureMap", "NAME"]
