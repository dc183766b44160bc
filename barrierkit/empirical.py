"""How strong sampling attacks are on a recipe: unsafe fractions per budget and the empirical radius.

For each attack and budget, N runs (the same seeds for every cell, so the cells differ only in the
attack and the budget) are labelled against g_c from clean runs, exactly as a certification
labels them. δ_emp of an attack is the smallest probed budget at which some run ended unsafe: an
upper bound on where that attack starts to break the recipe, to set beside δ_cert (docs/METHOD.md §2).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

import numpy as np

from .config import ConfigError, EvasionThreat, SampleConfig, check_alpha, check_attack_names, check_count, check_delta
from .pac import rate_lower_bound
from .rng import Purpose, trajectory_seeds

if TYPE_CHECKING:
    from .config import CertifyConfig
    from .labels import SafetyRule

log = logging.getLogger("barrierkit")


def clopper_pearson(k: int, n: int, level: float = 0.95) -> List[float]:
    """The two-sided Clopper-Pearson interval of a binomial rate k / n at ``level``: the one-sided
    bound of :func:`barrierkit.pac.rate_lower_bound` at each tail (the upper one by symmetry)."""
    tail = (1.0 - level) / 2.0
    return [rate_lower_bound(k, n, tail), 1.0 - rate_lower_bound(n - k, n, tail)]


def check_attacks(attacks: Sequence[str]) -> List[str]:
    """The attack names, each known and none twice (a ConfigError naming ``attacks``)."""
    return list(check_attack_names(list(attacks), "attacks"))


STRONG_PGD = {"steps": 100, "restarts": 2}
"""pgd_strong: the evasion table's PGD with at least this many steps and random restarts."""


def evasion_attack(threat: EvasionThreat, kind: str) -> EvasionThreat:
    """The test-time table with its attack replaced by ``kind`` (random, pgd, ibp: the table's own
    settings; pgd_strong: PGD with at least :data:`STRONG_PGD` steps and restarts)."""
    if kind == "pgd_strong":
        return dataclasses.replace(threat, attack="pgd", **{k: max(v, getattr(threat, k)) for k, v in STRONG_PGD.items()})
    return dataclasses.replace(threat, attack=kind)


def attack_configs(config: SampleConfig, attacks: Sequence[str]) -> Dict[str, SampleConfig]:
    """The recipe ``config`` once per attack, the attack on the searched budget replaced: the
    sampling attack (sign noise is the gradient attack's alone) or, when the search runs over δ',
    the test-time one (:func:`evasion_attack`)."""
    if config.searches_evasion:
        return {kind: dataclasses.replace(config, evasion=evasion_attack(config.evasion, kind)) for kind in attacks}
    return {kind: dataclasses.replace(config, attack=dataclasses.replace(
                config.attack, kind=kind, sign_noise=config.attack.sign_noise if kind == "gradient" else 0.0))
            for kind in attacks}


def training_attack(config: SampleConfig, kind: str) -> Optional[str]:
    """The training-time sampling attack that the runs of attack ``kind`` train under (what a
    backend must support): ``kind`` itself, or the recipe's own (none under evasion) when ``kind``
    is a test-time attack."""
    return config.poisoning_attack if config.searches_evasion else kind


def cell(rule: "SafetyRule", attack: str, delta: float, hits: Sequence[int], backend: str,
         reference: Optional[Sequence[int]] = None) -> Dict[str, Any]:
    """One (attack, budget) cell from its runs' test hit counts (and, for an evasion rule, their
    own clean counts): the unsafe count and fraction, the 95 % Clopper-Pearson interval and the
    median accuracy. ``verify`` rebuilds every cell with this function from the stored counts."""
    h = np.asarray(hits, dtype=np.int64)
    ref = np.asarray(reference, dtype=np.int64) if rule.own_reference else None
    unsafe = int(rule.unsafe(h, ref).sum())
    return {"attack": attack, "delta": float(delta), "n": int(h.size), "unsafe": unsafe, "fraction": unsafe / h.size,
            "interval_95": clopper_pearson(unsafe, int(h.size)), "median_accuracy": float(np.median(h) / rule.test_size),
            "backend": backend, "hits": h.tolist(), "reference_hits": None if ref is None else ref.tolist()}


