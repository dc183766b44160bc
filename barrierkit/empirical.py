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
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .config import ATTACKS, ConfigError, SampleConfig, check_alpha, check_count, check_delta
from .pac import rate_lower_bound
from .rng import Purpose, trajectory_seeds

log = logging.getLogger("barrierkit")


def clopper_pearson(k: int, n: int, level: float = 0.95) -> List[float]:
    """The two-sided Clopper-Pearson interval of a binomial rate k / n at ``level``: the one-sided
    bound of :func:`barrierkit.pac.rate_lower_bound` at each tail (the upper one by symmetry)."""
    tail = (1.0 - level) / 2.0
    return [rate_lower_bound(k, n, tail), 1.0 - rate_lower_bound(n - k, n, tail)]


def check_attacks(attacks: Sequence[str]) -> List[str]:
    """The attack names, each known and none twice (a ConfigError naming ``attacks``)."""
    names = list(attacks)
    if not names:
        raise ConfigError("attacks", "name at least one sampling attack")
    for name in names:
        if name not in ATTACKS:
            raise ConfigError("attacks", f"unknown sampling attack {name!r}; known: {', '.join(ATTACKS)}")
    if len(set(names)) != len(names):
        raise ConfigError("attacks", f"an attack is named twice: {', '.join(names)}")
    return names


def attack_strength(config: SampleConfig, attacks: Sequence[str], deltas: Sequence[float], n: int, n_clean: int,
                    alpha: float = 0.05, seed: int = 0, backend: str = "auto", device: str = "cpu",
                    progress: Optional[bool] = None) -> Dict[str, Any]:
    """Unsafe counts with 95 % Clopper-Pearson intervals for every (attack, budget), and each
    attack's δ_emp. ``config`` is the recipe (its own attack is replaced by each of ``attacks``);
    every backend is resolved once per attack before any run, so an unsupported pair fails first."""
    from .backends import resolve, resolve_device
    from .data import get_dataset
    from .engine import check_memory, clean_runs, sample
    from .labels import SafetyRule

    attacks = check_attacks(attacks)
    deltas = sorted({check_delta(d) for d in deltas})
    if not deltas or deltas[0] <= 0:
        raise ConfigError("deltas", "name at least one budget, each > 0")
    check_count(n, "n")
    check_count(n_clean, "n_clean")
    check_alpha(alpha)
    check_memory(config, max(n, n_clean), "n")
    device = resolve_device(device)
    configs = {kind: dataclasses.replace(config, attack=dataclasses.replace(
                   config.attack, kind=kind, sign_noise=config.attack.sign_noise if kind == "gradient" else 0.0))
               for kind in attacks}
    records = {kind: resolve(backend, device, config.recipe.dtype, attack=kind) for kind in attacks}
    data = get_dataset(config.dataset)
    tic = time.perf_counter()
    clean = clean_runs(config, n_clean, seed, data=data, backend=records[attacks[0]], device=device, progress=progress)
    rule = SafetyRule.from_clean_hits(clean.test_hits, clean.test_size, alpha)
    log.info("clean runs: %d, g_c = %.4f [%.1f s]", clean.n, rule.g_clean, time.perf_counter() - tic)
    seeds = trajectory_seeds(seed, Purpose.SAMPLE, n)
    rows, radii = [], {}
    for kind in attacks:
        for delta in deltas:
            tic = time.perf_counter()
            runs = sample(configs[kind], delta, seeds, data=data, backend=records[kind], device=device, progress=progress,
                          description=f"{kind} δ={delta:g}")
            unsafe = int(rule.unsafe(runs.test_hits).sum())
            rows.append({"attack": kind, "delta": delta, "n": runs.n, "unsafe": unsafe, "fraction": unsafe / runs.n,
                         "interval_95": clopper_pearson(unsafe, runs.n), "median_accuracy": float(np.median(runs.test_accuracy)),
                         "backend": runs.meta["backend"], "seconds": time.perf_counter() - tic})
            log.info("%s δ = %g: %d of %d runs unsafe [%.1f s]", kind, delta, unsafe, runs.n, rows[-1]["seconds"])
        broken = [r["delta"] for r in rows if r["attack"] == kind and r["unsafe"] > 0]
        radii[kind] = min(broken) if broken else None
    return {"format": "barrierkit.attack-strength/1", "config": config.to_dict(), "attacks": attacks, "deltas": deltas,
            "n": n, "n_clean": n_clean, "alpha": alpha, "seed": seed, "g_clean": rule.g_clean,
            "clean_median_hits": rule.clean_median_hits, "test_size": rule.test_size, "rows": rows, "delta_emp": radii}


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
