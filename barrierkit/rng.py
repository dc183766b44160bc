"""Counter-based random numbers: Philox4x32-10, one definition for every backend.

Every random quantity in barrierkit (initial weights, poison subsets, perturbations, batch
order, projection matrices, derived seeds) is a pure function of a 64-bit seed and integer
counters. That makes any trajectory replayable from its seeds alone, on any backend, and lets a
fused kernel generate poison on the fly instead of materialising N poisoned datasets.

Layout of one draw: key = (seed mod 2^32, seed >> 32); counter = (c0, c1, tag, c3), where
``tag`` names the stream (see :class:`Stream`) so different uses of one seed never overlap.

Two implementations live here, numpy (uint64 arithmetic) and torch (wrapping int64
arithmetic, so it runs wherever torch integer ops run). They
return identical integer bits; tests check them against the Random123 known-answer vectors.
Uniforms are ``(bits + 0.5) / 2**32`` computed in float64, which is exact, so uniforms agree
bit for bit too. Anything built from transcendental functions (normals) agrees to a few ulp.
"""
from __future__ import annotations

import enum
from typing import Optional, Tuple

import numpy as np
import torch

from .config import SEED_LIMIT, check_count

PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10
MASK32 = 0xFFFFFFFF


class Stream(enum.IntEnum):
    """Counter word c2: which use a draw serves. Never renumber: results depend on it."""

    DERIVE_SEED = 1
    INIT = 2
    SUBSET = 3
    DELTA = 4
    SIGN_FLIP = 5
    SHUFFLE = 6
    PROJECTION = 7
    PROBE = 8
    DATA = 9
    TEST_UNIFORM = 10
    TEST_SUBSET = 11  # which test points a run's evasion attacker perturbs
    TEST_DELTA = 12  # the evasion attack's random draws (uniform in the ball, PGD's random starts)


class Purpose(enum.IntEnum):
    """Seed families (the ``purpose`` of :func:`derive_seeds`). Never renumber: results depend on it.

    A trajectory family p derives its init, poison and schedule seeds from purposes 3p, 3p + 1 and
    3p + 2 of the master seed (:func:`trajectory_seeds`); probe j's training split is family
    PROBE_BASE + 2j and its verification split PROBE_BASE + 2j + 1; UNROLLED is the unrolled
    attacks' family of ``attack.reference_seed``. REFERENCE is used directly:
    the gradient attack's clean reference model draws its init and schedule seeds from purpose
    REFERENCE of ``attack.reference_seed``.
    """

    CLEAN = 1  # the clean runs that define g_c
    SAMPLE = 2  # ``barrierkit sample`` and the engine's own tests and benchmarks
    POOL = 3  # the heavy-poison unsafe pool
    EMPIRICAL = 4  # a certificate's δ_emp runs (the same seeds for every attack and budget)
    PROBE_BASE = 100
    REFERENCE = 0x5EF
    UNROLLED = 0x7A11  # the unrolled attacks' own training runs, a family of attack.reference_seed


def probe_purpose(index: int, split: str) -> int:
    """The seed family of probe ``index``'s ``train`` or ``verify`` split."""
    if split not in ("train", "verify"):
        raise ValueError(f"split: must be 'train' or 'verify', got {split!r}")
    return Purpose.PROBE_BASE + 2 * int(index) + (1 if split == "verify" else 0)


# --------------------------------------------------------------------------- numpy


