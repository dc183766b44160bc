"""The feature map phi recorded at every recorded state (METHOD section 5), in float64.

phi(theta) = [P (theta - theta_bar_0), probe loss, probe accuracy, ||theta - theta(0)||_2] with
theta_bar_0 = 0 (the mean of the symmetric initialisation) and P a seeded Rademacher matrix
[projection_dim, d] scaled by 1/sqrt(d): entry (r, j) is +-1/sqrt(d) from bit (r*d + j) % 32
of the Philox stream PROJECTION. The probe set is ``probe_size`` clean training points chosen by
the stable argsort of Philox(seed; i, 0, PROBE, 0)[0].
"""
from __future__ import annotations

from typing import List

import numpy as np
import torch

from .config import FeatureSpec
from .data import Dataset
from .models import MLPShape, Params, flatten, loss_and_accuracy
from .rng import Stream, bits_numpy


def feature_names(spec: FeatureSpec) -> List[str]:
    return [f"proj{r}" for r in range(spec.projection_dim)] + ["probe_loss", "probe_acc", "drift"]


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


PROJECT_ROWS = 64


def in_fixed_blocks(fn, stacked, rows: int = PROJECT_ROWS) -> torch.Tensor:
    """``fn(*block)`` over blocks of ``rows`` models of tensors stacked on a leading N axis (the
    last block zero-padded), concatenated and cut to N.

    Every call then sees the same shapes, so the same kernels and summation orders run whatever
    N or a model's position: chunking cannot change a bit, on the CPU or on a GPU (where cuBLAS
    and torch's reductions pick their configuration from the shapes).
    """
    n = stacked[0].shape[0]
    out = []
    for i in range(0, n, rows):
        block = [t[i:i + rows] for t in stacked]
        short = rows - block[0].shape[0]
        if short:  # only the last block is copied and padded
            block = [torch.cat([b, b.new_zeros(short, *b.shape[1:])]) for b in block]
        out.append(fn(*block))
    return torch.cat(out)[:n]


class FeatureMap:
    """Evaluates phi for a stack of models, on the compute device, in float64."""

    def __init__(self, spec: FeatureSpec, shape: MLPShape, data: Dataset, device="cpu"):
        self.spec = spec
        self.projection = torch.as_tensor(projection_matrix(spec, shape.param_count), device=device)
        idx = probe_indices(spec, data.x_train.shape[0])
        self.probe_x = torch.as_tensor(data.x_train[idx], dtype=torch.float64, device=device)
        self.probe_y = torch.as_tensor(data.y_train[idx], device=device)

    @property
    def dim(self) -> int:
        return self.spec.dim

    def project(self, theta: torch.Tensor) -> torch.Tensor:
        """P theta for [N, d] theta, in fixed blocks of PROJECT_ROWS rows (the last zero-padded).

        Every block is the same [PROJECT_ROWS, d] x [d, k] product, so a trajectory's projection
        does not depend on N or on its position: chunking never changes a feature. (A plain
        matmul switches kernels with N, e.g. gemv at N = 1, and changes the last bits.)
        """
        pt = self.projection.T.contiguous()
        return in_fixed_blocks(lambda block: block @ pt, [theta])

    def __call__(self, params: Params, theta0: torch.Tensor) -> torch.Tensor:
        """[N, k] float64 features of the models ``params``; theta0 is [N, d] float64.

        The probe loss, accuracy and drift are computed in fixed blocks of PROJECT_ROWS models
        (:func:`in_fixed_blocks`), like the projection, so no feature depends on N."""
        p64 = [p.to(torch.float64) for p in params]
        theta = flatten(p64)
        proj = self.project(theta)

        def loss_acc_drift(*block):
            *ps, th, th0 = block
            loss, acc = loss_and_accuracy(list(ps), self.probe_x, self.probe_y)
            return torch.stack([loss, acc, torch.linalg.vector_norm(th - th0, dim=1)], dim=1)

        rest = in_fixed_blocks(loss_acc_drift, [*p64, theta, theta0])
        return torch.cat([proj, rest], dim=1)
