"""Putting a radius in context: typical distances in the data.

A budget means little without a scale: the median distance from a training point to its nearest
differently-labelled training point, in the threat's norm, is the scale reported beside it.

No l_p -> l_q conversion is reported. The conversion of Cullen et al. ("Position: Certified
Robustness Does Not (Yet) Imply Model Security", Theorem 2: r_q = min(D^(1/q - 1/p), 1) r_p)
is a statement about worst-case balls; a certificate relative to a sampling attack covers only
the perturbations that attack draws, not every point of a smaller ball in another norm.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import numpy as np
import torch
from scipy.spatial.distance import cdist


def pairwise_distances(a: np.ndarray, b: np.ndarray, norm: str) -> np.ndarray:
    """[len(a), len(b)] l_p distances. l_inf by torch.cdist: max |a_i - b_i| involves one rounded
    subtraction per entry and nothing else, so any implementation gives the same bits, and torch's
    is faster than scipy's; l_1 and l_2 by scipy (their sums depend on the order of summation)."""
    if norm == "inf":
        return torch.cdist(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64), p=math.inf).numpy()
    return cdist(a, b, metric="cityblock" if norm == "1" else "euclidean")


def nearest_other_class_distances(x: np.ndarray, y: np.ndarray, norm: str, chunk: int = 512,
                                  queries: Optional[np.ndarray] = None) -> np.ndarray:
    """For every point of ``queries`` (default: all), the l_p distance to its nearest point of
    ``x`` with a different label."""
    queries = np.arange(len(x)) if queries is None else queries
    out = np.empty(len(queries))
    for lo in range(0, len(queries), chunk):
        rows = queries[lo:lo + chunk]
        d = pairwise_distances(x[rows], x, norm)
        d[y[rows, None] == y[None, :]] = np.inf
        out[lo:lo + chunk] = d.min(axis=1)
    return out


MAX_QUERY_POINTS = 2000
"""The median is taken over at most this many training points (every ⌈n / 2000⌉-th), each against
all n points: the pairwise cost grows as n², and the median of a regular subsample is as good a
scale (at n = 60,000 the full computation would take most of an hour on two cores)."""


def query_points(n: int) -> np.ndarray:
    """The indices whose nearest-other-class distances give the median: all when n <= 2000."""
    return np.arange(0, n, -(-n // MAX_QUERY_POINTS))


def radius_ratio(radius: float, median_distance: float) -> Optional[float]:
    """The radius as a fraction of the median nearest-other-class distance (None when that is 0)."""
    return radius / median_distance if median_distance > 0 else None


def radius_context(radius: float, norm: str, x: np.ndarray, y: np.ndarray) -> Dict[str, object]:
    """The radius relative to the data's nearest-other-class distances."""
    median = float(np.median(nearest_other_class_distances(x, y, norm, queries=query_points(len(x)))))
    return {
        "norm": norm, "radius": radius, "input_dim": int(x.shape[1]),
        "median_nearest_other_class_distance": median,
        "radius_over_median_distance": radius_ratio(radius, median),
    }
