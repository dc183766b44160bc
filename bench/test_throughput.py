"""pytest-benchmark suite: the same cases as ``python -m bench``, set up by the same function.

    pytest bench --benchmark-only                                  # N = 1000 (BARRIERKIT_BENCH_N)
    BARRIERKIT_BENCH_QUICK=1 pytest bench --benchmark-only         # tiny sizes: checks the suite

Environment: BARRIERKIT_BENCH_N (trajectories), BARRIERKIT_BENCH_THREADS (torch and numba
threads, pinned), BARRIERKIT_BENCH_DEVICE (cpu or cuda; default cuda when available).

Not part of the normal test run (pytest's testpaths is tests/). One benchmark round is one call
(``steps`` SGD steps of N trajectories); ``extra_info`` holds the case's configuration and
trajectory-steps per round. GPU-only methods skip with their reason on a CPU.
"""
import os

import pytest
import torch

from bench.timing import pin_threads, restore_threads
from bench.workloads import METHODS, WORKLOADS, Unavailable, setup

QUICK = os.environ.get("BARRIERKIT_BENCH_QUICK") == "1"
DEVICE = os.environ.get("BARRIERKIT_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
N = int(os.environ.get("BARRIERKIT_BENCH_N") or (4 if QUICK else 1000))
STEPS = 2 if QUICK else 8
ROUNDS = 2 if QUICK else 5
LOOP_RUNS = 2 if QUICK else 16
REFERENCE_STEPS = 16 if QUICK else 400
SCP_NS = [40] if QUICK else [1000, 4000]
THREADS = int(os.environ.get("BARRIERKIT_BENCH_THREADS") or 0) or None


@pytest.fixture(scope="module", autouse=True)
def pinned_threads():
    """torch and numba threads pinned for the whole suite (BARRIERKIT_BENCH_THREADS, default torch's)."""
    previous = pin_threads(THREADS)
    yield
    restore_threads(previous)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_steps(benchmark, workload, method):
    n = LOOP_RUNS if method == "loop" else N
    try:
        case = setup(workload, method, n, steps=STEPS, device=DEVICE, reference_steps=REFERENCE_STEPS)
    except Unavailable as exc:
        pytest.skip(str(exc))
    benchmark.extra_info.update(case.config())
    benchmark.extra_info["trajectory_steps_per_round"] = case.steps_per_call

    def one_round():
        case.call()
        case.sync()  # one synchronisation per round of `STEPS` steps on a GPU, none on the CPU

    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("n_verify", SCP_NS)
@pytest.mark.parametrize("solver", ["CLARABEL", "OSQP"])
def test_scp(benchmark, n_verify, solver):
    from barrierkit.scenario import solve
    from bench.scp import instance

    problem = instance(n_verify, 8)
    benchmark.extra_info.update(n_verify=n_verify, solver=solver, m=8, K=50, mode="cg")
    benchmark.pedantic(lambda: solve(problem, solver=solver, constraint_generation=True, fallback=False),
                       rounds=1 if QUICK else 3, iterations=1, warmup_rounds=0)
