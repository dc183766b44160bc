"""What a probe's runs say, from their hit counts alone: labels, counts, accuracy-drop summaries,
the direct bound, the training-split check, the witness and the probe's status.

Every field of a probe record that follows from other fields is computed here, once: the probe
builds its record with these functions and ``verify`` recomputes the record with the same ones
from the stored hit counts and margins, so a document that contradicts itself is caught.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import pac
from .labels import SafetyRule

SPLITS = ("verify", "train")  # the order a witness is looked for in
PROBE_FIELDS = ("index", "delta", "beta", "n_train", "n_verify", "hits", "reference_hits", "n_unsafe_train", "n_unsafe_verify",
                "verify_accuracy_drop", "direct", "poison_fraction_mean", "witness", "verdict", "barrier", "epsilon", "d",
                "status", "reason")
"""Every field of a probe record."""
SOLVED_FIELDS = ("epsilon_a_posteriori", "n_support", "eta_star", "eta_check", "tau", "pool_size", "psi_backend",
                 "train_consistency")
"""The further fields of a probe whose scenario program was solved."""
VERDICT_FIELDS = ("solver", "solver_status", "fell_back", "w", "gamma", "c", "c_clamped", "n_rows_total", "n_rows_used",
                  "cg_rounds", "solve_seconds", "rounding_bound", "objective", "pool_margin", "trajectory_margins",
                  "support_indices")
"""The scenario program's solution as a probe record keeps it."""
BARRIER_FIELDS = ("train_loss", "train_violations", "out_dim", "trunk")


References = Optional[Dict[str, Sequence[int]]]
"""Each split's own clean hit counts, which an evasion rule (``own_reference``) judges against;
None for a rule that judges against g_c."""


def _split(reference: References, split: str) -> Optional[np.ndarray]:
    return None if reference is None else np.asarray(reference[split], dtype=np.int64)


def drop_summary(rule: SafetyRule, hits: Sequence[int], reference: Optional[Sequence[int]] = None) -> Dict[str, float]:
    """min, median, q95, max and mean of the accuracy drop G over runs (for reports)."""
    g = rule.accuracy_drop(np.asarray(hits, dtype=np.int64), reference)
    q = np.quantile(g, [0.0, 0.5, 0.95, 1.0])
    return {"min": float(q[0]), "median": float(q[1]), "q95": float(q[2]), "max": float(q[3]), "mean": float(np.mean(g))}


def direct_bound(n_unsafe: int, n: int, beta: float, epsilon_requested: float) -> Dict[str, Any]:
    """The baseline without a barrier: the d = 1 scenario bound on the terminal labels of ``n``
    runs; it passes only when none is unsafe and its epsilon meets the request."""
    eps = pac.epsilon(n, 1, beta)
    return {"n": int(n), "d": 1, "epsilon": eps, "passed": bool(n_unsafe == 0 and eps <= epsilon_requested)}


def label_fields(rule: SafetyRule, hits: Dict[str, Sequence[int]], beta: float, epsilon_requested: float,
                 reference: References = None) -> Dict[str, Any]:
    """The counts and summaries a probe record derives from its runs' hit counts."""
    u = {split: rule.unsafe(np.asarray(hits[split], dtype=np.int64), _split(reference, split)) for split in SPLITS}
    n_all = len(hits["train"]) + len(hits["verify"])
    n_unsafe = int(u["train"].sum() + u["verify"].sum())
    return {
        "n_unsafe_train": int(u["train"].sum()), "n_unsafe_verify": int(u["verify"].sum()),
        "verify_accuracy_drop": drop_summary(rule, hits["verify"], _split(reference, "verify")),
        "direct": direct_bound(n_unsafe, n_all, beta, epsilon_requested),
    }


def first_unsafe(rule: SafetyRule, hits: Dict[str, Sequence[int]], reference: References = None) -> Optional[Tuple[str, int]]:
    """(split, index) of the witness: the first unsafe verification run, else the first unsafe
    training run; None when every run is safe."""
    for split in SPLITS:
        u = np.flatnonzero(rule.unsafe(np.asarray(hits[split], dtype=np.int64), _split(reference, split)))
        if u.size:
            return split, int(u[0])
    return None


def witness_record(rule: SafetyRule, split: str, index: int, hits: int, seeds: Sequence[int], delta: float,
                   backend: str, reference_hits: Optional[int] = None) -> Dict[str, Any]:
    """A replayable unsafe run: which run, its seeds, the backend that ran it, what it ended with
    (with an evasion rule, also its own clean count, which its drop is measured from)."""
    init, poison, schedule = (int(s) for s in seeds)
    record = {
        "delta": float(delta), "backend": backend, "split": split, "index": int(index),
        "seeds": {"init": init, "poison": poison, "schedule": schedule},
        "test_hits": int(hits), "test_accuracy": float(hits / rule.test_size),
        "accuracy_drop": float(rule.accuracy_drop(np.array([hits]), None if reference_hits is None else [reference_hits])[0]),
    }
    if rule.own_reference:
        record["reference_hits"] = int(reference_hits)
    return record


