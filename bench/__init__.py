"""barrierkit benchmarks: workloads, baselines and the harness (python -m bench ...)."""
