"""Neural barrier certificate (NNBC) fitting: B(phi) = w^T psi(phi) (docs/METHOD.md §4-§5).

``fit_barrier`` learns, on the *training split* only, a smooth trunk psi: R^k -> R^m (feature
standardisation, one tanh hidden layer, linear output) together with an initial output layer w0
and levels gamma0, c0, by minimising hinge losses for the barrier conditions with lambda = gamma + 1:

* (C1) B(s_i(0)) <= gamma                       on every initial state,
* (C3) B(s_i(j+1)) - B(s_i(j)) <= c             on every recorded increment,
* (C2) B(u) >= gamma + 1                        on pool rows and terminal states of unsafe runs,
* (C4) K c <= 1 - kappa                         enforced by construction (see below).

Each row group's hinge loss (C1, C3, C2 on the pool, C2 on unsafe terminal states when the caller
labels any) is averaged over its own rows and the averages are summed, so the N*K increment rows do
not drown out the pool and a large pool does not drown out a few labelled unsafe runs. C3 is
measured in horizon units, relu(K * (dB - c) + margin), which gives it the gradient scale of C1 and
C2 (unscaled increments are ~1/K and converge far more slowly); it asks every increment for
dB <= c - margin/K. The default margin (16) exceeds K*c_max = 1 - kappa, so the fit asks B to *fall*
by at least margin/K - c along every training run: a Lyapunov-like trunk, whose increments on
fresh runs stay below c with room to spare (docs/METHOD.md §5). C4 needs no penalty:
c = c_max * (1 - softplus(r)) with c_max the largest float64 such that K * c_max <= 1 - kappa, so
K*c <= 1 - kappa holds exactly for every r.

Soundness does not depend on anything here. psi and w0 come only from the training split; the
verifier (scenario convex program, docs/METHOD.md §6) fixes psi, evaluates it with the float64
numpy function :meth:`Barrier.psi`, and re-optimises w, gamma and c on a fresh verification split.
A poor fit only makes certification succeed less often; it can never make it wrong.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Tuple, Union

import numpy as np
import torch

from .config import BarrierConfig
from .scenario import c_max

STD_FLOOR = 1e-6  # floor on a feature's standard deviation (constant features stay finite)
FORMAT = "barrierkit.barrier/1"
Scalar = Union[torch.Tensor, float]


@dataclass
class Barrier:
    """Trunk psi (fixed after fitting), initial output layer w0, levels gamma0, c0, and the
    feature standardisation. ``layers`` are (W, b) pairs applied as x @ W.T + b, tanh after every
    layer but the last."""

    mean: np.ndarray
    scale: np.ndarray
    layers: List[Tuple[np.ndarray, np.ndarray]]
    w0: np.ndarray
    gamma0: float
    c0: float
    config: BarrierConfig
    train_loss: float
    train_violations: Dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mean = np.asarray(self.mean, dtype=np.float64)
        self.scale = np.asarray(self.scale, dtype=np.float64)
        self.layers = [(np.asarray(W, dtype=np.float64), np.asarray(b, dtype=np.float64)) for W, b in self.layers]
        self.w0 = np.asarray(self.w0, dtype=np.float64)
        if self.mean.ndim != 1 or self.scale.shape != self.mean.shape or not np.all(self.scale > 0):
            raise ValueError("Barrier.mean/scale must be 1-D of equal length with scale > 0")
        if not self.layers:
            raise ValueError("Barrier.layers must not be empty")
        dim = self.mean.shape[0]
        for i, (W, b) in enumerate(self.layers):
            if W.ndim != 2 or W.shape[1] != dim or b.shape != (W.shape[0],):
                raise ValueError(f"Barrier.layers[{i}] has shapes {W.shape}, {b.shape}; expected (*, {dim}), (*,)")
            dim = W.shape[0]
        if self.w0.shape != (dim,):
            raise ValueError(f"Barrier.w0 must have shape ({dim},), got {self.w0.shape}")

    @property
    def in_dim(self) -> int:
        """k, the feature dimension psi expects."""
        return int(self.mean.shape[0])

    @property
    def out_dim(self) -> int:
        """m, the number of trunk outputs (decision variables in w)."""
        return int(self.w0.shape[0])

    def psi(self, features: np.ndarray) -> np.ndarray:
        """Trunk outputs, [..., k] -> [..., m], in float64 numpy: the function the verifier uses.
        Matrix products go through BLAS, so a state evaluated alone and inside a batch may differ in
        the last ulp; the verifier's float64 re-check tolerance tau covers that."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim < 1 or x.shape[-1] != self.in_dim:
            raise ValueError(f"features must have last dimension {self.in_dim}, got shape {x.shape}")
        h = (x - self.mean) / self.scale
        for i, (W, b) in enumerate(self.layers):
            h = h @ W.T + b
            if i < len(self.layers) - 1:
                h = np.tanh(h)
        return h

    def value(self, features: np.ndarray) -> np.ndarray:
        """B(phi) = w0 . psi(phi), [..., k] -> [...]."""
        return self.psi(features) @ self.w0

    def violations(self, features: np.ndarray, unsafe: np.ndarray, pool: np.ndarray) -> Dict[str, float]:
        """Fraction of rows violating each condition at (w0, gamma0, c0), no margins, in float64:
        C1 initial states, C3 increments, C2_pool pool rows, C2_terminal terminal states of unsafe
        runs (0 when there are none), C4 the single row K*c0 <= 1 - kappa."""
        features, unsafe, pool = _check_inputs(features, unsafe, pool)
        B, B_pool = self.value(features), self.value(pool)
        K = B.shape[1] - 1

        def frac(bad: np.ndarray) -> float:
            return float(np.mean(bad)) if bad.size else 0.0

        return {
            "C1": frac(B[:, 0] > self.gamma0),
            "C3": frac(np.diff(B, axis=1) > self.c0),
            "C2_pool": frac(B_pool < self.gamma0 + 1.0),
            "C2_terminal": frac(B[unsafe, K] < self.gamma0 + 1.0),
            "C4": float(K * self.c0 > 1.0 - self.config.kappa),
        }

    def to_dict(self) -> Dict[str, Any]:
        """JSON-safe dict of python floats; ``from_dict`` restores every float64 exactly."""
        return {
            "format": FORMAT,
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "layers": [{"W": W.tolist(), "b": b.tolist()} for W, b in self.layers],
            "w0": self.w0.tolist(),
            "gamma0": float(self.gamma0),
            "c0": float(self.c0),
            "config": asdict(self.config),
            "train_loss": float(self.train_loss),
            "train_violations": {k: float(v) for k, v in self.train_violations.items()},
        }

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Barrier":
        """Inverse of :meth:`to_dict` (also accepts its json.loads output)."""
        if d.get("format") != FORMAT:
            raise ValueError(f"format must be {FORMAT!r}, got {d.get('format')!r}")
        return cls(
            mean=np.array(d["mean"], dtype=np.float64),
            scale=np.array(d["scale"], dtype=np.float64),
            layers=[(np.array(L["W"], dtype=np.float64), np.array(L["b"], dtype=np.float64)) for L in d["layers"]],
            w0=np.array(d["w0"], dtype=np.float64),
            gamma0=float(d["gamma0"]),
            c0=float(d["c0"]),
            config=BarrierConfig(**d["config"]),
            train_loss=float(d["train_loss"]),
            train_violations={k: float(v) for k, v in d["train_violations"].items()},
        )


