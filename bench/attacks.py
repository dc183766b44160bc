"""How strong each sampling attack is on a recipe: the unsafe fraction of N runs per budget.

    python -m bench.attacks [--attacks gradient adaptive unrolled unrolled_test] [--deltas 0.05 0.075 0.1]
                            [--n 300] [--n-clean 200] [--backend auto] [--out bench/results]

g_c comes from ``--n-clean`` clean runs of the default recipe (the certification's own rule);
each (attack, δ) row gives the unsafe count, the fraction and its two-sided 95 % Clopper-Pearson
interval, the median test accuracy and the seconds it took (table attacks include making the table).
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Dict, List

import numpy as np
from scipy.stats import beta as beta_dist

from barrierkit.config import ATTACKS, SampleConfig, SamplingAttack
from barrierkit.engine import sample
from barrierkit.labels import SafetyRule
from barrierkit.rng import Purpose, trajectory_seeds

from .machine import describe
from .report import document, write_results


def clopper_pearson(k: int, n: int, level: float = 0.95) -> List[float]:
    """The two-sided Clopper-Pearson interval of a binomial rate k / n at ``level``."""
    tail = (1.0 - level) / 2.0
    low = 0.0 if k == 0 else float(beta_dist.ppf(tail, k, n - k + 1))
    high = 1.0 if k == n else float(beta_dist.ppf(1.0 - tail, k + 1, n - k))
    return [low, high]


def run(attacks: List[str], deltas: List[float], n: int, n_clean: int, backend: str) -> List[Dict]:
    base = SampleConfig()
    clean = sample(base, 0.0, trajectory_seeds(0, Purpose.CLEAN, n_clean), backend=backend, progress=False)
    rule = SafetyRule.from_clean_hits(clean.test_hits, clean.test_size, 0.05)
    rows = []
    for kind in attacks:
        config = SampleConfig(attack=SamplingAttack(kind=kind))
        for delta in deltas:
            tic = time.perf_counter()
            runs = sample(config, delta, trajectory_seeds(7, Purpose.SAMPLE, n), backend=backend, progress=False)
            unsafe = int(rule.unsafe(runs.test_hits).sum())
            rows.append({"attack": kind, "delta": delta, "n": n, "unsafe": unsafe, "fraction": unsafe / n,
                         "interval_95": clopper_pearson(unsafe, n), "median_accuracy": float(np.median(runs.test_accuracy)),
                         "g_clean": rule.g_clean, "backend": runs.meta["backend"], "seconds": time.perf_counter() - tic})
            print(f"{kind:14s} δ={delta:<6g} unsafe {unsafe:4d}/{n} [{rows[-1]['interval_95'][0]:.3f}, "
                  f"{rows[-1]['interval_95'][1]:.3f}]  median acc {rows[-1]['median_accuracy']:.3f}  "
                  f"({rows[-1]['seconds']:.1f} s, {rows[-1]['backend']})", flush=True)
    return rows


def main(argv=None) -> Dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attacks", nargs="+", choices=list(ATTACKS), default=["gradient", "adaptive", "unrolled", "unrolled_test"])
    ap.add_argument("--deltas", nargs="+", type=float, default=[0.05, 0.075, 0.1])
    ap.add_argument("--n", type=int, default=300, help="runs per attack and budget")
    ap.add_argument("--n-clean", type=int, default=200, help="clean runs behind g_c")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = ap.parse_args(argv)
    result = document("attacks", run(args.attacks, args.deltas, args.n, args.n_clean, args.backend), describe(),
                      vars(args), quick=False)
    print("wrote {} and {}".format(*write_results(result, args.out)))
    return result


if __name__ == "__main__":
    main()
