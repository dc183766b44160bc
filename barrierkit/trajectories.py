"""Trajectories: the one data structure the stages share (features, outcomes, seeds, timings).

Nothing downstream of the engine touches parameters; it reads this. Saved as a single ``.npz``
(arrays plus a JSON metadata string, no pickle), written atomically.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Sequence

import numpy as np

from .io import write_atomic

SEED_COLUMNS = ("init", "poison", "schedule")


@dataclass
class Trajectories:
    """N recorded training runs at one budget delta."""

    features: np.ndarray  # [N, K+1, k] float64
    test_accuracy: np.ndarray  # [N] float64: g(theta(T))
    seeds: np.ndarray  # [N, 3] int64: (init, poison, schedule)
    poison_fraction: np.ndarray  # [N] float64: realised fraction of poisoned training points
    delta: float
    meta: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.features.shape[0]
        if self.features.ndim != 3:
            raise ValueError(f"features: must be [N, K+1, k], got shape {self.features.shape}")
        for name in ("test_accuracy", "poison_fraction"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name}: must have shape ({n},), got {getattr(self, name).shape}")
        if self.seeds.shape != (n, 3):
            raise ValueError(f"seeds: must have shape ({n}, 3), got {self.seeds.shape}")

    @property
    def n(self) -> int:
        return int(self.features.shape[0])

    @property
    def intervals(self) -> int:
        """K, the number of recorded intervals."""
        return int(self.features.shape[1] - 1)

    def accuracy_drop(self, g_clean: float) -> np.ndarray:
        """G = g_c - g(theta(T)) per trajectory."""
        return g_clean - self.test_accuracy

    def unsafe(self, g_clean: float, alpha: float) -> np.ndarray:
        """u_i = [G_i > alpha]."""
        return self.accuracy_drop(g_clean) > alpha

    def select(self, index: Sequence[int] | np.ndarray) -> "Trajectories":
        """The trajectories at ``index`` (a copy)."""
        ix = np.asarray(index)
        return Trajectories(self.features[ix], self.test_accuracy[ix], self.seeds[ix], self.poison_fraction[ix], self.delta, dict(self.meta))

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically to ``path`` (.npz, owner-only): never a half-written file."""
        write_atomic(path, lambda fh: np.savez(
            fh, features=self.features, test_accuracy=self.test_accuracy, seeds=self.seeds,
            poison_fraction=self.poison_fraction, delta=np.float64(self.delta),
            meta=np.array(json.dumps(self.meta, sort_keys=True)),
        ))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Trajectories":
        with np.load(os.fspath(path), allow_pickle=False) as z:
            return cls(
                features=z["features"], test_accuracy=z["test_accuracy"], seeds=z["seeds"],
                poison_fraction=z["poison_fraction"], delta=float(z["delta"]), meta=json.loads(str(z["meta"])),
            )


def concatenate(parts: Sequence[Trajectories]) -> Trajectories:
    """Join trajectories sampled at the same delta."""
    if not parts:
        raise ValueError("parts: need at least one Trajectories")
    if len({p.delta for p in parts}) != 1:
        raise ValueError("parts: trajectories at different budgets cannot be joined")
    return Trajectories(
        np.concatenate([p.features for p in parts]), np.concatenate([p.test_accuracy for p in parts]),
        np.concatenate([p.seeds for p in parts]), np.concatenate([p.poison_fraction for p in parts]),
        parts[0].delta, dict(parts[0].meta),
    )
