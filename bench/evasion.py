"""Per-model test-time robustness of the default recipe: clean, PGD-robust and IBP-verified accuracy.

    python -m bench.evasion [--n 200] [--deltas 0.01 0.02 0.05 0.1] [--norm inf] [--steps 50]
                            [--restarts 2] [--backend auto] [--out bench/results] [--quick]

Trains ``--n`` clean runs of the default recipe (digits, MLP 64-32-10) with the engine and
judges every terminal model on the whole test set (ρ' = 1) at each budget δ': the fraction of
test points a uniform random perturbation, PGD (margin loss, sign steps, the clean start and
``--restarts`` random ones) and interval bound propagation leave correctly classified. IBP's
fraction is verified accuracy (a lower bound on every attack's), PGD's an upper bound on it. This
places barrierkit's models beside per-model verifiers, which report the same two numbers.
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Dict, List

import numpy as np
import torch

from barrierkit.config import NORMS, EvasionThreat, SampleConfig
from barrierkit.data import get_dataset
from barrierkit.engine import sample
from barrierkit.evasion import evaluate
from barrierkit.rng import Purpose, trajectory_seeds

from .machine import describe
from .report import document, write_results

JUDGES = ("random", "pgd", "ibp")


def robust_accuracy(n: int, deltas: List[float], norm: str, steps: int, restarts: int, backend: str, seed: int = 11) -> List[Dict]:
    """One row per budget and judge: mean, min and max over the n models of the accuracy it
    leaves, with the clean accuracy of the same float64 evaluation and the judge's seconds."""
    config = SampleConfig()
    data = get_dataset(config.dataset)
    x_test = torch.as_tensor(data.x_test, dtype=torch.float64)
    y_test = torch.as_tensor(data.y_test)
    P = int(x_test.shape[0])
    seeds = trajectory_seeds(seed, Purpose.SAMPLE, n)
    counts: Dict = {}  # (delta, judge) -> attacked hits per chunk (the engine hands chunks in order)
    clean_hits: List[np.ndarray] = []  # per chunk
    seconds: Dict = {}

    def judge(lo: int, hi: int, params) -> None:
        run_seeds = torch.as_tensor(seeds[lo:hi, 1])
        for delta in deltas:
            for attack in JUDGES:
                threat = EvasionThreat(attack=attack, norm=norm, rho=1.0, steps=steps, restarts=restarts)
                tic = time.perf_counter()
                clean, attacked = evaluate(params, x_test, y_test, run_seeds, threat, delta, config.threat.domain)
                seconds[delta, attack] = seconds.get((delta, attack), 0.0) + time.perf_counter() - tic
                counts.setdefault((delta, attack), []).append(attacked.numpy())
        clean_hits.append(clean.numpy())

    sample(config, 0.0, seeds, backend=backend, terminal=judge, description="clean runs")
    clean = np.concatenate(clean_hits) / P
    rows = []
    for delta in deltas:
        for attack in JUDGES:
            acc = np.concatenate(counts[delta, attack]) / P
            rows.append({"delta": delta, "norm": norm, "judge": attack, "n_models": n, "test_points": P,
                         "clean_mean": float(clean.mean()), "accuracy_mean": float(acc.mean()),
                         "accuracy_min": float(acc.min()), "accuracy_max": float(acc.max()),
                         "pgd_steps": steps, "pgd_restarts": restarts, "seconds": seconds[delta, attack]})
    return rows


def table(rows: List[Dict]) -> str:
    lines = ["δ'      clean    random   PGD      IBP-verified   (mean over models; PGD/IBP min..max)"]
    for delta in sorted({r["delta"] for r in rows}):
        by = {r["judge"]: r for r in rows if r["delta"] == delta}
        lines.append(f"{delta:<7g} {by['pgd']['clean_mean']:.4f}   {by['random']['accuracy_mean']:.4f}   "
                     f"{by['pgd']['accuracy_mean']:.4f}   {by['ibp']['accuracy_mean']:.4f}         "
                     f"PGD {by['pgd']['accuracy_min']:.3f}..{by['pgd']['accuracy_max']:.3f}, "
                     f"IBP {by['ibp']['accuracy_min']:.3f}..{by['ibp']['accuracy_max']:.3f}")
    return "\n".join(lines)


def main(argv=None) -> Dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="clean runs (models) judged")
    ap.add_argument("--deltas", nargs="+", type=float, default=[0.01, 0.02, 0.05, 0.1])
    ap.add_argument("--norm", choices=list(NORMS), default="inf")
    ap.add_argument("--steps", type=int, default=50, help="PGD steps per start")
    ap.add_argument("--restarts", type=int, default=2, help="PGD random starts beside the clean point")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--quick", action="store_true", help="4 models, 3 PGD steps: checks the script (not a measurement)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.steps, args.restarts = 4, 3, 0
    rows = robust_accuracy(args.n, args.deltas, args.norm, args.steps, args.restarts, args.backend)
    print(table(rows))
    result = document("evasion", rows, describe(), vars(args), quick=args.quick)
    print("wrote {} and {}".format(*write_results(result, args.out)))
    return result


if __name__ == "__main__":
    main()
