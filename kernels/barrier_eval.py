"""Fused barrier-trunk evaluation and scenario rows over all recorded states (one Triton kernel).

``barrier_eval`` evaluates the trunk psi of barrierkit.barrier (standardise ``(x - mean) / scale``,
then ``tanh(h @ W1.T + b1) @ W2.T + b2``) at every recorded state of N trajectories and, in the
same launch, forms the data of the scenario program (docs/METHOD.md §6, barrierkit.scenario):

* ``initial``    psi_i(0)                          [N, m]
* ``increments`` psi_i(j+1) - psi_i(j)             [N, K, m]
* ``terminal``   psi_i(K)                          [N, m]
* ``psi``        psi_i(j), only if ``return_psi``  [N, K+1, m]

and, when ``w`` is given, every row value at (w, gamma, c) and each trajectory's maximum:

* ``c1``      w.psi_i(0) - gamma                   [N]
* ``c3``      w.(psi_i(j+1) - psi_i(j)) - c        [N, K]
* ``c2``      gamma + 1 - w.psi_i(K) where unsafe[i], **-inf elsewhere** (and everywhere when
  ``unsafe`` is None), so that ``margins == max(c1, c3.max(1), c2)`` holds row by row
* ``margins`` max over the trajectory's rows       [N]  (= scenario.trajectory_margins(...)[0])

Kernel design. One program owns ``BLOCK_N`` trajectories and walks their states j = 0..K in
order, keeping psi_i(j-1) and the running maximum row value in registers, so increments and
margins need no second pass, no atomics and no cross-program reduction: one launch, and the
result of a trajectory does not depend on which trajectories share its program. Per state the
hidden layer is formed as k rank-1 updates of a ``[BLOCK_N, BLOCK_H]`` register tile (feature
column kk of the BLOCK_N rows times column kk of W1), tanh is applied elementwise, and the m
outputs are m row-reductions of that tile against the rows of W2.

Precision. Everything is computed in the features' dtype (fp32 or fp64); the parameters are cast
to it. No ``tl.dot``: the layers are tiny (k = 11, width = 32, m = 8), Hopper has no fp64 MMA path
in Triton that we rely on, and broadcast-multiply-sum works in every dtype with plain IEEE FMAs
(fp32: no TF32). Summation order differs from numpy/BLAS (and Triton contracts mul+add to FMA):
fp64 results agree with ``Barrier.psi`` to ~1e-15 relative to the magnitude of the terms.

tanh. ``tanh(x) = sign(x) (1 - e) / (1 + e)`` with ``e = exp(-2|x|)`` in (0, 1]: never overflows,
exactly +-1 once e underflows. Against numpy.tanh on a sweep of [-20, 20] plus log-spaced values
down to 1e-12 (numpy exp, i.e. the interpreter): absolute error <= 1 ulp(1) (fp64 2.2e-16, fp32
1.1e-7), relative error <= 2 ulp for |x| >= 0.5; near 0 the relative error grows (1 - e cancels)
but the absolute error stays <= 1 ulp(1), which is what matters because psi is a weighted sum of
tanh values. On a GPU fp64 ``tl.exp`` lowers to libdevice exp (<= 1 ulp) and fp32 ``tl.exp`` to
``ex2.approx`` (a few ulp): fp32 psi is within ~1e-6 relative of the float64 reference.

Soundness: the verifier decides in float64 (docs/METHOD.md §9). Use fp64 features for anything
that feeds the certificate; fp32 is for fitting/screening only.

This module imports only triton and torch (never barrierkit).
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from ._aot import ABSENT, compile_for, cubin_usage
from ._host import as_tensor, interpreting, next_pow2, require_launchable

DTYPES = (torch.float32, torch.float64)
MAX_WIDTH = 1024  # hidden width a program keeps as one register tile row
MAX_FEATURES = 256  # k and m are unrolled at compile time


# --------------------------------------------------------------------------- device code


@triton.jit
def _tanh(x):
    """tanh via e = exp(-2|x|): no overflow; absolute error <= ~1 ulp(1) (module docstring)."""
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0.0, -t, t)


@triton.jit
def _trunk(row_ptr, n_ok, mean_ptr, scale_ptr, w1_ptr, b1, w2_ptr, b2, offs_h, h_ok, offs_m, H,
           KF: tl.constexpr, M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr,
           BLOCK_M: tl.constexpr):
    """psi of one state of each of BLOCK_N trajectories: [BLOCK_N, BLOCK_M], 0 in padded columns.

    ``row_ptr`` [BLOCK_N] points at each state's k features."""
    acc = tl.zeros([BLOCK_N, BLOCK_H], dtype=b1.dtype) + b1[None, :]
    for kk in tl.static_range(KF):
        xc = tl.load(row_ptr + kk, mask=n_ok, other=0.0)
        z = (xc - tl.load(mean_ptr + kk)) / tl.load(scale_ptr + kk)
        w1c = tl.load(w1_ptr + offs_h * KF + kk, mask=h_ok, other=0.0)  # column kk of W1 [H, k]
        acc += z[:, None] * w1c[None, :]
    t = _tanh(acc)  # padded hidden columns: tanh(0) = 0, and W2 is 0 there
    psi = tl.zeros([BLOCK_N, BLOCK_M], dtype=b1.dtype) + b2[None, :]
    for mm in tl.static_range(M):
        w2r = tl.load(w2_ptr + mm * H + offs_h, mask=h_ok, other=0.0)  # row mm of W2 [m, H]
        col = tl.sum(t * w2r[None, :], axis=1)
        psi = tl.where(offs_m[None, :] == mm, psi + col[:, None], psi)
    return psi