def _check_inputs(features: np.ndarray, unsafe: np.ndarray, pool: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    features = np.asarray(features)
    unsafe = np.asarray(unsafe)
    pool = np.asarray(pool)
    if features.ndim != 3 or features.shape[0] < 1 or features.shape[1] < 2 or features.shape[2] < 1:
        raise ValueError(f"features must have shape [N>=1, K+1>=2, k>=1], got {features.shape}")
    n, _, k = features.shape
    if unsafe.shape != (n,) or unsafe.dtype != np.bool_:
        raise ValueError(f"unsafe must be a bool array of shape ({n},), got {unsafe.dtype} {unsafe.shape}")
    if pool.ndim != 2 or pool.shape[1] != k:
        raise ValueError(f"pool must have shape [P, {k}], got {pool.shape}")
    if pool.shape[0] == 0:
        raise ValueError("pool is empty: without unsafe examples the barrier is trivial (w = 0 satisfies C1, C3)")
    for name, arr in (("features", features), ("pool", pool)):
        if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
            raise ValueError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains NaN or infinite values")
    return features.astype(np.float64), unsafe, pool.astype(np.float64)


def _hinge_loss(
    B_traj: torch.Tensor, B_pool: torch.Tensor, unsafe: torch.Tensor, gamma: Scalar, c: Scalar, margin: float
) -> torch.Tensor:
    """Sum of the mean hinge loss of each row group: C1, C3 (in horizon units), C2 on the pool and
    C2 on unsafe terminal states (omitted when no run ended unsafe)."""
    K = B_traj.shape[1] - 1
    loss = torch.relu(B_traj[:, 0] - gamma + margin).mean()
    loss = loss + torch.relu(K * (B_traj.diff(dim=1) - c) + margin).mean()
    loss = loss + torch.relu(gamma + 1.0 - B_pool + margin).mean()
    if bool(unsafe.any()):
        loss = loss + torch.relu(gamma + 1.0 - B_traj[unsafe, K] + margin).mean()
    return loss


def fit_barrier(
    features: np.ndarray, unsafe: np.ndarray, pool: np.ndarray, config: BarrierConfig = BarrierConfig()
) -> Barrier:
    """Fit psi, w0, gamma0, c0 on the training split: features [N, K+1, k], unsafe [N] bool
    (terminal state unsafe), pool [P, k] of known-unsafe states.

    Optimisation runs in float32 on one torch thread: float32 tanh is several times faster, the
    matrices are too small to gain from threads (and oversubscribed threads are very slow), and one
    thread makes the result bit-identical for a given seed whatever the host's core count. The
    fitted weights are then held, and every reported number computed, in float64.

    The learning rate is cosine-annealed to ``lr * final_lr_fraction``: at a constant rate Adam
    keeps oscillating between iterates that do and do not satisfy a hinge group (on a planted
    case the unsafe terminal states' group flipped between 0 and 30 % violated from one epoch to
    the next), so the returned last iterate depended on the last bits of rounding and a fit passed
    on one CPU kind and failed on another. Annealed, the last iterate has converged and the fit
    agrees across CPU kinds in what it satisfies."""
    features, unsafe, pool = _check_inputs(features, unsafe, pool)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit(features, unsafe, pool, config)
    finally:
        torch.set_num_threads(threads)


def _fit(features: np.ndarray, unsafe: np.ndarray, pool: np.ndarray, config: BarrierConfig) -> Barrier:
    n, k1, k = features.shape
    K = k1 - 1
    mean = features.reshape(-1, k).mean(axis=0)
    scale = np.maximum(features.reshape(-1, k).std(axis=0), STD_FLOOR)
    cmax = c_max(K, config.kappa)

    gen = torch.Generator().manual_seed(config.seed)
    dt = torch.float32
    W1 = (torch.randn(config.width, k, generator=gen, dtype=dt) / math.sqrt(k)).requires_grad_()
    b1 = torch.zeros(config.width, dtype=dt, requires_grad=True)
    W2 = (torch.randn(config.out_dim, config.width, generator=gen, dtype=dt) / math.sqrt(config.width)).requires_grad_()
    b2 = torch.zeros(config.out_dim, dtype=dt, requires_grad=True)
    w = (torch.randn(config.out_dim, generator=gen, dtype=dt) / math.sqrt(config.out_dim)).requires_grad_()
    gamma = torch.zeros((), dtype=dt, requires_grad=True)
    r = torch.full((), math.log(math.expm1(0.5)), dtype=dt, requires_grad=True)  # c starts at c_max / 2

    x = torch.from_numpy((np.concatenate([features.reshape(-1, k), pool]) - mean) / scale).to(dt)
    unsafe_t = torch.from_numpy(unsafe)
    opt = torch.optim.Adam(
        [
            {"params": [W1, W2, w], "weight_decay": config.weight_decay},
            {"params": [b1, b2, gamma, r], "weight_decay": 0.0},
        ],
        lr=config.lr,
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs,
                                                          eta_min=config.lr * config.final_lr_fraction)
    for _ in range(config.epochs):
        opt.zero_grad(set_to_none=True)
        B = torch.tanh(x @ W1.T + b1) @ (W2.T @ w) + b2 @ w  # = w . psi(x), one narrow matmul
        c = cmax * (1.0 - torch.nn.functional.softplus(r))
        _hinge_loss(B[: n * k1].reshape(n, k1), B[n * k1 :], unsafe_t, gamma, c, config.margin).backward()
        opt.step()
        schedule.step()

    def f64(t: torch.Tensor) -> np.ndarray:
        return t.detach().numpy().astype(np.float64)

    # c0 <= cmax exactly in float64 (1 - softplus <= 1 and rounding is monotone), hence K*c0 <= 1 - kappa.
    c0 = float(cmax * (1.0 - np.logaddexp(0.0, float(r.detach()))))
    barrier = Barrier(
        mean=mean,
        scale=scale,
        layers=[(f64(W1), f64(b1)), (f64(W2), f64(b2))],
        w0=f64(w),
        gamma0=float(gamma.detach()),
        c0=c0,
        config=config,
        train_loss=0.0,
    )
    B_traj, B_pool = (torch.from_numpy(barrier.value(a)) for a in (features, pool))
    barrier.train_loss = float(_hinge_loss(B_traj, B_pool, unsafe_t, barrier.gamma0, barrier.c0, config.margin))
    barrier.train_violations = barrier.violations(features, unsafe, pool)
    return barrier