def philox4x32_numpy(
    c0: np.ndarray, c1: np.ndarray, c2: np.ndarray, c3: np.ndarray, k0: np.ndarray, k1: np.ndarray
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Philox4x32-10 on broadcastable arrays of 32-bit values (any integer dtype); uint64 out."""
    c0, c1, c2, c3, k0, k1 = (np.asarray(a).astype(np.uint64) & np.uint64(MASK32) for a in (c0, c1, c2, c3, k0, k1))
    c0, c1, c2, c3, k0, k1 = np.broadcast_arrays(c0, c1, c2, c3, k0, k1)
    m0, m1, mask = np.uint64(PHILOX_M0), np.uint64(PHILOX_M1), np.uint64(MASK32)
    w0, w1, s32 = np.uint64(PHILOX_W0), np.uint64(PHILOX_W1), np.uint64(32)
    for _ in range(PHILOX_ROUNDS):
        p0 = m0 * c0  # < 2**64: exact in uint64
        p1 = m1 * c2
        c0, c1, c2, c3 = (p1 >> s32) ^ c1 ^ k0, p1 & mask, (p0 >> s32) ^ c3 ^ k1, p0 & mask
        k0 = (k0 + w0) & mask
        k1 = (k1 + w1) & mask
    return c0, c1, c2, c3


def split_seed_numpy(seed) -> Tuple[np.ndarray, np.ndarray]:
    """A 64-bit seed (array) as the Philox key words (low, high)."""
    s = np.asarray(seed).astype(np.uint64)
    return s & np.uint64(MASK32), s >> np.uint64(32)


def bits_numpy(seed, c0, c1, stream: int, c3=0) -> Tuple[np.ndarray, ...]:
    """The four 32-bit words drawn for ``seed`` at counter (c0, c1, stream, c3)."""
    k0, k1 = split_seed_numpy(seed)
    return philox4x32_numpy(np.asarray(c0), np.asarray(c1), np.asarray(int(stream)), np.asarray(c3), k0, k1)


def uniform_from_bits_numpy(bits: np.ndarray) -> np.ndarray:
    """Uniform in the open interval (0, 1), exact in float64."""
    return (bits.astype(np.float64) + 0.5) * (1.0 / 4294967296.0)


# --------------------------------------------------------------------------- torch


def _mulhilo_torch(a: int, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of a*b for a 32-bit constant a and int64 b in [0, 2**32).

    The product needs 64 unsigned bits; int64 multiplication wraps modulo 2**64 (two's
    complement), so the low 64 bits are exact, the arithmetic shift plus mask recovers the high
    word, and tests check every word against the numpy uint64 implementation.
    """
    p = b * a
    return (p >> 32) & MASK32, p & MASK32


PHILOX_BLOCK = 1 << 16  # CPU: elements per block, so a round's temporaries stay in cache
PHILOX_BLOCK_CUDA = 1 << 22  # CUDA: each op is a kernel launch, so blocks only bound the memory


def philox4x32_torch(
    c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor, k0: torch.Tensor, k1: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Philox4x32-10 on broadcastable int64 tensors holding 32-bit values; int64 out.

    Large inputs are processed in blocks: the ten rounds are ~25 elementwise ops each,
    memory-bound on big tensors and cache-resident on small CPU blocks (PHILOX_BLOCK). On CUDA
    every op is a kernel launch, so blocks there are large (PHILOX_BLOCK_CUDA) and only cap the
    temporaries' memory. The blocking never changes a bit.
    """
    words = torch.broadcast_tensors(*(t.to(torch.int64) & MASK32 for t in (c0, c1, c2, c3, k0, k1)))
    shape = words[0].shape
    flat = [w.reshape(-1) for w in words]
    total = flat[0].numel()
    step = PHILOX_BLOCK_CUDA if flat[0].device.type == "cuda" else PHILOX_BLOCK
    if total <= step:
        out = _philox_rounds(*flat)
        return tuple(o.reshape(shape) for o in out)  # type: ignore[return-value]
    out = [torch.empty(total, dtype=torch.int64, device=flat[0].device) for _ in range(4)]
    for lo in range(0, total, step):
        block = _philox_rounds(*(w[lo:lo + step] for w in flat))
        for o, b in zip(out, block):
            o[lo:lo + step] = b
    return tuple(o.reshape(shape) for o in out)  # type: ignore[return-value]


def _philox_rounds(c0, c1, c2, c3, k0, k1):
    for _ in range(PHILOX_ROUNDS):
        hi0, lo0 = _mulhilo_torch(PHILOX_M0, c0)
        hi1, lo1 = _mulhilo_torch(PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + PHILOX_W0) & MASK32
        k1 = (k1 + PHILOX_W1) & MASK32
    return c0, c1, c2, c3


def _as_long(x, device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=torch.int64)
    return torch.as_tensor(np.asarray(x, dtype=np.int64), device=device)


def bits_torch(seed, c0, c1, stream: int, c3=0, device=None) -> Tuple[torch.Tensor, ...]:
    """The four 32-bit words (int64 tensors) for ``seed`` at counter (c0, c1, stream, c3)."""
    if device is None:
        device = next((t.device for t in (seed, c0, c1, c3) if isinstance(t, torch.Tensor)), torch.device("cpu"))
    s = _as_long(seed, device)
    k0, k1 = s & MASK32, s >> 32
    return philox4x32_torch(_as_long(c0, device), _as_long(c1, device), torch.full((), int(stream), dtype=torch.int64, device=device), _as_long(c3, device), k0, k1)


def uniform_from_bits_torch(bits: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Uniform in (0, 1): computed exactly in float64, then rounded to ``dtype``."""
    return ((bits.to(torch.float64) + 0.5) * (1.0 / 4294967296.0)).to(dtype)


def normal_pair_torch(b0: torch.Tensor, b1: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Two standard normals (float64) from two words by Box-Muller."""
    u0 = uniform_from_bits_torch(b0)
    u1 = uniform_from_bits_torch(b1)
    r = torch.sqrt(-2.0 * torch.log(u0))
    return r * torch.cos(2.0 * np.pi * u1), r * torch.sin(2.0 * np.pi * u1)


def ball_point_torch(words: torch.Tensor, radius_u: Optional[torch.Tensor], delta: float, norm: str, dim: int) -> torch.Tensor:
    """[..., dim] float64: a point uniform in the l_inf or l_2 ball of radius ``delta``.

    ``words`` [..., dim + dim % 2] are Philox words (l_inf uses the first dim as uniforms; l_2 turns
    them in pairs into normals by Box-Muller, so an odd dim needs one word more); ``radius_u`` [...]
    is a uniform word for the l_2 radius delta * u^(1/dim) (unused for l_inf)."""
    if norm == "inf":
        return delta * (2.0 * uniform_from_bits_torch(words[..., :dim]) - 1.0)
    pairs = words[..., :dim + dim % 2]
    z0, z1 = normal_pair_torch(pairs[..., 0::2], pairs[..., 1::2])
    z = torch.stack([z0, z1], dim=-1).reshape(*pairs.shape[:-1], -1)[..., :dim]
    radius = delta * uniform_from_bits_torch(radius_u) ** (1.0 / dim)
    return z * (radius / torch.linalg.vector_norm(z, dim=-1).clamp_min(1e-300)).unsqueeze(-1)


_LN2 = 0.6931471805599453  # the float64 nearest ln 2
_LOG_TERMS = 20  # atanh series: |s| <= 1/3, so the 20th odd term is below 2**-64 of the sum
_TRIG_TERMS = 12  # Taylor series on |x| <= pi/4: the 12th term is below 2**-64


def log_portable(u: np.ndarray) -> np.ndarray:
    """ln u for u > 0 in float64 from IEEE +, -, *, / and the exact frexp only: the same bits on
    every CPU (numpy's np.log takes a different SIMD path with AVX-512 than with AVX2, and their
    last bits differ). u = m·2**e, ln m = 2·atanh(s) with s = (m − 1)/(m + 1), by Horner."""
    m, e = np.frexp(np.asarray(u, dtype=np.float64))
    s = (m - 1.0) / (m + 1.0)
    s2 = s * s
    acc = np.zeros_like(s)
    for k in range(_LOG_TERMS - 1, -1, -1):
        acc = acc * s2 + 1.0 / (2 * k + 1)
    return 2.0 * s * acc + e.astype(np.float64) * _LN2


def cos_sin_turns_portable(v: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(cos 2πv, sin 2πv) for v in [0, 1) from IEEE arithmetic only (see :func:`log_portable`):
    4v = n + f exactly with n the nearest integer, then Taylor series at x = f·π/2, |x| <= π/4,
    rotated by the quarter turns n."""
    q = np.asarray(v, dtype=np.float64) * 4.0
    n = np.floor(q + 0.5)
    x = (q - n) * (np.pi / 2.0)
    x2 = x * x
    c = np.ones_like(x)
    si = np.ones_like(x)
    for k in range(_TRIG_TERMS - 1, 0, -1):  # nested: cos x = 1 − x²/(1·2)·(1 − x²/(3·4)·(…)), sin x / x likewise
        c = 1.0 - c * x2 / ((2 * k - 1) * (2 * k))
        si = 1.0 - si * x2 / ((2 * k) * (2 * k + 1))
    si = si * x
    quarter = n.astype(np.int64) % 4
    cos = np.select([quarter == 0, quarter == 1, quarter == 2], [c, -si, -c], si)
    sin = np.select([quarter == 0, quarter == 1, quarter == 2], [si, c, -si], -c)
    return cos, sin


def normal_pair_numpy(b0: np.ndarray, b1: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Two standard normals (float64) from two words by Box-Muller, the same bits on every CPU
    (:func:`log_portable`, :func:`cos_sin_turns_portable`; sqrt is correctly rounded by IEEE)."""
    u0 = uniform_from_bits_numpy(b0)
    u1 = uniform_from_bits_numpy(b1)
    r = np.sqrt(-2.0 * log_portable(u0))
    cos, sin = cos_sin_turns_portable(u1)
    return r * cos, r * sin


# --------------------------------------------------------------------------- seeds


def derive_seeds(master_seed: int, purpose: int, start: int, count: int) -> np.ndarray:
    """``count`` independent 63-bit seeds for trajectories start..start+count-1 of a purpose.

    Purpose separates seed families (e.g. clean runs, training split, verification split of
    each probe); the result is a pure function of its arguments.
    """
    if not 0 <= int(master_seed) < SEED_LIMIT:
        raise ValueError(f"seed: must be in [0, 2**63), got {master_seed}")
    idx = np.arange(start, start + count, dtype=np.uint64)
    r0, r1, _, _ = bits_numpy(np.uint64(master_seed), idx, np.uint64(purpose), Stream.DERIVE_SEED)
    return ((r1 << np.uint64(32)) | r0).astype(np.uint64) >> np.uint64(1)


def trajectory_seeds(master_seed: int, purpose: int, count: int, start: int = 0) -> np.ndarray:
    """[count, 3] int64 seeds (init, poison, schedule) for trajectories start..start+count-1 of a
    family (:class:`Purpose`)."""
    count = check_count(count, "n")
    cols = [derive_seeds(master_seed, 3 * int(purpose) + j, start, count) for j in range(3)]
    return np.stack(cols, axis=1).astype(np.int64)
