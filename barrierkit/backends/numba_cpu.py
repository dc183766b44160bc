"""CPU fast path: the backend contract (:mod:`barrierkit.backends.base`) in numba, parallel over trajectories, no fastmath.

``train_segment(state, problem, t0, t1)`` advances the N trajectories of ``state`` in place,
exactly as :func:`barrierkit.backends.torch_ref.train_segment` does: the same batch order (the
host computes the index arrays with ``problem.schedule``), the same poison, softmax
cross-entropy averaged over the batch, a closed-form MLP backward (ReLU derivative 0 at 0) and
``torch.optim.SGD`` updates (weight decay, then momentum with dampening 0, then ``p -= lr * g``).
Any depth of MLP works (the engine uses 1 or 2 hidden layers); parameters are float32 or
float64 and are updated zero-copy through their numpy views.

One jitted kernel runs a whole segment: ``prange`` over trajectories, and for each trajectory
a loop over the steps (trajectories are independent, so this is the whole parallelism and each
thread allocates its scratch once). Arithmetic is in the parameter dtype like the reference.
The three matrix products per layer and step are ``np.dot`` calls, i.e. BLAS (scipy's OpenBLAS)
forced to one thread during the call; everything else (poison, bias, ReLU, softmax, SGD update)
is fused elementwise code. There is no fastmath anywhere here. Against torch_ref the products
sum in another order, so results agree to rounding (float64 ~1e-15), not bit for bit.

The poison is drawn on the fly inside the kernel with a numba port of Philox4x32-10 that is bit
for bit :mod:`barrierkit.rng`: the subset (Stream.SUBSET, ``u < rho`` in float64, exact), the
gradient attack's sign flips (Stream.SIGN_FLIP) and direction gather, the sign attack's bits and
the uniform l_inf draws (Stream.DELTA), then ``clip(x + Delta)`` in float64 rounded once to the
parameter dtype, as :func:`barrierkit.poison.poison_batch`. When ``problem.poison`` carries the
cached per-point draws (``point_mask``, ``point_sign``) they are used, as the reference does.

Exception (documented choice): the uniform l_2 attack needs Box-Muller normals (log, cos, sin)
and a vector norm, which differ by a few ulp between libms and summation orders. Rather than
accept a tolerance on the poison, that attack's poisoned rows are computed on the host with the
torch reference (:func:`barrierkit.poison.poison_batch`) and passed to the kernel, so every
attack is bit-identical to the reference and witnesses replay identically on either backend.
"""
from __future__ import annotations

import contextlib
import math
from typing import List, Optional, Tuple

import numpy as np
import scipy.linalg.cython_blas  # noqa: F401  the BLAS numba's np.dot calls: loaded before it is limited
import torch
from numba import njit, prange

from ..poison import RUN_AWARE_ATTACKS, PoisonSpec, poison_batch
from ..rng import PHILOX_M0, PHILOX_M1, PHILOX_W0, PHILOX_W1, PHILOX_ROUNDS, Stream
from ..config import ATTACKS, NORMS
from ..features import FeatureMap
from .base import Backend, Capabilities, StepProblem, TrainState

NAME = "numba"

# Attack modes of the kernel (runtime values, not compile-time specialisations).
MODE_CLEAN, MODE_GRADIENT, MODE_SIGN, MODE_UNIFORM_INF, MODE_HOST = 0, 1, 2, 3, 4

# Host arrays per kernel call (the [S, N, B] index array, the host-poisoned rows) stay under this.
_HOST_BYTES = 64 * 2**20
# Parameter tuples are padded to this many layers (one compiled kernel per dtype up to 2 hidden layers).
_MIN_LAYERS = 3

_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
_M0, _M1 = np.uint64(PHILOX_M0), np.uint64(PHILOX_M1)
_W0, _W1 = np.uint64(PHILOX_W0), np.uint64(PHILOX_W1)
_ONE_U64 = np.uint64(1)
_STREAM_SUBSET, _STREAM_DELTA, _STREAM_SIGN_FLIP = int(Stream.SUBSET), int(Stream.DELTA), int(Stream.SIGN_FLIP)