def measure(configs: Dict[str, SampleConfig], records: Dict[str, Any], deltas: Sequence[float], seeds: np.ndarray,
            rule: "SafetyRule", data: Any, device: Any, progress: Optional[bool]) -> List[Dict[str, Any]]:
    """Every (attack, budget) cell: the runs of ``seeds`` trained under each attack's config with
    its backend record, labelled by ``rule``. Each cell also carries the seconds it took."""
    from .engine import sample

    rows = []
    for kind, config in configs.items():
        for delta in deltas:
            tic = time.perf_counter()
            runs = sample(config, delta, seeds, data=data, backend=records[kind], device=device, progress=progress,
                          description=f"{kind} δ={delta:g}")
            rows.append({**cell(rule, kind, delta, runs.test_hits, runs.meta["backend"], runs.reference_hits),
                         "seconds": time.perf_counter() - tic})
            log.info("%s δ = %g: %d of %d runs unsafe [%.1f s]", kind, delta, rows[-1]["unsafe"], runs.n, rows[-1]["seconds"])
    return rows


def delta_emp(rows: Sequence[Dict[str, Any]]) -> Dict[str, Optional[float]]:
    """Each attack's δ_emp: the smallest budget of its cells with an unsafe run (None: none)."""
    radii: Dict[str, Optional[float]] = {}
    for r in rows:
        radii.setdefault(r["attack"], None)
        if r["unsafe"] > 0 and (radii[r["attack"]] is None or r["delta"] < radii[r["attack"]]):
            radii[r["attack"]] = r["delta"]
    return radii


def probed_budgets(probes: Sequence[Dict[str, Any]]) -> List[float]:
    """The budgets a certificate's δ_emp is measured at: every budget its search probed, increasing."""
    return sorted({float(p["delta"]) for p in probes})


def certificate_attacks(config: "CertifyConfig") -> List[str]:
    """The attacks of a certificate's δ_emp: its own sampling attack first (measured like the
    others, so the comparison is on equal terms), then ``emp_attacks``."""
    own = own_attack(config.sample)
    return [own] + [kind for kind in config.emp_attacks or () if kind != own]


def own_attack(config: SampleConfig) -> str:
    """The attack a certificate is relative to: the test-time attack when the search runs over
    δ', the sampling attack otherwise."""
    return config.evasion.attack if config.searches_evasion else config.attack.kind


def certificate_cells(config: "CertifyConfig", deltas: Sequence[float], rule: "SafetyRule", data: Any,
                      records: Dict[str, Any], device: Any, progress: Optional[bool]) -> List[Dict[str, Any]]:
    """A certificate's δ_emp cells: ``emp_runs`` runs of seed family EMPIRICAL per attack of
    :func:`certificate_attacks` (``records`` holds each one's backend) and per budget."""
    seeds = trajectory_seeds(config.seed, Purpose.EMPIRICAL, config.emp_runs)
    return measure(attack_configs(config.sample, list(records)), records, deltas, seeds, rule, data, device, progress)


