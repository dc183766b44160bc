"""Quick ``verify``: re-derive every field of a certificate that follows from its other fields.

From the configuration, the stored hit counts of every run, the stored margins and the scenario
program's solution, this recomputes: the restated configuration and threat model, the facts about
the dataset (loaded by name: its hash, sizes and majority class), the model's size and hash, g_c
and the clean summary, the warnings, the unsafe pool, every label, count,
accuracy-drop summary and witness (its seeds included), d, every epsilon (a priori, a posteriori,
direct), eta_check, the training-split check, every status and reason, the search path, the radii,
the radius in context and the throughput, each with the same function that produced it
(barrierkit.outcomes, barrierkit.radius, ...). A field that disagrees is a problem, and so is a
field the document should not have.

What this cannot check is whether the runs really ended with the stored hit counts, whether the
stored barrier really has the stored margins on them, whether the stored solution is the scenario
program's and whether the data distance in the context is right: ``verify --replay``
(barrierkit.rerun) re-runs the runs, re-checks the rows and re-solves the programs for that.
"""
from __future__ import annotations

import math
import re
from typing import Any, Dict, List, Optional

import numpy as np

from . import pac
from .backends import BACKENDS
from .backends.triton_gpu import NAME as TRITON_FEATURES
from .features import FeatureMap
from .barrier import Barrier
from .certificate import CERTIFIED_FIELDS, DOCUMENT_FIELDS, STATUSES, clean_summary, threat_model, throughput, warnings_for
from .config import CertifyConfig, ConfigError, decision_variables
from .context import radius_ratio
from .data import get_dataset
from .empirical import cell, certificate_attacks, empirical_record, probed_budgets
from .environment import versions
from .labels import SafetyRule, chance_hits, check_hits
from .models import MLPShape
from .outcomes import (BARRIER_FIELDS, PROBE_FIELDS, SOLVED_FIELDS, VERDICT_FIELDS, a_posteriori_epsilon, first_unsafe,
                       label_fields, overall_status, pool_size, solved_status, training_split_consistency, unsolved_status,
                       witness_record)
from .probe import TIMING_FIELDS, barrier_record
from .radius import max_budget, radii, search
from .rng import probe_purpose, trajectory_seeds
from .scenario import c_max

REL_TOL = 1e-12  # floats re-derived by the same code agree exactly on one machine; this allows a libm's last bits
W_BOX_TOL = 1e-6  # an interior-point solution may sit this far (relative) outside the box |w_k| <= W
ETA_TOL = 1e-5  # the solver's eta against the float64 re-check of every row (solver accuracy, the tie-break)


def _same(stored: Any, expected: Any, rel: float) -> bool:
    """Equal, with floats within ``rel``; a count, index or seed (an int) must be stored as an int."""
    if isinstance(stored, (bool, str)) or isinstance(expected, (bool, str)) or stored is None or expected is None:
        return type(stored) is type(expected) and stored == expected
    if isinstance(expected, int):
        return type(stored) is int and stored == expected
    if isinstance(stored, (int, float)) and isinstance(expected, float):
        return stored == expected or (math.isfinite(stored) and math.isfinite(expected)
                                      and math.isclose(stored, expected, rel_tol=rel, abs_tol=0.0))
    return False


def differences(where: str, stored: Any, expected: Any, rel: float = REL_TOL) -> List[str]:
    """Where ``stored`` differs from ``expected`` (dicts key by key, lists item by item)."""
    if isinstance(expected, dict):
        if not isinstance(stored, dict):
            return [f"{where} is {stored!r}, expected a record"]
        if set(stored) != set(expected):
            extra, missing = sorted(set(stored) - set(expected)), sorted(set(expected) - set(stored))
            return [f"{where} has fields {extra} it should not have and lacks {missing}"]
        return [d for k in expected for d in differences(f"{where}.{k}", stored[k], expected[k], rel)]
    if isinstance(expected, (list, tuple)):
        if not isinstance(stored, (list, tuple)) or len(stored) != len(expected):
            return [f"{where} has {len(stored) if isinstance(stored, (list, tuple)) else stored!r} entries, "
                    f"expected {len(expected)}"]
        for i, (s, e) in enumerate(zip(stored, expected)):
            found = differences(f"{where}[{i}]", s, e, rel)
            if found:
                return found  # the first differing entry says enough
        return []
    if not _same(stored, expected, rel):
        return [f"{where} is {stored!r}, but re-derived it is {expected!r}"]
    return []


