"""Putting a radius in context: l_p -> l_q conversion and typical distances in the data.

Seed 002 (Cullen et al.), Theorem 2: an l_p certificate of radius r_p covers l_q perturbations
only up to r_q = min(D^(1/q - 1/p), 1) * r_p, D the input dimension. And a budget means little
without a scale: the median distance from a training point to its nearest differently-labelled
training point, in the same norm, is the scale we report beside it.
"""
from __future__ import annotations

import math
from typing import Dict

import numpy as np
from scipy.spatial.distance import cdist

NORM_EXPONENT = {"1": 1.0, "2": 2.0, "inf": math.inf}


def lq_radius(r_p: float, p: str, q: str, dim: int) -> float:
    """The largest l_q radius an l_p certificate of radius r_p covers (Theorem 2 of seed 002)."""
    inv_p = 0.0 if NORM_EXPONENT[p] == math.inf else 1.0 / NORM_EXPONENT[p]
    inv_q = 0.0 if NORM_EXPONENT[q] == math.inf else 1.0 / NORM_EXPONENT[q]
    return min(dim ** (inv_q - inv_p), 1.0) * r_p


def nearest_other_class_distances(x: np.ndarray, y: np.ndarray, norm: str, chunk: int = 512) -> np.ndarray:
    """For every point, the l_p distance to its nearest point with a different label."""
    metric = "chebyshev" if norm == "inf" else ("cityblock" if norm == "1" else "euclidean")
    out = np.empty(len(x))
    for lo in range(0, len(x), chunk):
        d = cdist(x[lo:lo + chunk], x, metric=metric)
        d[y[lo:lo + chunk, None] == y[None, :]] = np.inf
        out[lo:lo + chunk] = d.min(axis=1)
    return out


def radius_context(radius: float, norm: str, x: np.ndarray, y: np.ndarray) -> Dict[str, object]:
    """The radius in other norms and relative to the data's nearest-other-class distances."""
    dim = x.shape[1]
    dists = nearest_other_class_distances(x, y, norm)
    median = float(np.median(dists))
    return {
        "norm": norm, "radius": radius, "input_dim": dim,
        "covered_radius_in": {q: lq_radius(radius, norm, q, dim) for q in ("1", "2", "inf")},
        "median_nearest_other_class_distance": median,
        "radius_over_median_distance": radius / median if median > 0 else None,
    }