@triton.jit
def _barrier_eval_kernel(
    x_ptr, mean_ptr, scale_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, w_ptr, lv_ptr, unsafe_ptr,
    psi_ptr, init_ptr, inc_ptr, term_ptr, c1_ptr, c3_ptr, c2_ptr, marg_ptr,
    N, K, H,
    KF: tl.constexpr, M: tl.constexpr, HAS_W: tl.constexpr, HAS_UNSAFE: tl.constexpr,
    STORE_PSI: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_M: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_n = (pid * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    n_ok = offs_n < N
    offs_h = tl.arange(0, BLOCK_H)
    h_ok = offs_h < H
    offs_m = tl.arange(0, BLOCK_M)
    m_ok = offs_m < M
    nm_ok = n_ok[:, None] & m_ok[None, :]
    b1 = tl.load(b1_ptr + offs_h, mask=h_ok, other=0.0)
    b2 = tl.load(b2_ptr + offs_m, mask=m_ok, other=0.0)
    K1 = K + 1
    x_rows = x_ptr + offs_n * K1 * KF  # state j of trajectory n at x_rows + j * KF
    out_nm = offs_n[:, None] * M + offs_m[None, :]  # [N, m] outputs
    if HAS_W:
        w = tl.load(w_ptr + offs_m, mask=m_ok, other=0.0)
        gamma = tl.load(lv_ptr)
        c = tl.load(lv_ptr + 1)

    # ---- state 0: C1
    psi = _trunk(x_rows, n_ok, mean_ptr, scale_ptr, w1_ptr, b1, w2_ptr, b2, offs_h, h_ok, offs_m, H,
                 KF, M, BLOCK_N, BLOCK_H, BLOCK_M)
    tl.store(init_ptr + out_nm, psi, mask=nm_ok)
    if STORE_PSI:
        tl.store(psi_ptr + offs_n[:, None] * K1 * M + offs_m[None, :], psi, mask=nm_ok)
    if HAS_W:
        best = tl.sum(psi * w[None, :], axis=1) - gamma
        tl.store(c1_ptr + offs_n, best, mask=n_ok)

    # ---- states 1..K: C3 on each increment, psi_i(j-1) carried in registers
    prev = psi
    for j in range(1, K1):
        psi = _trunk(x_rows + j * KF, n_ok, mean_ptr, scale_ptr, w1_ptr, b1, w2_ptr, b2, offs_h, h_ok, offs_m,
                     H, KF, M, BLOCK_N, BLOCK_H, BLOCK_M)
        inc = psi - prev
        tl.store(inc_ptr + offs_n[:, None] * K * M + (j - 1) * M + offs_m[None, :], inc, mask=nm_ok)
        if STORE_PSI:
            tl.store(psi_ptr + offs_n[:, None] * K1 * M + j * M + offs_m[None, :], psi, mask=nm_ok)
        if HAS_W:
            v = tl.sum(inc * w[None, :], axis=1) - c
            tl.store(c3_ptr + offs_n * K + (j - 1), v, mask=n_ok)
            best = tl.maximum(best, v)
        prev = psi

    # ---- state K: C2 where unsafe, margins
    tl.store(term_ptr + out_nm, prev, mask=nm_ok)
    if HAS_W:
        neg_inf = tl.full([BLOCK_N], float("-inf"), dtype=best.dtype)
        if HAS_UNSAFE:
            u = tl.load(unsafe_ptr + offs_n, mask=n_ok, other=0) != 0
            c2 = tl.where(u, (gamma + 1.0) - tl.sum(prev * w[None, :], axis=1), neg_inf)
            best = tl.maximum(best, c2)
        else:
            c2 = neg_inf
        tl.store(c2_ptr + offs_n, c2, mask=n_ok)
        tl.store(marg_ptr + offs_n, best, mask=n_ok)


# --------------------------------------------------------------------------- host side






def default_tuning(n: int, width: int, dtype: torch.dtype = torch.float64) -> dict:
    """BLOCK_N and num_warps (untimed; chosen from the sm_90 compile report, bench/notes_triton.md).

    The weights are loop-invariant and stay in registers, so the tile elements per thread set the
    register pressure: for k = 11, width 32, m = 8 on sm_90, fp64 with 4 per thread uses 208
    registers and no spill (8 per thread spills), fp32 with 8 per thread 193 and no spill. BLOCK_N
    = 16 for N >= 2048 (N = 4000: 250 programs, all resident at once), else 8."""
    block_n = 16 if n >= 2048 else 8
    return {"block_n": block_n, "num_warps": _warps(block_n, width, dtype)}


def _warps(block_n: int, width: int, dtype: torch.dtype) -> int:
    per_thread = 4 if dtype == torch.float64 else 8
    return max(1, min(8, block_n * next_pow2(width, lo=2) // (32 * per_thread)))


def _param(a, name: str, shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small parameter (mean, scale, W, b, w): any real floating array, cast to the features'
    dtype and copied to their device if it lives on the host."""
    t = as_tensor(a, name, array_like=True)
    if not t.is_floating_point():
        raise ValueError(f"{name}: must be a real floating-point array, got {t.dtype}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if t.device != device and t.device.type != "cpu":
        raise ValueError(f"{name}: must be on {device} like features (or on the host), got {t.device}")
    return t.to(device=device, dtype=dtype).contiguous()


def _real(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name}: must be a finite real number, got {value!r}")
    return float(value)


def barrier_eval(features, mean, scale, layers: Sequence, w=None, gamma: float = 0.0, c: float = 0.0,
                 unsafe=None, *, return_psi: bool = False, validate: bool = True,
                 block_n: Optional[int] = None, num_warps: Optional[int] = None) -> dict:
    """Trunk outputs and scenario rows of N trajectories in one fused launch, grid (cdiv(N, BLOCK_N),).

    features: [N, K+1, k] fp32 or fp64, contiguous, CUDA (CPU only under TRITON_INTERPRET=1); a
        torch tensor or a DLPack array (CuPy). K = 0 is allowed (e.g. the pool as [P, 1, k]):
        increments and c3 are then empty. The computation runs in this dtype.
    mean, scale: [k] standardisation; layers: ``[(W1 [H, k], b1 [H]), (W2 [m, H], b2 [m])]``
        exactly as barrierkit.barrier.Barrier.layers (x @ W.T + b, tanh after the first only).
        Parameters may be numpy/torch/DLPack, on the host or the features' device; they are cast
        to the features' dtype and copied to their device.
    w: [m] or None; gamma, c: the levels (finite reals, used only with w).
    unsafe: [N] bool on the features' device, or None (no C2 rows).
    return_psi: also return psi [N, K+1, m].
    validate: check values too (finite features and parameters, scale > 0): one reduction per
        tensor on the device and one host sync for all of them. Shapes, dtypes, devices and
        contiguity are always checked. Every violation raises ``ValueError`` naming the argument,
        before anything is launched.
    block_n, num_warps: tuning (defaults from :func:`default_tuning`); they change results only
        through the summation order of the row reductions (last ulp). For fixed tuning a
        trajectory's outputs do not depend on N or on the other trajectories.

    Returns a dict with ``initial`` [N, m], ``increments`` [N, K, m], ``terminal`` [N, m], ``psi``
    (if asked) and, when w is given, ``c1`` [N], ``c3`` [N, K], ``c2`` [N] (-inf where not unsafe)
    and ``margins`` [N] = max(c1, c3.max(1), c2), all in the features' dtype and device.
    """
    x = as_tensor(features, "features", array_like=True)
    if x.dim() != 3 or min(x.shape) < 1:
        raise ValueError(f"features: must be [N>=1, K+1>=1, k>=1], got shape {tuple(x.shape)}")
    if x.dtype not in DTYPES:
        raise ValueError(f"features: must be float32 or float64, got {x.dtype}")
    if not x.is_contiguous():
        raise ValueError("features: must be contiguous (call .contiguous() first)")
    device, dtype = x.device, x.dtype
    require_launchable(device, "features")
    N, K1, KF = (int(s) for s in x.shape)
    K = K1 - 1
    if KF > MAX_FEATURES:
        raise ValueError(f"features: at most {MAX_FEATURES} features (unrolled in the kernel), got {KF}")

    if not isinstance(layers, (list, tuple)) or len(layers) != 2:
        raise ValueError("layers: must be [(W1, b1), (W2, b2)] (one tanh hidden layer, linear output), "
                         f"got {len(layers) if isinstance(layers, (list, tuple)) else type(layers).__name__}")
    for i, layer in enumerate(layers):
        if not isinstance(layer, (list, tuple)) or len(layer) != 2:
            raise ValueError(f"layers[{i}]: must be a (W, b) pair")
    W1_raw = as_tensor(layers[0][0], "layers[0][0] (W1)", array_like=True)
    W2_raw = as_tensor(layers[1][0], "layers[1][0] (W2)", array_like=True)
    if W1_raw.dim() != 2 or W2_raw.dim() != 2:
        raise ValueError(f"layers: W1 and W2 must be 2-D, got {tuple(W1_raw.shape)}, {tuple(W2_raw.shape)}")
    H, M = int(W1_raw.shape[0]), int(W2_raw.shape[0])
    if H < 1 or M < 1 or H > MAX_WIDTH or M > MAX_FEATURES:
        raise ValueError(f"layers: need 1 <= width <= {MAX_WIDTH} and 1 <= m <= {MAX_FEATURES}, got {H}, {M}")
    mean_t = _param(mean, "mean", (KF,), dtype, device)
    scale_t = _param(scale, "scale", (KF,), dtype, device)
    W1 = _param(W1_raw, "layers[0][0] (W1)", (H, KF), dtype, device)
    b1 = _param(layers[0][1], "layers[0][1] (b1)", (H,), dtype, device)
    W2 = _param(W2_raw, "layers[1][0] (W2)", (M, H), dtype, device)
    b2 = _param(layers[1][1], "layers[1][1] (b2)", (M,), dtype, device)
    params = {"mean": mean_t, "scale": scale_t, "layers[0][0] (W1)": W1, "layers[0][1] (b1)": b1,
              "layers[1][0] (W2)": W2, "layers[1][1] (b2)": b2}
    has_w = w is not None
    lv = w_t = None
    if has_w:
        w_t = _param(w, "w", (M,), dtype, device)
        params["w"] = w_t
        lv = torch.tensor([_real(gamma, "gamma"), _real(c, "c")], dtype=dtype, device=device)
    u8 = None
    if unsafe is not None:
        u = as_tensor(unsafe, "unsafe", array_like=True)
        if u.dtype != torch.bool or tuple(u.shape) != (N,):
            raise ValueError(f"unsafe: must be a bool tensor of shape ({N},), got {u.dtype} {tuple(u.shape)}")
        if u.device != device:
            raise ValueError(f"unsafe: must be on {device} like features, got {u.device}")
        u8 = u.contiguous().view(torch.uint8)

    tune = default_tuning(N, H, dtype)
    block_n = int(block_n or tune["block_n"])
    if block_n < 1 or block_n > 256 or block_n & (block_n - 1):
        raise ValueError(f"block_n: must be a power of 2 in [1, 256], got {block_n}")
    num_warps = int(num_warps or _warps(block_n, H, dtype))
    if num_warps not in (1, 2, 4, 8, 16):
        raise ValueError(f"num_warps: must be 1, 2, 4, 8 or 16, got {num_warps}")

    if validate:  # every flag reduced on the device, one host sync for all of them
        checks = [("features", x)] + list(params.items())
        flags = torch.stack([torch.isfinite(t).all() for _, t in checks] + [(scale_t > 0).all()]).cpu().tolist()
        for (name, _), good in zip(checks, flags):
            if not good:
                suffix = "" if name == "features" else f" (after the cast to {dtype})"
                raise ValueError(f"{name}: contains NaN or infinite values{suffix}")
        if not flags[-1]:
            raise ValueError("scale: must be > 0")

    def empty(*shape):
        return torch.empty(shape, dtype=dtype, device=device)

    out = {"initial": empty(N, M), "increments": empty(N, K, M), "terminal": empty(N, M)}
    if return_psi:
        out["psi"] = empty(N, K1, M)
    if has_w:
        out.update(c1=empty(N), c3=empty(N, K), c2=empty(N), margins=empty(N))
    grid = (triton.cdiv(N, block_n),)
    _barrier_eval_kernel[grid](
        x, mean_t, scale_t, W1, b1, W2, b2, w_t, lv, u8,
        out.get("psi"), out["initial"], out["increments"], out["terminal"],
        out.get("c1"), out.get("c3"), out.get("c2"), out.get("margins"),
        N, K, H,
        KF=KF, M=M, HAS_W=has_w, HAS_UNSAFE=u8 is not None and has_w, STORE_PSI=return_psi,
        BLOCK_N=block_n, BLOCK_H=next_pow2(H, lo=2), BLOCK_M=next_pow2(M, lo=2),
        num_warps=num_warps,
    )
    return out


def compile_report(*, dtype: str = "fp64", k: int = 11, width: int = 32, m: int = 8, has_w: bool = True,
                   has_unsafe: bool = True, return_psi: bool = False, block_n: int = 16,
                   num_warps: Optional[int] = None, arch: int = 90) -> dict:
    """Compile the kernel for ``sm_<arch>`` without a GPU and report its resources.

    ``triton.compile`` with an explicit ``GPUTarget`` and the ptxas/cuobjdump bundled with Triton's
    NVIDIA backend; needs compiled mode (TRITON_INTERPRET unset or 0). Reports registers per thread,
    stack (spill) bytes, shared memory and SASS counts (DFMA/FFMA fp64/fp32 FMAs, MUFU special
    functions, LDL/STL local memory, LDG/STG global memory).
    """
    if dtype not in ("fp32", "fp64"):
        raise ValueError(f"dtype: must be 'fp32' or 'fp64', got {dtype!r}")
    num_warps = num_warps or _warps(block_n, width, torch.float64 if dtype == "fp64" else torch.float32)
    p, absent = f"*{dtype}", ABSENT
    ptrs = {
        "x_ptr": p, "mean_ptr": p, "scale_ptr": p, "w1_ptr": p, "b1_ptr": p, "w2_ptr": p, "b2_ptr": p,
        "w_ptr": p if has_w else absent, "lv_ptr": p if has_w else absent,
        "unsafe_ptr": "*u8" if has_w and has_unsafe else absent,
        "psi_ptr": p if return_psi else absent, "init_ptr": p, "inc_ptr": p, "term_ptr": p,
        "c1_ptr": p if has_w else absent, "c3_ptr": p if has_w else absent, "c2_ptr": p if has_w else absent,
        "marg_ptr": p if has_w else absent,
    }
    meta = dict(KF=k, M=m, HAS_W=has_w, HAS_UNSAFE=has_w and has_unsafe, STORE_PSI=return_psi,
                BLOCK_N=block_n, BLOCK_H=next_pow2(width, lo=2), BLOCK_M=next_pow2(m, lo=2))
    kernel = compile_for(_barrier_eval_kernel, {**ptrs, "N": "i32", "K": "i32", "H": "i32"}, meta, arch, num_warps=num_warps)
    report = {"arch": f"sm_{arch}", "dtype": dtype, "k": k, "width": width, "m": m, "block_n": block_n,
              "num_warps": num_warps, "has_w": has_w, "return_psi": return_psi,
              "shared_bytes": int(kernel.metadata.shared)}
    report.update(cubin_usage(kernel, ("DFMA", "FFMA", "MUFU", "LDL", "STL", "LDG", "STG", "CALL")))
    return report


__all__ = ["barrier_eval", "compile_report", "default_tuning", "interpreting", "DTYPES", "MAX_WIDTH", "MAX_FEATURES"]
