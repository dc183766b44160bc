"""The software and machine a result was computed with, for its metadata."""
from __future__ import annotations

import os
import platform
from typing import Optional

import numpy as np
import torch

from .version import __version__


def versions() -> dict:
    """Versions and the machine that define the simulated dynamics and the result. The CPU and
    torch's vector-kernel capability are recorded because float results (and so a replay) are
    bit-identical only on the same kind of CPU."""
    return {
        "barrierkit": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "numpy": np.__version__, "platform": platform.platform(), "cpu": cpu_model(),
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what the platform module says."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def physical_memory_bytes() -> Optional[int]:
    """The machine's physical memory, or None where the OS does not say."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None
