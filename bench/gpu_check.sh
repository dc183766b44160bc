#!/usr/bin/env bash
# Install, check, sanitize and time barrierkit on a lent GPU machine, in stages that each have
# their own time limit, so one slow or failing stage never loses the others' results.
#
#   bash bench/gpu_check.sh                      # the default stages, in two device calls:
#   bash bench/gpu_check.sh preflight cudatests memcheck certify kerneltests     # call 1 (< 600 s)
#   bash bench/gpu_check.sh preflight throughput scaling                         # call 2 (< 600 s)
#
# Stages (their limits in seconds, each + 5 s to kill; a device call may run 600 s in all, and
# each default call adds up to 570 + 25 s):
#   preflight    install (--no-deps: the image has no registry), imports, GPU, TF32 settings   (60)
#   cudatests    the CUDA-only tests at real sizes: N=4000 784-64-10 against torch_ref, CuPy   (140)
#   memcheck     compute-sanitizer memcheck of the kernels (bench/memcheck_small.py)          (90)
#   certify      the MNIST-shaped certification, N_v = 4000 (target: under 2 min)         (180)
#   kerneltests  every kernel/engine test compiled (odd shapes: many compiles)                   (100)
#   throughput   steps/s of every method on mnist, digits, deep at N = 4000, roofline fractions (330)
#   scaling      time per step against N up to 16000 (no torch.compile: it recompiles per N)    (180)
#
# Everything goes to $OUT (the device tool brings it back): one log per stage, results JSON/CSV,
# partial row logs of a stage cut off by its limit, and summary.txt (rc and seconds per stage).
# The script exits 1 when a stage failed or was cut off, 2 on an unknown stage name.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0 NVIDIA_TF32_OVERRIDE=0
unset TORCH_ALLOW_TF32_CUBLAS_OVERRIDE
STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(preflight cudatests memcheck certify kerneltests)
KNOWN=" preflight cudatests memcheck certify kerneltests throughput scaling "
FAILED=()

run_stage() {  # run_stage NAME LIMIT_S COMMAND...: the command's output goes to the screen and $OUT/NAME.log
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  echo "=== $name (limit ${limit}s)"
  timeout --kill-after=5 "$limit" "$@" 2>&1 | tee "$OUT/$name.log" | tail -40
  local rc=${PIPESTATUS[0]}
  local note=""
  case $rc in 124|137) note=" (cut off by its limit)" ;; esac
  [ "$rc" = 0 ] || FAILED+=("$name")
  echo "$name rc=$rc seconds=$((SECONDS - t0))$note" | tee -a "$OUT/summary.txt"
}

preflight() {
  local rc=0
  python -V
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
  if ! pip install --no-deps --no-build-isolation -e .; then
    # no setuptools in the image: run from the checkout instead (python -m puts it on sys.path)
    echo "editable install failed: linking kernels/ as barrierkit/kernels and running from the checkout"
    [ -e barrierkit/kernels ] || ln -s ../kernels barrierkit/kernels
  fi
  python - <<'PY'
import importlib, sys
missing = []
for name in ("torch", "triton", "numpy", "scipy", "sklearn", "tqdm", "cvxpy", "clarabel", "numba", "cupy", "pytest",
             "barrierkit.kernels.mlp_step", "barrierkit.kernels.barrier_eval"):
    try:
        mod = importlib.import_module(name)
        print(f"{name:32s} {getattr(mod, '__version__', 'ok')}")
    except Exception as exc:  # noqa: BLE001
        missing.append(name)
        print(f"{name:32s} MISSING: {type(exc).__name__}: {exc}")
import torch
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
print("allow_tf32 (cuBLAS)", torch.backends.cuda.matmul.allow_tf32, "cudnn", torch.backends.cudnn.allow_tf32)
sys.exit(1 if missing else 0)
PY
  [ $? -eq 0 ] || rc=5
  command -v gcc >/dev/null && gcc --version | head -1 || echo "gcc missing: Triton cannot build its launcher"
  command -v compute-sanitizer >/dev/null && echo "compute-sanitizer: $(command -v compute-sanitizer)" \
    || echo "compute-sanitizer is not on PATH: the memcheck stage will look under /usr/local/cuda*"
  return $rc
}

memcheck() {
  local cs
  cs=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
  if [ -z "$cs" ]; then echo "compute-sanitizer not found: memcheck NOT run"; return 4; fi
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$cs" --tool memcheck --error-exitcode 9 python -m bench.memcheck_small
}

if [ "${1:-}" = "__run" ]; then  # the script calling one of its own functions under `timeout`
  "$2"
  exit $?
fi

SM90_COMPILE_TESTS=(--deselect tests/test_triton_step.py::test_kernel_compiles_for_sm90
                    --deselect tests/test_barrier_eval.py::test_kernel_compiles_for_sm90
                    --deselect tests/test_mlp_features.py::test_kernel_compiles_for_sm90)
KERNEL_TESTS=(tests/test_triton_step.py tests/test_mlp_features.py tests/test_barrier_eval.py tests/test_engine.py tests/test_rng.py)

for stage in "${STAGES[@]}"; do  # every name checked before any device time is spent
  case $KNOWN in *" $stage "*) ;; *) echo "unknown stage $stage (known:$KNOWN)"; exit 2 ;; esac
done

for stage in "${STAGES[@]}"; do
  case $stage in
    preflight)   run_stage preflight 60 bash "$0" __run preflight ;;
    cudatests)   run_stage cudatests 140 python -m pytest -v -rs "${KERNEL_TESTS[@]}" -k "n4000 or cupy or cuda" \
                   "${SM90_COMPILE_TESTS[@]}" --junitxml "$OUT/cudatests.xml" ;;
    memcheck)    run_stage memcheck 90 bash "$0" __run memcheck ;;
    certify)     run_stage certify 180 python -m bench certify --certify mnist --device cuda --out "$OUT" ;;
    kerneltests) run_stage kerneltests 100 python -m pytest -v -rs "${KERNEL_TESTS[@]}" -k "not (n4000 or cupy or cuda)" \
                   "${SM90_COMPILE_TESTS[@]}" --junitxml "$OUT/kerneltests.xml" ;;
    throughput)  run_stage throughput 330 python -m bench throughput --device cuda --out "$OUT" --certify none \
                   --workloads mnist digits deep ;;
    scaling)     run_stage scaling 180 python -m bench scaling --device cuda --out "$OUT" --workloads mnist \
                   --methods torch torch.func triton triton_tf32 ;;
  esac
done
echo "=== summary"; cat "$OUT/summary.txt"
[ ${#FAILED[@]} -eq 0 ] || { echo "failed or cut off: ${FAILED[*]}"; exit 1; }
