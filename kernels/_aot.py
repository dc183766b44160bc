"""Ahead-of-time compile inspection shared by the kernels' ``compile_report`` (no GPU needed)."""
from __future__ import annotations

import os
import subprocess
import tempfile
from typing import Dict, Sequence

import triton


def cubin_usage(kernel, opcodes: Sequence[str]) -> Dict[str, object]:
    """Registers, stack bytes and SASS opcode counts of a compiled kernel, via Triton's cuobjdump.

    Empty when the bundled cuobjdump is absent.
    """
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as fh:
            fh.write(kernel.asm["cubin"])
        usage = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True, text=True).stdout
        sass = subprocess.run([tool, "--dump-sass", path], capture_output=True, text=True).stdout
    report: Dict[str, object] = {}
    for field in ("REG", "STACK"):
        for token in usage.split():
            if token.startswith(field + ":"):
                report[field.lower()] = int(token.split(":")[1])
    report["sass"] = {op: sass.count(op) for op in opcodes}
    return report
