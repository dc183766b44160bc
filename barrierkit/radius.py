"""The radius search: bisection over the budget delta, with every probe recorded.

Each probe draws fresh runs and is decided at confidence 1 - beta/K_max, so the reported radius
holds at 1 - beta overall (a union bound over at most K_max probes, whatever path the data-
dependent search takes). Without an upper end the search brackets by doubling from
``delta_start`` up to the largest budget the domain admits; bracketing probes count toward K_max.
Bisection assumes certification is monotone in delta; the statement attaches only to budgets
that were actually probed, and every probe is in the certificate.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional

Probe = Callable[[float, int], Dict[str, Any]]


def max_budget(norm: str, domain: tuple, dim: int) -> float:
    """The largest perturbation the domain admits: its width (l_inf) or width * sqrt(D) (l_2)."""
    width = domain[1] - domain[0]
    return width if norm == "inf" else width * math.sqrt(dim)


def search(probe: Probe, *, max_probes: int, budget_max: float, delta_start: float,
           delta_hi: Optional[float] = None, rel_tol: float = 0.05) -> List[Dict[str, Any]]:
    """Probe budgets (at most ``max_probes``) toward the largest certifiable one; the probe
    records in the order they ran (:func:`radii` reads the result off them).

    The path depends only on each probe's status, so ``verify`` re-runs it on the stored
    statuses and checks that the stored budgets are the ones this search would have probed."""
    probes: List[Dict[str, Any]] = []

    def run(delta: float) -> bool:
        rec = probe(delta, len(probes))
        probes.append(rec)
        return rec["status"] == "CERTIFIED"

    lo: Optional[float] = None  # largest certified
    hi: Optional[float] = None  # smallest failed above lo
    whole = False  # the largest admissible budget certified: nothing left to search
    top = min(delta_hi, budget_max) if delta_hi is not None else budget_max
    if delta_hi is not None:
        if run(top):
            lo, whole = top, top >= budget_max
        else:
            hi = top
    else:
        delta = min(delta_start, top)
        while len(probes) < max_probes:
            if run(delta):
                lo = delta
                if delta >= top:
                    whole = True
                    break
                delta = min(2.0 * delta, top)
            else:
                hi = delta
                break
    while hi is not None and not whole and len(probes) < max_probes:
        low = lo if lo is not None else 0.0
        if (hi - low) <= rel_tol * hi:
            break
        mid = 0.5 * (low + hi)
        if run(mid):
            lo = mid
        else:
            hi = mid
    return probes


def radii(probes: List[Dict[str, Any]], best: Optional[Dict[str, Any]], budget_max: float,
          delta_hi: Optional[float]) -> Dict[str, Any]:
    """The radii a list of probe records supports, ``best`` its certified probe
    (:func:`barrierkit.outcomes.overall_status`) or None.

    delta_cert: the largest certified budget; delta_direct: the largest budget passing the direct
    (d = 1) bound; delta_fail: the smallest probed budget above delta_cert that did not certify;
    whole_domain: the largest admissible budget certified; capped_by_user: the user's delta_hi
    certified below it, so larger budgets were not searched."""
    cert = best["delta"] if best is not None else None
    direct = [p["delta"] for p in probes if p["direct"]["passed"]]
    above = [p["delta"] for p in probes if p["status"] != "CERTIFIED" and (cert is None or p["delta"] > cert)]
    top = min(delta_hi, budget_max) if delta_hi is not None else budget_max
    return {
        "delta_cert": cert, "delta_direct": max(direct) if direct else None, "delta_fail": min(above) if above else None,
        "whole_domain": cert is not None and cert >= budget_max,
        "capped_by_user": delta_hi is not None and cert is not None and cert == top and cert < budget_max,
        "max_budget": budget_max,
    }