def check_document(doc: Dict[str, Any]) -> List[str]:
    """Every inconsistency of a certificate document (empty when every derivable field holds)."""
    try:
        return _check_document(doc)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, ZeroDivisionError, OverflowError) as exc:
        return [f"malformed document ({type(exc).__name__}: {exc})"]


def _fields(where: str, record: Any, expected: Any) -> List[str]:
    """The record must have exactly the expected fields: nothing a reader could mistake for a claim."""
    if not isinstance(record, dict):
        return [f"{where} is {type(record).__name__}, expected a record"]
    extra, missing = sorted(set(record) - set(expected)), sorted(set(expected) - set(record))
    return [f"{where} has fields {extra} it should not have and lacks {missing}"] if extra or missing else []


def _references(rule: SafetyRule, stored: Any, where: str) -> Optional[np.ndarray]:
    """Stored own clean counts, checked, for an evasion rule (None for a rule judging against g_c,
    which must have none)."""
    if not rule.own_reference:
        if stored is not None:
            raise ValueError(f"{where}: given although runs are judged against g_c")
        return None
    return check_hits(stored if stored is not None else [], rule.test_size, where)


def _check_dataset(doc: Dict[str, Any], cfg: CertifyConfig) -> List[str]:
    """The facts the document states about its dataset, against the dataset itself."""
    try:
        data = get_dataset(cfg.sample.dataset)
    except ConfigError as exc:
        return [f"the dataset cannot be loaded to check the document's facts about it: {exc}"]
    facts = {"dataset": data.name, "data_hash": data.content_hash, "input_dim": data.input_dim,
             "n_classes": data.n_classes, "test_size": int(data.x_test.shape[0]), "chance_hits": chance_hits(data.y_test)}
    return [d for key, value in facts.items() for d in differences(key, doc[key], value)]


def _check_document(doc: Dict[str, Any]) -> List[str]:
    if doc.get("status") not in STATUSES:
        return [f"unknown status {doc.get('status')!r}"]
    problems = _fields("the document", doc, DOCUMENT_FIELDS + (CERTIFIED_FIELDS if doc["status"] == "CERTIFIED" else ()))
    try:
        cfg = CertifyConfig.from_dict(doc["config"])
        pac.check_verify_runs(cfg)
    except (ConfigError, TypeError) as exc:
        return problems + [f"config: {exc}"]
    problems += differences("config", doc["config"], cfg.to_dict())
    problems += _check_dataset(doc, cfg)
    restated = {"alpha": cfg.alpha, "beta": cfg.beta, "beta_per_probe": cfg.beta_per_probe, "epsilon_requested": cfg.epsilon,
                "n_verify": cfg.n_verify, "n_train": cfg.n_train, "d": cfg.decision_variables,
                "epsilon_direct": pac.epsilon(cfg.n_verify + cfg.n_train, 1, cfg.beta_per_probe),
                "threat_model": threat_model(doc["config"])}
    for key, value in restated.items():
        problems += differences(key, doc[key], value)
    problems += _check_provenance(doc)
    shape = MLPShape(int(doc["input_dim"]), tuple(cfg.sample.model.hidden), int(doc["n_classes"]))
    problems += differences("param_count", doc["param_count"], shape.param_count)
    problems += differences("model_hash", doc["model_hash"], shape.spec_hash)

    clean_hits = check_hits(doc["clean_accuracy"]["hits"], doc["test_size"], "clean_accuracy.hits")
    if clean_hits.size != cfg.n_clean:
        problems.append(f"clean_accuracy.hits holds {clean_hits.size} runs, the configuration {cfg.n_clean}")
    rule = SafetyRule.for_threat(cfg.sample.threat_kind, clean_hits, doc["test_size"], cfg.alpha)
    problems += differences("clean_accuracy", doc["clean_accuracy"], clean_summary(rule, clean_hits))
    problems += differences("g_clean", doc["g_clean"], rule.g_clean)
    problems += differences("warnings", doc["warnings"], warnings_for(rule, doc["chance_hits"]))

    norm = cfg.sample.search_norm
    top = max_budget(norm, cfg.sample.threat.domain, shape.input_dim)
    pool_hits = check_hits(doc["pool"]["hits"], rule.test_size, "pool.hits")
    pool_reference = _references(rule, doc["pool"].get("reference_hits"), "pool.reference_hits")
    problems += differences("pool", doc["pool"], {"delta": cfg.pool_budget(top), "rho": cfg.pool_rho, "n": cfg.n_pool,
                                                  "n_unsafe": int(rule.unsafe(pool_hits, pool_reference).sum()),
                                                  "hits": pool_hits.tolist(),
                                                  "reference_hits": None if pool_reference is None else pool_reference.tolist()})

    probes = doc["probes"]
    if len(probes) > cfg.max_probes:
        problems.append(f"{len(probes)} probes exceed max_probes={cfg.max_probes}: the union bound fails")
    if [p["index"] for p in probes] != list(range(len(probes))):
        problems.append("probe indices are not 0..n-1 in order (each index keys fresh seeds)")
    problems += _check_search_path(probes, cfg, top)
    for j, p in enumerate(probes):
        problems += _check_probe(p, j, probes[:j], rule, cfg, doc)

    status, reason, best = overall_status(probes)
    problems += differences("status", doc["status"], status)
    problems += differences("reason", doc["reason"], reason)
    problems += differences("epsilon", doc["epsilon"], best["epsilon"] if best else None)
    for key in CERTIFIED_FIELDS:
        if best is None and key in doc:
            problems.append(f"{key} is given although nothing was certified")
        elif best is not None:
            problems += differences(key, doc.get(key), best.get(key))
    found = radii(probes, best, top, cfg.delta_hi)
    problems += differences("radii", doc["radii"], found)
    problems += _check_context(doc, found["delta_cert"], norm, shape.input_dim)
    problems += _check_empirical(doc["empirical"], cfg, rule, probes, found["delta_cert"])
    emp_cells = len(doc["empirical"]["rows"]) if doc["empirical"] else 0
    runs = cfg.n_clean + cfg.n_pool + sum(p["n_train"] + p["n_verify"] for p in probes) + emp_cells * cfg.emp_runs
    problems += differences("throughput", doc["throughput"],
                            throughput(runs, cfg.sample.recipe.steps, doc["timings"]["total_s"], len(probes)), rel=1e-9)
    return problems


