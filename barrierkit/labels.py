"""Exact safety labels: a run is unsafe iff its accuracy drop G = g_c - g exceeds alpha.

Accuracies are counts over one test set of P points, so the label is decided on integers, never
on rounded floats: g = hits / P, g_c = (median of the clean runs' hits) / P, and

    unsafe  <=>  median_clean_hits - hits > alpha * P.

The median of an even number of counts is a half-count, so the clean reference is kept as twice
the median (an integer). alpha is taken as the decimal number it is written as (the shortest
decimal that reads back as the same float: 0.05 is 1/20), so a run that loses exactly alpha of the
test set (18 of 360 points at alpha = 0.05) is safe, as G <= alpha says. In float64 that run has
G = 0.9361111 - 0.8861111 = 0.050000000000000044 and was labelled unsafe.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Sequence

import numpy as np


def exact_alpha(alpha: float) -> Fraction:
    """alpha as the decimal it is written as: Fraction(repr(alpha)), e.g. 0.05 -> 1/20."""
    value = float(alpha)
    if not math.isfinite(value):
        raise ValueError(f"alpha: must be a finite number, got {alpha!r}")
    return Fraction(repr(value))


def non_finite_runs(values: np.ndarray) -> np.ndarray:
    """Indices of the entries that are NaN or infinite."""
    return np.flatnonzero(~np.isfinite(np.asarray(values, dtype=np.float64)))


def name_runs(index: np.ndarray, limit: int = 8) -> str:
    """Run indices for a message: the first few, and how many in all."""
    shown = ", ".join(str(int(i)) for i in index[:limit])
    return shown + (f", ... ({index.size} in all)" if index.size > limit else "")


def hits_from_accuracy(accuracy: Any, test_size: int) -> np.ndarray:
    """The integer hit counts behind accuracies computed as hits / P (one correctly rounded
    float64 division), checked: every accuracy must be finite and read back exactly.

    A NaN or infinite accuracy is an error naming the runs, never a label (``NaN > alpha`` is
    False, so it would have counted as safe).
    """
    acc = np.asarray(accuracy, dtype=np.float64)
    P = _check_size(test_size)
    bad = non_finite_runs(acc)
    if bad.size:
        raise FloatingPointError(f"test accuracy is NaN or infinite for runs {name_runs(bad)}: "
                                 "these runs cannot be labelled safe or unsafe")
    hits = np.rint(acc * P)
    if hits.size and (hits.min() < 0 or hits.max() > P):
        raise ValueError(f"test accuracy: values outside [0, 1] (test set of {P} points)")
    hits = hits.astype(np.int64)
    if not np.array_equal(hits / P, acc):
        off = np.flatnonzero(hits / P != acc)
        raise ValueError(f"test accuracy of runs {name_runs(off)} is not a count over the {P} test points")
    return hits


def _check_size(test_size: Any) -> int:
    if isinstance(test_size, bool) or not isinstance(test_size, (int, np.integer)) or test_size < 1:
        raise ValueError(f"test_size: must be an int >= 1, got {test_size!r}")
    return int(test_size)


def check_hits(hits: Any, test_size: int, name: str = "test_hits") -> np.ndarray:
    """Hit counts as int64, each in [0, P]; anything else is an error naming ``name``."""
    arr = np.asarray(hits)
    P = _check_size(test_size)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name}: must be a 1-D array of integer hit counts, got {arr.dtype} {arr.shape}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() > P):
        raise ValueError(f"{name}: hit counts must lie in [0, {P}]")
    return arr


def median_hits_x2(clean_hits: Sequence[int]) -> int:
    """Twice the median of the clean runs' hit counts: an integer (the median itself is a
    count, or a half-count when the number of runs is even)."""
    h = np.sort(np.asarray(clean_hits, dtype=np.int64))
    if h.size == 0:
        raise ValueError("clean runs: need at least one to define g_c")
    mid = h.size // 2
    return int(2 * h[mid]) if h.size % 2 else int(h[mid - 1] + h[mid])


@dataclass(frozen=True)
class SafetyRule:
    """The clean reference g_c and the threshold alpha, deciding labels in exact arithmetic."""

    clean_hits_x2: int  # twice the median clean hit count
    test_size: int  # P, the points of the test set every accuracy counts over
    alpha: float
    own_reference: bool = False  # evasion: each run is judged against its own clean count, not g_c

    def __post_init__(self) -> None:
        P = _check_size(self.test_size)
        if isinstance(self.clean_hits_x2, bool) or not isinstance(self.clean_hits_x2, (int, np.integer)) \
                or not 0 <= self.clean_hits_x2 <= 2 * P:
            raise ValueError(f"clean_hits_x2: must be an int in [0, {2 * P}], got {self.clean_hits_x2!r}")
        a = exact_alpha(self.alpha)
        if not 0 <= a <= 1:
            raise ValueError(f"alpha: must be in [0, 1], got {self.alpha!r}")
        object.__setattr__(self, "clean_hits_x2", int(self.clean_hits_x2))
        object.__setattr__(self, "test_size", P)
        object.__setattr__(self, "alpha", float(self.alpha))

    @classmethod
    def from_clean_hits(cls, clean_hits: Sequence[int], test_size: int, alpha: float,
                        own_reference: bool = False) -> "SafetyRule":
        return cls(median_hits_x2(check_hits(clean_hits, test_size, "clean hits")), test_size, alpha, own_reference)

    @classmethod
    def for_threat(cls, threat_kind: str, clean_hits: Sequence[int], test_size: int, alpha: float) -> "SafetyRule":
        """The rule a threat kind labels with: against g_c, or (evasion) against each run's own
        clean count."""
        return cls.from_clean_hits(clean_hits, test_size, alpha, own_reference=threat_kind == "evasion")

    @property
    def clean_median_hits(self) -> float:
        """The median clean hit count (a count or a half-count; exact in float64)."""
        return self.clean_hits_x2 / 2

    @property
    def g_clean(self) -> float:
        """g_c = median clean hits / P, correctly rounded."""
        return self.clean_hits_x2 / (2 * self.test_size)

    @property
    def max_unsafe_hits(self) -> int:
        """The largest hit count that is unsafe (-1: none is): hits < median - alpha * P."""
        limit = Fraction(self.clean_hits_x2, 2) - exact_alpha(self.alpha) * self.test_size
        return math.ceil(limit) - 1

    def unsafe(self, hits: Any, reference: Any = None) -> np.ndarray:
        """u_i = [G_i > alpha], exactly, for hit counts [N]; with ``own_reference`` G_i is measured
        from ``reference`` [N], each run's own clean count (otherwise ``reference`` is not used)."""
        if self.own_reference:
            return evasion_unsafe(self._reference(reference), hits, self.test_size, self.alpha)
        return check_hits(hits, self.test_size) <= self.max_unsafe_hits

    def unsafe_runs(self, runs: Any) -> np.ndarray:
        """:meth:`unsafe` of a batch of runs (anything with ``test_hits`` and ``reference_hits``)."""
        return self.unsafe(runs.test_hits, runs.reference_hits)

    def accuracy_drop(self, hits: Any, reference: Any = None) -> np.ndarray:
        """G_i = g_c - g_i (with ``own_reference``: reference_i / P - g_i) in float64, the exact
        rational correctly rounded: for reports only; labels come from :meth:`unsafe`."""
        h = check_hits(hits, self.test_size)
        if self.own_reference:
            return (self._reference(reference) - h) / self.test_size
        return (self.clean_hits_x2 - 2 * h) / (2 * self.test_size)

    def _reference(self, reference: Any) -> np.ndarray:
        if reference is None:
            raise ValueError("reference_hits: an evasion label needs each run's own clean hit count")
        return check_hits(reference, self.test_size, "reference_hits")

    def near_chance(self, chance_hits: int) -> bool:
        """True when a model no better than always predicting the majority class (``chance_hits``
        correct) would still count as safe: g_c - alpha <= chance, so the claim is vacuous."""
        return Fraction(self.clean_hits_x2, 2) - exact_alpha(self.alpha) * self.test_size <= chance_hits


def evasion_unsafe(reference_hits: Any, attacked_hits: Any, test_size: int, alpha: float) -> np.ndarray:
    """Evasion labels, exactly: run i is unsafe iff G'_i = g_i - g_i(perturbed) > alpha, i.e. its
    own clean count minus its attacked count exceeds alpha * P (docs/METHOD.md §3)."""
    reference = check_hits(reference_hits, test_size, "reference_hits")
    attacked = check_hits(attacked_hits, test_size, "attacked hits")
    if reference.shape != attacked.shape:
        raise ValueError(f"reference_hits: {reference.shape[0]} runs, but {attacked.shape[0]} attacked counts")
    largest_safe_loss = math.floor(exact_alpha(alpha) * int(test_size))  # a loss of at most alpha * P points is safe
    return reference - attacked > largest_safe_loss


def chance_hits(y_test: np.ndarray) -> int:
    """Correct predictions of the majority-class predictor on the test set."""
    return int(np.bincount(np.asarray(y_test, dtype=np.int64)).max())
