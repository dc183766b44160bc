"""Fused SGD steps of N small MLPs with the poison generated on the fly (one Triton kernel).

One program advances one trajectory by S minibatch-SGD steps, in place. The model is
D -> H1 [-> H2] -> C with ReLU (one or two hidden layers), fp32 parameters stacked over the
leading trajectory axis in ``nn.Linear`` layout: ``W1 [N, H1, D]``, ``b1 [N, H1]``, ...

Per step, inside the program:

1. the batch rows ``idx[n, s, :]`` (int32, computed on the host from the torch Schedule) and
   their labels are loaded;
2. the poisoned rows are built tile by tile (``BLOCK_D`` input columns at a time) from the
   shared clean data ``x`` (an fp32 copy of the float64 training set) and Philox4x32-10
   (``tl.philox``; same key/counter layout as barrierkit.rng, checked by the tests):

   - subset: point i is poisoned iff ``Philox(p; i, 0, SUBSET, 0)[0] < thr``, with the exact
     integer threshold ``thr = ceil(rho * 2**32 - 1/2)`` (equivalent to ``u < rho`` for
     ``u = (bits + 0.5) / 2**32``), computed exactly on the host;
   - ``gradient``: ``delta * direction[i] * f_i``, f_i = -1 iff
     ``Philox(p; i, 0, SIGN_FLIP, 0)[0] < thr(sign_noise)``;
   - ``sign``: bit e % 32 of word e // 32, word w = lane w % 4 of
     ``Philox(p; i, w // 4, DELTA, 0)``; ``delta`` (l_inf) or ``delta / sqrt(D)`` (l_2);
   - ``uniform`` l_inf: ``delta * (2u - 1)`` with u from lane e % 4 of
     ``Philox(p; i, e // 4, DELTA, 0)``;
   - ``uniform`` l_2 is NOT supported (Box-Muller + a per-point norm needs a second pass over
     D): :func:`mlp_sgd_steps` raises ``ValueError`` for it;

   then ``clip(x + Delta, lo, hi)`` for poisoned points. The reference (barrierkit.poison) adds in
   float64 and rounds once; here the sum is formed in fp32 (at most ~2 ulp of the input apart);
3. forward with ``tl.dot`` (fp32 accumulate; operands IEEE fp32 or TF32 by ``input_precision``),
   softmax cross-entropy (mean over the batch), closed-form backward, and the SGD update
   with torch.optim.SGD semantics (weight decay added to the gradient, momentum buffer
   ``buf = momentum * buf + g`` with dampening 0, ``p -= lr * buf``).

The small layers (b1, the H1 -> H2 layer, the output layer) stay in registers for all S steps.
W1 is streamed: one pass over D computes the W1 gradient of step s, updates W1, and with the
updated tile already in registers accumulates the first-layer forward of step s + 1, so each
step reads and writes W1 (and its momentum buffer) once and gathers the batch rows twice.

This module imports only triton and torch (never barrierkit).
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from ._aot import ABSENT, compile_for, cubin_usage
from ._host import as_tensor as _as_tensor, check_tensor as _check_tensor, interpreting, next_pow2 as _next_pow2, stacked_mlp

# Counter word c2 (the stream tag) of barrierkit.rng.Stream; a test checks they agree.
STREAM_SUBSET = 3
STREAM_DELTA = 4
STREAM_SIGN_FLIP = 5

ATTACK_NONE = 0
ATTACK_SIGN = 1
ATTACK_UNIFORM = 2
ATTACK_GRADIENT = 3
_ATTACK_CODES = {"none": ATTACK_NONE, "sign": ATTACK_SIGN, "uniform": ATTACK_UNIFORM, "gradient": ATTACK_GRADIENT}

PRECISIONS = ("ieee", "tf32")
MAX_WIDTH = 256  # batch and layer widths a program keeps as register tiles


# --------------------------------------------------------------------------- device helpers


@triton.jit
def _batch_rows(idx_ptr, y_ptr, seed, offs_b, b_ok, subset_thr, flip_thr, delta, ATTACK: tl.constexpr,
                BLOCK_B: tl.constexpr):
    """Rows, labels and per-row poison (is it poisoned; its signed scale) of one step's batch."""
    rows = tl.load(idx_ptr + offs_b, mask=b_ok, other=0)
    labels = tl.load(y_ptr + rows, mask=b_ok, other=0)
    scale = tl.zeros([BLOCK_B], tl.float32) + delta
    poisoned = offs_b < 0
    if ATTACK != 0:
        i = rows.to(tl.uint32)
        z = i * 0
        s0, _s1, _s2, _s3 = tl.philox(seed, i, z, z + 3, z)  # STREAM_SUBSET
        poisoned = b_ok & (s0.to(tl.int64) < subset_thr)
        if ATTACK == 3:  # gradient: per-point sign flip
            f0, _f1, _f2, _f3 = tl.philox(seed, i, z, z + 5, z)  # STREAM_SIGN_FLIP
            scale = tl.where(f0.to(tl.int64) < flip_thr, -scale, scale)
    return rows, labels, poisoned, scale


