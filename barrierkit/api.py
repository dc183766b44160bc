"""Python API: ``certify(config) -> Certificate`` and ``replay(...)`` for witnesses."""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any, Dict, Optional

import numpy as np

from . import pac
from .backends import Backend, resolve, resolve_device
from .certificate import Certificate, assemble, warnings_for
from .config import CertifyConfig, ConfigError, SampleConfig
from .data import Dataset, get_dataset
from .empirical import certificate_attacks, certificate_cells, probed_budgets, training_attack
from .engine import check_memory, clean_runs, sample
from .environment import versions
from .labels import SafetyRule, chance_hits
from .probe import Certification, run_probe
from .radius import max_budget, search
from .rng import Purpose
from .trajectories import Trajectories

log = logging.getLogger("barrierkit")


def certify(config: CertifyConfig, *, data: Optional[Dataset] = None, backend: str | Backend = "auto",
            device: str = "auto", progress: Optional[bool] = None) -> Certificate:
    """Search the largest certified budget and return the Certificate: the poisoning budget δ,
    the test-time budget δ' (``threat_kind = "evasion"``) or, under ``both``, the one named by
    ``search_budget`` with the other one fixed.

    ``data``, when given, must be the dataset ``config.sample.dataset`` names (it is loaded by
    that name either way, and verify loads it again to check the certificate's facts about it).
    The backend (``auto`` is resolved once, here) is part of the simulated dynamics: it is
    recorded in the certificate and witnesses must be replayed with it. ``device`` is ``auto``
    (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``. Progress goes to the ``barrierkit``
    logger, one line per stage and per probe; ``progress`` turns the bars on or off (default:
    on when stderr is a terminal).
    """
    start = time.perf_counter()
    if not isinstance(config, CertifyConfig):
        hint = (" (a SampleConfig describes the runs only: wrap it as CertifyConfig(sample=...))"
                if isinstance(config, SampleConfig) else " (a dict: CertifyConfig.from_dict(...))" if isinstance(config, dict) else "")
        raise ConfigError("config", f"certify() needs a CertifyConfig, got {type(config).__name__}{hint}")
    pac.check_verify_runs(config)
    device = resolve_device(device)
    named = get_dataset(config.sample.dataset)
    if data is not None and data.content_hash != named.content_hash:
        raise ConfigError("data", f"is not the dataset config.sample.dataset names ({config.sample.dataset!r}): "
                                  "verify reloads the data by that name, so it could not check the certificate")
    data = named
    scfg = config.sample
    for name, n in (("n_clean", config.n_clean), ("n_pool", config.n_pool), ("n_verify", config.n_train + config.n_verify),
                    ("emp_runs", config.emp_runs if config.emp_attacks else 0)):
        check_memory(scfg, n, name)
    emp_backends = ({kind: resolve(backend, device, scfg.recipe.dtype, attack=training_attack(scfg, kind))
                     for kind in certificate_attacks(config)} if config.emp_attacks else {})  # an attack the backend cannot run fails here, before any work
    backend = resolve(backend, device, scfg.recipe.dtype, attack=scfg.poisoning_attack)
    log.info("certify: %s, MLP %s, %d steps, backend %s on %s; up to %d probes of %d + %d runs",
             data.name, "-".join(map(str, (data.input_dim, *scfg.model.hidden, data.n_classes))), scfg.recipe.steps,
             backend.name, device, config.max_probes, config.n_train, config.n_verify)
    tic = time.perf_counter()
    clean = clean_runs(scfg, config.n_clean, config.seed, data=data, backend=backend, device=device, progress=progress)
    rule = SafetyRule.for_threat(scfg.threat_kind, clean.test_hits, clean.test_size, config.alpha)
    clean_s = time.perf_counter() - tic
    log.info("clean runs: %d, g_c = %.4f (median %s of %d test points correct) [%.1f s]", clean.n, rule.g_clean,
             f"{rule.clean_median_hits:g}", rule.test_size, clean_s)
    for text in warnings_for(rule, chance_hits(data.y_test)):
        log.warning(text)
    top = max_budget(scfg.search_norm, scfg.threat.domain, data.input_dim)
    ctx = Certification(config, data, rule, pool=[], backend=backend, device=str(device), progress=progress)
    pool = sample_pool(ctx, config.pool_budget(top))

    def probe(delta: float, index: int) -> Dict[str, Any]:
        tic = time.perf_counter()
        rec = run_probe(ctx, delta, index)
        log.info("probe %d of at most %d: δ = %.4g %s: unsafe %d/%d verify, %d/%d train; %s [%.1f s, %.0f s in all]",
                 index + 1, config.max_probes, delta, rec["status"], rec["n_unsafe_verify"], rec["n_verify"],
                 rec["n_unsafe_train"], rec["n_train"], rec["reason"], time.perf_counter() - tic, time.perf_counter() - start)
        return rec

    probes = search(probe, max_probes=config.max_probes, budget_max=top, delta_start=config.delta_start,
                    delta_hi=config.delta_hi, rel_tol=config.rel_tol)
    cells, emp_s = None, 0.0
    if emp_backends:
        tic = time.perf_counter()
        budgets = probed_budgets(probes)
        log.info("empirical radii: %s, %d runs at each of the %d probed budgets", ", ".join(emp_backends),
                 config.emp_runs, len(budgets))
        cells = certificate_cells(config, budgets, rule, data, emp_backends, device, progress)
        emp_s = time.perf_counter() - tic
    run = {"versions": versions(), "backend": backend.name, "device": str(device), "features_by": clean.meta["features_by"]}
    cert = assemble(config, data, rule, clean.test_hits, pool, probes, {"clean_s": clean_s, **ctx.timings, "empirical_s": emp_s},
                    ctx.trajectories_sampled + config.n_clean + len(cells or ()) * config.emp_runs, start, run, cells)
    log.info("certify: %s in %.1f s (%d probes)", cert.status, cert.doc["timings"]["total_s"], len(probes))
    return cert


