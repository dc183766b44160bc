"""A small run of the three Triton kernels on CUDA, for ``compute-sanitizer --tool memcheck``.

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 9 \\
        python -m bench.memcheck_small

Small on purpose (the sanitizer slows every launch down): 3 trajectories of the MNIST-shaped MLP
(784-64-10, odd batch 33 so masks are exercised) for 80 steps with the gradient attack, in IEEE
and TF32 precision (the triton backends record phi and the test accuracy with mlp_features), then
one barrier_eval launch over odd sizes with w and unsafe rows, in fp64 and
fp32. Without PyTorch's caching allocator an out-of-bounds access cannot land inside a cached
block unseen. Exits non-zero when anything is non-finite.
"""
from __future__ import annotations

import numpy as np
import torch

from barrierkit.config import ModelSpec, SampleConfig, TrainRecipe
from barrierkit.data import make_synthetic
from barrierkit.engine import sample
from barrierkit.rng import Purpose, trajectory_seeds
from barrierkit.kernels import barrier_eval as BE


def main(argv=None) -> int:
    import sys

    argv = sys.argv[1:] if argv is None else argv
    device = torch.device(argv[0] if argv else "cuda")  # "cpu" runs it under TRITON_INTERPRET=1
    data = make_synthetic(n_train=300, n_test=50, dim=784, mean_low=0.3, mean_width=0.4)
    seeds = trajectory_seeds(0, Purpose.SAMPLE, 3)
    config = SampleConfig(model=ModelSpec(hidden=(64,)), recipe=TrainRecipe(steps=80, batch=33, record_every=40))
    for backend in ("triton", "triton_tf32"):
        runs = sample(config, 0.1, seeds, data=data, backend=backend, device=device, progress=False)
        assert np.all(np.isfinite(runs.features)), backend
        print(f"{backend}: {runs.n} runs, features {runs.features.shape}, accuracy {runs.test_accuracy}")
    r = np.random.default_rng(0)
    n, K, k, width, m = 37, 5, 11, 32, 8
    layers = [(r.normal(size=(width, k)), r.normal(size=width)), (r.normal(size=(m, width)), r.normal(size=m))]
    for dtype in (torch.float64, torch.float32):
        feats = torch.as_tensor(r.normal(size=(n, K + 1, k)), dtype=dtype, device=device)
        unsafe = torch.as_tensor(r.random(n) < 0.3, device=device)
        out = BE.barrier_eval(feats, r.normal(size=k), r.uniform(0.5, 2.0, size=k), layers, w=r.normal(size=m),
                              gamma=0.1, c=0.05, unsafe=unsafe, return_psi=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        assert torch.isfinite(out["margins"]).all() and torch.isfinite(out["psi"]).all(), dtype
        print(f"barrier_eval {dtype}: margins max {float(out['margins'].max()):.4f}")
    print("memcheck run finished")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
