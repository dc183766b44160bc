"""Validated configuration: what is sampled, how training runs, and what the attacker may do.

Every dataclass checks its values at construction and raises :class:`ConfigError` (a
``ValueError``) naming the offending field, so a bad value never reaches the engine.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Tuple

NORMS = ("inf", "2")
ATTACKS = ("uniform", "sign", "gradient")
ATTACK_DESCRIPTIONS = {
    "gradient": "δ times the sign (ℓ∞) or unit direction (ℓ2) of one clean reference model's input gradient "
                "of the point's loss, computed once before training: a fixed, one-shot direction that does not adapt "
                "to the run being poisoned",
    "sign": "a random corner of the ℓ∞ ball (ℓ2: a random sign vector scaled to norm δ)",
    "uniform": "uniform in the ℓp ball of radius δ",
}
"""What each sampling attack draws for a poisoned point (the distribution A_delta is relative to)."""
DTYPES = ("float32", "float64")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


def _check(cond: bool, field_name: str, message: str) -> None:
    if not cond:
        raise ConfigError(field_name, message)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _norm_name(norm: Any) -> str:
    """Accept 'inf', 'linf', 'l2', '2' (any case) and the numbers 2 and inf."""
    text = str(norm).strip().lower()
    return {"linf": "inf", "l2": "2", "2.0": "2"}.get(text, text)


def _positive_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 1


@dataclass(frozen=True)
class ThreatModel:
    """Training-time poisoning: each point poisoned w.p. ``rho``; ||Delta||_p <= delta; x in domain."""

    norm: str = "inf"
    rho: float = 0.5
    domain: Tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", _norm_name(self.norm))
        _check(self.norm in NORMS, "norm", f"must be one of {NORMS}, got {self.norm!r}")
        _check(_finite(self.rho) and 0.0 <= self.rho <= 1.0, "rho", f"must be in [0, 1], got {self.rho!r}")
        lo, hi = self.domain
        _check(_finite(lo) and _finite(hi) and lo < hi, "domain", f"must be (low, high) with low < high, got {self.domain!r}")
        object.__setattr__(self, "domain", (float(lo), float(hi)))


@dataclass(frozen=True)
class SamplingAttack:
    """The distribution A_delta the perturbations are drawn from; every guarantee names it
    (:data:`ATTACK_DESCRIPTIONS`). The ``gradient`` attack's reference model is one clean run
    (seed ``reference_seed``); ``sign_noise`` flips each poisoned point's direction with that
    probability, which makes the attack random rather than one fixed perturbation of the data.
    """

    kind: str = "gradient"
    sign_noise: float = 0.0
    reference_seed: int = 0

    def __post_init__(self) -> None:
        _check(self.kind in ATTACKS, "attack", f"must be one of {ATTACKS}, got {self.kind!r}")
        _check(_finite(self.sign_noise) and 0.0 <= self.sign_noise <= 1.0, "sign_noise", f"must be in [0, 1], got {self.sign_noise!r}")
        _check(self.sign_noise == 0.0 or self.kind == "gradient", "sign_noise",
               f"applies to the gradient attack only (attack is {self.kind!r}); leave it at 0")
        _check(isinstance(self.reference_seed, int) and 0 <= self.reference_seed < 2**63, "reference_seed", "must be an int in [0, 2**63)")


@dataclass(frozen=True)
class TrainRecipe:
    """The dynamics f: ``steps`` of minibatch SGD, recorded every ``record_every`` steps.

    Defaults (digits, MLP 64-32-10): 400 steps (~9 epochs) at lr 0.1, K = 10. Measured here over
    400 clean runs: median test accuracy 0.936, worst 0.914, so clean training alone is never
    unsafe at alpha = 0.05; at 200 steps (median 0.903) 0.5 % of clean runs were, which no
    certificate at epsilon ~ 0.01 can absorb. K does not change what a certificate states, but
    (C3) bounds every recorded increment by (1 - kappa)/K, so a fine K makes one noisy interval of
    one run block certification: at the default budget delta = 0.05 the scenario program
    certified with K = 10 (eta_check = -0.038) and missed by 0.0035 with K = 50 (2000 runs each).
    """

    steps: int = 400
    batch: int = 32
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0
    record_every: int = 40
    dtype: str = "float32"

    def __post_init__(self) -> None:
        _check(_positive_int(self.steps), "steps", f"must be an int >= 1, got {self.steps!r}")
        _check(_positive_int(self.batch), "batch", f"must be an int >= 1, got {self.batch!r}")
        _check(_finite(self.lr) and self.lr > 0, "lr", f"must be a finite number > 0, got {self.lr!r}")
        _check(_finite(self.momentum) and 0 <= self.momentum < 1, "momentum", f"must be in [0, 1), got {self.momentum!r}")
        _check(_finite(self.weight_decay) and self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay!r}")
        _check(_positive_int(self.record_every), "record_every", f"must be an int >= 1, got {self.record_every!r}")
        _check(self.steps % self.record_every == 0, "record_every", f"must divide steps ({self.steps}), got {self.record_every}")
        _check(self.dtype in DTYPES, "dtype", f"must be one of {DTYPES}, got {self.dtype!r}")

    @property
    def intervals(self) -> int:
        """K, the number of recorded intervals."""
        return self.steps // self.record_every


@dataclass(frozen=True)
class ModelSpec:
    """MLP family: ``hidden`` widths of 1 or 2 ReLU layers (input and classes come from the data)."""

    hidden: Tuple[int, ...] = (32,)

    def __post_init__(self) -> None:
        hidden = tuple(self.hidden)
        _check(1 <= len(hidden) <= 2 and all(_positive_int(h) for h in hidden), "hidden", f"must be 1 or 2 positive ints, got {self.hidden!r}")
        object.__setattr__(self, "hidden", hidden)


@dataclass(frozen=True)
class FeatureSpec:
    """The feature map phi: random projection of theta (``projection_dim``) + probe loss/acc + drift."""

    projection_dim: int = 8
    probe_size: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        _check(isinstance(self.projection_dim, int) and self.projection_dim >= 0, "projection_dim", "must be an int >= 0")
        _check(_positive_int(self.probe_size), "probe_size", f"must be an int >= 1, got {self.probe_size!r}")
        _check(isinstance(self.seed, int) and 0 <= self.seed < 2**63, "feature seed", "must be an int in [0, 2**63)")

    @property
    def dim(self) -> int:
        return self.projection_dim + 3


@dataclass(frozen=True)
class SampleConfig:
    """Everything that defines one batch of trajectories except the budget delta and the seeds.

    ``memory_budget_mb`` only sizes the chunks the engine trains at once (results do not depend
    on it); unset, it is 2048 MB on the CPU and half the free memory of a CUDA device.
    """

    dataset: str = "digits"
    model: ModelSpec = field(default_factory=ModelSpec)
    recipe: TrainRecipe = field(default_factory=TrainRecipe)
    threat: ThreatModel = field(default_factory=ThreatModel)
    attack: SamplingAttack = field(default_factory=SamplingAttack)
    features: FeatureSpec = field(default_factory=FeatureSpec)
    memory_budget_mb: float | None = None

    def __post_init__(self) -> None:
        _check(isinstance(self.dataset, str) and bool(self.dataset), "dataset", "must be a dataset name")
        _check(self.memory_budget_mb is None or (_finite(self.memory_budget_mb) and self.memory_budget_mb > 0),
               "memory_budget_mb", f"must be a number > 0 (or unset: automatic), got {self.memory_budget_mb!r}")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "SampleConfig":
        d = dict(d)
        return cls(
            dataset=d.get("dataset", "digits"),
            model=ModelSpec(**{**d.get("model", {}), "hidden": tuple(d.get("model", {}).get("hidden", (32,)))}),
            recipe=TrainRecipe(**d.get("recipe", {})),
            threat=ThreatModel(**{**d.get("threat", {}), "domain": tuple(d.get("threat", {}).get("domain", (0.0, 1.0)))}),
            attack=SamplingAttack(**d.get("attack", {})),
            features=FeatureSpec(**d.get("features", {})),
            memory_budget_mb=d.get("memory_budget_mb"),
        )


def check_delta(delta: Any) -> float:
    """The budget delta must be a finite number >= 0."""
    _check(_finite(delta) and delta >= 0, "delta", f"must be a finite number >= 0, got {delta!r}")
    return float(delta)


def check_alpha(alpha: Any) -> float:
    """The safety threshold alpha on the accuracy drop must be a number in [0, 1]."""
    _check(_finite(alpha) and 0.0 <= alpha <= 1.0, "alpha", f"must be in [0, 1], got {alpha!r}")
    return float(alpha)


def check_count(n: Any, field_name: str = "n") -> int:
    _check(_positive_int(n), field_name, f"must be an int >= 1, got {n!r}")
    return int(n)


SOLVER_NAMES = ("CLARABEL", "OSQP", "HIGHS")


@dataclass(frozen=True)
class CertifyConfig:
    """A whole certification: the sampled runs, the safety threshold, the PAC levels, the search.

    The unsafe pool comes from ``n_pool`` runs poisoned more heavily than any probe (fraction
    ``pool_rho``, budget ``pool_delta``, default the largest the domain admits).
    ``epsilon`` is the largest violation level the user accepts; construction checks that
    ``n_verify`` verification runs reach it at confidence 1 - beta/max_probes with the barrier's
    d decision variables (the error names the N needed). ``barrier`` holds the trunk's settings
    (a :class:`barrierkit.barrier.BarrierConfig`; default when None).
    """

    sample: SampleConfig = field(default_factory=SampleConfig)
    alpha: float = 0.05
    epsilon: float = 0.02
    beta: float = 1e-4
    n_verify: int = 2000
    n_train: int = 500
    n_clean: int = 200
    n_pool: int = 200
    pool_delta: float | None = None
    pool_rho: float = 1.0
    max_probes: int = 8
    delta_start: float = 0.05
    delta_hi: float | None = None
    rel_tol: float = 0.05
    kappa: float = 0.1
    tau: float = 1e-7
    mu: float = 1e-3
    w_bound: float = 100.0
    solver: str = "CLARABEL"
    seed: int = 0
    barrier: Any = None

    def __post_init__(self) -> None:
        from .barrier import BarrierConfig
        from .pac import n_min

        if self.barrier is None:
            object.__setattr__(self, "barrier", BarrierConfig(kappa=self.kappa))
        elif isinstance(self.barrier, dict):
            object.__setattr__(self, "barrier", BarrierConfig(**self.barrier))
        _check(isinstance(self.barrier, BarrierConfig), "barrier", "must be a BarrierConfig")
        check_alpha(self.alpha)
        _check(_finite(self.epsilon) and 0.0 < self.epsilon < 1.0, "epsilon", f"must be in (0, 1), got {self.epsilon!r}")
        _check(_finite(self.beta) and 0.0 < self.beta < 1.0, "beta", f"must be in (0, 1), got {self.beta!r}")
        for name in ("n_verify", "n_train", "n_clean", "n_pool", "max_probes"):
            _check(_positive_int(getattr(self, name)), name, f"must be an int >= 1, got {getattr(self, name)!r}")
        _check(_finite(self.rel_tol) and 0.0 < self.rel_tol < 1.0, "rel_tol",
               f"must be in (0, 1) (the bracket width, relative to its upper end, at which bisection stops), got {self.rel_tol!r}")
        _check(self.sample.threat.rho > 0.0, "rho", "must be > 0 for a certificate: with rho = 0 no point is poisoned")
        for name in ("delta_start", "tau", "w_bound"):
            _check(_finite(getattr(self, name)) and getattr(self, name) > 0, name, f"must be a finite number > 0, got {getattr(self, name)!r}")
        for name in ("pool_delta", "delta_hi"):
            v = getattr(self, name)
            _check(v is None or (_finite(v) and v > 0), name, f"must be a finite number > 0 (or unset), got {v!r}")
        _check(_finite(self.pool_rho) and 0.0 < self.pool_rho <= 1.0, "pool_rho", f"must be in (0, 1], got {self.pool_rho!r}")
        _check(_finite(self.kappa) and 0.0 < self.kappa < 1.0, "kappa", f"must be in (0, 1), got {self.kappa!r}")
        _check(_finite(self.mu) and self.mu >= 0, "mu", f"must be >= 0, got {self.mu!r}")
        _check(self.solver in SOLVER_NAMES, "solver", f"must be one of {SOLVER_NAMES}, got {self.solver!r}")
        _check(self.solver != "HIGHS" or self.mu == 0, "solver", "HIGHS solves LPs only: set mu = 0")
        _check(isinstance(self.seed, int) and 0 <= self.seed < 2**63, "seed", "must be an int in [0, 2**63)")
        needed = n_min(self.epsilon, self.decision_variables, self.beta_per_probe)
        _check(self.n_verify >= needed, "n_verify",
               f"{self.n_verify} verification runs cannot reach epsilon={self.epsilon:g} at beta={self.beta:g} "
               f"split over {self.max_probes} probes with d={self.decision_variables}: need N_v >= {needed}")

    @property
    def decision_variables(self) -> int:
        """d: w (m), gamma, c, eta, plus one epigraph variable when mu > 0."""
        return self.barrier.out_dim + 3 + (1 if self.mu > 0 else 0)

    def pool_budget(self, budget_max: float) -> float:
        """The heavy-poison pool's budget: ``pool_delta`` (default the largest admissible budget),
        never above ``budget_max``."""
        return min(self.pool_delta if self.pool_delta is not None else budget_max, budget_max)

    @property
    def beta_per_probe(self) -> float:
        """Each probe's confidence budget: the union bound over at most max_probes probes."""
        return self.beta / self.max_probes

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["sample"] = self.sample.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "CertifyConfig":
        d = dict(d)
        d["sample"] = SampleConfig.from_dict(d.get("sample", {}))
        return cls(**d)