def _check_empirical(emp: Any, cfg: CertifyConfig, rule: SafetyRule, probes: List[Dict[str, Any]],
                     delta_cert: Optional[float]) -> List[str]:
    """The δ_emp section, rebuilt from its stored hit counts: one cell per attack of the
    configuration and probed budget (in that order), each attack's δ_emp and the comparison."""
    if cfg.emp_attacks is None:
        return [] if emp is None else ["empirical is given although the configuration names no emp_attacks"]
    if not isinstance(emp, dict) or not isinstance(emp.get("rows"), list):
        return [f"empirical is {emp!r}, expected the δ_emp record the configuration's emp_attacks ask for"]
    grid = [(kind, delta) for kind in certificate_attacks(cfg) for delta in probed_budgets(probes)]
    rows = emp["rows"]
    if [(r.get("attack"), r.get("delta")) for r in rows] != grid:
        return [f"empirical.rows are the cells {[(r.get('attack'), r.get('delta')) for r in rows]}, expected one per attack "
                f"and probed budget: {grid}"]
    problems = []
    cells = []
    for i, r in enumerate(rows):
        hits = check_hits(r["hits"], rule.test_size, f"empirical.rows[{i}].hits")
        if hits.size != cfg.emp_runs:
            problems.append(f"empirical.rows[{i}] holds {hits.size} runs, the configuration's emp_runs {cfg.emp_runs}")
        if r["backend"] not in BACKENDS:
            problems.append(f"empirical.rows[{i}].backend {r['backend']!r} is not one of {BACKENDS}")
        cells.append(cell(rule, r["attack"], r["delta"], hits, r["backend"],
                          _references(rule, r.get("reference_hits"), f"empirical.rows[{i}].reference_hits")))
    return problems + differences("empirical", emp, empirical_record(cfg, cells, delta_cert))


DEVICE = re.compile(r"cpu|cuda(:[0-9]+)?")
FEATURE_MAPS = (FeatureMap.name, TRITON_FEATURES)


