"""Tests of barrierkit.scenario: exactness of constraint generation, solver agreement, an
independent LP, the float64 re-check, status rules and the soundness bound of docs/METHOD.md §6."""
from __future__ import annotations

import json

import cvxpy as cp
import numpy as np
import pytest
from scipy.optimize import linprog

from barrierkit import scenario as sc
from barrierkit.scenario import (
    ScenarioProblem,
    build_rows,
    c_max,
    decide_status,
    recheck,
    row_owner,
    row_values,
    solve,
)

OSQP_TIGHT = {"eps_abs": 1e-10, "eps_rel": 1e-10, "max_iter": 200000}


def random_problem(seed: int, n: int = 60, k: int = 8, m: int = 4, step: float = 0.01,
                   sep: float = 6.0, n_pool: int = 10, mu: float = 1e-3,
                   unsafe: tuple = ()) -> ScenarioProblem:
    """Initial states near 0, a pool near sep*v, heavy-tailed drifting increments, w0 unrelated
    to the separating direction v (so the optimum is far from w0)."""
    rng = np.random.default_rng(seed)
    v = rng.normal(size=m)
    v /= np.linalg.norm(v)
    init = rng.normal(0, 0.3, (n, m))
    inc = step * (rng.standard_t(3, (n, k, m)) + 0.5 * rng.normal(size=(n, 1, m)) * rng.random((n, k, 1)))
    term = init + inc.sum(axis=1)
    pool = sep * v + rng.normal(0, 0.5, (n_pool, m))
    u = np.zeros(n, dtype=bool)
    u[list(unsafe)] = True
    return ScenarioProblem(init, inc, term, u, pool, rng.normal(0, 0.1, m), mu=mu)


def test_build_rows_matches_row_values() -> None:
    p = random_problem(0, n=12, k=3, m=3, unsafe=(2, 7))
    rng = np.random.default_rng(1)
    z = rng.normal(size=p.m + 3)
    a, b = build_rows(p)
    assert a.shape == (p.n_rows, p.m + 3)
    vals = row_values(p, z[:p.m], z[p.m], z[p.m + 1])
    np.testing.assert_allclose(a @ z - b, vals - z[p.m + 2], rtol=0, atol=1e-12)
    sub = np.array([0, 5, 12, 12 + 3 * 12 - 1, p.n_rows - 1])
    a_s, b_s = build_rows(p, sub)
    np.testing.assert_allclose(a_s @ z - b_s, (vals - z[p.m + 2])[sub], rtol=0, atol=1e-12)
    own = row_owner(p)
    assert own[0] == 0 and own[12 + 3 * 5 + 1] == 5 and own[-1] == -1
    assert own[12 + 36] == 2 and own[12 + 37] == 7


@pytest.mark.parametrize("seed,mu,step", [(0, 1e-3, 0.003), (1, 1e-3, 0.03), (2, 0.0, 0.01), (3, 1.0, 0.01)])
def test_constraint_generation_reaches_full_optimum(seed: int, mu: float, step: float) -> None:
    p = random_problem(seed, n=80, k=10, m=5, step=step, mu=mu)
    full = solve(p, constraint_generation=False)
    cg = solve(p, constraint_generation=True, cg_max_add=5)
    assert full.solver_status == cg.solver_status == cp.OPTIMAL
    assert cg.cg_rounds > 1 and cg.n_rows_used < full.n_rows_used == p.n_rows
    assert cg.objective == pytest.approx(full.objective, abs=1e-6)
    assert cg.eta_star == pytest.approx(full.eta_star, abs=1e-6)
    assert cg.eta_check == pytest.approx(full.eta_check, abs=1e-6)
    assert cg.status == full.status
    assert cg.eta_check <= cg.eta_star + 1e-7  # every row, not only the working set, is satisfied
    if mu > 0:  # unique optimum: the points agree too (tie-break makes gamma, c unique)
        np.testing.assert_allclose(cg.w, full.w, atol=1e-5)
        assert cg.gamma == pytest.approx(full.gamma, abs=1e-5)
        assert cg.c == full.c == c_max(p.intervals, p.kappa)


