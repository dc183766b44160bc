"""PAC bounds of the scenario approach (docs/METHOD.md §7), exact and in float64.

A scenario convex program with ``d`` scalar decision variables solved on ``n`` i.i.d. scenarios
has a solution whose violation probability exceeds ``eps`` with probability at most

    beta(n, d, eps) = sum_{i<d} C(n, i) eps^i (1 - eps)^(n - i) = I_{1-eps}(n - d + 1, d)

(Campi & Garatti 2008, tight for fully-supported problems). Everything here inverts that identity
with the regularized incomplete beta function; nothing uses a loose approximation. The
complementary forms (``betaincc``/``betainccinv``) are used so that small ``beta`` and small
``eps`` keep full relative precision.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral

import numpy as np
from scipy.optimize import brentq
from scipy.special import betaincc, betainccinv, betaincinv, gammaln, logsumexp

from .config import CertifyConfig, ConfigError

__all__ = [
    "PacBound",
    "violation_confidence",
    "epsilon",
    "n_min",
    "epsilon_discarded",
    "epsilon_a_posteriori",
    "check_verify_runs",
]


def _check_int(name: str, value: object, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value}")
    return int(value)


def _check_open_unit(name: str, value: object) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number in (0, 1), got {value!r}") from None
    if not (0.0 < v < 1.0):
        raise ValueError(f"{name} must lie in (0, 1), got {value!r}")
    return v


def _check_n_d(n: object, d: object) -> tuple[int, int]:
    d_ = _check_int("d", d, 1)
    n_ = _check_int("n", n, 1)
    if n_ < d_:
        raise ValueError(f"n must be >= d (n={n_}, d={d_})")
    return n_, d_


def violation_confidence(n: int, d: int, eps: float) -> float:
    """beta = P(Binomial(n, eps) <= d - 1): the chance that a solution violates more than eps.

    Equals sum_{i=0}^{d-1} C(n,i) eps^i (1-eps)^(n-i) = I_{1-eps}(n-d+1, d) = 1 - I_eps(d, n-d+1).
    """
    n_, d_ = _check_n_d(n, d)
    e = _check_open_unit("eps", eps)
    return float(betaincc(d_, n_ - d_ + 1, e))


def epsilon(n: int, d: int, beta: float) -> float:
    """Smallest eps with violation_confidence(n, d, eps) <= beta (exact Campi-Garatti inverse)."""
    n_, d_ = _check_n_d(n, d)
    b = _check_open_unit("beta", beta)
    return float(betainccinv(d_, n_ - d_ + 1, b))


def n_min(eps: float, d: int, beta: float) -> int:
    """Smallest number of scenarios N with violation_confidence(N, d, eps) <= beta.

    beta(N) is strictly decreasing in N, so an exact integer search (doubling bracket, then
    bisection) finds the minimum without any approximation of the binomial tail.
    """
    e = _check_open_unit("eps", eps)
    d_ = _check_int("d", d, 1)
    b = _check_open_unit("beta", beta)

    def ok(n: int) -> bool:
        return float(betaincc(d_, n - d_ + 1, e)) <= b

    if ok(d_):
        return d_
    lo, hi = d_, 2 * d_
    while not ok(hi):  # invariant: ok(lo) is False
        lo, hi = hi, 2 * hi
    while hi - lo > 1:  # invariant: ok(lo) False, ok(hi) True
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _log_comb(n: float, k: float) -> float:
    return float(gammaln(n + 1.0) - gammaln(k + 1.0) - gammaln(n - k + 1.0))


def epsilon_discarded(n: int, d: int, k: int, beta: float) -> float:
    """Sampling-and-discarding bound (Campi & Garatti 2011): k scenarios removed by any rule.

    Solves beta = C(k+d-1, k) * P(Binomial(n, eps) <= k+d-1) for eps. The binomial tail is
    I_{1-eps}(n-k-d+1, k+d); the combinatorial factor is moved to the right-hand side in logs.
    k = 0 reduces to :func:`epsilon`.
    """
    n_, d_ = _check_n_d(n, d)
    k_ = _check_int("k", k, 0)
    b = _check_open_unit("beta", beta)
    if k_ + d_ > n_:
        raise ValueError(f"k must satisfy k + d <= n (k={k_}, d={d_}, n={n_})")
    log_target = math.log(b) - _log_comb(k_ + d_ - 1, k_)
    if log_target >= 0.0:  # the bound is met at eps = 0 (only possible when k = 0 and beta = 1)
        return 0.0
    return float(betainccinv(k_ + d_, n_ - k_ - d_ + 1, math.exp(log_target)))


def epsilon_a_posteriori(n: int, s: int, beta: float, d: int) -> float:
    """Wait-and-judge bound (Campi & Garatti 2018, Math. Programming 167, Theorem 1).

    With s support scenarios (0 <= s <= d <= n), t(s) is the unique root in (0, 1) of

        beta/(n+1) * sum_{m=s}^{n} C(m, s) t^(m-s) - C(n, s) t^(n-s) = 0,

    and eps(s) = 1 - t(s); then P(V(z*) > eps(s*)) <= beta, the split of beta over the d+1
    possible values of s being already inside the beta/(n+1) factor. The theorem assumes
    non-degeneracy (the solution with only the support scenarios equals the full solution
    almost surely), which cannot be checked from one sample: report it alongside the a-priori
    :func:`epsilon`, never instead of it.

    The root is found in eps with log t = log1p(-eps): log of the left part minus log of the
    right part is +inf at eps -> 1 and log(beta/(s+1)) < 0 at eps = 0 (hockey-stick identity).
    """
    n_, d_ = _check_n_d(n, d)
    s_ = _check_int("s", s, 0)
    b = _check_open_unit("beta", beta)
    if s_ > d_:
        raise ValueError(f"s must satisfy 0 <= s <= d (s={s_}, d={d_})")
    if s_ == n_:
        return 1.0
    m = np.arange(s_, n_ + 1, dtype=np.float64)
    log_c = gammaln(m + 1.0) - gammaln(s_ + 1.0) - gammaln(m - s_ + 1.0)
    log_lead = math.log(b) - math.log(n_ + 1.0)
    log_cns = _log_comb(n_, s_)

    def g(e: float) -> float:
        log_t = math.log1p(-e)
        return float(log_lead + logsumexp(log_c + (m - s_) * log_t) - log_cns - (n_ - s_) * log_t)

    lo, hi = 0.0, 1.0 - 1e-16
    if g(hi) <= 0.0:  # numerically the root sits against 1
        return 1.0
    return float(brentq(g, lo, hi, xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=500))


@dataclass(frozen=True)
class PacBound:
    """A PAC statement: with confidence >= 1 - beta, violation probability <= eps."""

    n: int
    d: int
    beta: float
    eps: float

    @classmethod
    def a_priori(cls, n: int, d: int, beta: float) -> "PacBound":
        """The exact a-priori bound of :func:`epsilon`."""
        return cls(n=int(n), d=int(d), beta=float(beta), eps=epsilon(n, d, beta))


def rate_lower_bound(k: int, n: int, beta: float) -> float:
    """One-sided Clopper-Pearson lower bound on a Bernoulli rate from k events in n trials:
    P(rate < bound) <= beta. 0 when k = 0. (The beta quantile of Beta(k, n - k + 1).)"""
    n_ = _check_int("n", n, 1)
    k_ = _check_int("k", k, 0)
    b = _check_open_unit("beta", beta)
    if k_ > n_:
        raise ValueError(f"k must satisfy k <= n (k={k_}, n={n_})")
    if k_ == 0:
        return 0.0
    return float(betaincinv(k_, n_ - k_ + 1, b))


def check_verify_runs(config: CertifyConfig) -> None:
    """Refuse, before any work, a certification whose ``n_verify`` verification runs cannot reach
    its ``epsilon`` at confidence 1 - beta/max_probes with d decision variables (ConfigError
    naming ``n_verify`` and the N needed)."""
    needed = n_min(config.epsilon, config.decision_variables, config.beta_per_probe)
    if config.n_verify < needed:
        raise ConfigError("n_verify", f"{config.n_verify} verification runs cannot reach epsilon={config.epsilon:g} at "
                                      f"beta={config.beta:g} split over {config.max_probes} probes with "
                                      f"d={config.decision_variables}: need N_v >= {needed}")
