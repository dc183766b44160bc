"""Host-side checks the kernels' launchers share: interpreter mode, DLPack wrapping, tensor checks,
and the stacked-MLP parameter layout. Imports only torch (never barrierkit)."""
from __future__ import annotations

import os
from typing import List, Sequence, Tuple

import torch


def interpreting() -> bool:
    """Whether Triton kernels run in the interpreter (TRITON_INTERPRET=1, set before importing triton)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def next_pow2(n: int, lo: int = 16) -> int:
    """The smallest power of two >= max(n, lo) (Triton block sizes are powers of two)."""
    return max(lo, 1 << (max(1, int(n)) - 1).bit_length())


def as_tensor(a, name: str, array_like: bool = False) -> torch.Tensor:
    """A torch view of ``a``; CuPy (or any DLPack) arrays are wrapped without a copy. With
    ``array_like`` (inputs that are only read) anything ``torch.as_tensor`` takes is accepted too,
    a read-only numpy array included (copied)."""
    if isinstance(a, torch.Tensor):
        return a
    if hasattr(a, "__dlpack__"):
        try:
            return torch.from_dlpack(a)
        except Exception as exc:  # noqa: BLE001 (e.g. a read-only numpy array)
            if not array_like:
                raise ValueError(f"{name}: cannot be wrapped as a tensor ({exc})") from exc
    if array_like:
        try:
            return torch.as_tensor(a)
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"{name}: expected a tensor, a DLPack array or an array-like, got {type(a).__name__}") from exc
    raise ValueError(f"{name}: expected a torch tensor or a DLPack array (e.g. CuPy), got {type(a).__name__}")


def check_tensor(t: torch.Tensor, name: str, dtype: torch.dtype, shape: Sequence[int], device: torch.device) -> None:
    """Raise ValueError naming ``name`` unless t has this dtype, shape and device and is contiguous."""
    if t.dtype != dtype:
        raise ValueError(f"{name}: must be {dtype}, got {t.dtype}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name}: must be on {device} like params[0], got {t.device}")
    if not t.is_contiguous():
        raise ValueError(f"{name}: must be contiguous")


def require_launchable(device: torch.device, name: str) -> None:
    """Compiled kernels need CUDA tensors; CPU tensors only work under the interpreter."""
    if device.type != "cuda" and not interpreting():
        raise ValueError(f"{name}: the Triton kernel needs CUDA tensors (got {device}); "
                         "on the CPU set TRITON_INTERPRET=1 before importing triton")


def stacked_mlp(params: Sequence, dtypes: Tuple[torch.dtype, ...] = (torch.float32,)) -> Tuple[List[torch.Tensor], List[int]]:
    """Wrap and check ``[W1, b1, W2, b2]`` or ``[W1, b1, W2, b2, W3, b3]`` (``W [N, out, in]``,
    ``b [N, out]``, one dtype from ``dtypes``, contiguous, one device).

    Returns the tensors and the widths ``[N, D, H1, (H2,) C]``."""
    params = [as_tensor(p, f"params[{k}]") for k, p in enumerate(params)]
    if len(params) not in (4, 6):
        raise ValueError(f"params: expected [W1, b1, W2, b2] or [W1, b1, W2, b2, W3, b3], got {len(params)} tensors")
    device = params[0].device
    require_launchable(device, "params")
    W1 = params[0]
    if W1.dim() != 3:
        raise ValueError(f"params[0] (W1): must be [N, H1, D], got shape {tuple(W1.shape)}")
    if W1.dtype not in dtypes:
        allowed = " or ".join(map(str, dtypes))
        raise ValueError(f"params[0] (W1): must be {allowed}, got {W1.dtype}")
    N, H1, D = (int(s) for s in W1.shape)
    widths = [D, H1]
    for layer in range(1, len(params) // 2):
        w = params[2 * layer]
        widths.append(int(w.shape[1]) if w.dim() == 3 else -1)
    for layer in range(len(params) // 2):
        check_tensor(params[2 * layer], f"params[{2 * layer}] (W{layer + 1})", W1.dtype,
                     (N, widths[layer + 1], widths[layer]), device)
        check_tensor(params[2 * layer + 1], f"params[{2 * layer + 1}] (b{layer + 1})", W1.dtype,
                     (N, widths[layer + 1]), device)
    if N < 1 or min(widths) < 1:
        raise ValueError(f"params: every dimension must be >= 1, got N={N}, widths={widths}")
    return params, [N, *widths]


__all__ = ["interpreting", "next_pow2", "as_tensor", "check_tensor", "require_launchable", "stacked_mlp"]
