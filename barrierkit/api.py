"""Python API: ``certify(config) -> Certificate`` and ``replay(...)`` for witnesses."""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any, Dict, Optional

import numpy as np

from . import pac
from .certificate import CERTIFIED_FIELDS, FORMAT, Certificate, clean_summary, threat_model, throughput, warnings_for
from .backends import resolve, resolve_device
from .config import CertifyConfig, ConfigError, SampleConfig
from .context import radius_context
from .data import Dataset, get_dataset
from .engine import check_memory, clean_runs, sample, versions
from .labels import SafetyRule, chance_hits
from .models import MLPShape
from .outcomes import overall_status
from .probe import PURPOSE_POOL, CertifyContext, run_probe
from .radius import max_budget, radii, search
from .trajectories import Trajectories

log = logging.getLogger("barrierkit")


def certify(config: CertifyConfig, *, data: Optional[Dataset] = None, backend: str = "auto", device: str = "auto",
            progress: Optional[bool] = None) -> Certificate:
    """Search the largest certified poisoning budget and return the Certificate.

    ``data``, when given, must be the dataset ``config.sample.dataset`` names (it is loaded by
    that name either way, and verify loads it again to check the certificate's facts about it).
    The backend (``auto`` is resolved once, here) is part of the simulated dynamics: it is
    recorded in the certificate and witnesses must be replayed with it. ``device`` is ``auto``
    (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``. Progress goes to the ``barrierkit``
    logger, one line per stage and per probe; ``progress`` turns the bars on or off (default:
    on when stderr is a terminal).
    """
    start = time.perf_counter()
    device = resolve_device(device)
    named = get_dataset(config.sample.dataset)
    if data is not None and data.content_hash != named.content_hash:
        raise ConfigError("data", f"is not the dataset config.sample.dataset names ({config.sample.dataset!r}): "
                                  "verify reloads the data by that name, so it could not check the certificate")
    data = named
    scfg = config.sample
    for name, n in (("n_clean", config.n_clean), ("n_pool", config.n_pool), ("n_verify", config.n_train + config.n_verify)):
        check_memory(scfg, n, name)
    backend = resolve(backend, device, data.input_dim, scfg.model.hidden, scfg.recipe.batch, scfg.recipe.dtype)
    log.info("certify: %s, MLP %s, %d steps, backend %s on %s; up to %d probes of %d + %d runs",
             data.name, "-".join(map(str, (data.input_dim, *scfg.model.hidden, data.n_classes))), scfg.recipe.steps,
             backend, device, config.max_probes, config.n_train, config.n_verify)
    tic = time.perf_counter()
    clean = clean_runs(scfg, config.n_clean, config.seed, data=data, backend=backend, device=device, progress=progress)
    rule = SafetyRule.from_clean_hits(clean.test_hits, clean.test_size, config.alpha)
    clean_s = time.perf_counter() - tic
    log.info("clean runs: %d, g_c = %.4f (median %s of %d test points correct) [%.1f s]", clean.n, rule.g_clean,
             f"{rule.clean_median_hits:g}", rule.test_size, clean_s)
    warnings = warnings_for(rule, chance_hits(data.y_test))
    for text in warnings:
        log.warning(text)
    top = max_budget(scfg.threat.norm, scfg.threat.domain, data.input_dim)
    pool_delta = config.pool_budget(top)
    ctx = CertifyContext(config, data, rule, pool=[], backend=backend, device=str(device), progress=progress)
    tic = time.perf_counter()
    heavy = ctx.sample(pool_delta, PURPOSE_POOL, config.n_pool, f"unsafe pool δ={pool_delta:.3g}",
                       sample_config=pool_sample_config(config))
    heavy_unsafe = rule.unsafe(heavy.test_hits)
    if heavy_unsafe.any():
        ctx.pool.append((math.inf, heavy.features[heavy_unsafe, -1]))  # heavier than every probe (rho_pool)
    log.info("unsafe pool: %d of %d heavy-poison runs (rho %g, δ %.3g) ended unsafe [%.1f s]", int(heavy_unsafe.sum()),
             heavy.n, config.pool_rho, pool_delta, time.perf_counter() - tic)

    def probe(delta: float, index: int) -> Dict[str, Any]:
        tic = time.perf_counter()
        rec = run_probe(ctx, delta, index)
        log.info("probe %d of at most %d: δ = %.4g %s: unsafe %d/%d verify, %d/%d train; %s [%.1f s, %.0f s in all]",
                 index + 1, config.max_probes, delta, rec["status"], rec["n_unsafe_verify"], rec["n_verify"],
                 rec["n_unsafe_train"], rec["n_train"], rec["reason"], time.perf_counter() - tic, time.perf_counter() - start)
        return rec

    probes = search(probe, max_probes=config.max_probes, budget_max=top, delta_start=config.delta_start,
                    delta_hi=config.delta_hi, rel_tol=config.rel_tol)
    status, reason, best = overall_status(probes)
    found = radii(probes, top, config.delta_hi)
    context = None
    if found["delta_cert"] is not None:
        context = radius_context(found["delta_cert"], scfg.threat.norm, data.x_train, data.y_train)
    total = time.perf_counter() - start
    shape = MLPShape.from_spec(scfg.model, data.input_dim, data.n_classes)
    trajectories = ctx.trajectories_sampled + config.n_clean
    doc: Dict[str, Any] = {
        "format": FORMAT, "status": status, "reason": reason, "config": config.to_dict(),
        "threat_model": threat_model(config.to_dict()), "dataset": data.name, "data_hash": data.content_hash,
        "input_dim": data.input_dim, "n_classes": data.n_classes, "model_hash": shape.spec_hash,
        "param_count": shape.param_count, "test_size": rule.test_size, "chance_hits": chance_hits(data.y_test),
        "g_clean": rule.g_clean, "clean_accuracy": clean_summary(rule, clean.test_hits),
        "alpha": config.alpha, "beta": config.beta, "beta_per_probe": config.beta_per_probe,
        "epsilon": best["epsilon"] if best else None, "epsilon_requested": config.epsilon,
        "n_verify": config.n_verify, "n_train": config.n_train, "d": config.decision_variables,
        "epsilon_direct": pac.epsilon(config.n_verify + config.n_train, 1, config.beta_per_probe),
        "pool": {"delta": pool_delta, "rho": config.pool_rho, "n": heavy.n, "n_unsafe": int(heavy_unsafe.sum()),
                 "hits": heavy.test_hits.tolist()},
        "probes": probes, "radii": found, "context": context, "warnings": warnings,
        "timings": {"total_s": total, "clean_s": clean_s, **ctx.timings},
        "throughput": throughput(trajectories, scfg.recipe.steps, total, len(probes)),
        "versions": versions(), "backend": backend, "device": str(device), "features_by": clean.meta["features_by"],
    }
    if best is not None:
        doc.update({k: best[k] for k in CERTIFIED_FIELDS})
    log.info("certify: %s in %.1f s (%d probes)", status, total, len(probes))
    return Certificate(doc)


def pool_sample_config(config: CertifyConfig) -> SampleConfig:
    """The heavy-poison runs of the unsafe pool: the recipe with every point poisoned (pool_rho)."""
    scfg = config.sample
    return dataclasses.replace(scfg, threat=dataclasses.replace(scfg.threat, rho=config.pool_rho))


def replay(config: SampleConfig, delta: float, seeds: Dict[str, int] | np.ndarray, *, data: Optional[Dataset] = None,
           backend: str = "torch", device: str = "cpu") -> Trajectories:
    """Re-run one trajectory from its seeds alone (init, poison, schedule): a witness replay."""
    if isinstance(seeds, dict):
        row = np.array([[seeds["init"], seeds["poison"], seeds["schedule"]]], dtype=np.int64)
    else:
        row = np.asarray(seeds, dtype=np.int64).reshape(1, 3)
    return sample(config, delta, row, data=data, backend=backend, device=device, progress=False)
