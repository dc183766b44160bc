"""One probe of the radius search: certify (or refute) a single budget delta with fresh runs.

A probe samples a training split (fits the barrier trunk psi and w0) and a verification split
that nothing else has seen, both at delta with seeds of their own; labels every run unsafe when
G = g_c - g > alpha (exactly, on hit counts: barrierkit.labels); solves the scenario program on
the verification split with psi fixed (docs/METHOD.md §6) and attaches the PAC level
epsilon(N_v, d, beta / K_max). It also evaluates the direct baseline on the same runs: no
barrier, the d = 1 scenario bound on the terminal labels of all of this probe's runs (training
and verification, all i.i.d. draws of A_delta).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from . import pac
from .backends import Backend, resolve
from .backends.triton_gpu import kernel_module
from .barrier import Barrier, fit_barrier
from .config import CertifyConfig, SampleConfig
from .data import Dataset
from .engine import sample
from .rng import probe_purpose, trajectory_seeds
from .labels import SafetyRule
from .outcomes import (VERDICT_FIELDS, a_posteriori_epsilon, first_unsafe, in_pool, label_fields, solved_status, training_split_consistency,
                       unsolved_status, witness_record)
from .scenario import ScenarioProblem, solve
from .trajectories import Trajectories

log = logging.getLogger("barrierkit")

TIMING_FIELDS = ("sampling_s", "sampling_train_s", "sampling_features_s", "sampling_eval_s", "barrier_s", "scp_s")
"""Where a certification's time goes after the clean runs (a certificate's ``timings`` adds total_s, clean_s)."""


@dataclass
class Certification:
    """State shared by the probes of one certification."""

    config: CertifyConfig
    data: Dataset
    rule: SafetyRule  # g_c and alpha: decides every label exactly
    pool: List[Tuple[float, np.ndarray]]  # (budget, terminal features [*, k]) of known-unsafe runs
    backend: Backend | str = "torch"  # a name is resolved once, on construction
    device: str = "cpu"
    progress: Optional[bool] = None
    timings: Dict[str, float] = field(default_factory=lambda: {key: 0.0 for key in TIMING_FIELDS})
    trajectories_sampled: int = 0
    fallbacks: List[str] = field(default_factory=list)  # why the backend ran segments on the torch reference

    def __post_init__(self) -> None:
        self.backend = resolve(self.backend, self.device, self.config.sample.recipe.dtype, attack=self.config.sample.poisoning_attack)

    def sample(self, delta: float, purpose: int, n: int, description: str,
               sample_config: Optional[SampleConfig] = None) -> Trajectories:
        tic = time.perf_counter()
        runs = sample(sample_config or self.config.sample, delta, trajectory_seeds(self.config.seed, purpose, n), data=self.data,
                      backend=self.backend, device=self.device, progress=self.progress, description=description)
        self.timings["sampling_s"] += time.perf_counter() - tic
        for part in ("train_s", "features_s", "eval_s"):  # where sampling's time went (certify --profile)
            self.timings[f"sampling_{part}"] += float(runs.meta["timings"][part])
        self.trajectories_sampled += n
        for reason in runs.meta["fallbacks"]:
            if reason not in self.fallbacks:
                self.fallbacks.append(reason)
                log.warning("backend %s handed segments to the torch reference: %s", self.backend.name, reason)
        return runs

    def pool_above(self, delta: float) -> np.ndarray:
        """The unsafe pool of a probe at ``delta`` (docs/METHOD.md §11.4): the heavy-poison runs'
        unsafe terminal states (keyed at budget +inf, heavier than any probe) and, when
        ``pool_states`` is ``heavy+larger``, unsafe training-split states from budgets larger than
        ``delta``.

        States from the probe's own budget are never used: they sit on the safety boundary next to
        safe runs of the same budget, so no barrier with a margin can separate them, and they add
        nothing a fresh verification split does not already test through its labels. Barely
        unsafe states from a slightly larger budget are much the same, which is why ``heavy`` is
        the default.
        """
        k = self.config.sample.feature_dim
        parts = [states for budget, states in self.pool if in_pool(self.config.pool_states, budget, delta)]
        return np.concatenate(parts) if parts else np.empty((0, k))


def scenario_rows(barrier: Barrier, features: np.ndarray, pool: np.ndarray, device: str) -> Tuple[Dict[str, np.ndarray], str]:
    """psi_i(0), the increments, psi_i(K) and psi(pool) in float64: by the fused Triton kernel on
    CUDA (kernels/barrier_eval.py, ~1e-15 relative to numpy), else by ``Barrier.psi``."""
    if torch.device(device).type == "cuda":
        barrier_eval = kernel_module("barrier_eval").barrier_eval
        args = (barrier.mean, barrier.scale, barrier.layers)
        out = barrier_eval(torch.as_tensor(features, dtype=torch.float64, device=device), *args)
        pool_out = barrier_eval(torch.as_tensor(pool[:, None, :], dtype=torch.float64, device=device), *args)
        rows = {k: out[k].cpu().numpy() for k in ("initial", "increments", "terminal")}
        return {**rows, "pool": pool_out["initial"].cpu().numpy()}, "triton"
    psi = barrier.psi(features)
    return {"initial": psi[:, 0], "increments": np.diff(psi, axis=1), "terminal": psi[:, -1],
            "pool": barrier.psi(pool)}, "numpy"


def run_probe(ctx: Certification, delta: float, index: int) -> Dict[str, Any]:
    """Certify, refute or give up on budget ``delta``; the probe's full record (JSON-safe)."""
    cfg = ctx.config
    beta_probe = cfg.beta_per_probe
    runs = {split: ctx.sample(delta, probe_purpose(index, split), cfg.n_train if split == "train" else cfg.n_verify,
                              f"probe {index + 1} δ={delta:.4g} {split}") for split in ("train", "verify")}
    train, verify = runs["train"], runs["verify"]
    hits = {split: runs[split].test_hits for split in ("train", "verify")}
    reference = {split: runs[split].reference_hits for split in ("train", "verify")} if ctx.rule.own_reference else None
    u_train, u_verify = ctx.rule.unsafe_runs(train), ctx.rule.unsafe_runs(verify)
    record: Dict[str, Any] = {
        "index": index, "delta": float(delta), "beta": beta_probe, "n_train": train.n, "n_verify": verify.n,
        "hits": {split: h.tolist() for split, h in hits.items()},
        "reference_hits": None if reference is None else {split: h.tolist() for split, h in reference.items()},
        **label_fields(ctx.rule, hits, beta_probe, cfg.epsilon, reference),
        "poison_fraction_mean": float(verify.poison_fraction.mean()),
        "witness": None, "verdict": None, "barrier": None, "epsilon": None, "d": cfg.decision_variables,
    }
    found = first_unsafe(ctx.rule, hits, reference)
    if found is not None:
        split, i = found
        record["witness"] = witness_record(ctx.rule, split, i, int(hits[split][i]), runs[split].seeds[i], delta,
                                           runs[split].meta["backend"], None if reference is None else int(reference[split][i]))
    # the training split's unsafe terminal states join the pool for later probes at smaller budgets;
    # training splits are independent of every verification split
    if u_train.any():
        ctx.pool.append((float(delta), train.features[u_train, -1]))
    pool = ctx.pool_above(delta)
    if u_verify.any() or len(pool) == 0:
        # no barrier can certify a verification split with an unsafe run (docs/METHOD.md §6): the
        # scenario program would return eta* >= kappa/(K+2) > 0, so it is not solved
        status, reason = unsolved_status(n_unsafe_verify=record["n_unsafe_verify"], n_verify=verify.n, alpha=cfg.alpha,
                                         pool_rows=len(pool))
        record.update(status=status, reason=reason)
        return record

    tic = time.perf_counter()
    barrier = fit_probe_barrier(train, pool, cfg)
    ctx.timings["barrier_s"] += time.perf_counter() - tic
    rows, psi_backend = scenario_rows(barrier, verify.features, pool, ctx.device)
    problem = ScenarioProblem(**rows, unsafe=u_verify, w0=barrier.w0, kappa=cfg.kappa, w_bound=cfg.w_bound, mu=cfg.mu)
    tic = time.perf_counter()
    verdict = solve(problem, solver=cfg.solver, tau=cfg.tau, count_support=True)
    ctx.timings["scp_s"] += time.perf_counter() - tic
    eps = pac.epsilon(verify.n, verdict.d, beta_probe)
    eps_post = a_posteriori_epsilon(verify.n, verdict.n_support, beta_probe, verdict.d)
    consistency = training_split_consistency(int(u_train.sum()), train.n, eps, beta_probe)
    vd = verdict.to_dict()
    status, reason = solved_status(solver_status=verdict.solver_status, eta_check=verdict.eta_check,
                                   rounding_bound=verdict.rounding_bound, tau=cfg.tau, epsilon=eps,
                                   epsilon_requested=cfg.epsilon, train_consistency=consistency)
    record.update(
        status=status, reason=reason, epsilon=eps, epsilon_a_posteriori=eps_post, d=verdict.d,
        n_support=verdict.n_support, eta_star=vd["eta_star"], eta_check=vd["eta_check"], tau=cfg.tau,
        pool_size=int(len(pool)), psi_backend=psi_backend, train_consistency=consistency,
        verdict={k: vd[k] for k in VERDICT_FIELDS},
        barrier=barrier_record(barrier),
    )
    return record


def fit_probe_barrier(train: Trajectories, pool: np.ndarray, config: CertifyConfig) -> Barrier:
    """A probe's barrier, fitted on its training split's states and the unsafe pool alone.

    The training split's own unsafe runs are not C2 rows of the fit: they ended barely past α at
    the probe's budget, beside its safe runs, and a trunk bent to put them above λ did not
    generalise to fresh safe runs (docs/METHOD.md §11.7). The scenario program never sees the
    training split, so this choice affects how often a probe certifies, never soundness."""
    return fit_barrier(train.features, np.zeros(train.n, dtype=bool), pool, config.barrier)


def barrier_record(barrier: Barrier) -> Dict[str, Any]:
    """A probe's record of its fitted barrier: the trunk (everything verify needs) and, for a
    reader, its training loss and violations (repeated from the trunk)."""
    return {"train_loss": barrier.train_loss, "train_violations": barrier.train_violations,
            "out_dim": barrier.out_dim, "trunk": barrier.to_dict()}
