"""The poisoning threat, generated on the fly from the counter-based RNG (the reference).

For a trajectory with poison seed p, training point i is poisoned iff u_i < rho with
u_i = U(Philox(p; i, 0, SUBSET, 0)[0]); its perturbation Delta_i depends only on (p, i), so the
poisoned dataset D^Delta is fixed for the whole run and any minibatch can recompute its rows
without materialising N poisoned copies of the data. Under the ``chosen`` subset rule the subset
is instead one fixed set of points for every trajectory (``PoisonSpec.chosen``, made by
barrierkit.attacks.chosen_subset) and only the training randomness varies. Poisoned inputs are
x' = clip(x + Delta_i, domain), which can only shrink ||x' - x||_p below delta.

Perturbation draws (element e of point i, D input dimensions):
- uniform, l_inf: delta * (2u - 1), u from lane e % 4 of Philox(p; i, e // 4, DELTA, 0).
- uniform, l_2: Box-Muller normals from the same words (lanes (0,1) and (2,3) pair up),
  normalised, times delta * v**(1/D) with v = U(Philox(p; i, 0, DELTA, 1)[0]).
- sign: bit e % 32 of word e // 32 (word w is lane w % 4 of Philox(p; i, w // 4, DELTA, 0));
  s = +1 for a set bit; Delta = delta * s (l_inf) or delta * s / sqrt(D) (l_2).
- gradient: delta * direction_i * f_i, with direction_i the fixed unit (l_p) direction of a clean
  reference model's input gradient and f_i = -1 when U(Philox(p; i, 0, SIGN_FLIP, 0)[0]) <
  sign_noise, else +1.
- adaptive: delta * direction_{n,i}, the unit (l_p) direction of run n's own current model's
  input gradient of point i's loss; the engine recomputes the directions at the start of every
  recorded interval (barrierkit.attacks.adaptive_directions), so no draw is involved. The
  lookahead attack is drawn the same way from its own directions (lookahead_directions).
Everything is computed in float64 and the poisoned input is rounded to the training dtype once.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from .rng import Stream, ball_point_torch, bits_torch, uniform_from_bits_torch


TABLE_ATTACKS = ("gradient", "unrolled", "unrolled_test")
"""Sampling attacks that give every training point one fixed perturbation direction (a table)."""


RUN_AWARE_ATTACKS = ("adaptive", "lookahead")
"""Sampling attacks whose directions follow each run's current model (recomputed by the engine every
recorded interval, on the torch reference only)."""


def spec_kind(attack: str) -> str:
    """The PoisonSpec kind that draws a sampling attack: a table attack is drawn as ``gradient``
    (delta times its table's row), a run-aware one as ``adaptive`` (delta times its run's row),
    the others as themselves."""
    if attack in TABLE_ATTACKS:
        return "gradient"
    return "adaptive" if attack in RUN_AWARE_ATTACKS else attack


@dataclass
class PoisonSpec:
    """What one chunk of trajectories is poisoned with (seeds on the compute device)."""

    seeds: torch.Tensor  # [N] int64 poison seeds
    rho: float
    delta: float
    norm: str  # "inf" | "2"
    kind: str  # "uniform" | "sign" | "gradient"
    domain: Tuple[float, float] = (0.0, 1.0)
    sign_noise: float = 0.0
    directions: Optional[torch.Tensor] = None  # float64 unit directions: [n_train, D] (gradient), [N, n_train, D] (adaptive)
    point_mask: Optional[torch.Tensor] = None  # [N, n_train] bool: the subset, drawn once per chunk
    point_sign: Optional[torch.Tensor] = None  # [N, n_train] float64: the gradient attack's sign flips
    chosen: Optional[torch.Tensor] = None  # [n_train] bool: the chosen subset (None: the random Bernoulli(rho) subset)

    @property
    def active(self) -> bool:
        return self.delta > 0.0 and self.rho > 0.0

    def with_point_draws(self, n_train: int) -> "PoisonSpec":
        """The same spec with the per-point draws (subset, sign flip) made once for all points.

        They are one bit per (trajectory, point), the same values ``subset_mask`` and
        ``flip_signs`` give on the fly; caching them takes two Philox calls off every step.
        """
        idx = torch.arange(n_train, device=self.seeds.device).view(1, -1).expand(self.seeds.shape[0], -1)
        sign = flip_signs(self.seeds, idx, self.sign_noise) if self.kind == "gradient" else None
        return dataclasses.replace(self, point_mask=self.mask_at(idx).contiguous(), point_sign=sign)

    def mask_at(self, idx: torch.Tensor) -> torch.Tensor:
        """Bool [N, B]: is point idx[n, b] poisoned in trajectory n (the cached draws when made)."""
        if self.point_mask is not None:
            return self.point_mask.gather(1, idx)
        if self.chosen is not None:
            return self.chosen.to(idx.device)[idx]
        return subset_mask(self.seeds, idx, self.rho)


def _seed_grid(seeds: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return seeds.view(-1, *([1] * (idx.dim() - 1))) if idx.dim() >= 1 else seeds


def subset_mask(seeds: torch.Tensor, idx: torch.Tensor, rho: float) -> torch.Tensor:
    """Bool [N, ...]: is training point idx[n, ...] poisoned in trajectory n."""
    idx = idx if idx.dim() > 1 else idx.view(1, -1).expand(seeds.shape[0], -1)
    words = bits_torch(seeds.view(-1, 1), idx.reshape(seeds.shape[0], -1), 0, Stream.SUBSET)
    return (uniform_from_bits_torch(words[0]) < rho).reshape(idx.shape)


def flip_signs(seeds: torch.Tensor, idx: torch.Tensor, sign_noise: float) -> torch.Tensor:
    """[N, B] float64 of +-1: -1 where the gradient attack flips point idx[n, b]."""
    flip_u = uniform_from_bits_torch(bits_torch(seeds.view(-1, 1), idx, 0, Stream.SIGN_FLIP)[0])
    return torch.where(flip_u < sign_noise, -1.0, 1.0).to(torch.float64)


def _lane_words(seeds: torch.Tensor, idx: torch.Tensor, n_words: int) -> torch.Tensor:
    """Words 0..n_words-1 for each (n, b): lane w % 4 of Philox(p; i, w // 4, DELTA, 0)."""
    blocks = torch.arange((n_words + 3) // 4, dtype=torch.int64, device=idx.device)
    r = bits_torch(seeds.view(-1, 1, 1), idx.unsqueeze(-1), blocks.view(1, 1, -1), Stream.DELTA)
    return torch.stack(r, dim=-1).reshape(idx.shape[0], idx.shape[1], -1)[..., :n_words]


def perturbation(spec: PoisonSpec, idx: torch.Tensor, dim: int) -> torch.Tensor:
    """Delta for points idx [N, B] of each trajectory: [N, B, dim] float64 (before masking)."""
    seeds = spec.seeds
    if spec.kind == "uniform":
        words = _lane_words(seeds, idx, dim + dim % 2)  # an odd dim's l_2 draw needs a Box-Muller partner word
        radius_u = bits_torch(seeds.view(-1, 1), idx, 0, Stream.DELTA, 1)[0] if spec.norm == "2" else None
        return ball_point_torch(words, radius_u, spec.delta, spec.norm, dim)
    if spec.kind == "sign":
        words = _lane_words(seeds, idx, (dim + 31) // 32)
        e = torch.arange(dim, device=idx.device)
        bit = (words[..., e // 32] >> (e % 32)) & 1
        s = (2 * bit - 1).to(torch.float64)
        return spec.delta * s if spec.norm == "inf" else (spec.delta / math.sqrt(dim)) * s
    if spec.kind == "gradient":
        if spec.directions is None:
            raise ValueError("attack: the gradient attack needs reference directions")
        if spec.point_sign is not None:
            sign = spec.point_sign.gather(1, idx)
        else:
            sign = flip_signs(seeds, idx, spec.sign_noise)
        return spec.delta * spec.directions[idx] * sign.unsqueeze(-1)
    if spec.kind == "adaptive":
        if spec.directions is None or spec.directions.dim() != 3:
            raise ValueError("attack: the adaptive attack needs each run's directions [N, n_train, D]")
        runs = torch.arange(idx.shape[0], device=idx.device).view(-1, *([1] * (idx.dim() - 1)))
        return spec.delta * spec.directions[runs, idx]
    raise ValueError(f"attack: unknown sampling attack {spec.kind!r}")


def poison_batch(spec: PoisonSpec, x_clean: torch.Tensor, idx: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Poisoned minibatch x' = clip(x + mask * Delta, domain) [N, B, D] in ``dtype``.

    ``x_clean`` is [N, B, D] float64 (the clean rows of idx); the mask is the poison subset.
    """
    if not spec.active:
        return x_clean.to(dtype)
    mask = spec.mask_at(idx)
    delta = perturbation(spec, idx, x_clean.shape[-1])
    lo, hi = spec.domain
    poisoned = (x_clean + delta).clamp_(lo, hi)  # in place: one [N, B, D] float64 temporary fewer
    return torch.where(mask.unsqueeze(-1), poisoned, x_clean).to(dtype)
