"""Tests of barrierkit.pac against docs/METHOD.md §7 check values and direct binomial sums."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy.stats import binom

from barrierkit.pac import (
    PacBound,
    epsilon,
    epsilon_a_posteriori,
    epsilon_discarded,
    n_min,
    rate_lower_bound,
    violation_confidence,
)


def _binom_tail(n: int, d: int, eps: float) -> float:
    """sum_{i<d} C(n,i) eps^i (1-eps)^(n-i), term by term in log space (independent of scipy)."""
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
             + i * math.log(eps) + (n - i) * math.log1p(-eps) for i in range(d)]
    return math.fsum(math.exp(t) for t in terms)


def test_method_check_values() -> None:
    assert n_min(0.01, 1, 1e-4) == 917
    assert epsilon(4000, 1, 1e-4) == pytest.approx(0.00230, abs=5e-6)
    # d = 1 has the closed form (1 - eps)^n = beta
    assert epsilon(4000, 1, 1e-4) == pytest.approx(1.0 - 1e-4 ** (1 / 4000), rel=1e-12)


def test_monotonicity() -> None:
    ns = [50, 100, 500, 1000, 4000, 20000]
    e_n = [epsilon(n, 10, 1e-4) for n in ns]
    assert all(a > b for a, b in zip(e_n, e_n[1:]))
    e_d = [epsilon(4000, d, 1e-4) for d in (1, 2, 5, 10, 20, 40)]
    assert all(a < b for a, b in zip(e_d, e_d[1:]))
    e_b = [epsilon(4000, 10, b) for b in (1e-12, 1e-8, 1e-4, 1e-2, 0.5)]
    assert all(a > b for a, b in zip(e_b, e_b[1:]))
    v = [violation_confidence(n, 10, 0.01) for n in ns]
    assert all(a > b for a, b in zip(v, v[1:]))


def test_agrees_with_direct_binomial_sum() -> None:
    rng = np.random.default_rng(7)
    for _ in range(20):
        d = int(rng.integers(1, 41))
        n = int(rng.integers(d + 5, 8000))
        beta = float(10.0 ** rng.uniform(-10, -1))
        eps = epsilon(n, d, beta)
        assert 0.0 < eps < 1.0
        assert _binom_tail(n, d, eps) == pytest.approx(beta, rel=1e-8)
        assert binom.cdf(d - 1, n, eps) == pytest.approx(beta, rel=1e-6)
        e2 = float(rng.uniform(1e-4, 0.2))
        assert violation_confidence(n, d, e2) == pytest.approx(_binom_tail(n, d, e2), rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("eps,d,beta", [(0.01, 1, 1e-4), (0.01, 14, 1e-4), (0.005, 20, 1e-6),
                                        (0.1, 3, 0.05), (0.002, 40, 1e-9)])
def test_n_min_is_minimal(eps: float, d: int, beta: float) -> None:
    n = n_min(eps, d, beta)
    assert violation_confidence(n, d, eps) <= beta
    assert n == d or violation_confidence(n - 1, d, eps) > beta
    assert epsilon(n, d, beta) <= eps
    if n > d:
        assert epsilon(n - 1, d, beta) > eps


def test_epsilon_discarded() -> None:
    n, d, beta = 4000, 16, 1e-4
    assert epsilon_discarded(n, d, 0, beta) == pytest.approx(epsilon(n, d, beta), rel=1e-12)
    prev = 0.0
    for k in (0, 1, 5, 20, 100):
        e = epsilon_discarded(n, d, k, beta)
        assert e > prev
        prev = e
        lhs = math.comb(k + d - 1, k) * binom.cdf(k + d - 1, n, e)
        assert lhs == pytest.approx(beta, rel=1e-6)


def _wait_and_judge_poly(n: int, s: int, beta: float, t: Fraction) -> Fraction:
    """beta/(n+1) sum_{m=s}^n C(m,s) t^(m-s) - C(n,s) t^(n-s), in exact rational arithmetic."""
    b = Fraction(beta)
    return b / (n + 1) * sum(math.comb(m, s) * t ** (m - s) for m in range(s, n + 1)) \
        - math.comb(n, s) * t ** (n - s)


@pytest.mark.parametrize("n,s,beta,d", [(60, 0, 0.01, 4), (60, 3, 0.01, 4), (200, 5, 1e-4, 8)])
def test_a_posteriori_is_the_root(n: int, s: int, beta: float, d: int) -> None:
    e = epsilon_a_posteriori(n, s, beta, d)
    lo = _wait_and_judge_poly(n, s, beta, Fraction(1.0 - e * (1 + 1e-7)))
    hi = _wait_and_judge_poly(n, s, beta, Fraction(1.0 - e * (1 - 1e-7)))
    assert lo > 0 > hi


def test_a_posteriori_shape() -> None:
    n, d, beta = 4000, 16, 1e-4
    es = [epsilon_a_posteriori(n, s, beta, d) for s in range(d + 1)]
    assert all(a < b for a, b in zip(es, es[1:]))
    a_priori = epsilon(n, d, beta)
    assert 0.5 * a_priori < es[d] < 3.0 * a_priori
    assert es[0] < 0.5 * a_priori
    assert epsilon_a_posteriori(5, 5, 0.1, 5) == 1.0


def test_pac_bound() -> None:
    b = PacBound.a_priori(4000, 1, 1e-4)
    assert b.eps == epsilon(4000, 1, 1e-4) and b.n == 4000 and b.d == 1
    with pytest.raises(Exception):
        b.eps = 0.5  # type: ignore[misc]


@pytest.mark.parametrize("call,name", [
    (lambda: epsilon(0, 1, 0.1), "n"),
    (lambda: epsilon(10.5, 1, 0.1), "n"),
    (lambda: epsilon(10, 0, 0.1), "d"),
    (lambda: epsilon(10, True, 0.1), "d"),
    (lambda: epsilon(10, 11, 0.1), "n"),
    (lambda: epsilon(10, 2, 0.0), "beta"),
    (lambda: epsilon(10, 2, 1.0), "beta"),
    (lambda: epsilon(10, 2, float("nan")), "beta"),
    (lambda: n_min(0.0, 1, 0.1), "eps"),
    (lambda: n_min(0.1, 0, 0.1), "d"),
    (lambda: n_min(0.1, 1, 2.0), "beta"),
    (lambda: violation_confidence(10, 2, 1.0), "eps"),
    (lambda: epsilon_discarded(10, 2, -1, 0.1), "k"),
    (lambda: epsilon_discarded(10, 2, 9, 0.1), "k"),
    (lambda: epsilon_a_posteriori(10, 5, 0.1, 3), "s"),
    (lambda: epsilon_a_posteriori(10, 1, "x", 3), "beta"),
])
def test_bad_inputs_name_the_argument(call, name: str) -> None:
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        call()


@pytest.mark.parametrize("k,n,beta", [(1, 10, 0.05), (3, 500, 1.25e-5), (30, 500, 1e-3), (500, 500, 0.01)])
def test_rate_lower_bound_is_clopper_pearson(k, n, beta):
    lower = rate_lower_bound(k, n, beta)
    assert 0 < lower < k / n or (k == n and lower == pytest.approx(beta ** (1 / n)))
    assert binom.sf(k - 1, n, lower) == pytest.approx(beta, rel=1e-8)  # P(X >= k | rate = lower) = beta


def test_rate_lower_bound_edges_and_errors():
    assert rate_lower_bound(0, 100, 0.01) == 0.0
    for args in [(5, 4, 0.1), (-1, 4, 0.1), (1, 4, 0.0), (1, 0, 0.1)]:
        with pytest.raises(ValueError):
            rate_lower_bound(*args)