def _check_provenance(doc: Dict[str, Any]) -> List[str]:
    """What the document says about where it was made: fields it may not have, and values that
    cannot be (the values themselves are provenance: nothing else in the document implies them)."""
    problems = _fields("versions", doc["versions"], versions())
    if not all(isinstance(v, str) for v in doc["versions"].values()):
        problems.append("versions is not a record of version strings")
    if doc["backend"] not in BACKENDS:
        problems.append(f"backend {doc['backend']!r} is not one of {BACKENDS}")
    if not (isinstance(doc["device"], str) and DEVICE.fullmatch(doc["device"])):
        problems.append(f"device {doc['device']!r} is not cpu, cuda or cuda:N")
    if doc["features_by"] not in FEATURE_MAPS:
        problems.append(f"features_by {doc['features_by']!r} is not one of {FEATURE_MAPS}")
    t = doc["timings"]
    problems += _fields("timings", t, ("total_s", "clean_s") + TIMING_FIELDS + ("empirical_s",))
    if not all(isinstance(v, (int, float)) and v >= 0 for v in t.values()):
        problems.append("timings are not all numbers of seconds >= 0")
    return problems


class _PathEnds(Exception):
    """The stored probes ran out before the search would have stopped."""


def _check_search_path(probes: List[Dict[str, Any]], cfg: CertifyConfig, top: float) -> List[str]:
    """Re-run the bisection on the stored statuses: it must probe exactly the stored budgets."""
    asked: List[float] = []

    def probe(delta: float, index: int) -> Dict[str, Any]:
        if index >= len(probes):
            raise _PathEnds
        asked.append(delta)
        return {"status": probes[index]["status"]}

    try:
        search(probe, max_probes=cfg.max_probes, budget_max=top, delta_start=cfg.delta_start, delta_hi=cfg.delta_hi,
               rel_tol=cfg.rel_tol)
    except _PathEnds:
        return [f"the search would have probed more budgets than the {len(probes)} stored"]
    if len(asked) < len(probes):
        return [f"the search stops after {len(asked)} probes, but {len(probes)} are stored"]
    return differences("probe budgets (the search path)", [p["delta"] for p in probes], asked, rel=0.0)


def _check_context(doc: Dict[str, Any], delta_cert: Optional[float], norm: str, input_dim: int) -> List[str]:
    ctx = doc["context"]
    if delta_cert is None:
        return [] if ctx is None else ["context is given although nothing was certified"]
    if ctx is None:
        return ["context is missing for a certified radius"]
    median = ctx["median_nearest_other_class_distance"]
    expected = {"norm": norm, "radius": delta_cert, "input_dim": input_dim, "median_nearest_other_class_distance": median,
                "radius_over_median_distance": radius_ratio(delta_cert, median)}
    return differences("context", ctx, expected)