@triton.jit
def _poisoned_tile(x_ptr, dir_ptr, rows, b_ok, poisoned, scale, seed, d0, offs_d, D, lo, hi,
                   ATTACK: tl.constexpr, BLOCK_D: tl.constexpr):
    """Columns d0 .. d0 + BLOCK_D of the (poisoned) batch rows: [BLOCK_B, BLOCK_D] fp32, 0 in padding."""
    cols = d0 + offs_d
    d_ok = cols < D
    m = b_ok[:, None] & d_ok[None, :]
    offs = rows[:, None] * D + cols[None, :]  # int32: the launcher checks n * D < 2**31
    x = tl.load(x_ptr + offs, mask=m, other=0.0)
    if ATTACK != 0:
        if ATTACK == 3:  # gradient
            pert = tl.load(dir_ptr + offs, mask=m, other=0.0) * scale[:, None]
        elif ATTACK == 1:  # sign: one Philox block (128 elements) covers the whole tile
            i = rows.to(tl.uint32)
            z = i * 0
            w0, w1, w2, w3 = tl.philox(seed, i, z + d0 // 128, z + 4, z)  # STREAM_DELTA
            lane = ((cols % 128) // 32)[None, :]
            word = tl.where(lane == 0, w0[:, None], tl.where(lane == 1, w1[:, None], tl.where(lane == 2, w2[:, None], w3[:, None])))
            bit = (word >> (cols % 32).to(tl.uint32)[None, :]) & 1
            pert = tl.where(bit != 0, scale[:, None], -scale[:, None])
        else:  # uniform l_inf: lane e % 4 of Philox(p; i, e // 4, DELTA, 0)
            q = (d0 // 4 + tl.arange(0, BLOCK_D // 4)).to(tl.uint32)
            i = rows.to(tl.uint32)
            c0 = i[:, None] + q[None, :] * 0
            c1 = q[None, :] + c0 * 0
            z = c0 * 0
            r0, r1, r2, r3 = tl.philox(seed, c0, c1, z + 4, z)  # STREAM_DELTA
            bits = tl.interleave(tl.interleave(r0, r2), tl.interleave(r1, r3))  # [BLOCK_B, BLOCK_D], lane = e % 4
            # 2u - 1 = (bits - 2**31 + 1/2) / 2**31, with bits - 2**31 exact in int32
            centred = (bits ^ 0x80000000).to(tl.int32, bitcast=True).to(tl.float32)
            pert = scale[:, None] * ((centred + 0.5) * 4.656612873077393e-10)
        xp = tl.minimum(tl.maximum(x + pert, lo), hi)
        x = tl.where(poisoned[:, None] & m, xp, x)
    return x


@triton.jit
def _sgd(p, g, buf, lr, momentum, weight_decay, HAS_WD: tl.constexpr, HAS_MOMENTUM: tl.constexpr):
    """torch.optim.SGD (dampening 0, no Nesterov) on one tile; returns (p, buf)."""
    if HAS_WD:
        g = g + weight_decay * p
    if HAS_MOMENTUM:
        buf = buf * momentum + g
        g = buf
    return p - lr * g, buf


@triton.jit
def _load2(ptr, offs_r, offs_c, n_r, n_c, stride_r):
    """Tile [rows, cols] of a row-major matrix (row stride ``stride_r``), zero outside n_r x n_c."""
    m = (offs_r[:, None] < n_r) & (offs_c[None, :] < n_c)
    return tl.load(ptr + offs_r[:, None] * stride_r + offs_c[None, :], mask=m, other=0.0)


@triton.jit
def _store2(ptr, val, offs_r, offs_c, n_r, n_c, stride_r):
    m = (offs_r[:, None] < n_r) & (offs_c[None, :] < n_c)
    tl.store(ptr + offs_r[:, None] * stride_r + offs_c[None, :], val, mask=m)


# --------------------------------------------------------------------------- the kernel


@triton.jit
def _mlp_sgd_kernel(
    x_ptr, y_ptr, dir_ptr, idx_ptr, seed_ptr,
    w1_ptr, b1_ptr, wm_ptr, bm_ptr, wo_ptr, bo_ptr,
    mw1_ptr, mb1_ptr, mwm_ptr, mbm_ptr, mwo_ptr, mbo_ptr,
    dbg_ptr,
    S, B, D, H1, H2, C,
    lr, momentum, weight_decay, delta, lo, hi, subset_thr, flip_thr,
    ATTACK: tl.constexpr, TWO_HIDDEN: tl.constexpr, HAS_MOMENTUM: tl.constexpr, HAS_WD: tl.constexpr,
    DEBUG: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H1: tl.constexpr, BLOCK_H2: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    if ATTACK != 0:
        seed = tl.load(seed_ptr + pid)
    else:
        seed = 0
    offs_b = tl.arange(0, BLOCK_B)
    b_ok = offs_b < B
    offs_d = tl.arange(0, BLOCK_D)
    offs_h1 = tl.arange(0, BLOCK_H1)
    offs_c = tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    idx_base = idx_ptr + pid * S * B
    w1_base = w1_ptr + pid * H1 * D
    if HAS_MOMENTUM:
        mw1_base = mw1_ptr + pid * H1 * D
    if DEBUG:
        dbg_base = dbg_ptr + pid * S * B * D

    # register-resident small parameters (and momentum buffers)
    b1 = tl.load(b1_ptr + pid * H1 + offs_h1, mask=offs_h1 < H1, other=0.0)
    mb1 = tl.zeros([BLOCK_H1], tl.float32)
    if HAS_MOMENTUM:
        mb1 = tl.load(mb1_ptr + pid * H1 + offs_h1, mask=offs_h1 < H1, other=0.0)
    if TWO_HIDDEN:
        offs_h2 = tl.arange(0, BLOCK_H2)
        HL = H2
        offs_hl = offs_h2
        wm = _load2(wm_ptr + pid * H2 * H1, offs_h2, offs_h1, H2, H1, H1)  # [BLOCK_H2, BLOCK_H1]
        bm = tl.load(bm_ptr + pid * H2 + offs_h2, mask=offs_h2 < H2, other=0.0)
        mwm = tl.zeros([BLOCK_H2, BLOCK_H1], tl.float32)
        mbm = tl.zeros([BLOCK_H2], tl.float32)
        if HAS_MOMENTUM:
            mwm = _load2(mwm_ptr + pid * H2 * H1, offs_h2, offs_h1, H2, H1, H1)
            mbm = tl.load(mbm_ptr + pid * H2 + offs_h2, mask=offs_h2 < H2, other=0.0)
    else:
        HL = H1
        offs_hl = offs_h1
    wo = _load2(wo_ptr + pid * C * HL, offs_c, offs_hl, C, HL, HL)  # [BLOCK_C, BLOCK_HL]
    bo = tl.load(bo_ptr + pid * C + offs_c, mask=c_ok, other=0.0)
    mwo = tl.zeros(wo.shape, tl.float32)
    mbo = tl.zeros([BLOCK_C], tl.float32)
    if HAS_MOMENTUM:
        mwo = _load2(mwo_ptr + pid * C * HL, offs_c, offs_hl, C, HL, HL)
        mbo = tl.load(mbo_ptr + pid * C + offs_c, mask=c_ok, other=0.0)

    # first-layer forward of step 0
    rows, labels, poisoned, scale = _batch_rows(idx_base, y_ptr, seed, offs_b, b_ok, subset_thr, flip_thr, delta, ATTACK, BLOCK_B)
    acc = tl.zeros([BLOCK_B, BLOCK_H1], tl.float32)
    for d0 in range(0, D, BLOCK_D):
        xt = _poisoned_tile(x_ptr, dir_ptr, rows, b_ok, poisoned, scale, seed, d0, offs_d, D, lo, hi, ATTACK, BLOCK_D)
        w1t = _load2(w1_base + d0, offs_h1, offs_d, H1, D - d0, D)
        acc = tl.dot(xt, tl.trans(w1t), acc, input_precision=PRECISION)

    for s in range(S):
        # ---- forward of the small layers, loss gradient, backward to the first layer
        z1 = acc + b1[None, :]
        a1 = tl.maximum(z1, 0.0)
        if TWO_HIDDEN:
            z2 = tl.dot(a1, tl.trans(wm), input_precision=PRECISION) + bm[None, :]
            al = tl.maximum(z2, 0.0)
        else:
            al = a1
        logits = tl.dot(al, tl.trans(wo), input_precision=PRECISION) + bo[None, :]
        logits = tl.where(c_ok[None, :], logits, float("-inf"))
        mx = tl.max(logits, axis=1)
        e = tl.exp(logits - mx[:, None])
        prob = e / tl.sum(e, axis=1)[:, None]
        onehot = (offs_c[None, :] == labels[:, None]).to(tl.float32)
        dz = tl.where(b_ok[:, None] & c_ok[None, :], (prob - onehot) / B, 0.0)  # [BLOCK_B, BLOCK_C]

        g_wo = tl.dot(tl.trans(dz), al, input_precision=PRECISION)  # [BLOCK_C, BLOCK_HL]
        g_bo = tl.sum(dz, axis=0)
        da = tl.dot(dz, wo, input_precision=PRECISION)  # [BLOCK_B, BLOCK_HL], old weights
        if TWO_HIDDEN:
            dz2 = tl.where(z2 > 0.0, da, 0.0)
            g_wm = tl.dot(tl.trans(dz2), a1, input_precision=PRECISION)  # [BLOCK_H2, BLOCK_H1]
            g_bm = tl.sum(dz2, axis=0)
            da1 = tl.dot(dz2, wm, input_precision=PRECISION)  # [BLOCK_B, BLOCK_H1]
            wm, mwm = _sgd(wm, g_wm, mwm, lr, momentum, weight_decay, HAS_WD, HAS_MOMENTUM)
            bm, mbm = _sgd(bm, g_bm, mbm, lr, momentum, weight_decay, HAS_WD, HAS_MOMENTUM)
        else:
            da1 = da
        dz1 = tl.where(z1 > 0.0, da1, 0.0)  # [BLOCK_B, BLOCK_H1]
        g_b1 = tl.sum(dz1, axis=0)
        wo, mwo = _sgd(wo, g_wo, mwo, lr, momentum, weight_decay, HAS_WD, HAS_MOMENTUM)
        bo, mbo = _sgd(bo, g_bo, mbo, lr, momentum, weight_decay, HAS_WD, HAS_MOMENTUM)
        b1, mb1 = _sgd(b1, g_b1, mb1, lr, momentum, weight_decay, HAS_WD, HAS_MOMENTUM)

        # ---- one pass over D: W1 update of step s fused with the first-layer forward of step s + 1
        has_next = s + 1 < S
        nxt = tl.minimum(s + 1, S - 1)
        rows_n, labels_n, poisoned_n, scale_n = _batch_rows(idx_base + nxt * B, y_ptr, seed, offs_b, b_ok,
                                                            subset_thr, flip_thr, delta, ATTACK, BLOCK_B)
        acc = tl.zeros([BLOCK_B, BLOCK_H1], tl.float32)
        for d0 in range(0, D, BLOCK_D):
            xt = _poisoned_tile(x_ptr, dir_ptr, rows, b_ok, poisoned, scale, seed, d0, offs_d, D, lo, hi, ATTACK, BLOCK_D)
            if DEBUG:
                _store2(dbg_base + s * B * D + d0, xt, offs_b, offs_d, B, D - d0, D)
            g_w1 = tl.dot(tl.trans(dz1), xt, input_precision=PRECISION)  # [BLOCK_H1, BLOCK_D]
            w1t = _load2(w1_base + d0, offs_h1, offs_d, H1, D - d0, D)
            mw1t = tl.zeros([BLOCK_H1, BLOCK_D], tl.float32)
            if HAS_MOMENTUM:
                mw1t = _load2(mw1_base + d0, offs_h1, offs_d, H1, D - d0, D)
            w1t, mw1t = _sgd(w1t, g_w1, mw1t, lr, momentum, weight_decay, HAS_WD, HAS_MOMENTUM)
            _store2(w1_base + d0, w1t, offs_h1, offs_d, H1, D - d0, D)
            if HAS_MOMENTUM:
                _store2(mw1_base + d0, mw1t, offs_h1, offs_d, H1, D - d0, D)
            if has_next:
                xn = _poisoned_tile(x_ptr, dir_ptr, rows_n, b_ok, poisoned_n, scale_n, seed, d0, offs_d, D, lo, hi,
                                    ATTACK, BLOCK_D)
                acc = tl.dot(xn, tl.trans(w1t), acc, input_precision=PRECISION)
        rows, labels, poisoned, scale = rows_n, labels_n, poisoned_n, scale_n
        tl.debug_barrier()

    # ---- write back the register-resident parameters
    tl.store(b1_ptr + pid * H1 + offs_h1, b1, mask=offs_h1 < H1)
    if HAS_MOMENTUM:
        tl.store(mb1_ptr + pid * H1 + offs_h1, mb1, mask=offs_h1 < H1)
    if TWO_HIDDEN:
        _store2(wm_ptr + pid * H2 * H1, wm, offs_h2, offs_h1, H2, H1, H1)
        tl.store(bm_ptr + pid * H2 + offs_h2, bm, mask=offs_h2 < H2)
        if HAS_MOMENTUM:
            _store2(mwm_ptr + pid * H2 * H1, mwm, offs_h2, offs_h1, H2, H1, H1)
            tl.store(mbm_ptr + pid * H2 + offs_h2, mbm, mask=offs_h2 < H2)
    _store2(wo_ptr + pid * C * HL, wo, offs_c, offs_hl, C, HL, HL)
    tl.store(bo_ptr + pid * C + offs_c, bo, mask=c_ok)
    if HAS_MOMENTUM:
        _store2(mwo_ptr + pid * C * HL, mwo, offs_c, offs_hl, C, HL, HL)
        tl.store(mbo_ptr + pid * C + offs_c, mbo, mask=c_ok)


@triton.jit
def _philox_debug_kernel(seed_ptr, c0_ptr, c1_ptr, c2_ptr, c3_ptr, out_ptr, n, BLOCK: tl.constexpr):
    """out[k, j] = lane j of tl.philox(seed[k]; c0[k], c1[k], c2[k], c3[k]) (tests the RNG contract)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    seed = tl.load(seed_ptr + offs, mask=ok, other=0)
    c0 = tl.load(c0_ptr + offs, mask=ok, other=0).to(tl.uint32)
    c1 = tl.load(c1_ptr + offs, mask=ok, other=0).to(tl.uint32)
    c2 = tl.load(c2_ptr + offs, mask=ok, other=0).to(tl.uint32)
    c3 = tl.load(c3_ptr + offs, mask=ok, other=0).to(tl.uint32)
    r0, r1, r2, r3 = tl.philox(seed, c0, c1, c2, c3)
    tl.store(out_ptr + offs * 4 + 0, r0.to(tl.int64), mask=ok)
    tl.store(out_ptr + offs * 4 + 1, r1.to(tl.int64), mask=ok)
    tl.store(out_ptr + offs * 4 + 2, r2.to(tl.int64), mask=ok)
    tl.store(out_ptr + offs * 4 + 3, r3.to(tl.int64), mask=ok)


# --------------------------------------------------------------------------- host side


def probability_threshold(p: float) -> int:
    """The integer t with ``bits < t  <=>  (bits + 0.5) / 2**32 < p`` for every 32-bit ``bits``.

    t = ceil(p * 2**32 - 1/2), computed exactly (rational arithmetic on the float64 value of p), in
    [0, 2**32]; the float64 uniform of barrierkit.rng is exact, so the two tests agree bit for bit.
    """
    if not (isinstance(p, (int, float)) and math.isfinite(p) and 0.0 <= p <= 1.0):
        raise ValueError(f"probability: must be in [0, 1], got {p!r}")
    return max(0, math.ceil(Fraction(float(p)) * 2**32 - Fraction(1, 2)))










def unsupported_reason(attack: str, norm: str, hidden: Sequence[int], batch: int, n_classes: int) -> Optional[str]:
    """Why the fused kernel cannot run this configuration (None when it can)."""
    if attack == "uniform" and norm == "2":
        return "attack: uniform l_2 poison is not supported by the fused kernel (it needs a per-point norm over D)"
    if attack not in _ATTACK_CODES:
        return f"attack: unknown attack {attack!r}; the fused kernel knows {sorted(_ATTACK_CODES)}"
    if not 1 <= len(hidden) <= 2:
        return f"params: the fused kernel supports 1 or 2 hidden layers, got {len(hidden)}"
    for name, width in (("batch", batch), ("hidden", max(hidden)), ("classes", n_classes)):
        if width > MAX_WIDTH:
            return f"{name}: the fused kernel keeps [{name}]-wide tiles in registers; at most {MAX_WIDTH}, got {width}"
    return None


def default_tuning(batch: int, hidden: Sequence[int], dim: int, input_precision: str = "ieee") -> dict:
    """BLOCK_D, num_warps and num_stages from the shapes.

    Chosen from the sm_90 resource report (ptxas through ``triton.compile`` for a GPUTarget, no
    GPU needed; bench/notes_triton.md): for 784-64-10 at batch 64, BLOCK_D = 16 with 8 warps is
    the only setting without (tf32) or with few (ieee, 184-byte stack) spills; 16 warps cap the
    registers at 128 and spill more. Timings on a GPU are still to be taken.
    """
    tile = _next_pow2(batch) * _next_pow2(max(hidden))
    return {"block_d": 16, "num_warps": 8 if tile >= 4096 else 4, "num_stages": 2 if input_precision == "tf32" else 1}


def mlp_sgd_steps(
    params: Sequence,
    idx,
    x,
    y,
    *,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    momentum_buffers: Optional[Sequence] = None,
    attack: str = "none",
    norm: str = "inf",
    seeds=None,
    rho: float = 0.0,
    delta: float = 0.0,
    sign_noise: float = 0.0,
    domain: tuple = (0.0, 1.0),
    directions=None,
    input_precision: str = "ieee",
    block_d: Optional[int] = None,
    num_warps: Optional[int] = None,
    num_stages: Optional[int] = None,
    validate: bool = True,
    debug_poisoned=None,
) -> None:
    """Advance N MLPs by S SGD steps in place: one fused Triton launch, grid (N,).

    params: ``[W1, b1, W2, b2]`` or ``[W1, b1, W2, b2, W3, b3]``, fp32 contiguous, ``W [N, out, in]``,
        ``b [N, out]`` (``nn.Linear`` layout); updated in place. momentum_buffers: same layout,
        required when ``momentum > 0`` (zeros before the first step reproduce torch.optim.SGD).
    idx: int32 ``[N, S, B]`` batch rows of each step (from the host Schedule). x: fp32 ``[n, D]``
        clean training data inside ``domain``; y: int32 ``[n]`` labels in ``[0, C)``.
    attack: "none" | "sign" | "uniform" (l_inf only) | "gradient"; ``seeds`` int64 ``[N]`` poison
        seeds; ``rho`` subset probability; ``delta`` budget; ``sign_noise`` the gradient attack's flip
        probability; ``directions`` fp32 ``[n, D]`` (gradient). Poison with delta == 0 or rho == 0 is
        the clean run.
    input_precision: "ieee" (fp32 FMA dots) or "tf32" (tensor-core TF32 operands, fp32 accumulate).
    block_d, num_warps, num_stages: tuning (defaults from :func:`default_tuning`); results do not
        depend on num_warps/num_stages, and on block_d only through fp32 summation order.
    validate: check values too (finite params/data, data in the domain, index and label ranges);
        shapes, dtypes and devices are always checked. Any violation raises ``ValueError`` naming
        the argument, before anything is launched.
    debug_poisoned: optional fp32 ``[N, S, B, D]`` that receives the poisoned batch of every step
        exactly as the kernel trained on it (tests).
    All tensor arguments may be DLPack arrays (CuPy): they are wrapped with ``torch.from_dlpack``,
    so the in-place update lands in the caller's memory.
    """
    params, dims = stacked_mlp(params, (torch.float32,))
    N, widths = dims[0], dims[1:]
    device = params[0].device
    D, H1 = widths[0], widths[1]
    two_hidden = len(params) == 6
    C = widths[-1]
    H2 = widths[2] if two_hidden else 1
    idx = _as_tensor(idx, "idx")
    if idx.dim() != 3 or idx.shape[0] != N or idx.shape[1] < 1 or idx.shape[2] < 1:
        raise ValueError(f"idx: must be [N={N}, S>=1, B>=1], got shape {tuple(idx.shape)}")
    S, B = int(idx.shape[1]), int(idx.shape[2])
    _check_tensor(idx, "idx", torch.int32, (N, S, B), device)
    x = _as_tensor(x, "x")
    if x.dim() != 2 or x.shape[1] != D:
        raise ValueError(f"x: must be [n, D={D}], got shape {tuple(x.shape)}")
    n = int(x.shape[0])
    _check_tensor(x, "x", torch.float32, (n, D), device)
    y = _as_tensor(y, "y")
    _check_tensor(y, "y", torch.int32, (n,), device)

    for name, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay), ("delta", delta)):
        if not (isinstance(value, (int, float)) and math.isfinite(value)):
            raise ValueError(f"{name}: must be a finite number, got {value!r}")
    if lr <= 0:
        raise ValueError(f"lr: must be > 0, got {lr}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum: must be in [0, 1), got {momentum}")
    if weight_decay < 0 or delta < 0:
        raise ValueError(f"weight_decay, delta: must be >= 0, got {weight_decay}, {delta}")
    lo, hi = (float(v) for v in domain)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"domain: must be finite (low, high) with low < high, got {domain!r}")
    if input_precision not in PRECISIONS:
        raise ValueError(f"input_precision: must be one of {PRECISIONS}, got {input_precision!r}")
    norm = {"linf": "inf", "l2": "2"}.get(str(norm).lower(), str(norm).lower())
    if norm not in ("inf", "2"):
        raise ValueError(f"norm: must be 'inf' or '2', got {norm!r}")
    reason = unsupported_reason(attack, norm, widths[1:-1], B, C)
    if reason:
        raise ValueError(reason)
    subset_thr = probability_threshold(rho)
    flip_thr = probability_threshold(sign_noise)
    code = _ATTACK_CODES[attack] if (delta > 0 and subset_thr > 0) else ATTACK_NONE
    seed_arg = dir_arg = None
    scale = float(delta)
    if code != ATTACK_NONE:
        if seeds is None:
            raise ValueError("seeds: the poison seeds [N] (int64) are required when poisoning")
        seed_arg = _as_tensor(seeds, "seeds")
        seed_arg = seed_arg.contiguous() if seed_arg.dim() == 1 else seed_arg  # e.g. a column of [N, 3] seeds
        _check_tensor(seed_arg, "seeds", torch.int64, (N,), device)
        if code == ATTACK_SIGN and norm == "2":
            scale = float(delta) / math.sqrt(D)
        if code == ATTACK_GRADIENT:
            if directions is None:
                raise ValueError("directions: the gradient attack needs the reference directions [n, D] (fp32)")
            dir_arg = _as_tensor(directions, "directions")
            _check_tensor(dir_arg, "directions", torch.float32, (n, D), device)

    has_mom = momentum > 0
    bufs = [None] * 6
    if has_mom:
        if momentum_buffers is None:
            raise ValueError("momentum_buffers: required when momentum > 0 (zeros before the first step)")
        mb = [_as_tensor(b, f"momentum_buffers[{k}]") for k, b in enumerate(momentum_buffers)]
        if len(mb) != len(params):
            raise ValueError(f"momentum_buffers: expected {len(params)} tensors, got {len(mb)}")
        for k, (b, p) in enumerate(zip(mb, params)):
            _check_tensor(b, f"momentum_buffers[{k}]", torch.float32, tuple(p.shape), device)
        bufs = mb if two_hidden else [mb[0], mb[1], None, None, mb[2], mb[3]]

    if debug_poisoned is not None:
        debug_poisoned = _as_tensor(debug_poisoned, "debug_poisoned")
        _check_tensor(debug_poisoned, "debug_poisoned", torch.float32, (N, S, B, D), device)

    tune = default_tuning(B, widths[1:-1], D, input_precision)
    block_d = int(block_d or tune["block_d"])
    if block_d < 16 or block_d > 128 or block_d & (block_d - 1):
        raise ValueError(f"block_d: must be a power of 2 in [16, 128], got {block_d}")
    num_warps = int(num_warps or tune["num_warps"])
    if num_warps not in (1, 2, 4, 8, 16):
        raise ValueError(f"num_warps: must be 1, 2, 4, 8 or 16, got {num_warps}")
    num_stages = int(num_stages or tune["num_stages"])
    if not 1 <= num_stages <= 4:
        raise ValueError(f"num_stages: must be in [1, 4], got {num_stages}")
    if n * D >= 2**31:
        raise ValueError(f"x: n * D = {n * D} must be < 2**31 (the kernel gathers rows with 32-bit offsets)")

    if validate:
        _validate_values(params, bufs if has_mom else [], idx, x, y, dir_arg, seed_arg, n, C, lo, hi)

    if two_hidden:
        w1, b1, wm, bm, wo, bo = params
    else:
        (w1, b1, wo, bo), wm, bm = params, None, None
    grid = (N,)
    _mlp_sgd_kernel[grid](
        x, y, dir_arg, idx, seed_arg,
        w1, b1, wm, bm, wo, bo,
        *bufs,
        debug_poisoned,
        S, B, D, H1, H2, C,
        float(lr), float(momentum), float(weight_decay), scale, lo, hi, subset_thr, flip_thr,
        ATTACK=code, TWO_HIDDEN=two_hidden, HAS_MOMENTUM=has_mom, HAS_WD=weight_decay > 0,
        DEBUG=debug_poisoned is not None, PRECISION=input_precision,
        BLOCK_B=_next_pow2(B), BLOCK_D=block_d, BLOCK_H1=_next_pow2(H1), BLOCK_H2=_next_pow2(H2),
        BLOCK_C=_next_pow2(C),
        num_warps=num_warps, num_stages=num_stages,
    )


def _validate_values(params, bufs, idx, x, y, directions, seeds, n, C, lo, hi) -> None:
    """Value checks (one reduction each; the host reads back one flag per tensor)."""
    for k, p in enumerate(params):
        if not bool(torch.isfinite(p).all()):
            raise ValueError(f"params[{k}]: contains NaN or infinite values")
    for k, b in enumerate(bufs):
        if b is not None and not bool(torch.isfinite(b).all()):
            raise ValueError(f"momentum_buffers[{k}]: contains NaN or infinite values")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x: the training data contains NaN or infinite values")
    if x.numel() and not bool(((x >= lo) & (x <= hi)).all()):
        raise ValueError(f"x: the training data must lie in the domain [{lo}, {hi}] (min {float(x.min())}, max {float(x.max())})")
    if directions is not None and not bool(torch.isfinite(directions).all()):
        raise ValueError("directions: contains NaN or infinite values")
    if not bool(((idx >= 0) & (idx < n)).all()):
        raise ValueError(f"idx: batch indices must lie in [0, {n})")
    if not bool(((y >= 0) & (y < C)).all()):
        raise ValueError(f"y: labels must lie in [0, {C})")
    if seeds is not None and not bool((seeds >= 0).all()):
        raise ValueError("seeds: poison seeds must be non-negative (63-bit)")


def philox_words(seeds, c0, c1, c2, c3) -> torch.Tensor:
    """[n, 4] int64: ``tl.philox`` evaluated inside a kernel (tests compare it with barrierkit.rng)."""
    seeds = _as_tensor(seeds, "seeds").to(torch.int64).contiguous()
    cs = [_as_tensor(c, "counter").to(torch.int64).contiguous() for c in (c0, c1, c2, c3)]
    n = seeds.numel()
    out = torch.empty((n, 4), dtype=torch.int64, device=seeds.device)
    block = 128
    _philox_debug_kernel[(triton.cdiv(n, block),)](seeds, *cs, out, n, BLOCK=block)
    return out & 0xFFFFFFFF


def compile_report(*, attack: str = "gradient", hidden: Sequence[int] = (64,), batch: int = 64, n_classes: int = 10,
                   momentum: bool = True, weight_decay: bool = True, input_precision: str = "ieee",
                   block_d: int = 16, num_warps: Optional[int] = None, num_stages: Optional[int] = None,
                   debug: bool = False, arch: int = 90) -> dict:
    """Compile the fused kernel for ``sm_<arch>`` without a GPU and report its resources.

    Uses ``triton.compile`` with an explicit ``GPUTarget`` and the ptxas/cuobjdump that ship with
    Triton's NVIDIA backend; needs compiled mode (TRITON_INTERPRET unset or 0). Returns the
    registers per thread, the stack frame (bytes of spilled registers per thread), shared memory and
    SASS instruction counts (HGMMA = Hopper tensor cores, FFMA = fp32 FMA, LDL/STL = local memory).
    """
    code = _ATTACK_CODES[attack]
    two = len(hidden) == 2
    tune = default_tuning(batch, hidden, 1 << 20, input_precision)
    num_warps = num_warps or tune["num_warps"]
    num_stages = num_stages or tune["num_stages"]
    f32, absent = "*fp32", ABSENT
    ptrs = {
        "x_ptr": f32, "y_ptr": "*i32", "dir_ptr": f32 if code == ATTACK_GRADIENT else absent, "idx_ptr": "*i32",
        "seed_ptr": "*i64" if code else absent, "w1_ptr": f32, "b1_ptr": f32, "wm_ptr": f32 if two else absent,
        "bm_ptr": f32 if two else absent, "wo_ptr": f32, "bo_ptr": f32,
        "mw1_ptr": f32 if momentum else absent, "mb1_ptr": f32 if momentum else absent,
        "mwm_ptr": f32 if momentum and two else absent, "mbm_ptr": f32 if momentum and two else absent,
        "mwo_ptr": f32 if momentum else absent, "mbo_ptr": f32 if momentum else absent,
        "dbg_ptr": f32 if debug else absent,
    }
    sig = dict(ptrs)
    sig.update({k: "i32" for k in ("S", "B", "D", "H1", "H2", "C")})
    sig.update({k: "fp32" for k in ("lr", "momentum", "weight_decay", "delta", "lo", "hi")})
    sig.update(subset_thr="i64", flip_thr="i64")
    meta = dict(ATTACK=code, TWO_HIDDEN=two, HAS_MOMENTUM=momentum, HAS_WD=weight_decay, DEBUG=debug,
                PRECISION=input_precision, BLOCK_B=_next_pow2(batch), BLOCK_D=block_d, BLOCK_H1=_next_pow2(hidden[0]),
                BLOCK_H2=_next_pow2(hidden[1] if two else 1), BLOCK_C=_next_pow2(n_classes))
    kernel = compile_for(_mlp_sgd_kernel, sig, meta, arch, num_warps=num_warps, num_stages=num_stages)
    report = {"arch": f"sm_{arch}", "num_warps": num_warps, "num_stages": num_stages, "block_d": block_d,
              "input_precision": input_precision, "attack": attack, "hidden": list(hidden), "batch": batch,
              "shared_bytes": int(kernel.metadata.shared)}
    report.update(cubin_usage(kernel, ("HGMMA", "HMMA", "FFMA", "LDL", "STL", "LDG", "STG")))
    return report


__all__ = ["mlp_sgd_steps", "philox_words", "compile_report", "probability_threshold", "unsupported_reason", "default_tuning",
           "interpreting", "PRECISIONS", "MAX_WIDTH", "STREAM_SUBSET", "STREAM_DELTA", "STREAM_SIGN_FLIP"]