@pytest.mark.parametrize("seed", [0, 1])
def test_clarabel_and_osqp_agree(seed: int) -> None:
    """Stated tolerance: objective and eta within 1e-7, w within 1e-6, with OSQP at eps 1e-10.
    (OSQP needs mu of order 1 on this near-LP; at mu = 1e-3 it stalls, see solve's fallback.)"""
    p = random_problem(seed, n=40, k=6, m=3, mu=1.0)
    a = solve(p, solver="CLARABEL")
    b = solve(p, solver="OSQP", fallback=False, solver_opts=OSQP_TIGHT)
    assert a.solver_status == b.solver_status == cp.OPTIMAL
    assert not b.fell_back and b.solver == "OSQP"
    assert b.objective == pytest.approx(a.objective, abs=1e-7)
    assert b.eta_check == pytest.approx(a.eta_check, abs=1e-7)
    np.testing.assert_allclose(b.w, a.w, atol=1e-6)
    assert a.status == b.status


def _explicit_lp(p: ScenarioProblem):
    """The mu = 0 program written out row by row, independently of build_rows; z = (w, g, c, eta)."""
    m, rows, rhs = p.m, [], []
    for i in range(p.n):
        rows.append(list(p.initial[i]) + [-1.0, 0.0, -1.0]); rhs.append(0.0)
        for j in range(p.intervals):
            rows.append(list(p.increments[i, j]) + [0.0, -1.0, -1.0]); rhs.append(0.0)
        if p.unsafe[i]:
            rows.append(list(-p.terminal[i]) + [1.0, 0.0, -1.0]); rhs.append(-1.0)
    for u in p.pool:
        rows.append(list(-u) + [1.0, 0.0, -1.0]); rhs.append(-1.0)
    bounds = [(-p.w_bound, p.w_bound)] * m + [(None, None), (None, (1 - p.kappa) / p.intervals), (None, None)]
    cost = np.zeros(m + 3)
    cost[-1] = 1.0
    return linprog(cost, A_ub=np.array(rows), b_ub=np.array(rhs), bounds=bounds, method="highs")


@pytest.mark.parametrize("seed,unsafe", [(0, ()), (1, ()), (2, (1,)), (3, ())])
def test_small_lp_against_linprog(seed: int, unsafe: tuple) -> None:
    rng = np.random.default_rng(100 + seed)
    n, m = 5, 2
    init = rng.normal(0, 1, (n, m))
    inc = rng.normal(0, 0.5, (n, 1, m))
    u = np.zeros(n, dtype=bool)
    u[list(unsafe)] = True
    p = ScenarioProblem(init, inc, init + inc[:, 0], u, rng.normal(3, 1, (3, m)), np.zeros(m),
                        kappa=0.2, w_bound=5.0, mu=0.0)
    ref = _explicit_lp(p)
    assert ref.status == 0
    for solver in ("CLARABEL", "HIGHS"):
        for cg in (True, False):
            v = solve(p, solver=solver, constraint_generation=cg, cg_max_add=1)
            assert v.solver_status == cp.OPTIMAL
            assert v.eta_star == pytest.approx(ref.fun, abs=1e-7)
            assert v.eta_check == pytest.approx(ref.fun, abs=1e-7)
            assert v.d == m + 3
    assert (v.status == "REFUTED") == bool(unsafe)


def planted(seed: int, n: int = 50, k: int = 10, m: int = 4, unsafe: tuple = ()) -> ScenarioProblem:
    """Initial features near 0, pool far along v, tiny increments: separable by construction."""
    return random_problem(seed, n=n, k=k, m=m, step=1e-3, sep=8.0, unsafe=unsafe)


def test_planted_separable_is_certified() -> None:
    p = planted(0)
    v = solve(p)
    assert v.status == "CERTIFIED", v.reason
    assert v.eta_check < -v.tau and v.solver_status == cp.OPTIMAL
    assert np.all(v.trajectory_margins < 0) and v.pool_margin < 0
    assert v.trajectory_margins.shape == (p.n,) and v.trajectory_margins.dtype == np.float64
    assert p.intervals * v.c <= 1 - p.kappa and np.all(np.abs(v.w) <= p.w_bound + 1e-9)
    assert v.d == p.m + 4 and v.witness_indices.size == 0
    d = v.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["status"] == "CERTIFIED" and len(d["w"]) == p.m and len(d["trajectory_margins"]) == p.n


