"""The recorded features phi of N stacked MLPs in one launch (one Triton kernel), in float64.

``mlp_features(params, x, y, projection, theta0)`` returns ``[N, k + 3]`` float64 rows

    [ projection @ theta  (k values),  mean cross-entropy on (x, y),  accuracy on (x, y),
      ||theta - theta0||_2 ]

the feature map of barrierkit.features (docs/METHOD.md §1) when ``x, y`` is the probe set, and the
terminal test accuracy (column k + 1, with k = 0) when ``x, y`` is the test set. theta is the
concatenation of ``[W1, b1, W2, b2, (W3, b3)]`` in ``nn.Linear`` order; ``theta0`` None means 0.

Kernel design. One program per model (grid (N,)), so a model's features never depend on N, on
its position or on the other models: chunking cannot change a bit.

1. theta pass: the program walks its parameter tensors in theta order, ``BLOCK_J`` entries at a
   time, widening each to fp64 (exact), and accumulates ``P[:, j] * theta_j`` into a
   ``[BLOCK_K, BLOCK_J]`` tile and ``(theta_j - theta0_j)**2`` into a ``[BLOCK_J]`` vector; both
   are reduced once at the end. P (``[k, d]`` fp64, shared by all programs) is served from L2.
2. evaluation pass: ``BLOCK_P`` points at a time, the first layer streams D in ``BLOCK_D``
   columns (``tl.dot`` in fp64: DMMA on sm_80+, IEEE fp64 products and sums), the small layers
   are loaded once into registers, ReLU between layers, then a max-shifted log-sum-exp, the
   label's logit and the first index of the maximum (torch's argmax) per point.

Precision. All arithmetic is fp64 (fp32 parameters are widened exactly; no TF32, no fastmath;
Triton contracts mul+add to FMA, which is exact-rounded); ``tl.exp``/``tl.log`` lower to libdevice
(<= 1 ulp) and the fp64 ``tl.sqrt`` is ``sqrt.rn.f64`` (correctly rounded; checked in the PTX). Only the summation order differs from the torch
reference (barrierkit.features.FeatureMap): projection and drift agree to ~1e-15 relative to the
sum of the magnitudes, the loss to ~1e-15 relative. The accuracy is the count of hits divided by
the number of points, once, correctly rounded, exactly as barrierkit.models.loss_and_accuracy
computes it on every device, so it is identical unless two logits tie to within rounding.

Shared memory. The fp64 dot operands are staged through shared memory, which grows with the
widths (784-64-10: 40 KB; 784-128-128-10: 184 KB; (200, 100) hidden: 344 KB, more than an H100
has). A shape the device cannot hold raises Triton's ``OutOfResources`` at its first launch;
``backends.triton_gpu.FusedFeatureMap`` tries one launch when it is built and otherwise uses the
torch twin for the whole run.

This module imports only triton and torch (never barrierkit).
"""
from __future__ import annotations

import re
from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from ._aot import ABSENT, compile_for, cubin_usage
from ._host import as_tensor, check_tensor, interpreting, next_pow2, stacked_mlp

MAX_WIDTH = 256  # hidden and class widths a program keeps as register tiles
MAX_PROJECTION = 64  # projection rows kept as one register tile
PARAM_DTYPES = (torch.float32, torch.float64)


# --------------------------------------------------------------------------- device code


@triton.jit
def _theta_segment(seg_ptr, L, col0, pid, t0_ptr, proj_ptr, d, acc_p, acc_d, offs_k, k_ok,
                   HAS_PROJ: tl.constexpr, HAS_T0: tl.constexpr, BLOCK_J: tl.constexpr):
    """Accumulate one parameter tensor (L entries at theta columns col0..col0+L-1) of model pid."""
    offs_j = tl.arange(0, BLOCK_J)
    for j0 in range(0, L, BLOCK_J):
        j = j0 + offs_j
        ok = j < L
        th = tl.load(seg_ptr + j, mask=ok, other=0.0).to(tl.float64)
        if HAS_T0:
            diff = th - tl.load(t0_ptr + pid * d + col0 + j, mask=ok, other=0.0)
        else:
            diff = th
        acc_d += diff * diff
        if HAS_PROJ:
            pk = tl.load(proj_ptr + offs_k[:, None] * d + (col0 + j)[None, :], mask=k_ok[:, None] & ok[None, :], other=0.0)
            acc_p += pk * th[None, :]
    return acc_p, acc_d