def sample_pool(ctx: Certification, pool_delta: float) -> Dict[str, Any]:
    """Sample the heavily attacked runs of the unsafe pool, add their unsafe terminal states to
    ``ctx.pool`` (keyed +inf: heavier than every probe) and return the certificate's record."""
    config = ctx.config
    tic = time.perf_counter()
    heavy = ctx.sample(pool_delta, Purpose.POOL, config.n_pool, f"unsafe pool δ={pool_delta:.3g}",
                       sample_config=pool_sample_config(config))
    unsafe = ctx.rule.unsafe_runs(heavy)
    if unsafe.any():
        ctx.pool.append((math.inf, heavy.features[unsafe, -1]))
    log.info("unsafe pool: %d of %d heavily attacked runs (rho %g, budget %.3g) ended unsafe [%.1f s]", int(unsafe.sum()),
             heavy.n, config.pool_rho, pool_delta, time.perf_counter() - tic)
    return {"delta": pool_delta, "rho": config.pool_rho, "n": heavy.n, "n_unsafe": int(unsafe.sum()),
            "hits": heavy.test_hits.tolist(),
            "reference_hits": heavy.reference_hits.tolist() if ctx.rule.own_reference else None}


def pool_sample_config(config: CertifyConfig) -> SampleConfig:
    """The heavily attacked runs of the unsafe pool: the recipe with the searched budget's
    probability (ρ of the training points, or ρ' of the test points) raised to pool_rho."""
    scfg = config.sample
    if scfg.searches_evasion:
        return dataclasses.replace(scfg, evasion=dataclasses.replace(scfg.evasion, rho=config.pool_rho))
    return dataclasses.replace(scfg, threat=dataclasses.replace(scfg.threat, rho=config.pool_rho))


def replay(config: SampleConfig, delta: float, seeds: Dict[str, int] | np.ndarray, *, data: Optional[Dataset] = None,
           backend: str | Backend = "auto", device: str = "auto") -> Trajectories:
    """Re-run one trajectory from its seeds alone (init, poison, schedule): a witness replay.

    The backend and device default as in :func:`certify`; to reproduce a certificate's witness
    bit for bit, pass the certificate's ``backend`` and ``device``."""
    if isinstance(seeds, dict):
        row = np.array([[seeds["init"], seeds["poison"], seeds["schedule"]]], dtype=np.int64)
    else:
        row = np.asarray(seeds, dtype=np.int64).reshape(1, 3)
    device = resolve_device(device)
    return sample(config, delta, row, data=data, backend=resolve(backend, device, config.recipe.dtype, attack=config.poisoning_attack), device=device,
                  progress=False)
