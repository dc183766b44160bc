"""Backends advance N trajectories by SGD steps; all share the contract of ``torch_ref``.

``train_segment(state, problem, t0, t1)`` advances every trajectory in ``state`` from step t0
to t1 in place, reading the clean data, batch order and poison from ``problem``.

- ``torch``: the readable reference (CPU and GPU).
- ``numba``: CPU fast path, parallel over trajectories.
- ``triton``: the fused GPU kernel (IEEE fp32 dots); ``triton_tf32`` uses TF32 dots. On CPU it
  runs only under ``TRITON_INTERPRET=1`` (tests).
- ``auto``: triton on a CUDA device (torch for float64 training); on CPU the faster of numba and torch for the shape, by the
  rule in :func:`choose_cpu_backend`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

import torch

from ..config import ConfigError
from . import torch_ref
from .torch_ref import StepProblem, TrainState

if TYPE_CHECKING:  # annotations only: features imports the modules these come from
    from ..config import FeatureSpec
    from ..data import Dataset
    from ..features import FeatureMap
    from ..models import MLPShape

SegmentFn = Callable[[TrainState, StepProblem, int, int], None]
BACKENDS = ("torch", "numba", "triton", "triton_tf32")

def choose_cpu_backend(input_dim: int, hidden: tuple, batch: int) -> str:
    """numba whenever it is installed, else torch.

    Measured on the 2-core CI machine (bench/numba_vs_torch.py, train_segment alone, best of 7,
    2 threads): numba is 2.9-5.4x torch_ref on digits 64-32-10 (N = 10..1000, fp32 and fp64) and
    9.7x on 784-64-10 (N = 100); the uniform l_2 attack, whose poison is made on the host for
    both, is a tie. No MLP shape measured favoured torch, so the rule needs no shape threshold.
    """
    return "numba" if _numba_available() else "torch"


def _numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto``: the current CUDA device when one is available, else the CPU; other names as torch
    parses them (a bad name raises ConfigError naming ``device``)."""
    if isinstance(name, str):
        name = name.strip().lower()
        if name == "auto":
            return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ConfigError("device", f"unknown device {name!r} (cpu, cuda, cuda:N or auto): {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", f"{name!r} asked for CUDA, but torch sees no CUDA device")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError("device", f"{name!r}: there are only {torch.cuda.device_count()} CUDA devices")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError("device", f"only cpu and cuda are supported, got {name!r}")
    return device


def resolve(name: str, device: torch.device | str = "cpu", input_dim: Optional[int] = None,
            hidden: tuple = (32,), batch: int = 32, dtype: str = "float32") -> str:
    """The concrete backend ``name`` stands for on ``device`` (``auto`` decides here).

    ``auto`` on CUDA is triton for float32 training and the torch reference for float64 (the
    fused kernel trains in float32 only)."""
    device = torch.device(device)
    if name == "auto":
        if device.type == "cuda":
            return "triton" if dtype == "float32" else "torch"
        return choose_cpu_backend(input_dim or 0, hidden, batch)
    if name in ("torch", "torch_ref"):
        return "torch"
    if name in BACKENDS:
        if name in ("numba",) and device.type != "cpu":
            raise ConfigError("backend", f"numba runs on the CPU; device is {device}")
        if name in ("triton", "triton_tf32") and device.type != "cuda":
            from ..kernels._host import interpreting

            if not interpreting():
                raise ConfigError("backend", f"{name} runs on a CUDA device (on the CPU only under TRITON_INTERPRET=1, "
                                             f"for tests); device is {device}: use auto, numba or torch")
        return name
    raise ConfigError("backend", f"unknown backend {name!r}; known: {', '.join(BACKENDS)}, auto")


def feature_map(name: str, spec: "FeatureSpec", shape: "MLPShape", data: "Dataset",
                device: torch.device | str = "cpu") -> "FeatureMap":
    """The feature map phi that goes with a concrete backend: the fused Triton kernel for the
    triton backends (their training already runs there), else the torch reference FeatureMap."""
    from ..features import FeatureMap

    if name in ("triton", "triton_tf32"):
        from .triton_gpu import FusedFeatureMap

        return FusedFeatureMap(spec, shape, data, device=device)
    return FeatureMap(spec, shape, data, device=device)


def get_backend(name: str) -> SegmentFn:
    """The ``train_segment`` function of a concrete backend (see :func:`resolve` for ``auto``)."""
    if name in ("torch", "torch_ref"):
        return torch_ref.train_segment
    if name == "numba":
        from . import numba_cpu

        return numba_cpu.train_segment
    if name == "triton":
        from . import triton_gpu

        return triton_gpu.train_segment
    if name == "triton_tf32":
        from . import triton_gpu

        return triton_gpu.make_train_segment("tf32")
    raise ConfigError("backend", f"unknown backend {name!r}; known: {', '.join(BACKENDS)}, auto")


__all__ = ["get_backend", "feature_map", "resolve", "resolve_device", "choose_cpu_backend", "StepProblem", "TrainState", "BACKENDS"]
