"""The barrier and certification tests again, under other vectorised CPU kernels.

torch picks its CPU kernels by the host's instruction set, so float rounding differs between CPU
kinds (Intel and AMD, AVX2 and AVX-512). ``ATEN_CPU_CAPABILITY`` forces a kind on this host: the
tests marked ``portability`` run once more under ``default`` (no vector kernels) and ``avx2`` in a
fresh interpreter each (a kind that is the host's own is not run twice: the suite itself ran it).
A result that holds on one kind and not another is a bug in the code, not in the test.
"""
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_portability_marked_tests_pass_under_another_cpu_capability(capability):
    if torch.backends.cpu.get_cpu_capability().lower() == capability:
        pytest.skip(f"{capability} is this host's own CPU capability: the suite ran these tests under it already")
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "portability", "tests"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    tail = (done.stdout + done.stderr)[-6000:]
    assert done.returncode == 0, f"ATEN_CPU_CAPABILITY={capability}:\n{tail}"
    assert " passed" in done.stdout and "no tests ran" not in done.stdout, tail
