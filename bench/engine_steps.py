"""Trajectory-steps per second: a per-trajectory nn.Module + SGD loop against the batched engine.

(The fuller comparison, every method on three workloads, is ``python -m bench throughput``; the
loop baseline lives in bench/baselines.py and is shared with it.)

The loop is how a paper-style implementation trains its runs: one model at a time, its poisoned
dataset materialised once per run, torch.optim.SGD with autograd. Its throughput does not
depend on N, so it is measured on ``--loop-runs`` runs. The engine runs N trajectories at once
and also records the features phi (extra work the loop does not do).

    python -m bench.engine_steps [--n 100 1000 4000] [--steps 200] [--out bench/results]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from barrierkit.attacks import gradient_directions
from barrierkit.config import SampleConfig
from barrierkit.data import load_digits
from barrierkit.engine import sample
from barrierkit.rng import Purpose, trajectory_seeds

from .machine import describe
from .report import document, write_results
from .workloads import WORKLOADS, setup


def loop_throughput(config: SampleConfig, data, delta: float, runs: int) -> float:
    """Trajectory-steps per second of the one-model-at-a-time loop (bench.baselines.LoopStepper).

    Timed from the start: building each run's model, poisoned dataset and optimizer, then
    ``config.recipe.steps`` steps per run (digits, the default recipe).
    """
    WORKLOADS["digits"].data()  # loaded (and cached) outside the timing, like the engine's data
    start = time.perf_counter()
    case = setup("digits", "loop", runs, steps=config.recipe.steps, delta=delta, seed=99)
    case.call()
    return runs * config.recipe.steps / (time.perf_counter() - start)


def engine_throughput(config: SampleConfig, data, delta: float, n: int, repeats: int, backend: str = "torch") -> list:
    """Trajectory-steps per second of the batched engine (whole sample() call), per repeat."""
    out = []
    for rep in range(repeats):
        seeds = trajectory_seeds(rep, Purpose.SAMPLE, n)
        start = time.perf_counter()
        sample(config, delta, seeds, data=data, progress=False, backend=backend)
        out.append(n * config.recipe.steps / (time.perf_counter() - start))
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[100, 1000, 4000])
    ap.add_argument("--delta", type=float, default=0.1)
    ap.add_argument("--loop-runs", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--backend", default="torch", help="engine backend: torch (the reference), numba, auto")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = ap.parse_args(argv)
    config = SampleConfig()  # digits, MLP 64-32-10, batch 32, gradient attack, rho 0.5
    data = load_digits()
    gradient_directions(config, data)  # the reference model is trained once, outside the timings
    loop = loop_throughput(config, data, args.delta, args.loop_runs)
    rows = []
    for n in args.n:
        eng = engine_throughput(config, data, args.delta, n, args.repeats, args.backend)
        rows.append({"n": n, "engine_steps_per_s_best": max(eng), "engine_steps_per_s_median": float(np.median(eng)),
                     "loop_steps_per_s": loop, "speedup_best": max(eng) / loop})
        print(f"N={n:5d}  engine {max(eng):10.0f} steps/s (median {np.median(eng):.0f})  loop {loop:8.0f} steps/s  x{max(eng) / loop:6.1f}")
    setting = {"workload": "digits MLP 64-32-10 batch 32, gradient attack rho 0.5", "steps": config.recipe.steps, **vars(args)}
    result = document("engine_steps", rows, describe(), setting, quick=False)
    print("wrote {} and {}".format(*write_results(result, args.out)))
    return result


if __name__ == "__main__":
    main()
