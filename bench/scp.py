"""SCP seconds against N_v: full program vs constraint generation, CLARABEL vs OSQP.

Instances are random but shaped like a certification at K = 50 intervals and m trunk outputs:
small drifting increments, initial states near the origin, a pool of far-away unsafe states.

    python -m bench.scp [--n 1000 2000 4000 8000] [--m 8] [--full-max 4000] [--out bench/results]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from barrierkit.scenario import ScenarioProblem, solve

from .machine import describe
from .report import document, write_results


def instance(n: int, m: int, k: int = 50, pool: int = 200, seed: int = 0) -> ScenarioProblem:
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=m)
    direction /= np.linalg.norm(direction)
    initial = rng.normal(scale=0.3, size=(n, m))
    increments = rng.normal(scale=0.02, size=(n, k, m)) + 0.004 * direction
    terminal = initial + increments.sum(axis=1)
    pool_states = rng.normal(scale=0.3, size=(pool, m)) + 3.0 * direction
    return ScenarioProblem(initial, increments, terminal, np.zeros(n, dtype=bool), pool_states,
                           w0=rng.normal(scale=0.1, size=m), mu=1e-3)


def time_solve(problem: ScenarioProblem, repeats: int, **kw) -> dict:
    times, verdict = [], None
    for _ in range(repeats):
        tic = time.perf_counter()
        verdict = solve(problem, **kw)
        times.append(time.perf_counter() - tic)
    return {"min_s": min(times), "median_s": float(np.median(times)), "status": verdict.status,
            "solver_used": verdict.solver, "solver_status": verdict.solver_status, "eta_star": verdict.eta_star,
            "rows_used": verdict.n_rows_used, "rows_total": verdict.n_rows_total, "cg_rounds": verdict.cg_rounds}


def run(ns, m: int, full_max: int, repeats: int) -> list:
    rows = []
    for n in ns:
        problem = instance(n, m)
        for solver in ("CLARABEL", "OSQP"):
            for cg in (True, False):
                if not cg and n > full_max:
                    continue
                r = time_solve(problem, repeats, solver=solver, constraint_generation=cg, fallback=False)
                rows.append({"n_verify": n, "K": 50, "m": m, "solver": solver, "mode": "cg" if cg else "full", **r})
                print(f"N_v={n:5d} {solver:8s} {'cg' if cg else 'full':4s} {r['min_s']:8.3f}s  {r['solver_status']:>14s}  rows {r['rows_used']}/{r['rows_total']}")
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[1000, 2000, 4000, 8000])
    ap.add_argument("--m", type=int, default=8)
    ap.add_argument("--full-max", type=int, default=4000, help="largest N_v for the full (no CG) program")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = ap.parse_args(argv)
    result = document("scp", run(args.n, args.m, args.full_max, args.repeats), describe(), vars(args), quick=False)
    print("wrote {} and {}".format(*write_results(result, args.out)))
    return result


if __name__ == "__main__":
    main()
