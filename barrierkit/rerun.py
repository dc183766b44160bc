"""``verify --replay``: re-run every run of a certificate from its seeds and compare.

The quick checks (barrierkit.verify) show that a document agrees with itself; they cannot show
that its runs really ended with the stored hit counts, or that the stored barrier really has the
stored margins on them. This re-samples every run with the recorded backend and device (clean
runs, the unsafe pool, each probe's training and verification split, the δ_emp cells, the same
seeds the certification used), recomputes hit counts, labels and the pool each probe separated from,
fits each barrier again on its replayed training split (it must be the stored barrier: a barrier
fitted on anything else, the verification runs above all, voids the scenario bound), rebuilds
the scenario rows from the stored barrier trunk, re-checks them at the stored solution
(w, gamma, c) in float64, solves each scenario program again (its solution and support must be
the stored ones), and stops at the first run or number that differs.

Hit counts must be identical anywhere. On the kind of CPU the certificate was made on, the replay
is bit-identical, so barriers, margins and solutions must match the stored ones. On another kind
float results may differ in their last bits (float32 training grows such differences), so there
the barrier is not fitted again and margins and solutions only have to decide the stored status;
the log names both machines.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np

from .api import sample_pool
from .backends import resolve, resolve_device
from .barrier import Barrier
from .config import CertifyConfig
from .context import radius_context
from .data import get_dataset
from .empirical import attack_configs, training_attack
from .engine import clean_runs, sample
from .environment import versions
from .labels import SafetyRule
from .outcomes import solved_status
from .probe import Certification, fit_probe_barrier, scenario_rows
from .rng import Purpose, probe_purpose, trajectory_seeds
from .scenario import ScenarioProblem, recheck, solve
from .trajectories import Trajectories
from .verify import REL_TOL

SOLUTION_TOL = 1e-6  # a re-solved (w, gamma, c, eta*) against the stored one: identical on one machine
log = logging.getLogger("barrierkit")


@dataclass
class ReplayResult:
    """What a replay found: ``ok``, the first ``mismatch`` (None when ok), and a summary."""

    ok: bool
    mismatch: Optional[str]
    summary: str
    runs: int = 0
    max_margin_difference: float = 0.0


class _Mismatch(Exception):
    pass


def _same_hits(where: str, stored: Any, replayed: np.ndarray) -> None:
    stored, replayed = np.asarray(stored, dtype=np.int64), np.asarray(replayed, dtype=np.int64)
    if stored.shape != replayed.shape:
        raise _Mismatch(f"{where}: {replayed.size} runs replayed, {stored.size} stored")
    off = np.flatnonzero(stored != replayed)
    if off.size:
        i = int(off[0])
        raise _Mismatch(f"{where}: run {i} ended with {int(replayed[i])} correct test points, the certificate says "
                        f"{int(stored[i])} ({off.size} runs differ)")


def _same_machine(doc: Dict[str, Any]) -> bool:
    """Whether this replay runs on the kind of CPU the certificate was made on (then every float
    must come out the same); a warning when not."""
    then, now = doc["versions"], versions()
    made = (then["cpu"], then["aten_cpu_capability"])
    here = (now["cpu"], now["aten_cpu_capability"])
    if made != here:
        log.warning("the certificate was made on %s (%s), this replay runs on %s (%s): float results may differ in "
                    "their last bits, so hit counts and statuses are compared, margins, barriers and solutions "
                    "only through the statuses they decide", *made, *here)
    return made == here


def replay_certificate(doc: Dict[str, Any], progress: Optional[bool] = None) -> ReplayResult:
    """Re-run every run of a (quick-verified) certificate document and compare; see the module."""
    start = time.perf_counter()
    try:
        return _replay(doc, progress, start)
    except _Mismatch as exc:
        return ReplayResult(False, str(exc), "")


def _replay(doc: Dict[str, Any], progress: Optional[bool], start: float) -> ReplayResult:
    cfg = CertifyConfig.from_dict(doc["config"])
    data = get_dataset(cfg.sample.dataset)
    if data.content_hash != doc["data_hash"] or data.name != doc["dataset"]:
        raise _Mismatch(f"dataset {cfg.sample.dataset!r} here is {data.name} with content hash {data.content_hash}; the "
                        f"certificate names {doc['dataset']} with {doc['data_hash']}")
    device = resolve_device(doc["device"])
    strict = _same_machine(doc)
    rule = SafetyRule.for_threat(cfg.sample.threat_kind, doc["clean_accuracy"]["hits"], doc["test_size"], cfg.alpha)
    kw = dict(backend=resolve(doc["backend"], device, cfg.sample.recipe.dtype, attack=cfg.sample.poisoning_attack), device=str(device), progress=progress)
    log.info("replay: %s runs with backend %s on %s", doc["throughput"]["trajectories"], doc["backend"], device)
    clean = clean_runs(cfg.sample, cfg.n_clean, cfg.seed, data=data, **kw)
    if clean.test_size != rule.test_size:
        raise _Mismatch(f"clean runs: the replayed runs are evaluated on {clean.test_size} test points, the certificate "
                        f"labels them as counts over {rule.test_size}")
    _same_hits("clean runs", doc["clean_accuracy"]["hits"], clean.test_hits)
    log.info("replay: %d clean runs agree [%.1f s]", clean.n, time.perf_counter() - start)

    ctx = Certification(cfg, data, rule, pool=[], **kw)
    pool = sample_pool(ctx, doc["pool"]["delta"])
    _same_hits("unsafe pool", doc["pool"]["hits"], pool["hits"])
    if rule.own_reference:
        _same_hits("unsafe pool (own clean counts)", doc["pool"]["reference_hits"], pool["reference_hits"])
    log.info("replay: %d pool runs agree [%.1f s]", pool["n"], time.perf_counter() - start)

    worst = 0.0
    for j, p in enumerate(doc["probes"]):
        tag = f"probe {j + 1} (δ={p['delta']:g})"
        runs = {split: ctx.sample(p["delta"], probe_purpose(j, split), cfg.n_train if split == "train" else cfg.n_verify,
                                  f"replay: probe {j + 1} {split}") for split in ("train", "verify")}
        for split, r in runs.items():
            _same_hits(f"{tag} {split} split", p["hits"][split], r.test_hits)
            if rule.own_reference:
                _same_hits(f"{tag} {split} split (own clean counts)", p["reference_hits"][split], r.reference_hits)
        verify_runs = runs["verify"]
        fraction = float(verify_runs.poison_fraction.mean())
        if fraction != p["poison_fraction_mean"]:
            raise _Mismatch(f"{tag}: the verification runs poisoned a fraction {fraction!r} of the points, the "
                            f"certificate says {p['poison_fraction_mean']!r}")
        u_train = rule.unsafe_runs(runs["train"])
        if u_train.any():
            ctx.pool.append((float(p["delta"]), runs["train"].features[u_train, -1]))
        if p["verdict"] is not None:
            worst = max(worst, _replay_program(tag, p, ctx, runs, cfg, rule, device, strict))
        log.info("replay: %s agrees (%s) [%.1f s]", tag, p["status"], time.perf_counter() - start)

    _replay_empirical(doc["empirical"], cfg, rule, data, device, progress)
    if doc["context"] is not None:
        ctx_now = radius_context(doc["context"]["radius"], cfg.sample.search_norm, data.x_train, data.y_train)
        then, now = doc["context"]["median_nearest_other_class_distance"], ctx_now["median_nearest_other_class_distance"]
        if not math.isclose(then, now, rel_tol=REL_TOL, abs_tol=0.0):
            raise _Mismatch(f"context: the median nearest-other-class distance is {now!r}, the certificate says {then!r}")
    total = doc["throughput"]["trajectories"]
    if strict:
        rest = (f"every barrier fitted again to the stored one, every scenario row re-checked at the stored solution "
                f"(largest margin difference {worst:.3g}, allowance tau = {cfg.tau:g}) and every scenario program "
                "solved again to the stored solution")
    else:
        rest = (f"on another kind of CPU, every probe's status follows from its scenario rows re-checked at the stored "
                f"solution (largest margin difference {worst:.3g}) and from its program solved again")
    summary = (f"all {total} runs re-run with backend {doc['backend']} on {device} end with the stored hit counts; "
               f"{rest} [{time.perf_counter() - start:.1f} s]")
    return ReplayResult(True, None, summary, total, worst)


def _replay_empirical(emp: Optional[Dict[str, Any]], cfg: CertifyConfig, rule: SafetyRule, data, device,
                      progress: Optional[bool]) -> None:
    """The δ_emp cells again, each attack with the backend its cells record."""
    if emp is None:
        return
    seeds = trajectory_seeds(cfg.seed, Purpose.EMPIRICAL, cfg.emp_runs)
    configs = attack_configs(cfg.sample, emp["attacks"])
    for r in emp["rows"]:
        backend = resolve(r["backend"], device, cfg.sample.recipe.dtype, attack=training_attack(cfg.sample, r["attack"]))
        runs = sample(configs[r["attack"]], r["delta"], seeds, data=data, backend=backend, device=str(device),
                      progress=progress, description=f"replay: {r['attack']} δ={r['delta']:g}")
        _same_hits(f"empirical {r['attack']} δ={r['delta']:g}", r["hits"], runs.test_hits)
        if rule.own_reference:
            _same_hits(f"empirical {r['attack']} δ={r['delta']:g} (own clean counts)", r["reference_hits"], runs.reference_hits)
    log.info("replay: %d empirical cells of %d runs agree", len(emp["rows"]), cfg.emp_runs)


def _replay_program(tag: str, p: Dict[str, Any], ctx: Certification, runs: Dict[str, Trajectories], cfg: CertifyConfig,
                    rule: SafetyRule, device, strict: bool) -> float:
    """A solved probe again: the unsafe pool it separated from, its barrier fitted again on the
    replayed training split, its scenario rows from the stored barrier re-checked at the stored
    solution, and its program solved again. On the certificate's kind of CPU (``strict``) each must
    match the stored one; on another, each must decide the stored status. Returns the largest
    margin difference."""
    v = p["verdict"]
    pool = ctx.pool_above(p["delta"])
    if len(pool) != p["pool_size"]:
        raise _Mismatch(f"{tag}: the replayed unsafe pool holds {len(pool)} states, the certificate says {p['pool_size']}")
    if strict:
        train = runs["train"]
        refit = fit_probe_barrier(train, pool, cfg).to_dict()
        if refit != p["barrier"]["trunk"]:
            raise _Mismatch(f"{tag}: the barrier fitted again on the replayed training split is not the stored one "
                            "(the stored barrier was not fitted on this probe's training split)")
    barrier = Barrier.from_dict(p["barrier"]["trunk"])
    rows, _ = scenario_rows(barrier, runs["verify"].features, pool, str(device))
    problem = ScenarioProblem(**rows, unsafe=rule.unsafe_runs(runs["verify"]), w0=barrier.w0, kappa=cfg.kappa,
                              w_bound=cfg.w_bound, mu=cfg.mu)
    rc = recheck(problem, np.asarray(v["w"], dtype=np.float64), v["gamma"], v["c"])
    stored = np.asarray(v["trajectory_margins"] + [v["pool_margin"]], dtype=np.float64)
    replayed = np.append(rc.trajectory_margins, rc.pool_margin)
    diff = np.abs(stored - replayed)
    if strict and not np.all(diff <= cfg.tau):
        i = int(np.argmax(diff))
        what = "the pool margin" if i == len(diff) - 1 else f"the margin of verification run {i}"
        raise _Mismatch(f"{tag}: {what} re-checks to {float(replayed[i])!r}, the certificate says {float(stored[i])!r} "
                        f"(difference {diff[i]:.3g} > tau = {cfg.tau:g})")
    _same_status(tag, p, cfg, "re-checked at the stored solution", v["solver_status"], rc.eta_check, rc.rounding_bound)
    again = solve(problem, solver=cfg.solver, tau=cfg.tau, count_support=True)
    if strict:
        _same_solution(tag, p, again)
    _same_status(tag, p, cfg, "solved again", again.solver_status, again.eta_check, again.rounding_bound)
    return float(diff.max())


def _same_status(tag: str, p: Dict[str, Any], cfg: CertifyConfig, how: str, solver_status: str,
                 eta_check: float, rounding_bound: float) -> None:
    status, _ = solved_status(solver_status=solver_status, eta_check=eta_check, rounding_bound=rounding_bound,
                              tau=cfg.tau, epsilon=p["epsilon"], epsilon_requested=cfg.epsilon,
                              train_consistency=p["train_consistency"])
    if status != p["status"]:
        raise _Mismatch(f"{tag}: {how}, eta_check = {eta_check:.6g} makes the probe {status}; the certificate says "
                        f"{p['status']}")


def _same_solution(tag: str, p: Dict[str, Any], verdict) -> None:
    """The scenario program solved again must give the stored solution: status, (w, gamma, c),
    eta* and the support (which the a-posteriori epsilon counts)."""
    v = p["verdict"]
    if verdict.solver_status != v["solver_status"] or verdict.solver != v["solver"] or verdict.fell_back != v["fell_back"]:
        raise _Mismatch(f"{tag}: solved again, {verdict.solver} returns {verdict.solver_status!r}; the certificate says "
                        f"{v['solver']} returned {v['solver_status']!r}")
    pairs = [("eta_star", verdict.eta_star, p["eta_star"]), ("gamma", verdict.gamma, v["gamma"]), ("c", verdict.c, v["c"])]
    pairs += [(f"w[{k}]", a, b) for k, (a, b) in enumerate(zip(verdict.w, v["w"]))]
    for name, again, stored in pairs:
        if not math.isclose(float(again), float(stored), rel_tol=SOLUTION_TOL, abs_tol=SOLUTION_TOL):
            raise _Mismatch(f"{tag}: solved again, {name} = {float(again)!r}; the certificate says {float(stored)!r}")
    for name in ("n_rows_used", "cg_rounds", "c_clamped"):
        if getattr(verdict, name) != v[name]:
            raise _Mismatch(f"{tag}: solved again, {name} = {getattr(verdict, name)!r}; the certificate says {v[name]!r}")
    if not math.isclose(verdict.rounding_bound, v["rounding_bound"], rel_tol=REL_TOL, abs_tol=0.0):
        raise _Mismatch(f"{tag}: solved again, the rounding bound is {verdict.rounding_bound!r}; the certificate says "
                        f"{v['rounding_bound']!r}")
    support = sorted(int(i) for i in verdict.support_indices) if verdict.support_indices is not None else None
    if support != (sorted(v["support_indices"]) if v["support_indices"] is not None else None):
        raise _Mismatch(f"{tag}: solved again, the support scenarios are {support}; the certificate says "
                        f"{v['support_indices']}")