def _check_probe(p: Dict[str, Any], j: int, earlier: List[Dict[str, Any]], rule: SafetyRule, cfg: CertifyConfig,
                 doc: Dict[str, Any]) -> List[str]:
    tag = f"probe {j + 1} (δ={p['delta']:g})"
    beta = cfg.beta_per_probe
    solved = p.get("verdict") is not None
    problems = _fields(tag, p, PROBE_FIELDS + (SOLVED_FIELDS if solved else ()))
    if solved:
        problems += _fields(f"{tag} verdict", p["verdict"], VERDICT_FIELDS) + _fields(f"{tag} barrier", p["barrier"], BARRIER_FIELDS)
    elif p.get("barrier") is not None:
        problems.append(f"{tag}: a barrier is recorded although no scenario program was solved")
    problems += differences(f"{tag} beta", p["beta"], beta) + differences(f"{tag} d", p["d"], cfg.decision_variables)
    problems += _fields(f"{tag} hits", p["hits"], ("train", "verify"))
    hits, reference = {}, None
    stored_reference = p.get("reference_hits")
    if rule.own_reference:
        problems += _fields(f"{tag} reference_hits", stored_reference if isinstance(stored_reference, dict) else {},
                            ("train", "verify"))
        reference = {}
    elif stored_reference is not None:
        problems.append(f"{tag}: reference_hits are given although runs are judged against g_c")
    for split, n in (("train", cfg.n_train), ("verify", cfg.n_verify)):
        hits[split] = check_hits(p["hits"][split], rule.test_size, f"{tag} hits.{split}")
        if not hits[split].size == p[f"n_{split}"] == n:
            problems.append(f"{tag}: {hits[split].size} {split} hit counts, n_{split} = {p[f'n_{split}']}, configured {n}")
        if reference is not None:
            reference[split] = _references(rule, (stored_reference or {}).get(split, []), f"{tag} reference_hits.{split}")
            if reference[split].shape != hits[split].shape:
                return problems + [f"{tag}: {reference[split].size} {split} reference counts for {hits[split].size} runs"]
            above = np.flatnonzero(hits[split] > reference[split])
            if above.size:  # an attack only removes hits: the attacked count cannot exceed the run's own clean one
                problems.append(f"{tag}: {split} run {int(above[0])} has more attacked hits ({int(hits[split][above[0]])}) "
                                f"than own clean hits ({int(reference[split][above[0]])})")
    for key, value in label_fields(rule, hits, beta, cfg.epsilon, reference).items():
        problems += differences(f"{tag} {key}", p[key], value)
    found = first_unsafe(rule, hits, reference)
    expected_witness = None
    if found is not None:
        split, i = found
        seeds = trajectory_seeds(cfg.seed, probe_purpose(j, split), 1, start=i)[0]
        expected_witness = witness_record(rule, split, i, int(hits[split][i]), seeds, p["delta"], doc["backend"],
                                          None if reference is None else int(reference[split][i]))
    problems += differences(f"{tag} witness", p["witness"], expected_witness)
    n_unsafe_verify = int(rule.unsafe(hits["verify"], None if reference is None else reference["verify"]).sum())
    n_unsafe_train = int(rule.unsafe(hits["train"], None if reference is None else reference["train"]).sum())
    rows = pool_size(cfg.pool_states, doc["pool"]["n_unsafe"], earlier, p["delta"])
    v = p.get("verdict")
    if v is None:
        if n_unsafe_verify == 0 and rows > 0:
            return problems + [f"{tag}: no scenario program was solved although no verification run is unsafe and "
                               f"the pool holds {rows} states"]
        status, reason = unsolved_status(n_unsafe_verify=n_unsafe_verify, n_verify=cfg.n_verify, alpha=cfg.alpha, pool_rows=rows)
        problems += differences(f"{tag} epsilon", p["epsilon"], None)
    else:
        if n_unsafe_verify > 0 or rows == 0:
            problems.append(f"{tag}: a scenario program is recorded although {n_unsafe_verify} verification runs are "
                            f"unsafe and the pool holds {rows} states")
        problems += differences(f"{tag} pool_size", p["pool_size"], rows)
        problems += differences(f"{tag} tau", p["tau"], cfg.tau)
        eps = pac.epsilon(cfg.n_verify, cfg.decision_variables, beta)
        problems += differences(f"{tag} epsilon", p["epsilon"], eps)
        problems += _check_verdict(tag, p, v, cfg, rows, n_unsafe_verify, doc["device"])
        consistency = training_split_consistency(n_unsafe_train, cfg.n_train, eps, beta)
        problems += differences(f"{tag} train_consistency", p["train_consistency"], consistency)
        margins = v["trajectory_margins"]
        complete = all(isinstance(m, (int, float)) for m in margins + [v["pool_margin"]])
        eta = max(margins + [v["pool_margin"]]) if complete and margins else None
        if v["solver_status"] == "optimal" and not complete:
            problems.append(f"{tag}: an OPTIMAL solution with incomplete or non-finite margins")
        problems += differences(f"{tag} eta_check", p["eta_check"], eta)
        status, reason = solved_status(
            solver_status=v["solver_status"], eta_check=math.inf if eta is None else eta,
            rounding_bound=v["rounding_bound"] if v["rounding_bound"] is not None else math.inf,
            tau=cfg.tau, epsilon=eps, epsilon_requested=cfg.epsilon, train_consistency=consistency)
    problems += differences(f"{tag} status", p["status"], status)
    problems += differences(f"{tag} reason", p["reason"], reason)
    return problems


