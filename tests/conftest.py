"""Test setup: Triton's interpreter must be chosen before anything imports triton."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def digits():
    from barrierkit.data import load_digits

    return load_digits()


@pytest.fixture(scope="session")
def small_data():
    """A small synthetic dataset with odd sizes, for fast engine tests."""
    from barrierkit.data import make_synthetic

    return make_synthetic(n_train=150, n_test=60, dim=13, n_classes=3, spread=0.2, seed=3)


@pytest.fixture
def np_rng():
    return np.random.default_rng(12345)


def compile_reports(module: str, configs: str) -> list:
    """``barrierkit.kernels.<module>.compile_report(**c)`` for each config (a Python literal list)
    compiled for sm_90 with Triton's bundled ptxas, in a subprocess (this process imported triton
    in interpreter mode). Skips when the NVIDIA backend is not installed."""
    import json
    import subprocess
    import sys

    import triton

    if not os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")):
        pytest.skip("Triton's NVIDIA backend (ptxas) is not installed")
    script = (f"import json\nfrom barrierkit.kernels import {module} as K\n"
              f"print(json.dumps([K.compile_report(**c) for c in {configs}]))\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def forbid_launch(monkeypatch, module, kernel: str) -> None:
    """Make any launch of ``module.<kernel>`` fail the test: validation must raise before it."""

    class _NoLaunch:
        def __getitem__(self, grid):
            raise AssertionError("the kernel was launched")

    monkeypatch.setattr(module, kernel, _NoLaunch())


CLI_CERTIFY_ARGS = ["certify", "--record-every", "40", "--n-verify", "120", "--n-train", "80", "--n-clean", "40",
                    "--n-pool", "40", "--epsilon", "0.3", "--beta", "0.05", "--max-probes", "4", "--seed", "1",
                    "--emp-attacks", "sign", "--emp-runs", "20", "--quiet"]
"""A small certification of the default recipe through the CLI (about 15 s): CERTIFIED at a small
budget, with REFUTED probes and witnesses above it, and δ_emp cells of its own attack and 'sign'."""


@pytest.fixture(scope="session")
def cli_certificate(tmp_path_factory):
    from barrierkit.cli import main

    out = tmp_path_factory.mktemp("cert") / "cert.json"
    assert main([*CLI_CERTIFY_ARGS, "--out", str(out)]) == 0
    return out


@pytest.fixture
def nan_accuracy(monkeypatch):
    """``nan_accuracy(run)``: from now on the torch feature map reports a NaN test accuracy for
    model ``run`` of every chunk (as a diverged or broken evaluation would)."""
    from barrierkit.features import FeatureMap

    real = FeatureMap.accuracy

    def install(run: int) -> None:
        def with_nan(self, params, x, y):
            acc = real(self, params, x, y).clone()
            acc[run] = torch.nan
            return acc

        monkeypatch.setattr(FeatureMap, "accuracy", with_nan)

    return install


TINY_CERTIFY = ["certify", "--steps", "40", "--record-every", "20", "--n-verify", "40", "--n-train", "20", "--n-clean", "10",
                "--n-pool", "10", "--max-probes", "2", "--epsilon", "0.6", "--beta", "0.1", "--delta-hi", "0.01"]
"""A certify command line small enough for a test (seconds)."""


def no_work(monkeypatch) -> None:
    """Make any sampling or certification fail the test: the command must stop before the work."""
    import barrierkit.api  # noqa: F401  (imported first, so that no module binds the stand-in for good)
    import barrierkit.engine

    def boom(*a, **k):
        raise AssertionError("work started")

    monkeypatch.setattr(barrierkit.engine, "sample", boom)
    monkeypatch.setattr("barrierkit.api.certify", boom)
