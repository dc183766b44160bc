"""The feature map phi recorded at every recorded state (docs/METHOD.md §1), in float64.

phi(theta) = [P (theta - theta_bar_0), probe loss, probe accuracy, ||theta - theta(0)||_2] (and,
when the test set is attacked, the fraction of probe points the interval bound proves robust at
the test-time budget: :class:`RobustnessFeature`) with
theta_bar_0 = 0 (the mean of the symmetric initialisation) and P a seeded Rademacher matrix
[projection_dim, d] scaled by 1/sqrt(d): entry (r, j) is +-1/sqrt(d) from bit (r*d + j) % 32
of the Philox stream PROJECTION. The probe set is ``probe_size`` clean training points chosen by
the stable argsort of Philox(seed; i, 0, PROBE, 0)[0].
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np
import torch

from .config import EvasionThreat, FeatureSpec
from .data import Dataset
from .evasion import proven_fraction
from .models import MLPShape, Params, flatten, in_fixed_blocks, loss_and_accuracy
from .rng import Stream, bits_numpy


ROBUSTNESS_FEATURE = "probe_ibp_robust"


def feature_names(spec: FeatureSpec, attacked_test: bool = False) -> List[str]:
    """The names of φ's entries, in order (``attacked_test``: with the robustness entry)."""
    names = [f"proj{r}" for r in range(spec.projection_dim)] + ["probe_loss", "probe_acc", "drift"]
    return names + ([ROBUSTNESS_FEATURE] if attacked_test else [])


def projection_matrix(spec: FeatureSpec, d: int) -> np.ndarray:
    """The seeded Rademacher projection [projection_dim, d] in float64."""
    total = spec.projection_dim * d
    n_words = (total + 31) // 32
    blocks = np.arange((n_words + 3) // 4, dtype=np.uint64)
    words = np.stack(bits_numpy(spec.seed, blocks, 0, Stream.PROJECTION), axis=-1).reshape(-1)[:n_words]
    e = np.arange(total, dtype=np.uint64)
    bit = (words[e // np.uint64(32)] >> (e % np.uint64(32))) & np.uint64(1)
    return ((2.0 * bit.astype(np.float64) - 1.0) / np.sqrt(d)).reshape(spec.projection_dim, d)


def probe_indices(spec: FeatureSpec, n_train: int) -> np.ndarray:
    """Indices of the probe subset of the clean training data (sorted)."""
    keys = bits_numpy(spec.seed, np.arange(n_train, dtype=np.uint64), 0, Stream.PROBE)[0]
    return np.sort(np.argsort(keys, kind="stable")[: min(spec.probe_size, n_train)])


def probe_set(spec: FeatureSpec, data: Dataset, device="cpu") -> Tuple[torch.Tensor, torch.Tensor]:
    """The probe points (float64) and their labels on ``device``."""
    idx = probe_indices(spec, data.x_train.shape[0])
    return (torch.as_tensor(data.x_train[idx], dtype=torch.float64, device=device),
            torch.as_tensor(data.y_train[idx], device=device))


class FeatureMap:
    """Evaluates phi for a stack of models, on the compute device, in float64 (the torch
    reference; backends/triton_gpu.py has the fused kernel's twin of it)."""

    name = "torch"

    def __init__(self, spec: FeatureSpec, shape: MLPShape, data: Dataset, device="cpu"):
        self.spec = spec
        self.projection = torch.as_tensor(projection_matrix(spec, shape.param_count), device=device)
        self.probe_x, self.probe_y = probe_set(spec, data, device)

    @property
    def dim(self) -> int:
        return self.spec.dim

    def __call__(self, params: Params, theta0: torch.Tensor) -> torch.Tensor:
        """[N, k] float64 features of the models ``params``; theta0 is [N, d] float64.

        Computed in fixed blocks of MODEL_BLOCK models (:func:`barrierkit.models.in_fixed_blocks`,
        the last zero-padded): every block is the same [MODEL_BLOCK, d] x [d, k] projection and
        the same probe forward, so no feature depends on N or on a model's position, and chunking
        never changes a bit. (A plain matmul switches kernels with N, e.g. gemv at N = 1, and
        changes the last bits.)
        """
        p64 = [p.to(torch.float64) for p in params]
        theta = flatten(p64)
        pt = self.projection.T.contiguous()

        def block_features(*block):
            *ps, th, th0 = block
            loss, acc = loss_and_accuracy(list(ps), self.probe_x, self.probe_y)
            drift = torch.linalg.vector_norm(th - th0, dim=1)
            return torch.cat([th @ pt, loss[:, None], acc[:, None], drift[:, None]], dim=1)

        return in_fixed_blocks(block_features, [*p64, theta, theta0])

    def accuracy(self, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """[N] float64 accuracy of each model on (x, y) (the engine's terminal test accuracy), in
        the same fixed blocks of models as the features."""
        return in_fixed_blocks(lambda *ps: loss_and_accuracy(list(ps), x, y)[1], [p.to(torch.float64) for p in params])


class RobustnessFeature:
    """A feature map with one more entry: the fraction of the probe points that interval bound
    propagation proves robust at the test-time budget δ' (norm and domain of the evasion threat).

    Under a test-time threat the training dynamics do not depend on δ', so without an entry that
    does, every probe's states would be the same and no barrier could tell a state that is unsafe
    at δ' from one that is not (docs/METHOD.md §3). This entry is cheap (two interval passes over
    the probe points per recorded state), deterministic and computed in float64 on any backend."""

    def __init__(self, base, spec: FeatureSpec, data: Dataset, threat: EvasionThreat, delta: float,
                 domain: tuple, device="cpu"):
        self.base, self.name = base, base.name
        self.delta, self.norm, self.domain = float(delta), threat.norm, tuple(domain)
        self.probe_x, self.probe_y = probe_set(spec, data, device)

    @property
    def dim(self) -> int:
        return self.base.dim + 1

    def __call__(self, params: Params, theta0: torch.Tensor) -> torch.Tensor:
        robust = proven_fraction(params, self.probe_x, self.probe_y, self.delta, self.norm, self.domain)
        return torch.cat([self.base(params, theta0), robust[:, None]], dim=1)

    def accuracy(self, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.base.accuracy(params, x, y)
