"""Python API: ``certify(config) -> Certificate`` and ``replay(...)`` for witnesses."""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Dict, Optional

import numpy as np

from . import pac
from .certificate import FORMAT, Certificate
from .backends import resolve
from .config import CertifyConfig, SampleConfig
from .context import radius_context
from .data import Dataset, get_dataset
from .engine import clean_accuracy, sample, versions
from .models import MLPShape
from .probe import PURPOSE_POOL, CertifyContext, run_probe
from .radius import max_budget, search
from .trajectories import Trajectories


def certify(config: CertifyConfig, *, data: Optional[Dataset] = None, backend: str = "auto", device: str = "cpu",
            progress: Optional[bool] = None) -> Certificate:
    """Search the largest certified poisoning budget and return the Certificate.

    The backend (``auto`` is resolved once, here) is part of the simulated dynamics: it is
    recorded in the certificate and witnesses must be replayed with it.
    """
    start = time.perf_counter()
    data = data if data is not None else get_dataset(config.sample.dataset)
    scfg = config.sample
    backend = resolve(backend, device, data.input_dim, scfg.model.hidden, scfg.recipe.batch, scfg.recipe.dtype)
    tic = time.perf_counter()
    g_clean, clean = clean_accuracy(scfg, config.n_clean, config.seed, data=data, backend=backend, device=device, progress=progress)
    clean_s = time.perf_counter() - tic
    top = max_budget(scfg.threat.norm, scfg.threat.domain, data.input_dim)
    pool_delta = min(config.pool_delta if config.pool_delta is not None else top, top)
    ctx = CertifyContext(config, data, g_clean, pool=[], backend=backend, device=device, progress=progress)
    heavy = ctx.sample(pool_delta, PURPOSE_POOL, config.n_pool, f"unsafe pool δ={pool_delta:.3g}",
                       sample_config=dataclasses.replace(scfg, threat=dataclasses.replace(scfg.threat, rho=config.pool_rho)))
    heavy_unsafe = heavy.unsafe(g_clean, config.alpha)
    if heavy_unsafe.any():
        ctx.pool.append((math.inf, heavy.features[heavy_unsafe, -1]))  # heavier than every probe (rho_pool)
    result = search(lambda d, i: run_probe(ctx, d, i), max_probes=config.max_probes, budget_max=top,
                    delta_start=config.delta_start, delta_hi=config.delta_hi, rel_tol=config.rel_tol)
    certified = [p for p in result.probes if p["status"] == "CERTIFIED"]
    if certified:
        best = max(certified, key=lambda p: p["delta"])
        status, reason, eps = "CERTIFIED", best["reason"], best["epsilon"]
    else:
        first = min(result.probes, key=lambda p: p["delta"])
        status = "REFUTED" if first["status"] == "REFUTED" else "INCONCLUSIVE"
        reason, eps = f"smallest probe δ={first['delta']:.4g}: {first['reason']}", None
    radii = {"delta_cert": result.delta_cert, "delta_direct": result.delta_direct, "delta_fail": result.delta_fail,
             "whole_domain": result.whole_domain, "capped_by_user": result.capped_by_user, "max_budget": top}
    context = None
    if result.delta_cert is not None:
        context = radius_context(result.delta_cert, scfg.threat.norm, data.x_train, data.y_train)
    total = time.perf_counter() - start
    steps = ctx.trajectories_sampled + config.n_clean
    shape = MLPShape.from_spec(scfg.model, data.input_dim, data.n_classes)
    doc: Dict[str, Any] = {
        "format": FORMAT, "status": status, "reason": reason, "config": config.to_dict(),
        "threat_model": {**scfg.to_dict()["threat"], "sampling_attack": scfg.to_dict()["attack"]},
        "dataset": data.name, "data_hash": data.content_hash, "model_hash": shape.spec_hash, "param_count": shape.param_count,
        "g_clean": g_clean, "clean_accuracy": {"n": clean.n, "median": g_clean, "min": float(clean.test_accuracy.min()),
                                               "max": float(clean.test_accuracy.max())},
        "alpha": config.alpha, "beta": config.beta, "beta_per_probe": config.beta_per_probe, "epsilon": eps,
        "epsilon_requested": config.epsilon, "n_verify": config.n_verify, "n_train": config.n_train,
        "d": config.decision_variables,
        "epsilon_direct": pac.epsilon(config.n_verify + config.n_train, 1, config.beta_per_probe),
        "pool": {"delta": pool_delta, "rho": config.pool_rho, "n": heavy.n, "n_unsafe": int(heavy_unsafe.sum())},
        "probes": result.probes, "radii": radii, "context": context,
        "timings": {"total_s": total, "clean_s": clean_s, **ctx.timings},
        "throughput": {"trajectories": steps, "trajectory_steps_per_s": steps * scfg.recipe.steps / max(total, 1e-9),
                       "probes_per_hour": 3600.0 * len(result.probes) / max(total, 1e-9)},
        "versions": versions(), "backend": backend, "device": str(device), "features_by": clean.meta["features_by"],
    }
    if certified:
        best = max(certified, key=lambda p: p["delta"])
        doc.update({k: best[k] for k in ("eta_star", "eta_check", "n_support", "epsilon_a_posteriori", "tau")})
    return Certificate(doc)


def replay(config: SampleConfig, delta: float, seeds: Dict[str, int] | np.ndarray, *, data: Optional[Dataset] = None,
           backend: str = "torch", device: str = "cpu") -> Trajectories:
    """Re-run one trajectory from its seeds alone (init, poison, schedule): a witness replay."""
    if isinstance(seeds, dict):
        row = np.array([[seeds["init"], seeds["poison"], seeds["schedule"]]], dtype=np.int64)
    else:
        row = np.asarray(seeds, dtype=np.int64).reshape(1, 3)
    return sample(config, delta, row, data=data, backend=backend, device=device, progress=False)
