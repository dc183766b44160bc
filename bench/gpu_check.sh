#!/usr/bin/env bash
# One call on a lent GPU machine: install, compile and check the kernels, sanitize, time.
#   (device tool) run: bash bench/gpu_check.sh
# The image has torch, triton, cupy and numba but no registry access, hence --no-deps.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
# 1. compiled-GPU equivalence (the CUDA tests skip on CPU) and the engine on every backend
python -m pytest -q -x tests/test_triton_step.py tests/test_barrier_eval.py tests/test_engine.py 2>&1 | tee "$OUT/tests.txt" | tail -15
# 2. one compute-sanitizer memcheck run of a small fused step
if command -v compute-sanitizer >/dev/null; then
  compute-sanitizer --tool memcheck --error-exitcode 9 python - <<'PY' 2>&1 | tail -5 | tee "$OUT/memcheck.txt"
import torch
from barrierkit.config import SampleConfig
from barrierkit.data import make_synthetic
from barrierkit.engine import sample, trajectory_seeds
cfg = SampleConfig()
runs = sample(cfg, 0.1, trajectory_seeds(0, 2, 64), data=make_synthetic(n_train=512, n_test=128, dim=784),
              backend="triton", device="cuda", progress=False)
print("memcheck run finished:", runs.features.shape)
PY
fi
# 3. timings: kernel targets (fused step vs vmap(grad) and its compiled form, roofline), scaling, SCP
python -m bench throughput --device cuda --out "$OUT" --certify none 2>&1 | tail -30
python -m bench roofline --device cuda --out "$OUT" 2>&1 | tail -20
python -m bench scaling --device cuda --out "$OUT" --workloads mnist 2>&1 | tail -12