def comparison(delta_cert: Optional[float], certified_attack: str, rows: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """How the certificate's attack (the sampling attack, or the test-time one) compares with every attack tried, in one of three verdicts:
    ``broken`` (another attack made a run unsafe at a budget ≤ δ_cert: the certificate holds only
    for its own attack), ``strongest`` (no attack tried breaks the recipe at a smaller budget than
    the certified attack) or ``stronger`` (one does, but only above δ_cert)."""
    radii = delta_emp(rows)
    own = radii[certified_attack]
    others = {kind: d for kind, d in radii.items() if kind != certified_attack and d is not None}
    first = min(others, key=lambda kind: others[kind]) if others else None
    if first is not None and delta_cert is not None and others[first] <= delta_cert:
        cell_ = next(r for r in rows if r["attack"] == first and r["delta"] == others[first])
        return {"verdict": "broken", "attack": first, "delta": others[first],
                "text": f"a stronger attack breaks the recipe at δ = {others[first]:.4g} ≤ δ_cert = {delta_cert:.4g} "
                        f"('{first}': {cell_['unsafe']} of {cell_['n']} runs unsafe): the certificate holds only for the "
                        f"named attack '{certified_attack}'"}
    if first is None or (own is not None and own <= others[first]):
        return {"verdict": "strongest", "attack": None, "delta": None,
                "text": f"the certified attack '{certified_attack}' is at least as strong as every attack tried: none made a "
                        "run unsafe at a smaller probed budget"}
    where = f"above δ_cert = {delta_cert:.4g}" if delta_cert is not None else "and nothing was certified"
    return {"verdict": "stronger", "attack": first, "delta": others[first],
            "text": f"'{first}' breaks the recipe at δ = {others[first]:.4g}, a smaller budget than the certified attack "
                    f"'{certified_attack}' does ({'not at all' if own is None else f'{own:.4g}'}), {where}: the "
                    "certificate stands for its own attack, with less room above it than that attack suggests"}


def empirical_record(config: "CertifyConfig", rows: Sequence[Dict[str, Any]], delta_cert: Optional[float]) -> Dict[str, Any]:
    """A certificate's ``empirical`` section: its cells (without timings), the budgets they were
    measured at, each attack's δ_emp and the comparison with δ_cert. ``verify`` rebuilds it from
    the stored hit counts."""
    cells = [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    return {"attacks": certificate_attacks(config), "n": config.emp_runs, "deltas": sorted({r["delta"] for r in cells}),
            "rows": cells, "delta_emp": delta_emp(cells),
            "comparison": comparison(delta_cert, own_attack(config.sample), cells)}


def attack_strength(config: SampleConfig, attacks: Sequence[str], deltas: Sequence[float], n: int, n_clean: int,
                    alpha: float = 0.05, seed: int = 0, backend: str = "auto", device: str = "cpu",
                    progress: Optional[bool] = None) -> Dict[str, Any]:
    """Unsafe counts with 95 % Clopper-Pearson intervals for every (attack, budget), and each
    attack's δ_emp. ``config`` is the recipe (its own attack is replaced by each of ``attacks``);
    every backend is resolved once per attack before any run, so an unsupported pair fails first."""
    from .backends import resolve, resolve_device
    from .data import get_dataset
    from .engine import check_memory, clean_runs
    from .labels import SafetyRule

    if config.threat_kind != "poisoning":
        raise ConfigError("threat_kind", "the attack measurement covers poisoning attacks only (python -m bench.evasion "
                                         "measures the test-time ones)")
    attacks = check_attacks(attacks)
    deltas = sorted({check_delta(d) for d in deltas})
    if not deltas or deltas[0] <= 0:
        raise ConfigError("deltas", "name at least one budget, each > 0")
    check_count(n, "n")
    check_count(n_clean, "n_clean")
    check_alpha(alpha)
    check_memory(config, max(n, n_clean), "n")
    device = resolve_device(device)
    configs = attack_configs(config, attacks)
    records = {kind: resolve(backend, device, config.recipe.dtype, attack=kind) for kind in attacks}
    data = get_dataset(config.dataset)
    tic = time.perf_counter()
    clean = clean_runs(config, n_clean, seed, data=data, backend=records[attacks[0]], device=device, progress=progress)
    rule = SafetyRule.from_clean_hits(clean.test_hits, clean.test_size, alpha)
    log.info("clean runs: %d, g_c = %.4f [%.1f s]", clean.n, rule.g_clean, time.perf_counter() - tic)
    rows = measure(configs, records, deltas, trajectory_seeds(seed, Purpose.SAMPLE, n), rule, data, device, progress)
    return {"format": "barrierkit.attack-strength/1", "config": config.to_dict(), "attacks": attacks, "deltas": deltas,
            "n": n, "n_clean": n_clean, "alpha": alpha, "seed": seed, "g_clean": rule.g_clean,
            "clean_median_hits": rule.clean_median_hits, "test_size": rule.test_size, "rows": rows,
            "delta_emp": delta_emp(rows)}


def strength_table(result: Dict[str, Any]) -> str:
    """The result as plain text: one line per (attack, budget) and each attack's δ_emp."""
    lines = [f"g_c = {result['g_clean']:.4f} from {result['n_clean']} clean runs; unsafe: G > alpha = {result['alpha']:g}",
             f"{'attack':14s} {'δ':>8s} {'unsafe':>12s}  95% interval     median accuracy"]
    for r in result["rows"]:
        low, high = r["interval_95"]
        lines.append(f"{r['attack']:14s} {r['delta']:8.4g} {r['unsafe']:5d} / {r['n']:<5d}  [{low:.3f}, {high:.3f}]   "
                     f"{r['median_accuracy']:.4f}")
    for kind, radius in result["delta_emp"].items():
        lines.append(f"δ_emp({kind}) = {radius:g}" if radius is not None else
                     f"δ_emp({kind}): no run unsafe up to δ = {max(result['deltas']):g}")
    return "\n".join(lines)


__all__ = ["attack_strength", "check_attacks", "clopper_pearson", "strength_table"]
