"""Trajectory-steps per second of the backends' ``train_segment`` alone (no features, no eval).

Engine-like calls: segments of ``record_every`` = 4 steps, gradient l_inf attack (rho 0.5, delta 0.1,
random unit directions: their values do not change the cost), cached per-point draws,
float32 (options: --dtype, --attack).
Backends are timed interleaved, each cell repeated; the best (minimum) time is the headline, since
the machine may be shared, and the median is printed beside it.

    python -m bench.numba_vs_torch [--steps 20] [--repeats 7] [--dtype float32] [--attack gradient inf]
"""
from __future__ import annotations

import argparse
import json
import time

import numba
import numpy as np
import torch

from barrierkit.backends import StepProblem, TrainState, numba_cpu, torch_ref
from barrierkit.config import ModelSpec, SampleConfig, SamplingAttack, ThreatModel, TrainRecipe
from barrierkit.data import load_digits, make_synthetic
from barrierkit.models import MLPShape, init_params

# (label, backend, threads): torch's intra-op threads / numba's prange threads
BACKENDS = [("torch-1t", torch_ref.train_segment, 1), ("torch-2t", torch_ref.train_segment, 2),
            ("numba-1t", numba_cpu.train_segment, 1), ("numba-2t", numba_cpu.train_segment, 2)]
CASES = [  # (name, data factory, hidden, batch, N)
    ("digits 64-32-10 b32", load_digits, (32,), 32, 10),
    ("digits 64-32-10 b32", load_digits, (32,), 32, 100),
    ("digits 64-32-10 b32", load_digits, (32,), 32, 1000),
    ("synthetic 784-64-10 b64", lambda: make_synthetic(dim=784), (64,), 64, 100),
]


def setup(data, hidden, batch, n, dtype, attack=("gradient", "inf")):
    shape = MLPShape(data.input_dim, hidden, data.n_classes)
    g = torch.Generator().manual_seed(0)
    directions = torch.randn(data.x_train.shape, generator=g, dtype=torch.float64)
    directions = directions.sign() if attack[1] == "inf" else directions / directions.norm(dim=1, keepdim=True)
    seeds = torch.arange(3 * n, dtype=torch.int64).view(n, 3) * 1000003 + 17
    config = SampleConfig(model=ModelSpec(hidden=hidden), recipe=TrainRecipe(batch=batch, lr=0.1, dtype=str(dtype).split(".")[-1]),
                          threat=ThreatModel(norm=attack[1], rho=0.5), attack=SamplingAttack(kind=attack[0]))
    x, y = torch.as_tensor(data.x_train), torch.as_tensor(data.y_train)
    problem = StepProblem.from_config(config, x, y, seeds, 0.1, directions)
    return TrainState(init_params(shape, seeds[:, 0].numpy(), dtype=dtype)), problem


def timed(fn, state, problem, t0, steps, record_every=4) -> float:
    """Seconds for ``steps`` steps from t0 in engine-like calls of ``record_every`` steps."""
    tic = time.perf_counter()
    for s in range(t0, t0 + steps, record_every):
        fn(state, problem, s, s + record_every)
    return time.perf_counter() - tic


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--attack", nargs=2, default=["gradient", "inf"], metavar=("KIND", "NORM"))
    args = ap.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    print(f"{args.dtype}, {' '.join(args.attack)} attack, {args.repeats} interleaved repeats of {args.steps} steps; "
          "trajectory-steps/s (best, then median)")
    rows = []
    for name, factory, hidden, batch, n in CASES:
        data = factory()
        runs = {label: setup(data, hidden, batch, n, dtype, tuple(args.attack)) for label, _, _ in BACKENDS}
        times = {label: [] for label, _, _ in BACKENDS}
        for label, fn, _ in BACKENDS:  # warm-up: compilation or cache load, first epoch permutation
            fn(*runs[label], 0, 4)
        t0 = 4
        for _ in range(args.repeats):
            for label, fn, threads in BACKENDS:
                torch.set_num_threads(threads)
                numba.set_num_threads(threads)
                times[label].append(timed(fn, *runs[label], t0, args.steps))
            t0 += args.steps
        row = {"case": name, "N": n, **{label: round(n * args.steps / min(t)) for label, t in times.items()},
               "median": {label: round(n * args.steps / float(np.median(t))) for label, t in times.items()}}
        rows.append(row)
        print(json.dumps(row))
    return rows


if __name__ == "__main__":
    main()