def training_split_consistency(n_unsafe: int, n: int, epsilon: float, beta: float) -> Dict[str, Any]:
    """Do the probe's training runs contradict a certificate at level epsilon?

    The training split is an i.i.d. sample of the same runs, independent of the verification
    split. If the certificate holds, an unsafe rate above epsilon is impossible, and the training
    split shows one (Clopper-Pearson lower bound at confidence 1 - beta above epsilon) with
    probability at most beta. A contradicted CERTIFIED becomes INCONCLUSIVE: more conservative,
    so never less sound.
    """
    lower = pac.rate_lower_bound(n_unsafe, n, beta)
    return {"n_unsafe": int(n_unsafe), "n": int(n), "beta": float(beta), "rate_lower_bound": lower,
            "contradicts": bool(lower > epsilon)}


def in_pool(pool_states: str, budget: float, delta: float) -> bool:
    """Whether unsafe states from runs at ``budget`` join the pool of a probe at ``delta``: the
    heavy-poison runs (keyed at budget +inf) always; training-split runs of other probes only
    under ``heavy+larger`` and only from strictly larger budgets (docs/METHOD.md §11.4)."""
    return budget == math.inf or (pool_states == "heavy+larger" and budget > delta)


def pool_size(pool_states: str, heavy_unsafe: int, earlier: Sequence[Dict[str, Any]], delta: float) -> int:
    """Unsafe pool rows a probe at ``delta`` separates from (:func:`in_pool`), from the counts of
    the heavy-poison runs and of earlier probes' training splits."""
    return int(heavy_unsafe) + sum(int(p["n_unsafe_train"]) for p in earlier if in_pool(pool_states, p["delta"], delta))


def unsolved_status(*, n_unsafe_verify: int, n_verify: int, alpha: float, pool_rows: int) -> Tuple[str, str]:
    """(status, reason) of a probe whose scenario program is not solved: REFUTED when a
    verification run ended unsafe, INCONCLUSIVE without a pool to separate from."""
    if n_unsafe_verify > 0:
        return "REFUTED", (f"{n_unsafe_verify} of {n_verify} verification runs ended unsafe (G > {alpha:g}); "
                           "witness recorded")
    if pool_rows == 0:
        return "INCONCLUSIVE", "no unsafe state from a larger budget to separate from (empty pool)"
    raise ValueError("unsolved_status: a probe with no unsafe verification run and a pool must solve its program")


def solved_status(*, solver_status: str, eta_check: float, rounding_bound: float, tau: float, epsilon: float,
                  epsilon_requested: float, train_consistency: Dict[str, Any]) -> Tuple[str, str]:
    """(status, reason) of a probe whose scenario program was solved: CERTIFIED only when the
    solver status is OPTIMAL, eta_check < -tau, epsilon meets the request and the training split
    does not contradict it; otherwise INCONCLUSIVE."""
    from .scenario import decide_status

    status, reason = decide_status(np.zeros(0, dtype=bool), solver_status, eta_check, tau, rounding_bound)
    if status == "CERTIFIED" and epsilon > epsilon_requested:
        return "INCONCLUSIVE", f"epsilon {epsilon:.4g} exceeds the requested {epsilon_requested:g}"
    tc = train_consistency
    if status == "CERTIFIED" and tc["contradicts"]:
        return "INCONCLUSIVE", (
            f"the training split's unsafe rate is at least {tc['rate_lower_bound']:.4g} at confidence "
            f"1 - {tc['beta']:.3g} ({tc['n_unsafe']}/{tc['n']} runs), above epsilon {epsilon:.4g}: "
            "the independent training runs contradict the certificate")
    return status, reason


def a_posteriori_epsilon(n_verify: int, n_support: Optional[int], beta: float, d: int) -> Optional[float]:
    """The wait-and-judge bound for ``n_support`` support scenarios (None when they were not
    counted or exceed d, where the bound does not apply)."""
    if n_support is None or not 0 <= n_support <= d <= n_verify:
        return None
    return pac.epsilon_a_posteriori(n_verify, n_support, beta, d)


def overall_status(probes: List[Dict[str, Any]]) -> Tuple[str, str, Optional[Dict[str, Any]]]:
    """(status, reason, best certified probe or None) of a whole search.

    CERTIFIED when some probe certified (the largest budget is the result); otherwise the outcome
    of the smallest probed budget, REFUTED or INCONCLUSIVE."""
    certified = [p for p in probes if p["status"] == "CERTIFIED"]
    if certified:
        best = max(certified, key=lambda p: p["delta"])
        return "CERTIFIED", best["reason"], best
    if not probes:
        return "INCONCLUSIVE", "no budget was probed", None
    first = min(probes, key=lambda p: p["delta"])
    status = "REFUTED" if first["status"] == "REFUTED" else "INCONCLUSIVE"
    return status, f"smallest probe δ={first['delta']:.4g}: {first['reason']}", None