@pytest.mark.parametrize("seed", range(6))
def test_one_unsafe_label_is_never_certified(seed: int) -> None:
    """docs/METHOD.md §6: an unsafe scenario forces eta* >= kappa/(K+2), on any features."""
    rng = np.random.default_rng(seed)
    bad = int(rng.integers(0, 30))
    p = random_problem(seed, n=30, k=6, m=3, step=float(rng.choice([1e-3, 1e-2, 0.1])),
                       sep=float(rng.choice([2.0, 8.0, 30.0])), unsafe=(bad,))
    bound = p.kappa / (p.intervals + 2)
    for tie_break in (True, False):
        v = solve(p, tie_break=tie_break)
        assert v.status == "REFUTED" and list(v.witness_indices) == [bad]
        assert v.solver_status == cp.OPTIMAL
        assert v.eta_star >= bound - 1e-7
        assert v.eta_check >= bound - 1e-7
        assert v.trajectory_margins[bad] >= bound - 1e-7


def test_recheck_catches_a_perturbed_solution() -> None:
    p = planted(1)
    v = solve(p)
    assert v.status == "CERTIFIED"
    i, j = 7, 3
    row = p.n + i * p.intervals + j  # the C3 row of step j of trajectory i
    g = p.increments[i, j]
    before = row_values(p, v.w, v.gamma, v.c)[row]
    bump = -before + 1e-6  # move w along g so this one row ends at +1e-6
    w_bad = v.w + bump * g / (g @ g)
    rc = recheck(p, w_bad, v.gamma, v.c)
    assert row_values(p, w_bad, v.gamma, v.c)[row] == pytest.approx(1e-6, abs=1e-9)
    assert rc.eta_check >= 1e-6 - 1e-9 > 0.0 > v.eta_check
    assert rc.trajectory_margins[i] >= 1e-6 - 1e-9
    status, _ = decide_status(p.unsafe, cp.OPTIMAL, rc.eta_check, 1e-7, rc.rounding_bound)
    assert status == "INCONCLUSIVE"
    status_ok, _ = decide_status(p.unsafe, cp.OPTIMAL, recheck(p, v.w, v.gamma, v.c).eta_check, 1e-7)
    assert status_ok == "CERTIFIED"


def test_recheck_clamps_c() -> None:
    p = planted(2)
    v = solve(p)
    rc = recheck(p, v.w, v.gamma, 2.0 * v.c)
    assert rc.c_clamped and rc.c == c_max(p.intervals, p.kappa) and p.intervals * rc.c <= 1 - p.kappa
    assert not recheck(p, v.w, v.gamma, v.c).c_clamped
    for k in range(1, 200):
        cm = c_max(k, 0.1)
        assert k * cm <= 0.9 and k * np.nextafter(cm, np.inf) > 0.9


def test_status_rules() -> None:
    safe, one_bad = np.zeros(5, dtype=bool), np.array([False, True, False, False, False])
    assert decide_status(safe, cp.OPTIMAL, -1.0, 1e-7)[0] == "CERTIFIED"
    for st in (cp.OPTIMAL_INACCURATE, cp.USER_LIMIT, "solver_error: x", cp.INFEASIBLE):
        assert decide_status(safe, st, -1.0, 1e-7)[0] == "INCONCLUSIVE"
    assert decide_status(safe, cp.OPTIMAL, -0.5e-7, 1e-7)[0] == "INCONCLUSIVE"
    assert decide_status(safe, cp.OPTIMAL, float("nan"), 1e-7)[0] == "INCONCLUSIVE"
    assert decide_status(safe, cp.OPTIMAL, -1.0, 1e-7, rounding_bound=1e-6)[0] == "INCONCLUSIVE"
    assert decide_status(one_bad, cp.OPTIMAL, -1.0, 1e-7)[0] == "REFUTED"


