"""Backends advance N trajectories by SGD steps; all share the contract of ``torch_ref``.

``train_segment(state, problem, t0, t1)`` advances every trajectory in ``state`` from step t0
to t1 in place, reading the clean data, batch order and poison from ``problem``.
"""
from __future__ import annotations

from typing import Callable

from ..config import ConfigError
from . import torch_ref
from .torch_ref import StepProblem, TrainState

SegmentFn = Callable[[TrainState, StepProblem, int, int], None]
BACKENDS = ("torch",)


def get_backend(name: str) -> SegmentFn:
    """The ``train_segment`` function of a backend by name."""
    if name in ("torch", "torch_ref", "auto"):
        return torch_ref.train_segment
    raise ConfigError("backend", f"unknown backend {name!r}; known: {', '.join(BACKENDS)}, auto")


__all__ = ["get_backend", "StepProblem", "TrainState", "BACKENDS"]