@triton.jit
def _layer_t(w_ptr, b_ptr, n_in, n_out, BLOCK_IN: tl.constexpr, BLOCK_OUT: tl.constexpr):
    """W.T as an fp64 [BLOCK_IN, BLOCK_OUT] tile and b as [BLOCK_OUT], zero-padded."""
    offs_in = tl.arange(0, BLOCK_IN)
    offs_out = tl.arange(0, BLOCK_OUT)
    wt = tl.load(w_ptr + offs_out[None, :] * n_in + offs_in[:, None],
                 mask=(offs_in[:, None] < n_in) & (offs_out[None, :] < n_out), other=0.0).to(tl.float64)
    b = tl.load(b_ptr + offs_out, mask=offs_out < n_out, other=0.0).to(tl.float64)
    return wt, b


@triton.jit
def _mlp_features_kernel(
    w1_ptr, b1_ptr, w2_ptr, b2_ptr, w3_ptr, b3_ptr, x_ptr, y_ptr, proj_ptr, t0_ptr, out_ptr,
    P, D, H1, H2, C, KP,
    TWO_HIDDEN: tl.constexpr, HAS_PROJ: tl.constexpr, HAS_T0: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H1: tl.constexpr, BLOCK_H2: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_J: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    if TWO_HIDDEN:
        n2 = H2
        L2 = H2 * H1
        LOUT = C * H2
        d = H1 * D + H1 + L2 + H2 + LOUT + C
    else:
        n2 = C
        L2 = C * H1
        LOUT = 0
        d = H1 * D + H1 + L2 + C
    w1_row = w1_ptr + pid * (H1 * D)
    b1_row = b1_ptr + pid * H1
    w2_row = w2_ptr + pid * L2
    b2_row = b2_ptr + pid * n2

    # ---- 1. theta pass: projection and drift
    offs_k = tl.arange(0, BLOCK_K)
    k_ok = offs_k < KP
    acc_p = tl.zeros([BLOCK_K, BLOCK_J], dtype=tl.float64)
    acc_d = tl.zeros([BLOCK_J], dtype=tl.float64)
    col = 0
    acc_p, acc_d = _theta_segment(w1_row, H1 * D, col, pid, t0_ptr, proj_ptr, d, acc_p, acc_d, offs_k, k_ok,
                                  HAS_PROJ, HAS_T0, BLOCK_J)
    col += H1 * D
    acc_p, acc_d = _theta_segment(b1_row, H1, col, pid, t0_ptr, proj_ptr, d, acc_p, acc_d, offs_k, k_ok,
                                  HAS_PROJ, HAS_T0, BLOCK_J)
    col += H1
    acc_p, acc_d = _theta_segment(w2_row, L2, col, pid, t0_ptr, proj_ptr, d, acc_p, acc_d, offs_k, k_ok,
                                  HAS_PROJ, HAS_T0, BLOCK_J)
    col += L2
    acc_p, acc_d = _theta_segment(b2_row, n2, col, pid, t0_ptr, proj_ptr, d, acc_p, acc_d, offs_k, k_ok,
                                  HAS_PROJ, HAS_T0, BLOCK_J)
    col += n2
    if TWO_HIDDEN:
        w3_row = w3_ptr + pid * LOUT
        b3_row = b3_ptr + pid * C
        acc_p, acc_d = _theta_segment(w3_row, LOUT, col, pid, t0_ptr, proj_ptr, d, acc_p, acc_d, offs_k, k_ok,
                                      HAS_PROJ, HAS_T0, BLOCK_J)
        col += LOUT
        acc_p, acc_d = _theta_segment(b3_row, C, col, pid, t0_ptr, proj_ptr, d, acc_p, acc_d, offs_k, k_ok,
                                      HAS_PROJ, HAS_T0, BLOCK_J)

    # ---- 2. evaluation pass: mean cross-entropy and accuracy on (x, y)
    offs_p = tl.arange(0, BLOCK_P)
    offs_d = tl.arange(0, BLOCK_D)
    offs_h1 = tl.arange(0, BLOCK_H1)
    offs_c = tl.arange(0, BLOCK_C)
    h1_ok = offs_h1 < H1
    c_ok = offs_c < C
    b1 = tl.load(b1_row + offs_h1, mask=h1_ok, other=0.0).to(tl.float64)
    if TWO_HIDDEN:
        w2t, b2 = _layer_t(w2_row, b2_row, H1, H2, BLOCK_H1, BLOCK_H2)
        w3t, b3 = _layer_t(w3_row, b3_row, H2, C, BLOCK_H2, BLOCK_C)
    else:
        w2t, b2 = _layer_t(w2_row, b2_row, H1, C, BLOCK_H1, BLOCK_C)
    loss_acc = tl.zeros([BLOCK_P], dtype=tl.float64)
    hit_acc = tl.zeros([BLOCK_P], dtype=tl.float64)
    for p0 in range(0, P, BLOCK_P):
        rows = p0 + offs_p
        p_ok = rows < P
        z1 = tl.zeros([BLOCK_P, BLOCK_H1], dtype=tl.float64)
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + offs_d
            d_ok = cols < D
            xt = tl.load(x_ptr + rows[:, None].to(tl.int64) * D + cols[None, :],
                         mask=p_ok[:, None] & d_ok[None, :], other=0.0)
            w1t = tl.load(w1_row + offs_h1[None, :] * D + cols[:, None],
                          mask=d_ok[:, None] & h1_ok[None, :], other=0.0).to(tl.float64)
            z1 = tl.dot(xt, w1t, z1, out_dtype=tl.float64)
        h = tl.maximum(z1 + b1[None, :], 0.0)
        if TWO_HIDDEN:
            h = tl.maximum(tl.dot(h, w2t, out_dtype=tl.float64) + b2[None, :], 0.0)
            logits = tl.dot(h, w3t, out_dtype=tl.float64) + b3[None, :]
        else:
            logits = tl.dot(h, w2t, out_dtype=tl.float64) + b2[None, :]
        z = tl.where(c_ok[None, :], logits, float("-inf"))
        m = tl.max(z, axis=1)
        lse = m + tl.log(tl.sum(tl.exp(z - m[:, None]), axis=1))
        label = tl.load(y_ptr + rows, mask=p_ok, other=0)
        z_label = tl.sum(tl.where(offs_c[None, :] == label[:, None], z, 0.0), axis=1)
        loss_acc += tl.where(p_ok, lse - z_label, 0.0)
        pred = tl.min(tl.where(z == m[:, None], offs_c[None, :], BLOCK_C), axis=1)  # first maximum
        hit_acc += tl.where(p_ok & (pred == label), 1.0, 0.0)

    # ---- outputs: [proj (KP), loss, accuracy, drift]
    out_row = out_ptr + pid * (KP + 3)
    if HAS_PROJ:
        tl.store(out_row + offs_k, tl.sum(acc_p, axis=1), mask=k_ok)
    tl.store(out_row + KP, tl.sum(loss_acc, axis=0) / P)
    tl.store(out_row + KP + 1, tl.sum(hit_acc, axis=0) / P)
    tl.store(out_row + KP + 2, tl.sqrt(tl.sum(acc_d, axis=0)))


# --------------------------------------------------------------------------- host side


def unsupported_reason(hidden: Sequence[int], n_classes: int, projection_dim: int) -> Optional[str]:
    """Why the kernel cannot evaluate this model family (None when it can)."""
    if not 1 <= len(hidden) <= 2:
        return f"params: the feature kernel supports 1 or 2 hidden layers, got {len(hidden)}"
    if max(*hidden, n_classes) > MAX_WIDTH:
        return f"params: hidden and class widths must be <= {MAX_WIDTH} (register tiles), got {[*hidden, n_classes]}"
    if projection_dim > MAX_PROJECTION:
        return f"projection: at most {MAX_PROJECTION} rows (one register tile), got {projection_dim}"
    return None


def default_tuning(hidden: Sequence[int], n_classes: int) -> dict:
    """BLOCK_P, BLOCK_D, BLOCK_J and num_warps (untimed; from the sm_90 compile report,
    bench/notes_triton.md). tl.dot needs every block dimension >= 16; the [BLOCK_P, H] fp64 tiles
    set the register pressure: 784-64-10 with 32 points and 8 warps uses 226 registers and no
    spill (4 warps spill), so wider models take 16 points at a time (784-128-128-10: 136 stack
    bytes with 8 warps, 456 with 4)."""
    widest = max(next_pow2(w) for w in (*hidden, n_classes))
    return {"block_p": 32 if widest <= 64 else 16, "block_d": 32, "block_j": 256, "num_warps": 8}


def mlp_features(params: Sequence, x, y, projection=None, theta0=None, *, validate: bool = True,
                 block_p: Optional[int] = None, block_d: Optional[int] = None, num_warps: Optional[int] = None) -> torch.Tensor:
    """phi of N stacked MLPs, ``[N, k + 3]`` float64: one fused launch, grid (N,).

    params: ``[W1, b1, W2, b2]`` or ``[W1, b1, W2, b2, W3, b3]`` (``W [N, out, in]``, ``b [N, out]``),
        all fp32 or all fp64, contiguous, on one device (CUDA; CPU only under TRITON_INTERPRET=1).
    x: fp64 ``[P, D]`` evaluation points (the probe set); y: integer labels ``[P]`` in ``[0, C)``.
    projection: fp64 ``[k, d]`` (d = the parameter count) or None (k = 0).
    theta0: fp64 ``[N, d]`` reference parameters for the drift, or None (drift = ||theta||_2).
    validate: check values too (finite parameters, points, projection and theta0, labels in range):
        one device reduction per tensor and one host sync. Shapes, dtypes, devices and contiguity
        are always checked. Every violation raises ``ValueError`` naming the argument, before
        anything is launched.
    block_p, block_d, num_warps: tuning (defaults from :func:`default_tuning`); they change results
        only through the fp64 summation order. All tensor arguments may be DLPack arrays (CuPy).
    """
    params, dims = stacked_mlp(params, PARAM_DTYPES)
    N, widths = dims[0], dims[1:]
    D, hidden, C = widths[0], widths[1:-1], widths[-1]
    device = params[0].device
    d = sum(int(p[0].numel()) for p in params)
    if projection is not None:
        projection = as_tensor(projection, "projection")
        if projection.dim() != 2:
            raise ValueError(f"projection: must be [k, d={d}], got shape {tuple(projection.shape)}")
    k = 0 if projection is None else int(projection.shape[0])
    reason = unsupported_reason(hidden, C, k)
    if reason:
        raise ValueError(reason)
    x = as_tensor(x, "x")
    if x.dim() != 2 or x.shape[1] != D or x.shape[0] < 1:
        raise ValueError(f"x: must be [P>=1, D={D}], got shape {tuple(x.shape)}")
    P = int(x.shape[0])
    check_tensor(x, "x", torch.float64, (P, D), device)
    y = as_tensor(y, "y")
    if y.dtype.is_floating_point or y.dtype == torch.bool or tuple(y.shape) != (P,):
        raise ValueError(f"y: must be integer labels of shape ({P},), got {y.dtype} {tuple(y.shape)}")
    if y.device != device:
        raise ValueError(f"y: must be on {device} like params[0], got {y.device}")
    y32 = y.to(torch.int32).contiguous()
    if projection is not None:
        check_tensor(projection, "projection", torch.float64, (k, d), device)
        if k * d >= 2**31:
            raise ValueError(f"projection: k * d = {k * d} must be < 2**31 (32-bit offsets)")
    if theta0 is not None:
        theta0 = as_tensor(theta0, "theta0")
        check_tensor(theta0, "theta0", torch.float64, (N, d), device)
    if P * D >= 2**31 or max(int(p[0].numel()) for p in params) >= 2**31:
        raise ValueError("x, params: every per-model tensor and x must have < 2**31 entries (32-bit offsets)")

    tune = default_tuning(hidden, C)
    block_p = int(block_p or tune["block_p"])
    block_d = int(block_d or tune["block_d"])
    num_warps = int(num_warps or tune["num_warps"])
    for name, value, lo, hi in (("block_p", block_p, 16, 128), ("block_d", block_d, 16, 128)):
        if value < lo or value > hi or value & (value - 1):
            raise ValueError(f"{name}: must be a power of 2 in [{lo}, {hi}], got {value}")
    if num_warps not in (1, 2, 4, 8, 16):
        raise ValueError(f"num_warps: must be 1, 2, 4, 8 or 16, got {num_warps}")

    if validate:  # one flag per tensor, reduced on the device, one host sync
        checks = [(f"params[{i}]", torch.isfinite(p).all()) for i, p in enumerate(params)]
        checks.append(("x", torch.isfinite(x).all()))
        checks.append(("y", ((y32 >= 0) & (y32 < C)).all()))
        if projection is not None:
            checks.append(("projection", torch.isfinite(projection).all()))
        if theta0 is not None:
            checks.append(("theta0", torch.isfinite(theta0).all()))
        flags = torch.stack([f for _, f in checks]).cpu().tolist()
        for (name, _), good in zip(checks, flags):
            if not good:
                what = f"labels must lie in [0, {C})" if name == "y" else "contains NaN or infinite values"
                raise ValueError(f"{name}: {what}")

    two = len(params) == 6
    H1 = widths[1]
    H2 = widths[2] if two else 1
    out = torch.empty((N, k + 3), dtype=torch.float64, device=device)
    _mlp_features_kernel[(N,)](
        params[0], params[1], params[2], params[3], params[4] if two else None, params[5] if two else None,
        x, y32, projection, theta0, out,
        P, D, H1, H2, C, k,
        TWO_HIDDEN=two, HAS_PROJ=k > 0, HAS_T0=theta0 is not None,
        BLOCK_P=block_p, BLOCK_D=block_d, BLOCK_H1=next_pow2(H1), BLOCK_H2=next_pow2(H2), BLOCK_C=next_pow2(C),
        BLOCK_K=next_pow2(max(k, 1), lo=1), BLOCK_J=tune["block_j"],
        num_warps=num_warps,
    )
    return out


def compile_report(*, hidden: Sequence[int] = (64,), n_classes: int = 10, k: int = 8, has_theta0: bool = True,
                   param_dtype: str = "fp32", block_p: Optional[int] = None, block_d: int = 32,
                   num_warps: Optional[int] = None, arch: int = 90) -> dict:
    """Compile the kernel for ``sm_<arch>`` without a GPU and report its resources (see
    barrier_eval.compile_report): registers, stack (spill) bytes, shared memory and SASS counts
    (DMMA fp64 tensor-core MMAs, DFMA fp64 FMAs, MUFU, LDL/STL local memory, LDG/STG)."""
    if param_dtype not in ("fp32", "fp64"):
        raise ValueError(f"param_dtype: must be 'fp32' or 'fp64', got {param_dtype!r}")
    two = len(hidden) == 2
    tune = default_tuning(hidden, n_classes)
    block_p = block_p or tune["block_p"]
    num_warps = num_warps or tune["num_warps"]
    p, absent = f"*{param_dtype}", ABSENT
    args = {"w1_ptr": p, "b1_ptr": p, "w2_ptr": p, "b2_ptr": p, "w3_ptr": p if two else absent, "b3_ptr": p if two else absent,
            "x_ptr": "*fp64", "y_ptr": "*i32", "proj_ptr": "*fp64" if k else absent,
            "t0_ptr": "*fp64" if has_theta0 else absent, "out_ptr": "*fp64",
            "P": "i32", "D": "i32", "H1": "i32", "H2": "i32", "C": "i32", "KP": "i32"}
    meta = dict(TWO_HIDDEN=two, HAS_PROJ=k > 0, HAS_T0=has_theta0, BLOCK_P=block_p, BLOCK_D=block_d,
                BLOCK_H1=next_pow2(hidden[0]), BLOCK_H2=next_pow2(hidden[1] if two else 1), BLOCK_C=next_pow2(n_classes),
                BLOCK_K=next_pow2(max(k, 1), lo=1), BLOCK_J=tune["block_j"])
    kernel = compile_for(_mlp_features_kernel, args, meta, arch, num_warps=num_warps)
    report = {"arch": f"sm_{arch}", "hidden": list(hidden), "n_classes": n_classes, "k": k, "param_dtype": param_dtype,
              "block_p": block_p, "block_d": block_d, "num_warps": num_warps, "shared_bytes": int(kernel.metadata.shared)}
    report.update(cubin_usage(kernel, ("DMMA", "DFMA", "MUFU", "LDL", "STL", "LDG", "STG", "CALL")))
    report["ptx_sqrt"] = sorted(set(re.findall(r"\bsqrt\.[a-z0-9.]+", kernel.asm["ptx"])))  # the drift's rounding
    return report


__all__ = ["mlp_features", "compile_report", "default_tuning", "unsupported_reason", "interpreting", "MAX_WIDTH", "MAX_PROJECTION", "PARAM_DTYPES"]
