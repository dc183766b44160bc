"""The backends, resolved once into a :class:`~barrierkit.backends.base.Backend` record.

- ``torch``: the readable reference (CPU and CUDA).
- ``numba``: the CPU fast path, parallel over trajectories.
- ``triton``: the fused GPU kernel (IEEE fp32 dots); ``triton_tf32`` uses TF32 dots. On the CPU
  it runs only under ``TRITON_INTERPRET=1`` (tests).
- ``auto``: triton on a CUDA device (torch for float64 training); on the CPU numba when it is
  installed, else torch (:func:`cpu_default`).

The contract every backend keeps is in :mod:`barrierkit.backends.base`.
"""
from __future__ import annotations

import functools
from typing import Callable, Dict, Optional

import torch

from ..config import NORMS, ConfigError
from . import torch_ref
from .base import Backend, Capabilities, StepProblem, TrainState, torch_dtype


def _numba() -> Backend:
    from . import numba_cpu

    return numba_cpu.BACKEND


def _triton(precision: str) -> Callable[[], Backend]:
    @functools.lru_cache(maxsize=None)  # one record per process, like the others
    def make() -> Backend:
        from . import triton_gpu

        return triton_gpu.backend(precision)

    return make


_RECORDS: Dict[str, Callable[[], Backend]] = {
    "torch": lambda: torch_ref.BACKEND, "numba": _numba, "triton": _triton("ieee"), "triton_tf32": _triton("tf32"),
}
BACKENDS = tuple(_RECORDS)
"""The concrete backend names (``auto`` resolves to one of them)."""


def cpu_default() -> str:
    """numba whenever it is installed, else torch.

    Measured on the 2-core CI machine (bench/numba_vs_torch.py, train_segment alone, best of 7,
    2 threads): numba is 2.9-5.4x torch_ref on digits 64-32-10 (N = 10..1000, fp32 and fp64) and
    9.7x on 784-64-10 (N = 100); the uniform l_2 attack, whose poison is made on the host for
    both, is a tie. No MLP shape measured favoured torch, so the rule needs no shape threshold.
    """
    try:
        import numba  # noqa: F401
    except ImportError:
        return "torch"
    return "numba"


def get(name: str) -> Backend:
    """The record of a concrete backend by name (no device check: see :func:`resolve`)."""
    if name not in _RECORDS:
        raise ConfigError("backend", f"unknown backend {name!r}; known: {', '.join(BACKENDS)}, auto")
    return _RECORDS[name]()


def resolve(name: str | Backend = "auto", device: torch.device | str = "cpu", dtype: str = "float32",
            family: str = "mlp", attack: Optional[str] = None) -> Backend:
    """The backend ``name`` stands for on ``device`` for a ``dtype`` recipe under the sampling
    ``attack`` (None: any), checked against its capabilities (a ConfigError naming ``backend``
    says why not). ``auto`` decides here: on CUDA triton for float32 training, on the CPU
    :func:`cpu_default`, and the torch reference where that choice cannot train the recipe or
    would hand the attack to the reference anyway (float64 on CUDA, the run-aware attacks). A
    record passes through, checked the same way."""
    device = torch.device(device)
    if isinstance(name, Backend):
        record = name
    elif name == "auto":
        first = get("triton" if device.type == "cuda" else cpu_default())
        native = attack is None or any(first.runs_natively(attack, norm) for norm in NORMS)
        record = first if native and first.unsupported(device, dtype, family, attack) is None else get("torch")
    else:
        record = get(name)
    reason = record.unsupported(device, dtype, family, attack)
    if reason is not None:
        raise ConfigError("backend", f"{reason}: use auto, or another backend ({', '.join(BACKENDS)})")
    return record


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


__all__ = ["Backend", "Capabilities", "StepProblem", "TrainState", "BACKENDS", "cpu_default", "get", "resolve",
           "resolve_device", "torch_dtype"]
