"""Ahead-of-time compile inspection shared by the kernels' ``compile_report`` (no GPU needed)."""
from __future__ import annotations

import os
import subprocess
import tempfile
from typing import Any, Callable, Dict, Sequence

import triton

from ._host import interpreting

ABSENT = "constexpr"
"""The type of an optional pointer argument that is left out (passed as None, a constexpr)."""


def compile_for(kernel_fn: Callable, args: Dict[str, str], meta: Dict[str, Any], arch: int, **options: Any):
    """``triton.compile`` of ``kernel_fn`` for ``sm_<arch>`` without a GPU.

    ``args`` maps each runtime argument, in the kernel's order, to its Triton type (:data:`ABSENT`
    for a pointer left out); ``meta`` the constexpr parameters that follow them to their values.
    ``options`` go to the compiler (num_warps, num_stages). Needs compiled mode (TRITON_INTERPRET
    unset or 0) and the ptxas bundled with Triton's NVIDIA backend.
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if interpreting():
        raise RuntimeError("compile_report: needs compiled Triton (unset TRITON_INTERPRET)")
    signature = {**args, **{name: "constexpr" for name in meta}}
    names = list(signature)
    constants = {**{name: None for name, kind in args.items() if kind == ABSENT}, **meta}
    source = ASTSource(fn=kernel_fn, signature=signature,
                       constexprs={(names.index(name),): value for name, value in constants.items()})
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)


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
