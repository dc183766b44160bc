"""How strong each sampling attack is on the default recipe: the unsafe fraction per budget.

    python -m bench.attacks [--attacks gradient adaptive lookahead unrolled unrolled_test] [--deltas 0.05 0.075 0.1]
                            [--subset random|chosen] [--n 300] [--n-clean 200] [--backend auto] [--out bench/results]

The measurement is :func:`barrierkit.empirical.attack_strength` (also ``barrierkit attack``);
this script stores its rows, with the machine, as a results file.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Dict

from barrierkit.config import ATTACKS, SUBSET_RULES, SampleConfig
from barrierkit.empirical import attack_strength, strength_table

from .machine import describe
from .report import document, write_results


def main(argv=None) -> Dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attacks", nargs="+", choices=list(ATTACKS), default=["gradient", "adaptive", "lookahead", "unrolled", "unrolled_test"])
    ap.add_argument("--subset", choices=list(SUBSET_RULES), default="random", help="the subset rule (default random)")
    ap.add_argument("--deltas", nargs="+", type=float, default=[0.05, 0.075, 0.1])
    ap.add_argument("--n", type=int, default=300, help="runs per attack and budget")
    ap.add_argument("--n-clean", type=int, default=200, help="clean runs behind g_c")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = ap.parse_args(argv)
    base = SampleConfig()
    config = dataclasses.replace(base, threat=dataclasses.replace(base.threat, subset=args.subset))
    found = attack_strength(config, args.attacks, args.deltas, args.n, args.n_clean, seed=7, backend=args.backend,
                            progress=False)
    print(strength_table(found))
    rows = [{**row, "g_clean": found["g_clean"]} for row in found["rows"]]
    result = document("attacks", rows, describe(), {**vars(args), "delta_emp": found["delta_emp"]}, quick=False)
    print("wrote {} and {}".format(*write_results(result, args.out)))
    return result


if __name__ == "__main__":
    main()