# --------------------------------------------------------------------------- Philox


@njit(cache=True)
def philox4x32(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 of one counter (c0, c1, c2, c3) and key (k0, k1): four uint64 words < 2**32.

    Arguments are integers holding 32-bit values (higher bits are masked off), as
    :func:`barrierkit.rng.philox4x32_numpy`; all arithmetic is uint64, masked to 32 bits.
    """
    x0 = np.uint64(c0) & _MASK32
    x1 = np.uint64(c1) & _MASK32
    x2 = np.uint64(c2) & _MASK32
    x3 = np.uint64(c3) & _MASK32
    y0 = np.uint64(k0) & _MASK32
    y1 = np.uint64(k1) & _MASK32
    for _ in range(PHILOX_ROUNDS):
        p0 = _M0 * x0  # < 2**64: exact
        p1 = _M1 * x2
        x0, x1, x2, x3 = (p1 >> _SHIFT32) ^ x1 ^ y0, p1 & _MASK32, (p0 >> _SHIFT32) ^ x3 ^ y1, p0 & _MASK32
        y0 = (y0 + _W0) & _MASK32
        y1 = (y1 + _W1) & _MASK32
    return x0, x1, x2, x3


@njit(cache=True)
def _uniform(word):
    """(word + 0.5) / 2**32 in float64: exact, equal to rng.uniform_from_bits_numpy."""
    return (np.float64(word) + 0.5) * (1.0 / 4294967296.0)


@njit(cache=True)
def _clip(v, lo, hi):
    """torch.clamp(v, lo, hi) for a finite float64."""
    return min(max(v, lo), hi)


# --------------------------------------------------------------------------- poison


@njit(cache=True)
def _poison_row(out, x_train, n, i, mode, keys0, keys1, rho, scale, sign_noise, lo, hi,
                directions, point_mask, use_mask, point_sign, use_sign):
    """Write the (possibly poisoned) row of training point i for trajectory n into ``out``.

    ``out`` has the training dtype; every value is computed in float64 and rounded once on the
    store. MODE_HOST is handled by the caller (the row comes from the host).
    """
    dim = x_train.shape[1]
    k0, k1 = keys0[n], keys1[n]
    poisoned = False
    if mode != MODE_CLEAN:
        if use_mask:
            poisoned = point_mask[n, i]
        else:
            poisoned = _uniform(philox4x32(i, 0, _STREAM_SUBSET, 0, k0, k1)[0]) < rho
    if not poisoned:
        for e in range(dim):
            out[e] = x_train[i, e]
    elif mode == MODE_GRADIENT:  # delta * direction_i * f_i
        if use_sign:
            f = point_sign[n, i]
        else:
            f = -1.0 if _uniform(philox4x32(i, 0, _STREAM_SIGN_FLIP, 0, k0, k1)[0]) < sign_noise else 1.0
        for e in range(dim):
            out[e] = _clip(x_train[i, e] + scale * directions[i, e] * f, lo, hi)
    elif mode == MODE_SIGN:  # bit e % 32 of word e // 32; word w is lane w % 4 of block w // 4
        n_words = (dim + 31) // 32
        for block in range((n_words + 3) // 4):
            r = philox4x32(i, block, _STREAM_DELTA, 0, k0, k1)
            for lane in range(4):
                w = 4 * block + lane
                for e in range(32 * w, min(32 * w + 32, dim)):
                    s = 1.0 if (r[lane] >> np.uint64(e - 32 * w)) & _ONE_U64 else -1.0
                    out[e] = _clip(x_train[i, e] + scale * s, lo, hi)
    else:  # MODE_UNIFORM_INF: delta * (2u - 1), u from lane e % 4 of block e // 4
        for block in range((dim + 3) // 4):
            r = philox4x32(i, block, _STREAM_DELTA, 0, k0, k1)
            for lane in range(min(4, dim - 4 * block)):
                e = 4 * block + lane
                out[e] = _clip(x_train[i, e] + scale * (2.0 * _uniform(r[lane]) - 1.0), lo, hi)


@njit(parallel=True, cache=True)
def _poison_kernel(out, idx, x_train, mode, keys0, keys1, rho, scale, sign_noise, lo, hi,
                   directions, point_mask, use_mask, point_sign, use_sign):
    """out[n, b] = the row of point idx[n, b] as trajectory n sees it."""
    for n in prange(idx.shape[0]):
        for b in range(idx.shape[1]):
            _poison_row(out[n, b], x_train, n, idx[n, b], mode, keys0, keys1, rho, scale, sign_noise, lo, hi,
                        directions, point_mask, use_mask, point_sign, use_sign)


def _poison_args(spec: PoisonSpec, x_train: np.ndarray) -> tuple:
    """The kernel's poison arguments for a spec (dummies of the right types where unused)."""
    dim = x_train.shape[1]
    seeds = spec.seeds.detach().cpu().numpy().astype(np.uint64)
    keys0, keys1 = seeds & _MASK32, seeds >> _SHIFT32
    directions = np.zeros((1, 1))
    scale = float(spec.delta)
    if not spec.active:
        mode = MODE_CLEAN
    elif spec.kind == "gradient":
        if spec.directions is None:
            raise ValueError("attack: the gradient attack needs reference directions")
        mode = MODE_GRADIENT
        directions = np.ascontiguousarray(spec.directions.detach().cpu().numpy(), dtype=np.float64)
    elif spec.kind == "sign":
        mode = MODE_SIGN
        scale = spec.delta if spec.norm == "inf" else spec.delta / math.sqrt(dim)
    elif spec.kind == "uniform" and spec.norm == "inf":
        mode = MODE_UNIFORM_INF
    else:  # uniform l_2 (transcendentals): poison_batch on the host; unknown kinds raise there
        mode = MODE_HOST
    use_mask = spec.point_mask is not None and mode != MODE_CLEAN
    point_mask = spec.point_mask.detach().cpu().numpy() if use_mask else np.zeros((1, 1), dtype=np.bool_)
    use_sign = spec.point_sign is not None and mode == MODE_GRADIENT
    point_sign = np.asarray(spec.point_sign.detach().cpu().numpy(), dtype=np.float64) if use_sign else np.zeros((1, 1))
    lo, hi = (float(v) for v in spec.domain)
    return (mode, keys0, keys1, float(spec.rho), float(scale), float(spec.sign_noise), lo, hi,
            directions, np.ascontiguousarray(point_mask), use_mask, np.ascontiguousarray(point_sign), use_sign)


def poison_rows(spec: PoisonSpec, x_train: torch.Tensor, idx: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """[N, B, D] poisoned rows of points idx [N, B], as the training kernel builds them.

    Equal to ``poison_batch(spec, x_train[idx], idx, dtype)`` (bit for bit); the uniform l_2
    attack is delegated to that function (see the module docstring).
    """
    x = np.ascontiguousarray(x_train.detach().cpu().numpy(), dtype=np.float64)
    args = _poison_args(spec, x)
    if args[0] == MODE_HOST:
        return poison_batch(spec, x_train[idx], idx, dtype).cpu().numpy()
    ii = np.ascontiguousarray(idx.detach().cpu().numpy(), dtype=np.int64)
    if ii.ndim != 2 or ii.shape[0] != spec.seeds.shape[0] or (ii.size and (ii.min() < 0 or ii.max() >= x.shape[0])):
        raise IndexError(f"idx: must be [N, B] indices of training points, N = {spec.seeds.shape[0]}")
    out = np.empty((*ii.shape, x.shape[1]), dtype=torch.empty(0, dtype=dtype).numpy().dtype)
    _poison_kernel(out, ii, x, *args)
    return out


# --------------------------------------------------------------------------- training


@njit(parallel=True, cache=True)
def _train_kernel(ws, bs, mws, mbs, widths, idx, x_train, y_train, host_x, hyper, use_momentum,
                  mode, keys0, keys1, rho, scale, sign_noise, lo, hi,
                  directions, point_mask, use_mask, point_sign, use_sign):
    """Steps idx.shape[0] of SGD for every trajectory n (in place on ws, bs and buffers mws, mbs).

    ws[l] [N, out, in], bs[l] [N, out]; widths = (D, hidden..., C); idx [S, N, B] point indices;
    hyper = (lr, momentum, weight_decay, B, 0, 1) in the parameter dtype, so all arithmetic stays
    in that dtype as in the reference. The three products per layer go to BLAS (np.dot, run
    single-threaded by the caller: the parallelism is over trajectories).
    """
    n_steps, n_traj, batch = idx.shape
    n_layers = widths.shape[0] - 1
    lr, mom, wd, batch_f, zero, one = hyper[0], hyper[1], hyper[2], hyper[3], hyper[4], hyper[5]
    off = np.zeros(n_layers + 1, dtype=np.int64)  # where the inputs of layer l start in act
    max_w, max_wb = widths.max(), 0
    for l in range(n_layers):
        off[l + 1] = off[l] + batch * widths[l]
        max_wb = max(max_wb, widths[l] * widths[l + 1])
    for n in prange(n_traj):
        act = np.empty(off[n_layers], dtype=hyper.dtype)  # inputs of every layer, [B, width_l] each
        z = np.empty(batch * max_w, dtype=hyper.dtype)  # the current layer's output [B, out]
        dz = np.empty(batch * max_w, dtype=hyper.dtype)  # dL/dz of the current layer [B, out]
        da = np.empty(batch * max_w, dtype=hyper.dtype)  # dL/dz of the layer below [B, in]
        g_w = np.empty(max_wb, dtype=hyper.dtype)  # the weight gradient [out, in]
        for s in range(n_steps):
            # the input rows, poisoned on the fly
            dim = widths[0]
            for b in range(batch):
                row = act[b * dim:(b + 1) * dim]
                if mode == MODE_HOST:
                    row[:] = host_x[s, n, b]
                else:
                    _poison_row(row, x_train, n, idx[s, n, b], mode, keys0, keys1, rho, scale, sign_noise, lo, hi,
                                directions, point_mask, use_mask, point_sign, use_sign)
            # forward: z = a W^T + b; ReLU on hidden layers
            for l in range(n_layers):
                n_in, n_out = widths[l], widths[l + 1]
                a_in = act[off[l]:off[l + 1]].reshape(batch, n_in)
                z_l = z[:batch * n_out].reshape(batch, n_out)
                np.dot(a_in, ws[l][n].T, z_l)
                bias = bs[l][n]
                for b in range(batch):
                    for o in range(n_out):
                        z_l[b, o] += bias[o]
                if l < n_layers - 1:
                    a_out = act[off[l + 1]:off[l + 2]].reshape(batch, n_out)
                    for b in range(batch):
                        for o in range(n_out):
                            v = z_l[b, o]
                            a_out[b, o] = zero if v < zero else v  # NaN stays NaN, as torch.relu
            # softmax cross-entropy, mean over the batch: dz = (softmax(z) - onehot) / B
            n_cls = widths[n_layers]
            logits, d_out = z[:batch * n_cls].reshape(batch, n_cls), dz[:batch * n_cls].reshape(batch, n_cls)
            for b in range(batch):
                m = logits[b, 0]
                for o in range(1, n_cls):
                    m = max(m, logits[b, o])
                total = zero
                for o in range(n_cls):
                    d_out[b, o] = math.exp(logits[b, o] - m)
                    total += d_out[b, o]
                inv = one / total
                for o in range(n_cls):
                    d_out[b, o] *= inv
                d_out[b, y_train[idx[s, n, b]]] -= one
                for o in range(n_cls):
                    d_out[b, o] /= batch_f
            # backward and SGD update, last layer first
            for l in range(n_layers - 1, -1, -1):
                n_in, n_out = widths[l], widths[l + 1]
                w, bias, m_w, m_b = ws[l][n], bs[l][n], mws[l][n], mbs[l][n]
                a_in = act[off[l]:off[l + 1]].reshape(batch, n_in)
                d_out = dz[:batch * n_out].reshape(batch, n_out)
                if l > 0:  # dL/dz below = (dz W) * (a > 0), with W before its update
                    d_in = da[:batch * n_in].reshape(batch, n_in)
                    np.dot(d_out, w, d_in)
                    for b in range(batch):
                        for i in range(n_in):
                            if not a_in[b, i] > zero:
                                d_in[b, i] = zero
                g = g_w[:n_out * n_in].reshape(n_out, n_in)
                np.dot(d_out.T, a_in, g)
                for o in range(n_out):
                    g_b = zero
                    for b in range(batch):
                        g_b += d_out[b, o]
                    # torch.optim.SGD: g += wd * p; buf = mom * buf + g; p -= lr * buf
                    for i in range(n_in):
                        g_oi = g[o, i]
                        if wd != zero:
                            g_oi = g_oi + wd * w[o, i]
                        if use_momentum:
                            g_oi = m_w[o, i] * mom + g_oi
                            m_w[o, i] = g_oi
                        w[o, i] = w[o, i] - lr * g_oi
                    if wd != zero:
                        g_b = g_b + wd * bias[o]
                    if use_momentum:
                        g_b = m_b[o] * mom + g_b
                        m_b[o] = g_b
                    bias[o] = bias[o] - lr * g_b
                dz, da = da, dz


_BLAS_CONTROLLER = None


def _single_threaded_blas():
    """A context that runs BLAS on one thread: the kernel is parallel over trajectories already,
    and a threaded OpenBLAS called inside numba's OpenMP loop oversubscribes (and may hang)."""
    global _BLAS_CONTROLLER
    if _BLAS_CONTROLLER is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
            return contextlib.nullcontext()
        _BLAS_CONTROLLER = ThreadpoolController()
    return _BLAS_CONTROLLER.limit(limits=1, user_api="blas")


def _numpy_views(tensors: List[torch.Tensor]) -> Tuple[List[np.ndarray], List[Tuple[torch.Tensor, np.ndarray]]]:
    """Zero-copy numpy views of CPU tensors; non-contiguous ones get a copy to write back."""
    views, write_back = [], []
    for t in tensors:
        if t.device.type != "cpu":
            raise ValueError(f"backend: numba runs on CPU tensors, got one on {t.device}")
        if t.is_contiguous():
            views.append(t.detach().numpy())
        else:
            a = np.ascontiguousarray(t.detach().numpy())
            views.append(a)
            write_back.append((t, a))
    return views, write_back


def _check_shapes(views: List[np.ndarray], widths: np.ndarray, problem: StepProblem) -> None:
    """What torch would reject (the kernel does not bounds-check): mismatched shapes, bad labels."""
    n_traj, n_layers = views[0].shape[0], len(widths) - 1
    for k, v in enumerate(views):
        l = (k % (2 * n_layers)) // 2
        want = (n_traj, widths[l + 1], widths[l]) if k % 2 == 0 else (n_traj, widths[l + 1])
        if v.shape != want:
            raise ValueError(f"params: tensor {k} has shape {v.shape}, expected {want}")
    n_train, dim = problem.x_train.shape
    if dim != widths[0] or problem.schedule.n != n_train or problem.poison.seeds.shape[0] != n_traj:
        raise ValueError("problem: x_train, schedule and poison seeds must match the parameters")
    y = problem.y_train
    if y.shape != (n_train,) or (n_train and (int(y.min()) < 0 or int(y.max()) >= widths[-1])):
        raise ValueError(f"y_train: must hold {n_train} labels in [0, {widths[-1]})")
    spec = problem.poison
    for name, t, want in (("directions", spec.directions, (n_train, dim)), ("point_mask", spec.point_mask, (n_traj, n_train)),
                          ("point_sign", spec.point_sign, (n_traj, n_train))):
        if t is not None and tuple(t.shape) != want:
            raise ValueError(f"poison.{name}: shape {tuple(t.shape)}, expected {want}")


def train_segment(state: TrainState, problem: StepProblem, t0: int, t1: int) -> Optional[str]:
    """Advance all trajectories from step t0 to step t1 (exclusive), in place (the backend contract);
    never falls back (the l_2 uniform attack's rows are poisoned on the host, then trained here)."""
    if t1 <= t0:
        return None
    params = state.params
    if len(params) < 2 or len(params) % 2:
        raise ValueError("params: expected [W1, b1, W2, b2, ...]")
    dtype = params[0].dtype
    if dtype not in (torch.float32, torch.float64) or any(p.dtype != dtype for p in params) or problem.dtype != dtype:
        raise ValueError(f"dtype: parameters and problem.dtype must all be float32 or all float64, "
                         f"got {sorted({str(p.dtype) for p in params})} and {problem.dtype}")
    use_momentum = bool(problem.momentum)
    if use_momentum and state.momentum is None:
        state.momentum = [torch.zeros_like(p) for p in params]
    views, write_back = _numpy_views(list(params))
    if use_momentum:
        buffer_views, buffer_write_back = _numpy_views(list(state.momentum))
        views, write_back = views + buffer_views, write_back + buffer_write_back
    else:  # the parameters stand in for the buffers, which the kernel then never reads or writes
        views = views + views
    n_layers, np_dtype = len(params) // 2, views[0].dtype
    widths = np.array([views[0].shape[2]] + [w.shape[1] for w in views[0:len(params):2]], dtype=np.int64)
    # Tuples padded to _MIN_LAYERS (never read: the kernel's depth comes from widths), so 1 and 2
    # hidden layers share one compiled kernel per dtype.
    pad_w, pad_b = (np.zeros((1, 1, 1), np_dtype),), (np.zeros((1, 1), np_dtype),)
    pad = max(0, _MIN_LAYERS - n_layers)
    ws, bs = tuple(views[0:len(params):2]) + pad_w * pad, tuple(views[1:len(params):2]) + pad_b * pad
    mws, mbs = tuple(views[len(params)::2]) + pad_w * pad, tuple(views[len(params) + 1::2]) + pad_b * pad
    _check_shapes(views, widths, problem)
    hyper = np.array([problem.lr, problem.momentum, problem.weight_decay, problem.schedule.batch, 0.0, 1.0], dtype=np_dtype)

    x_train = np.ascontiguousarray(problem.x_train.detach().cpu().numpy(), dtype=np.float64)
    y_train = np.ascontiguousarray(problem.y_train.detach().cpu().numpy(), dtype=np.int64)
    poison = _poison_args(problem.poison, x_train)
    n_traj, batch, dim = views[0].shape[0], problem.schedule.batch, x_train.shape[1]
    row_bytes = n_traj * batch * (8 + (dim * np_dtype.itemsize if poison[0] == MODE_HOST else 0))
    chunk = max(1, _HOST_BYTES // row_bytes)
    no_host = np.zeros((1, 1, 1, 1), dtype=np_dtype)
    for s0 in range(t0, t1, chunk):
        steps = range(s0, min(t1, s0 + chunk))
        idx_t = torch.stack([problem.schedule.indices(t) for t in steps])
        host_x = no_host
        if poison[0] == MODE_HOST:
            host_x = torch.stack([poison_batch(problem.poison, problem.x_train[i], i, dtype) for i in idx_t]).cpu().numpy()
        idx = np.ascontiguousarray(idx_t.cpu().numpy(), dtype=np.int64)
        with _single_threaded_blas():
            _train_kernel(ws, bs, mws, mbs, widths, idx, x_train, y_train, host_x, hyper, use_momentum, *poison)
    for t, a in write_back:
        t.copy_(torch.from_numpy(a))
    return None


BACKEND = Backend(
    name=NAME, precision="ieee", train_segment=train_segment, feature_map=FeatureMap,
    capabilities=Capabilities(devices=frozenset({"cpu"}), dtypes=frozenset({"float32", "float64"}),
                              attacks=frozenset(ATTACKS) - set(RUN_AWARE_ATTACKS),
                              native_attacks=frozenset((k, n) for k in ATTACKS if k not in RUN_AWARE_ATTACKS for n in NORMS)),
    summary="the CPU fast path: one numba kernel per segment, parallel over trajectories",
)

__all__ = ["train_segment", "philox4x32", "poison_rows", "NAME", "BACKEND"]
