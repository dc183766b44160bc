"""What a benchmark ran on: CPU, cores, GPU, versions and commit, stored beside every number."""
from __future__ import annotations

import os
import platform
import subprocess

import numpy as np
import torch

from barrierkit.environment import cpu_model


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=os.path.dirname(__file__), timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, cwd=os.path.dirname(__file__), timeout=5)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def describe() -> dict:
    info = {
        "cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
        "platform": platform.platform(), "commit": git_commit(), "gpu": None,
    }
    for pkg in ("numba", "triton", "scipy", "cvxpy", "clarabel", "osqp"):
        info[pkg] = package_version(pkg)
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def package_version(name: str):
    """An installed package's version (None when it is not installed); nothing is imported."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