@pytest.mark.filterwarnings("ignore:Solution may be inaccurate")
def test_non_optimal_solver_never_certifies(monkeypatch: pytest.MonkeyPatch) -> None:
    p = planted(3)
    good = solve(p)
    assert good.status == "CERTIFIED"
    # a real non-OPTIMAL run: OSQP stopped after a few iterations, fallback disabled ...
    cut = solve(p, solver="OSQP", fallback=False, solver_opts={"max_iter": 5})
    assert cut.solver_status != cp.OPTIMAL and cut.status == "INCONCLUSIVE"
    # ... and with fallback CLARABEL takes over and the verdict says so
    fb = solve(p, solver="OSQP", solver_opts={"max_iter": 5})
    assert fb.fell_back and fb.solver == "CLARABEL" and fb.status == "CERTIFIED"
    # a perfect point reported with an inaccurate status is still not certified
    real = sc._solve_rows

    def inaccurate(*args, **kwargs):
        s = real(*args, **kwargs)
        return sc._Sol(cp.OPTIMAL_INACCURATE, s.z, s.objective, s.duals)

    monkeypatch.setattr(sc, "_solve_rows", inaccurate)
    v = solve(p)
    assert v.eta_check < -1e-3 and v.status == "INCONCLUSIVE"


def test_support_scenarios_by_brute_force() -> None:
    p = random_problem(5, n=14, k=4, m=3, step=0.05, mu=1e-2)
    v = solve(p, count_support=True)
    assert v.n_support is not None and 1 <= v.n_support <= p.d
    brute = []
    for i in range(p.n):
        keep = np.arange(p.n) != i
        q = ScenarioProblem(p.initial[keep], p.increments[keep], p.terminal[keep], p.unsafe[keep],
                            p.pool, p.w0, p.kappa, p.w_bound, p.mu)
        if v.objective - solve(q, constraint_generation=False).objective > 1e-7:
            brute.append(i)
    assert sorted(v.support_indices.tolist()) == brute
    # every trajectory twice: removing one copy never changes the feasible set, so no trajectory
    # is a support scenario, although the duals of the active copies are positive
    two = lambda a: np.concatenate([a, a])
    q2 = ScenarioProblem(two(p.initial), two(p.increments), two(p.terminal), two(p.unsafe),
                         p.pool, p.w0, p.kappa, p.w_bound, p.mu)
    v2 = solve(q2, count_support=True)
    assert v2.objective == pytest.approx(v.objective, abs=1e-7)
    assert v2.n_support == 0


def test_trajectory_margins_group_rows() -> None:
    p = random_problem(4, n=20, k=5, m=3, unsafe=(3, 11, 19))
    rng = np.random.default_rng(2)
    w, gamma, c = rng.normal(size=p.m), 0.3, 0.01
    vals, own = row_values(p, w, gamma, c), row_owner(p)
    rc = recheck(p, w, gamma, c)
    for i in range(p.n):
        assert rc.trajectory_margins[i] == vals[own == i].max()
    assert rc.pool_margin == vals[own == -1].max()
    assert rc.eta_check == vals.max()


def test_input_validation() -> None:
    p = planted(0, n=5, k=2, m=2)
    with pytest.raises(ValueError, match="pool"):
        ScenarioProblem(p.initial, p.increments, p.terminal, p.unsafe, np.zeros((0, 2)), p.w0)
    with pytest.raises(ValueError, match="terminal"):
        ScenarioProblem(p.initial, p.increments, p.terminal[:3], p.unsafe, p.pool, p.w0)
    with pytest.raises(ValueError, match="unsafe"):
        ScenarioProblem(p.initial, p.increments, p.terminal, p.unsafe.astype(int), p.pool, p.w0)
    with pytest.raises(ValueError, match="kappa"):
        ScenarioProblem(p.initial, p.increments, p.terminal, p.unsafe, p.pool, p.w0, kappa=1.0)
    with pytest.raises(ValueError, match="HIGHS"):
        solve(p, solver="HIGHS")
    with pytest.raises(ValueError, match="solver"):
        solve(p, solver="GUROBI")
    assert not p.initial.flags.writeable