def _check_verdict(tag: str, p: Dict[str, Any], v: Dict[str, Any], cfg: CertifyConfig, pool_rows: int,
                   n_unsafe_verify: int, device: str) -> List[str]:
    """The solution's shape against d and the box on w, the solver against the configuration, the
    row count, the objective, its support against the a-posteriori bound, C4 on c, and the stored
    barrier against the configuration."""
    m = cfg.barrier.out_dim
    problems: List[str] = []
    if len(v["w"]) != m or p["d"] != decision_variables(len(v["w"]), cfg.mu):
        problems.append(f"{tag}: w has {len(v['w'])} entries, d = {p['d']}; the barrier has out_dim {m}, so d must be "
                        f"{decision_variables(m, cfg.mu)}")
    w = v["w"]
    optimal = v["solver_status"] == "optimal"
    boxed = all(isinstance(x, (int, float)) and abs(x) <= cfg.w_bound * (1 + W_BOX_TOL) for x in w)
    if optimal and not boxed:
        problems.append(f"{tag}: w is not a vector of numbers within the box |w_k| <= {cfg.w_bound:g}")
    solvers = {cfg.solver} if not v["fell_back"] else ({"CLARABEL"} if cfg.solver == "OSQP" else set())
    if v["solver"] not in solvers:
        problems.append(f"{tag}: solver {v['solver']!r} (fell_back {v['fell_back']}) does not follow from the "
                        f"configured solver {cfg.solver!r}")
    K = cfg.sample.recipe.intervals
    problems += differences(f"{tag} verdict.n_rows_total", v["n_rows_total"], cfg.n_verify * (K + 1) + n_unsafe_verify + pool_rows)
    problems += differences(f"{tag} psi_backend", p["psi_backend"], "triton" if device.startswith("cuda") else "numpy")
    if optimal and boxed:
        w0 = p["barrier"]["trunk"]["w0"]
        objective = p["eta_star"] + 0.5 * cfg.mu * sum((a - b) ** 2 for a, b in zip(w, w0))
        problems += differences(f"{tag} verdict.objective", v["objective"], objective, rel=1e-9)
        if not abs(p["eta_star"] - p["eta_check"]) <= ETA_TOL * max(1.0, abs(p["eta_check"])):
            problems.append(f"{tag}: eta_star {p['eta_star']!r} is not the solved program's eta (eta_check {p['eta_check']!r})")
    if len(v["trajectory_margins"]) != cfg.n_verify:
        problems.append(f"{tag}: {len(v['trajectory_margins'])} trajectory margins for {cfg.n_verify} verification runs")
    support = v["support_indices"]
    if support is not None:
        if len(set(support)) != len(support) or any(not (isinstance(i, int) and 0 <= i < cfg.n_verify) for i in support):
            problems.append(f"{tag}: support indices are not distinct verification runs")
        problems += differences(f"{tag} n_support", p["n_support"], len(support))
    n_support = p["n_support"]
    post = a_posteriori_epsilon(cfg.n_verify, n_support, cfg.beta_per_probe, p["d"])
    problems += differences(f"{tag} epsilon_a_posteriori", p["epsilon_a_posteriori"], post)
    K = cfg.sample.recipe.intervals
    if v["c"] is not None and not v["c"] <= c_max(K, cfg.kappa):
        problems.append(f"{tag}: c = {v['c']} breaks K*c <= 1 - kappa (K = {K}, kappa = {cfg.kappa})")
    trunk = Barrier.from_dict(p["barrier"]["trunk"])
    problems += differences(f"{tag} barrier", p["barrier"], barrier_record(trunk))
    problems += differences(f"{tag} barrier.trunk", p["barrier"]["trunk"], trunk.to_dict())
    problems += _fields(f"{tag} barrier.train_violations", trunk.train_violations, ("C1", "C3", "C2_pool", "C2_terminal", "C4"))
    if not all(0.0 <= x <= 1.0 for x in trunk.train_violations.values()):
        problems.append(f"{tag}: the barrier's training violations are not fractions")
    if trunk.config != cfg.barrier:
        problems.append(f"{tag}: the stored barrier was fitted with {trunk.config}, the configuration says {cfg.barrier}")
    if (trunk.out_dim, trunk.in_dim, p["barrier"]["out_dim"]) != (m, cfg.sample.feature_dim, m):
        problems.append(f"{tag}: the stored barrier maps {trunk.in_dim} features to {trunk.out_dim} outputs; "
                        f"the configuration has {cfg.sample.feature_dim} features and out_dim {m}")
    return problems
