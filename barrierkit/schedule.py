"""Minibatch order from the counter-based RNG: shuffled epochs, drop-last.

Epoch e of a trajectory with schedule seed q visits the training points in the order of the
stable argsort of the keys Philox(q; i, e, SHUFFLE, 0)[0], i = 0..n-1 (ties break by index).
Step t uses epoch t // (n // b) and the slice of b points at position t % (n // b).
"""
from __future__ import annotations

from typing import Optional

import torch

from .rng import Stream, bits_torch


def epoch_permutation(seeds: torch.Tensor, epoch: int, n: int) -> torch.Tensor:
    """[N, n] int64: the visiting order of each trajectory in ``epoch``."""
    idx = torch.arange(n, dtype=torch.int64, device=seeds.device).view(1, -1)
    keys = bits_torch(seeds.view(-1, 1), idx, epoch, Stream.SHUFFLE)[0]
    return torch.argsort(keys, dim=1, stable=True)


class Schedule:
    """Batch indices of N trajectories, one epoch permutation cached at a time."""

    def __init__(self, seeds: torch.Tensor, n: int, batch: int):
        if batch > n:
            raise ValueError(f"batch: must be <= the number of training points ({n}), got {batch}")
        self.seeds = seeds
        self.n = n
        self.batch = batch
        self.steps_per_epoch = n // batch
        self._epoch: Optional[int] = None
        self._perm: Optional[torch.Tensor] = None

    def indices(self, step: int) -> torch.Tensor:
        """[N, batch] training-point indices of step ``step``."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._perm = epoch_permutation(self.seeds, epoch, self.n)
            self._epoch = epoch
        assert self._perm is not None
        return self._perm[:, pos * self.batch:(pos + 1) * self.batch]
