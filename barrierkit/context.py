"""Putting a radius in context: typical distances in the data.

A budget means little without a scale: the median distance from a training point to its nearest
differently-labelled training point, in the threat's norm, is the scale reported beside it.

No l_p -> l_q conversion is reported. The conversion of Cullen et al. ("Position: Certified
Robustness Does Not (Yet) Imply Model Security", Theorem 2: r_q = min(D^(1/q - 1/p), 1) r_p)
is a statement about worst-case balls; a certificate relative to a sampling attack covers only
the perturbations that attack draws, not every point of a smaller ball in another norm.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
from scipy.spatial.distance import cdist


def nearest_other_class_distances(x: np.ndarray, y: np.ndarray, norm: str, chunk: int = 512) -> np.ndarray:
    """For every point, the l_p distance to its nearest point with a different label."""
    metric = "chebyshev" if norm == "inf" else ("cityblock" if norm == "1" else "euclidean")
    out = np.empty(len(x))
    for lo in range(0, len(x), chunk):
        d = cdist(x[lo:lo + chunk], x, metric=metric)
        d[y[lo:lo + chunk, None] == y[None, :]] = np.inf
        out[lo:lo + chunk] = d.min(axis=1)
    return out


def radius_ratio(radius: float, median_distance: float) -> Optional[float]:
    """The radius as a fraction of the median nearest-other-class distance (None when that is 0)."""
    return radius / median_distance if median_distance > 0 else None


def radius_context(radius: float, norm: str, x: np.ndarray, y: np.ndarray) -> Dict[str, object]:
    """The radius relative to the data's nearest-other-class distances."""
    median = float(np.median(nearest_other_class_distances(x, y, norm)))
    return {
        "norm": norm, "radius": radius, "input_dim": int(x.shape[1]),
        "median_nearest_other_class_distance": median,
        "radius_over_median_distance": radius_ratio(radius, median),
    }
