"""The scenario convex program that verifies a barrier (docs/METHOD.md §6 and §9).

Decision vector z = (w in R^m, gamma, c, eta). Every scenario row has the form
``value(w, gamma, c) <= eta`` and is stored as one row of a stacked system ``A z <= b``:

* C1, every trajectory i:            w.psi_i(0) - gamma
* C3, every trajectory i, step j:    w.(psi_i(j+1) - psi_i(j)) - c
* C2, every trajectory i with u_i:   gamma + 1 - w.psi_i(K)
* pool, every unsafe-pool state u:   gamma + 1 - w.psi(u)     (fixed constraints, not scenarios)

plus K*c <= 1 - kappa and |w_k| <= W; the objective is eta + (mu/2)||w - w0||^2.

Global row order (used by every function here): C1 rows [0, N), C3 rows N + i*K + j, C2 rows for
the unsafe trajectories in increasing i, then the P pool rows.

The verdict is decided only by a float64 re-check of every row at the returned point, never by the
solver's own eta, and only an OPTIMAL solver status can certify.

Tie-break (ours, docs/METHOD.md §11.2: the PAC bounds of §7 need a unique solution): with mu > 0 the optimal (w, eta) is
unique, but gamma and c generally are not (c, for instance, can usually be lowered without cost).
The returned point is made unique lexicographically (Calafiore & Campi 2005, section 4.1): among
optimal points, first maximise c, then gamma. Given (w*, eta*) both have closed forms,
c = largest float64 with K*c <= 1 - kappa and gamma = min over pool and C2 rows of w.psi - 1 + eta*.
This choice also gives fresh safe trajectories the most slack on their C1 and C3 rows.
With mu == 0 (an LP) w itself need not be unique; prefer mu > 0 when the PAC bound is used.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

import cvxpy as cp
import numpy as np
import scipy.sparse as sp

from .config import SOLVERS, decision_variables

__all__ = [
    "ScenarioProblem",
    "Recheck",
    "Verdict",
    "SOLVERS",
    "c_max",
    "row_owner",
    "row_values",
    "trajectory_margins",
    "build_rows",
    "recheck",
    "decide_status",
    "solve",
]

_F64_UNIT = 2.0**-53  # unit roundoff of float64
_DUAL_THRESHOLD = 1e-7  # the row duals sum to 1 (d eta), so this is an absolute threshold


def _f64(name: str, a: Any, ndim: int) -> np.ndarray:
    arr = np.ascontiguousarray(np.asarray(a, dtype=np.float64))
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values")
    return arr


@dataclass(frozen=True)
class ScenarioProblem:
    """Stored features of the verification split and the fixed data of the program (float64)."""

    initial: np.ndarray  # [N, m]   psi_i(0)
    increments: np.ndarray  # [N, K, m] psi_i(j+1) - psi_i(j)
    terminal: np.ndarray  # [N, m]   psi_i(K)
    unsafe: np.ndarray  # [N] bool, u_i = G(theta_i(T)) > alpha
    pool: np.ndarray  # [P, m]   psi of unsafe-pool states (fixed constraints, not scenarios)
    w0: np.ndarray  # [m] initial w from barrier training
    kappa: float = 0.1  # margin: K*c <= 1 - kappa
    w_bound: float = 100.0  # ||w||_inf <= W
    mu: float = 1e-3  # proximal weight (mu/2)||w - w0||^2 ; mu == 0 makes it an LP

    def __post_init__(self) -> None:
        initial = _f64("initial", self.initial, 2)
        increments = _f64("increments", self.increments, 3)
        terminal = _f64("terminal", self.terminal, 2)
        pool = _f64("pool", self.pool, 2)
        w0 = _f64("w0", self.w0, 1)
        unsafe = np.asarray(self.unsafe)
        if unsafe.dtype != np.bool_:
            raise ValueError(f"unsafe must be a bool array, got dtype {unsafe.dtype}")
        n, m = initial.shape
        if n < 1 or m < 1:
            raise ValueError(f"initial must be [N>=1, m>=1], got shape {initial.shape}")
        if increments.shape[0] != n or increments.shape[2] != m or increments.shape[1] < 1:
            raise ValueError(f"increments must be [N, K>=1, m]=[{n}, K, {m}], got {increments.shape}")
        if terminal.shape != (n, m):
            raise ValueError(f"terminal must be [N, m]=[{n}, {m}], got {terminal.shape}")
        if unsafe.shape != (n,):
            raise ValueError(f"unsafe must be [N]=[{n}], got {unsafe.shape}")
        if pool.shape[1:] != (m,) or pool.shape[0] < 1:
            raise ValueError(f"pool must be [P>=1, m={m}] (it makes the barrier non-trivial), got {pool.shape}")
        if w0.shape != (m,):
            raise ValueError(f"w0 must be [m]=[{m}], got {w0.shape}")
        if not (0.0 < float(self.kappa) < 1.0):
            raise ValueError(f"kappa must lie in (0, 1), got {self.kappa}")
        if not (float(self.w_bound) > 0.0 and math.isfinite(float(self.w_bound))):
            raise ValueError(f"w_bound must be positive and finite, got {self.w_bound}")
        if not (float(self.mu) >= 0.0 and math.isfinite(float(self.mu))):
            raise ValueError(f"mu must be >= 0 and finite, got {self.mu}")
        for name, arr in (("initial", initial), ("increments", increments), ("terminal", terminal),
                          ("unsafe", unsafe.copy()), ("pool", pool), ("w0", w0)):
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        for name in ("kappa", "w_bound", "mu"):
            object.__setattr__(self, name, float(getattr(self, name)))

    @property
    def n(self) -> int:
        """Number of verification trajectories N."""
        return int(self.initial.shape[0])

    @property
    def intervals(self) -> int:
        """Number of recorded intervals K."""
        return int(self.increments.shape[1])

    @property
    def m(self) -> int:
        """Feature dimension m (length of w)."""
        return int(self.initial.shape[1])

    @property
    def unsafe_index(self) -> np.ndarray:
        """Indices of trajectories labelled unsafe (they carry a C2 row), increasing."""
        return np.flatnonzero(self.unsafe)

    @property
    def n_rows(self) -> int:
        """Number of scenario and pool rows (C4 and the box on w are not counted)."""
        return self.n * (self.intervals + 1) + int(self.unsafe.sum()) + int(self.pool.shape[0])

    @property
    def d(self) -> int:
        """Scalar decision variables for the PAC bound: w, gamma, c, eta, plus one epigraph
        variable for the quadratic objective when mu > 0 (conservative; docs/METHOD.md §7)."""
        return decision_variables(self.m, self.mu)


def c_max(k: int, kappa: float) -> float:
    """Largest float64 c with K*c <= 1 - kappa when the product is evaluated in float64."""
    limit = 1.0 - kappa
    c = limit / k
    while k * c > limit:
        c = float(np.nextafter(c, -np.inf))
    while k * float(np.nextafter(c, np.inf)) <= limit:
        c = float(np.nextafter(c, np.inf))
    return float(c)


def row_owner(problem: ScenarioProblem) -> np.ndarray:
    """Trajectory index of every global row; -1 for pool rows."""
    n, k = problem.n, problem.intervals
    return np.concatenate([
        np.arange(n), np.repeat(np.arange(n), k), problem.unsafe_index,
        np.full(problem.pool.shape[0], -1),
    ]).astype(np.int64)


def _blocks(problem: ScenarioProblem, w: np.ndarray, gamma: float, c: float):
    w = np.asarray(w, dtype=np.float64)
    n, k, m = problem.increments.shape
    c1 = problem.initial @ w - gamma
    c3 = (problem.increments.reshape(n * k, m) @ w).reshape(n, k) - c
    c2 = gamma + 1.0 - problem.terminal[problem.unsafe] @ w
    pl = gamma + 1.0 - problem.pool @ w
    return c1, c3, c2, pl


def row_values(problem: ScenarioProblem, w: np.ndarray, gamma: float, c: float) -> np.ndarray:
    """Every row value (left side without eta) in float64, in the global row order."""
    c1, c3, c2, pl = _blocks(problem, w, float(gamma), float(c))
    return np.concatenate([c1, c3.ravel(), c2, pl])


def trajectory_margins(problem: ScenarioProblem, w: np.ndarray, gamma: float,
                       c: float) -> Tuple[np.ndarray, float]:
    """Per-trajectory maximum row value [N] (C1, C3 and C2 when unsafe) and the pool maximum."""
    c1, c3, c2, pl = _blocks(problem, w, float(gamma), float(c))
    per = np.maximum(c1, c3.max(axis=1))
    ui = problem.unsafe_index
    per[ui] = np.maximum(per[ui], c2)
    return per, float(pl.max())


def build_rows(problem: ScenarioProblem, rows: Optional[np.ndarray] = None) -> Tuple[sp.csr_matrix, np.ndarray]:
    """Stacked constraint rows A z <= b (z = (w, gamma, c, eta)) for the given global row ids.

    ``rows=None`` means all rows. Built by vectorised gathers into one sparse matrix; C4 and the
    box on w are not included (the solver adds them as two vector constraints).
    """
    n, k, m = problem.increments.shape
    ui = problem.unsafe_index
    n_u = ui.size
    r = np.arange(problem.n_rows) if rows is None else np.asarray(rows, dtype=np.int64)
    if r.size and (r.min() < 0 or r.max() >= problem.n_rows):
        raise ValueError("rows contains ids outside [0, n_rows)")
    feats = np.empty((r.size, m), dtype=np.float64)
    coef = np.zeros((r.size, 3), dtype=np.float64)  # gamma, c, eta
    b = np.zeros(r.size, dtype=np.float64)
    coef[:, 2] = -1.0
    s1, s3, s2 = n, n + n * k, n + n * k + n_u
    is1, is3 = r < s1, (r >= s1) & (r < s3)
    is2, isp = (r >= s3) & (r < s2), r >= s2
    feats[is1] = problem.initial[r[is1]]
    coef[is1, 0] = -1.0
    j3 = r[is3] - s1
    feats[is3] = problem.increments[j3 // k, j3 % k]
    coef[is3, 1] = -1.0
    feats[is2] = -problem.terminal[ui[r[is2] - s3]]
    feats[isp] = -problem.pool[r[isp] - s2]
    coef[is2 | isp, 0] = 1.0
    b[is2 | isp] = -1.0
    return sp.csr_matrix(np.hstack([feats, coef])), b


@dataclass(frozen=True)
class Recheck:
    """Float64 re-evaluation of every row at a point (docs/METHOD.md §9)."""

    w: np.ndarray
    gamma: float
    c: float
    c_clamped: bool  # c was lowered to c_max so that K*c <= 1 - kappa holds
    eta_check: float  # max over all rows, pool included
    trajectory_margins: np.ndarray  # [N]
    pool_margin: float
    rounding_bound: float  # bound on the float64 rounding error of any row value


def recheck(problem: ScenarioProblem, w: np.ndarray, gamma: float, c: float) -> Recheck:
    """Recompute every row in float64 at (w, gamma, c); clamp c first if K*c > 1 - kappa.

    Lowering c to c_max keeps C4 and only raises C3 rows, which the re-check then sees. The
    rounding bound is (m+3) u max_row(|w|.|psi| + |gamma| + |c| + 1), valid for any summation order.
    """
    w = np.asarray(w, dtype=np.float64)
    gamma, c = float(gamma), float(c)
    cm = c_max(problem.intervals, problem.kappa)
    clamped = bool(problem.intervals * c > 1.0 - problem.kappa)
    if clamped:
        c = cm
    per, pool_margin = trajectory_margins(problem, w, gamma, c)
    eta_check = float(max(per.max(), pool_margin))
    aw = np.abs(w)
    n, k, m = problem.increments.shape
    mags = max(float((np.abs(problem.initial) @ aw).max()),
               float((np.abs(problem.increments.reshape(n * k, m)) @ aw).max()),
               float((np.abs(problem.terminal) @ aw).max()),
               float((np.abs(problem.pool) @ aw).max()))
    bound = 1.01 * (m + 3) * _F64_UNIT * (mags + abs(gamma) + abs(c) + 1.0)
    return Recheck(w=w.copy(), gamma=gamma, c=c, c_clamped=clamped, eta_check=eta_check,
                   trajectory_margins=per, pool_margin=pool_margin, rounding_bound=bound)


def decide_status(unsafe: np.ndarray, solver_status: str, eta_check: float, tau: float,
                  rounding_bound: float = 0.0) -> Tuple[str, str]:
    """(status, reason): REFUTED on any unsafe label, CERTIFIED only if the solver status is
    OPTIMAL and eta_check < -tau (tau must exceed the re-check's rounding bound), else INCONCLUSIVE."""
    witnesses = np.flatnonzero(unsafe)
    if witnesses.size:
        return "REFUTED", f"{witnesses.size} verification trajectories ended unsafe"
    if solver_status != cp.OPTIMAL:
        return "INCONCLUSIVE", f"solver status {solver_status!r} is not {cp.OPTIMAL!r}"
    if not math.isfinite(eta_check):
        return "INCONCLUSIVE", "eta_check is not finite"
    if not rounding_bound < tau:
        return "INCONCLUSIVE", f"tau={tau:.3g} does not exceed the float64 rounding bound {rounding_bound:.3g}"
    if eta_check < -tau:
        return "CERTIFIED", f"eta_check={eta_check:.6g} < -tau={-tau:.3g}"
    return "INCONCLUSIVE", f"eta_check={eta_check:.6g} >= -tau={-tau:.3g}"


@dataclass
class Verdict:
    """Outcome of :func:`solve`; ``to_dict`` gives JSON-safe values."""

    status: str
    reason: str
    eta_star: float  # eta returned by the solver
    eta_check: float  # float64 max over every row at (w, gamma, c)
    w: np.ndarray
    gamma: float
    c: float
    c_clamped: bool  # the solver's c violated K*c <= 1 - kappa in float64 and was lowered
    solver: str  # solver that produced the answer
    solver_status: str
    fell_back: bool  # OSQP was asked for and CLARABEL produced the answer
    n_rows_total: int
    n_rows_used: int
    cg_rounds: int
    solve_seconds: float
    support_indices: Optional[np.ndarray]  # None when support was not counted
    n_support: Optional[int]
    trajectory_margins: np.ndarray  # [N] max row value per trajectory at (w, gamma, c)
    pool_margin: float
    witness_indices: np.ndarray  # unsafe trajectories (REFUTED)
    d: int  # scalar decision variables: m + 3, plus 1 (epigraph) when mu > 0
    tau: float
    rounding_bound: float
    objective: float  # eta_star + (mu/2)||w - w0||^2 as reported by the solver

    def to_dict(self) -> Dict[str, Any]:
        """JSON-safe dict: arrays become lists, non-finite floats become None."""

        def conv(v: Any) -> Any:
            if isinstance(v, np.ndarray):
                return [conv(x) for x in v.tolist()]
            if isinstance(v, (np.floating, float)):
                return float(v) if math.isfinite(float(v)) else None
            if isinstance(v, (np.integer,)):
                return int(v)
            if isinstance(v, (np.bool_,)):
                return bool(v)
            if isinstance(v, list):
                return [conv(x) for x in v]
            return v

        return {k: conv(v) for k, v in self.__dict__.items()}


@dataclass
class _Sol:
    status: str
    z: Optional[np.ndarray]
    objective: float
    duals: Optional[np.ndarray]


def _solve_rows(problem: ScenarioProblem, rows: np.ndarray, solver: str,
                opts: Mapping[str, Any]) -> _Sol:
    """One cvxpy solve of the program restricted to the given rows (one stacked constraint)."""
    m = problem.m
    a, b = build_rows(problem, rows)
    z = cp.Variable(m + 3)
    stacked = a @ z <= b
    cons = [stacked, problem.intervals * z[m + 1] <= 1.0 - problem.kappa,
            z[:m] <= problem.w_bound, z[:m] >= -problem.w_bound]
    obj = z[m + 2]
    if problem.mu > 0.0:
        obj = obj + (problem.mu / 2.0) * cp.sum_squares(z[:m] - problem.w0)
    prob = cp.Problem(cp.Minimize(obj), cons)
    try:
        prob.solve(solver=solver, **dict(opts))
    except cp.error.SolverError as exc:
        return _Sol(f"solver_error: {exc}", None, math.nan, None)
    zv = None if z.value is None else np.asarray(z.value, dtype=np.float64)
    duals = None if stacked.dual_value is None else np.asarray(stacked.dual_value, dtype=np.float64)
    val = math.nan if prob.value is None else float(prob.value)
    return _Sol(str(prob.status), zv, val, duals)


def _initial_rows(problem: ScenarioProblem, row_mask: np.ndarray) -> np.ndarray:
    """Working set: all C1, C2 and pool rows plus each trajectory's largest C3 row at w0."""
    n, k = problem.n, problem.intervals
    w0 = np.clip(problem.w0, -problem.w_bound, problem.w_bound)
    c3 = (problem.increments.reshape(n * k, problem.m) @ w0).reshape(n, k)
    c3_rows = n + np.arange(n) * k + np.argmax(c3, axis=1)
    rest = np.concatenate([np.arange(n), np.arange(n + n * k, problem.n_rows)])
    rows = np.union1d(rest, c3_rows)
    return rows[row_mask[rows]]


def _cg(problem: ScenarioProblem, solver: str, opts: Mapping[str, Any], row_mask: np.ndarray,
        init_rows: Optional[np.ndarray], generate: bool, tol: float, max_add: int,
        max_rounds: int) -> Tuple[_Sol, np.ndarray, int]:
    """Constraint generation over the rows in ``row_mask``; exact: it stops only when no masked
    row exceeds eta + tol in float64 at the working-set optimum."""
    m = problem.m
    if not generate:
        rows = np.flatnonzero(row_mask)
        return _solve_rows(problem, rows, solver, opts), rows, 1
    rows = _initial_rows(problem, row_mask) if init_rows is None else np.asarray(init_rows)
    in_set = np.zeros(problem.n_rows, dtype=bool)
    in_set[rows] = True
    for rnd in range(1, max_rounds + 1):
        sol = _solve_rows(problem, rows, solver, opts)
        if sol.status != cp.OPTIMAL or sol.z is None:
            return sol, rows, rnd
        w, gamma, c, eta = sol.z[:m], sol.z[m], sol.z[m + 1], sol.z[m + 2]
        excess = row_values(problem, w, gamma, c) - eta
        cand = np.flatnonzero((excess > tol * max(1.0, abs(eta))) & row_mask & ~in_set)
        if cand.size == 0:
            return sol, rows, rnd
        if cand.size > max_add:
            cand = cand[np.argpartition(-excess[cand], max_add - 1)[:max_add]]
        in_set[cand] = True
        rows = np.flatnonzero(in_set)
    return _Sol(f"constraint generation did not converge in {max_rounds} rounds", None,
                math.nan, None), rows, max_rounds


def _tie_break(problem: ScenarioProblem, w: np.ndarray, eta: float) -> Tuple[float, float]:
    """Lexicographic tie-break among optima with this (w, eta): largest c, then largest gamma."""
    c = c_max(problem.intervals, problem.kappa)
    lows = [problem.pool @ w, problem.terminal[problem.unsafe] @ w]
    gamma = float(np.min(np.concatenate(lows))) - 1.0 + eta
    return gamma, c


def solve(problem: ScenarioProblem, solver: str = "CLARABEL", constraint_generation: bool = True,
          tau: float = 1e-7, count_support: bool = False, fallback: bool = True,
          tie_break: bool = True, cg_tol: float = 1e-9, cg_max_add: Optional[int] = None,
          max_rounds: int = 100, support_tol: float = 1e-7,
          solver_opts: Optional[Mapping[str, Any]] = None) -> Verdict:
    """Solve the scenario program and decide the verdict from a float64 re-check of every row.

    ``solver``: CLARABEL (interior point), OSQP (falls back to CLARABEL when its answer is not
    OPTIMAL or its eta is not confirmed by the re-check within 1e-6, if ``fallback``), or HIGHS
    (LP only, mu == 0). ``constraint_generation`` adds at most ``cg_max_add`` (default
    max(1000, N)) rows per round whose value exceeds eta + ``cg_tol`` * max(1, |eta|), most
    violated first, until none does. ``tie_break`` returns the lexicographic point of the module
    docstring (False: the solver's own gamma and c). ``count_support`` confirms each dual-active
    trajectory by re-solving without it (the objective must drop by more than ``support_tol`` *
    max(1, |objective|)).
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if solver == "HIGHS" and problem.mu > 0.0:
        raise ValueError("solver HIGHS needs an LP: mu must be 0")
    if not tau > 0.0:
        raise ValueError(f"tau must be > 0, got {tau}")
    t0 = time.perf_counter()
    m, n = problem.m, problem.n
    opts = dict(solver_opts or {})
    max_add = int(cg_max_add) if cg_max_add is not None else max(1000, n)
    all_rows = np.ones(problem.n_rows, dtype=bool)

    used, fell_back = solver, False
    sol, rows, rounds = _cg(problem, used, opts, all_rows, None, constraint_generation,
                            cg_tol, max_add, max_rounds)

    def consistent(s: _Sol) -> bool:
        if s.status != cp.OPTIMAL or s.z is None:
            return False
        eta = float(s.z[m + 2])
        chk = recheck(problem, s.z[:m], s.z[m], s.z[m + 1]).eta_check
        return chk <= eta + 1e-6 * max(1.0, abs(eta))

    if solver == "OSQP" and fallback and not consistent(sol):
        used, fell_back = "CLARABEL", True
        opts = {}
        sol, rows, rounds = _cg(problem, used, opts, all_rows, None, constraint_generation,
                                cg_tol, max_add, max_rounds)

    if sol.z is None:
        w = np.full(m, np.nan)
        gamma = c = eta_star = math.nan
        c_clamped = False
    else:
        w = sol.z[:m].copy()
        gamma, c, eta_star = float(sol.z[m]), float(sol.z[m + 1]), float(sol.z[m + 2])
        c_clamped = bool(problem.intervals * c > 1.0 - problem.kappa)
        if tie_break:
            gamma, c = _tie_break(problem, w, eta_star)
    rc = recheck(problem, w, gamma, c)
    status, reason = decide_status(problem.unsafe, sol.status, rc.eta_check, tau, rc.rounding_bound)
    if fell_back:
        reason += "; OSQP answer rejected, solved with CLARABEL"

    support = None
    if count_support and sol.status == cp.OPTIMAL and sol.duals is not None:
        owner = row_owner(problem)
        own = owner[rows]
        cand = np.unique(own[(sol.duals > _DUAL_THRESHOLD) & (own >= 0)])
        keep = []
        for i in cand:
            mask = owner != i
            s_i, _, _ = _cg(problem, used, opts, mask, rows[mask[rows]], constraint_generation,
                            cg_tol, max_add, max_rounds)
            if s_i.status != cp.OPTIMAL:
                keep.append(int(i))  # cannot exclude it: count it (conservative)
            elif sol.objective - s_i.objective > support_tol * max(1.0, abs(sol.objective)):
                keep.append(int(i))
        support = np.asarray(keep, dtype=np.int64)

    return Verdict(
        status=status, reason=reason, eta_star=eta_star, eta_check=rc.eta_check, w=rc.w,
        gamma=rc.gamma, c=rc.c, c_clamped=c_clamped or rc.c_clamped, solver=used,
        solver_status=sol.status, fell_back=fell_back, n_rows_total=problem.n_rows,
        n_rows_used=int(rows.size), cg_rounds=rounds, solve_seconds=time.perf_counter() - t0,
        support_indices=support, n_support=None if support is None else int(support.size),
        trajectory_margins=rc.trajectory_margins, pool_margin=rc.pool_margin,
        witness_indices=problem.unsafe_index, d=problem.d, tau=float(tau),
        rounding_bound=rc.rounding_bound, objective=sol.objective,
    )
