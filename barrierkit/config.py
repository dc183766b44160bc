"""Validated configuration: what is sampled, how training runs, and what the attacker may do.

Every dataclass checks its values at construction and raises :class:`ConfigError` (a
``ValueError``) naming the offending field, so a bad value never reaches the engine.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

SEED_LIMIT = 2**63
"""Seeds are non-negative and fit a signed 64-bit integer."""

NORMS = ("inf", "2")
SUBSET_RULES = {
    "random": "each training point is poisoned independently with probability ρ (a fresh subset per run)",
    "chosen": "the attacker poisons the ⌈ρ·n⌉ training points of lowest clean margin (logit of the true class "
              "minus the largest other logit) under the clean reference model, the same points in every run: a "
              "different, stronger threat model than the random subset",
}
"""Which training points are poisoned (the subset rule a certificate names)."""
ATTACKS = ("uniform", "sign", "gradient", "adaptive", "lookahead", "unrolled", "unrolled_test")
ATTACK_DESCRIPTIONS = {
    "adaptive": "δ times the sign (ℓ∞) or unit direction (ℓ2) of the input gradient of the point's loss under the run's "
                "own current model, recomputed for every training point at the start of each recorded interval (every "
                "record_every steps): an attacker that watches the run it poisons (the poisoned data is fixed within "
                "an interval)",
    "lookahead": "δ times the sign (ℓ∞) or unit direction (ℓ2) of the input gradient of the alignment between the "
                 "point's parameter gradient and the negative gradient of the run's current clean training loss, "
                 "recomputed at the start of each recorded interval: gradient matching, so that SGD steps on the "
                 "poisoned points raise the loss the attacker watches (it sees the training split only)",
    "gradient": "δ times the sign (ℓ∞) or unit direction (ℓ2) of one clean reference model's input gradient "
                "of the point's loss, computed once before training: a fixed, one-shot direction that does not adapt "
                "to the run being poisoned",
    "unrolled": "one perturbation per training point, optimised by projected sign-gradient ascent on the clean "
                "training set's loss through unrolled runs of the recipe (the attacker sees the training split only), "
                "made once per budget and then drawn like the gradient attack's table",
    "unrolled_test": "as unrolled, but the ascent maximises the test set's loss: a test-aware attacker, stronger "
                     "than one who cannot see the data the safety label is measured on",
    "sign": "a random corner of the ℓ∞ ball (ℓ2: a random sign vector scaled to norm δ)",
    "uniform": "uniform in the ℓp ball of radius δ",
}
"""What each sampling attack draws for a poisoned point (the distribution A_delta is relative to)."""
DTYPES = ("float32", "float64")
EMP_ATTACKS = ("unrolled", "unrolled_test")
"""The attacks ``certify --emp`` measures beside the sampling attack: the strongest built in."""
EMP_EVASION_ATTACKS = ("random", "pgd", "pgd_strong")
"""The test-time attacks ``certify --emp`` may measure when the search runs over δ' (pgd_strong:
PGD with at least 100 steps and 2 random restarts; the interval bound is not an attack)."""
STRONG_EVASION = ("pgd_strong",)
"""What ``certify --emp`` measures when the search runs over δ': the strongest test-time attack."""
POOL_STATES = ("heavy", "heavy+larger")
"""Which unsafe states form a probe's pool: the heavy-poison runs' only, or also the unsafe
training-split states of probes at strictly larger budgets (docs/METHOD.md §11.4)."""


def setting(default: Any, doc: str, *, unset: str = "") -> Any:
    """A dataclass field with its one-line help stated beside it, once: the command line's
    options and help, and the configuration files, are all derived from the fields. ``unset``
    says what a default of None means."""
    return field(default=default, metadata={"help": doc, "unset": unset})


@dataclass(frozen=True)
class Setting:
    """One leaf value of a configuration: where it lives (``path`` of field names from the top
    configuration), its resolved type, its default and its help."""

    path: Tuple[str, ...]
    kind: Any
    default: Any
    help: str
    unset: str

    @property
    def key(self) -> str:
        """The dotted name, e.g. ``sample.recipe.lr``."""
        return ".".join(self.path)


def field_types(cls: type) -> Dict[str, Any]:
    """The resolved annotation of each field of the configuration dataclass ``cls``."""
    return typing.get_type_hints(cls)


def nested_config(kind: Any) -> type | None:
    """The configuration dataclass a field of type ``kind`` holds (a table of settings), if any:
    the type itself or a member of its union (``BarrierConfig | Dict[str, Any] | None``)."""
    for member in (kind, *typing.get_args(kind)):
        if isinstance(member, type) and dataclasses.is_dataclass(member):
            return member
    return None


def given_type(kind: Any) -> Any:
    """The type of a value given for a field of type ``kind``: ``float`` for ``float | None``
    (None is the value left out), ``kind`` itself otherwise."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        members = [member for member in typing.get_args(kind) if member is not type(None)]
        if len(members) == 1:
            return members[0]
    return kind


def settings(cls: type, prefix: Tuple[str, ...] = ()) -> List[Setting]:
    """Every leaf setting of the configuration dataclass ``cls``, nested tables flattened in
    field order."""
    found: List[Setting] = []
    kinds = field_types(cls)
    for f in dataclasses.fields(cls):
        table = nested_config(kinds[f.name])
        if table is not None:
            found += settings(table, (*prefix, f.name))
        else:
            found.append(Setting((*prefix, f.name), kinds[f.name], f.default, f.metadata.get("help", ""),
                                 f.metadata.get("unset", "")))
    return found


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


def _check(cond: bool, field_name: str, message: str) -> None:
    if not cond:
        raise ConfigError(field_name, message)


def _finite(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _plain(config: Any) -> None:
    """Replace numpy (or other) integer and real scalars in ``config``'s fields by Python int and
    float, so that a config built from numpy values compares, hashes and serialises like any other."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            continue
        plain = int(value) if isinstance(value, numbers.Integral) else float(value)
        if type(value) is not type(plain):
            object.__setattr__(config, f.name, plain)


def _norm_name(norm: Any) -> str:
    """Accept 'inf', 'linf', 'l2', '2' (any case) and the numbers 2 and inf."""
    text = str(norm).strip().lower()
    return {"linf": "inf", "l2": "2", "2.0": "2"}.get(text, text)


def _check_norm_and_rho(table: Any) -> None:
    """A threat table's perturbation norm (normalised in place) and its probability ``rho``."""
    object.__setattr__(table, "norm", _norm_name(table.norm))
    _check(table.norm in NORMS, "norm", f"must be one of {NORMS}, got {table.norm!r}")
    _check(_finite(table.rho) and 0.0 <= table.rho <= 1.0, "rho", f"must be in [0, 1], got {table.rho!r}")


def _positive_int(x: Any) -> bool:
    return _int(x) and x >= 1


def _int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _seed(x: Any) -> bool:
    return _int(x) and 0 <= x < SEED_LIMIT


@dataclass(frozen=True)
class ThreatModel:
    """Training-time poisoning: each point poisoned w.p. ``rho``; ||Delta||_p <= delta; x in domain."""

    norm: str = setting("inf", "perturbation norm: inf or 2")
    rho: float = setting(0.5, "probability that a training point is poisoned (subset chosen: the fraction of points "
                              "the attacker poisons)")
    subset: str = setting("random", "which points are poisoned: " + "; ".join(f"{name}: {text}" for name, text in SUBSET_RULES.items()))
    domain: Tuple[float, float] = setting((0.0, 1.0), "input domain LOW,HIGH: a poisoned point is projected back into it "
                                                               "(a negative LOW is written --domain=-1,1)")

    def __post_init__(self) -> None:
        _plain(self)
        _check_norm_and_rho(self)
        _check(self.subset in SUBSET_RULES, "subset", f"must be one of {tuple(SUBSET_RULES)}, got {self.subset!r}")
        _check(self.subset != "chosen" or self.rho > 0, "subset",
               "a chosen subset needs rho > 0 (the attacker poisons ⌈ρ·n⌉ points; with rho = 0 there is no attack)")
        _check(isinstance(self.domain, (tuple, list)) and len(self.domain) == 2, "domain",
               f"must be (low, high), got {self.domain!r}")
        lo, hi = self.domain
        _check(_finite(lo) and _finite(hi) and lo < hi, "domain", f"must be (low, high) with low < high, got {self.domain!r}")
        object.__setattr__(self, "domain", (float(lo), float(hi)))


EVASION_ATTACKS = {
    "random": "one point drawn uniformly from the ball per perturbed test point (a sampling attack)",
    "pgd": "projected gradient ascent on the point's loss from the clean point and `restarts` random starts; a point "
           "counts as flipped when any iterate is misclassified",
    "ibp": "interval bound propagation: a perturbed point counts as flipped unless the bound proves that no point of "
           "its ball changes the prediction (worst case over every test-time attack)",
}
PGD_LOSSES = ("ce", "margin")
TEST_SUBSETS = {
    "random": "each test point is perturbed independently with probability ρ′ (a fresh subset per run: a sampling "
              "attack)",
    "chosen": "the attacker perturbs up to ⌊ρ′·P⌋ test points of its choice, those its attack flips (with ibp: the "
              "points the bound cannot prove), so a run loses min(⌊ρ′·P⌋, flippable points)",
}
"""Which test points the test-time attacker perturbs (named in the certificate)."""
THREAT_KINDS = {
    "poisoning": "the budget δ perturbs training points (the threat table and the sampling attack)",
    "evasion": "training is clean; the budget δ (δ') perturbs test points of each trained model (the evasion table) and "
               "a run is unsafe when its own test accuracy drops by more than alpha",
    "both": "training is poisoned (threat table, budget δ) and the trained model's test points are perturbed (evasion "
            "table, budget δ'); the search runs over search_budget with the other fixed at fixed_budget, and a run is "
            "unsafe when its attacked accuracy is more than alpha below g_c",
}
SEARCH_BUDGETS = ("poisoning", "evasion")
"""Under threat_kind both: which budget the search runs over (the other one is fixed)."""


@dataclass(frozen=True)
class EvasionThreat:
    """Test-time evasion: after training, each test point is perturbed with probability ``rho``
    within ||Delta'||_p <= delta' (the budget is the search variable, not a setting) and clipped
    to the threat's domain; ``attack`` judges the perturbed points (:data:`EVASION_ATTACKS`)."""

    attack: str = setting("pgd", "test-time attack: " + "; ".join(f"{name}: {text}" for name, text in EVASION_ATTACKS.items()))
    norm: str = setting("inf", "test-time perturbation norm: inf or 2")
    rho: float = setting(0.5, "probability that a test point is perturbed, in [0, 1] (subset chosen: the fraction of "
                              "test points the attacker may perturb)")
    subset: str = setting("random", "which test points are perturbed: " + "; ".join(f"{name}: {text}" for name, text in TEST_SUBSETS.items()))
    steps: int = setting(20, "PGD steps per start")
    step_size: float = setting(0.25, "PGD step length as a fraction of the budget δ'")
    restarts: int = setting(0, "PGD random starts beside the clean point")
    loss: str = setting("margin", "PGD ascends this loss of the point: margin (max other logit − true logit) or ce")

    def __post_init__(self) -> None:
        _plain(self)
        _check(self.attack in EVASION_ATTACKS, "attack", f"must be one of {tuple(EVASION_ATTACKS)}, got {self.attack!r}")
        _check(self.subset in TEST_SUBSETS, "subset", f"must be one of {tuple(TEST_SUBSETS)}, got {self.subset!r}")
        _check_norm_and_rho(self)
        _check(_positive_int(self.steps), "steps", f"must be an integer >= 1, got {self.steps!r}")
        _check(_finite(self.step_size) and self.step_size > 0, "step_size", f"must be a finite number > 0, got {self.step_size!r}")
        _check(_int(self.restarts) and self.restarts >= 0, "restarts", f"must be an integer >= 0, got {self.restarts!r}")
        _check(self.loss in PGD_LOSSES, "loss", f"must be one of {PGD_LOSSES}, got {self.loss!r}")


@dataclass(frozen=True)
class SamplingAttack:
    """The distribution A_delta the perturbations are drawn from; every guarantee names it
    (:data:`ATTACK_DESCRIPTIONS`). The ``gradient`` attack's reference model is one clean run
    (seed ``reference_seed``); ``sign_noise`` flips each poisoned point's direction with that
    probability, which makes the attack random rather than one fixed perturbation of the data.
    """

    kind: str = setting("gradient", "sampling attack A_δ, what a poisoned point gets: "
                                    + "; ".join(f"{name}: {text}" for name, text in ATTACK_DESCRIPTIONS.items()))
    sign_noise: float = setting(0.0, "gradient attack only: probability that a poisoned point's direction is flipped (the "
                                     "attack then draws random perturbations instead of one fixed one per point)")
    reference_seed: int = setting(0, "gradient attack only: seed of its clean reference model")

    def __post_init__(self) -> None:
        _plain(self)
        _check(self.kind in ATTACKS, "attack", f"must be one of {ATTACKS}, got {self.kind!r}")
        _check(_finite(self.sign_noise) and 0.0 <= self.sign_noise <= 1.0, "sign_noise", f"must be in [0, 1], got {self.sign_noise!r}")
        _check(self.sign_noise == 0.0 or self.kind == "gradient", "sign_noise",
               f"applies to the gradient attack only (attack is {self.kind!r}); leave it at 0")
        _check(_seed(self.reference_seed), "reference_seed", "must be an int in [0, 2**63)")


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

    steps: int = setting(400, "SGD steps T per run")
    batch: int = setting(32, "minibatch size")
    lr: float = setting(0.1, "learning rate")
    momentum: float = setting(0.0, "SGD momentum, in [0, 1)")
    weight_decay: float = setting(0.0, "L2 weight decay")
    record_every: int = setting(40, "record the features every r steps; K = T/r intervals")
    dtype: str = setting("float32", "training precision: float32 or float64")

    def __post_init__(self) -> None:
        _plain(self)
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

    hidden: Tuple[int, ...] = setting((32,), "hidden widths of the MLP, e.g. 32 or 64,32")

    def __post_init__(self) -> None:
        _plain(self)
        hidden = tuple(self.hidden)
        _check(1 <= len(hidden) <= 2 and all(_positive_int(h) for h in hidden), "hidden", f"must be 1 or 2 positive ints, got {self.hidden!r}")
        object.__setattr__(self, "hidden", tuple(int(h) for h in hidden))


@dataclass(frozen=True)
class FeatureSpec:
    """The feature map phi: random projection of theta (``projection_dim``) + probe loss/acc + drift."""

    projection_dim: int = setting(8, "entries of φ that are a seeded random projection of the weights θ")
    probe_size: int = setting(128, "clean training points whose loss and accuracy φ records")
    seed: int = setting(0, "seed of the projection and of the choice of probe points")

    def __post_init__(self) -> None:
        _plain(self)
        _check(_int(self.projection_dim) and self.projection_dim >= 0, "projection_dim", "must be an int >= 0")
        _check(_positive_int(self.probe_size), "probe_size", f"must be an int >= 1, got {self.probe_size!r}")
        _check(_seed(self.seed), "feature seed", "must be an int in [0, 2**63)")

    @property
    def dim(self) -> int:
        return self.projection_dim + 3


@dataclass(frozen=True)
class SampleConfig:
    """Everything that defines one batch of trajectories except the budget delta and the seeds.

    ``memory_budget_mb`` only sizes the chunks the engine trains at once (results do not depend
    on it); unset, it is 2048 MB on the CPU and half the free memory of a CUDA device.
    """

    dataset: str = setting("digits", "digits (embedded), synthetic (64-d) or synthetic-mnist (784-d)")
    model: ModelSpec = field(default_factory=ModelSpec)
    recipe: TrainRecipe = field(default_factory=TrainRecipe)
    threat_kind: str = setting("poisoning", "what the budget δ perturbs: " + "; ".join(f"{name}: {text}" for name, text in THREAT_KINDS.items()))
    threat: ThreatModel = field(default_factory=ThreatModel)
    attack: SamplingAttack = field(default_factory=SamplingAttack)
    evasion: EvasionThreat = field(default_factory=EvasionThreat)
    features: FeatureSpec = field(default_factory=FeatureSpec)
    search_budget: str = setting("poisoning", "threat both only: the budget the search and sample's --delta run over, "
                                              "poisoning (δ) or evasion (δ'); the other one is fixed_budget")
    fixed_budget: float | None = setting(None, "threat both only: the budget held fixed (δ' when search_budget is "
                                               "poisoning, δ when it is evasion)", unset="none: required under both")
    memory_budget_mb: float | None = setting(None, "memory budget in MB that sizes the chunks of runs trained at once; "
                                                   "results do not depend on it",
                                             unset="2048 on the CPU, half the free memory of a CUDA device")

    def __post_init__(self) -> None:
        _plain(self)
        _check(isinstance(self.dataset, str) and bool(self.dataset), "dataset", "must be a dataset name")
        _check(self.threat_kind in THREAT_KINDS, "threat_kind", f"must be one of {tuple(THREAT_KINDS)}, got {self.threat_kind!r}")
        _check(self.search_budget in SEARCH_BUDGETS, "search_budget",
               f"must be one of {SEARCH_BUDGETS}, got {self.search_budget!r}")
        both = self.threat_kind == "both"
        _check(both or self.fixed_budget is None, "fixed_budget",
               f"applies to threat_kind both only (threat_kind is {self.threat_kind!r}); leave it unset")
        _check(both or self.search_budget == "poisoning", "search_budget",
               f"applies to threat_kind both only (threat_kind is {self.threat_kind!r}); leave it at poisoning")
        _check(not both or self.fixed_budget is not None, "fixed_budget",
               "threat_kind both needs both budgets: give the one the search does not run over "
               f"({'δ' if self.search_budget == 'evasion' else 'δ′'}) as fixed_budget")
        _check(self.fixed_budget is None or (_finite(self.fixed_budget) and self.fixed_budget > 0), "fixed_budget",
               f"must be a finite number > 0, got {self.fixed_budget!r}")
        _check(self.memory_budget_mb is None or (_finite(self.memory_budget_mb) and self.memory_budget_mb > 0),
               "memory_budget_mb", f"must be a number > 0 (or unset: automatic), got {self.memory_budget_mb!r}")

    def budgets(self, budget: float) -> Tuple[float, float | None]:
        """(training-time δ, test-time δ' or None) of a run at the searched ``budget``."""
        if self.threat_kind == "poisoning":
            return budget, None
        if self.threat_kind == "evasion":
            return 0.0, budget
        fixed = float(self.fixed_budget)
        return (budget, fixed) if self.search_budget == "poisoning" else (fixed, budget)

    @property
    def poisoning_attack(self) -> str | None:
        """The sampling attack training runs under (what a backend must support): none under
        evasion, whose training is clean."""
        return None if self.threat_kind == "evasion" else self.attack.kind

    @property
    def searches_evasion(self) -> bool:
        """Whether the searched budget is the test-time δ' (evasion, or both over δ')."""
        return self.threat_kind == "evasion" or (self.threat_kind == "both" and self.search_budget == "evasion")

    @property
    def search_norm(self) -> str:
        """The norm of the searched budget: the evasion table's for δ', the threat table's for δ."""
        return self.evasion.norm if self.searches_evasion else self.threat.norm

    @property
    def feature_dim(self) -> int:
        """k, the entries of φ: the feature table's, plus the interval-bound robustness of the
        probe points when the test set is attacked (:mod:`barrierkit.features`)."""
        return self.features.dim + (0 if self.threat_kind == "poisoning" else 1)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "SampleConfig":
        """The inverse of :meth:`to_dict`; a missing key takes its field's default (an unknown
        key is a TypeError)."""
        kinds = field_types(cls)
        parts = {}
        for name, value in d.items():
            table = nested_config(kinds.get(name))
            if table is not None:
                try:
                    parts[name] = table(**value)
                except ConfigError as exc:
                    raise within(name, exc) from None
        return cls(**{**d, **parts})


_KEY_OF_FIELD = {("features", "feature seed"): "seed", ("attack", "attack"): "kind"}
"""(table, error field name) pairs whose name is not the setting's key."""


def within(table: str, exc: ConfigError) -> ConfigError:
    """``exc``, raised by the settings table ``table``, naming its dotted key (``sample.recipe.lr``)."""
    name = exc.field.removeprefix("BarrierConfig.")
    return ConfigError(f"{table}.{_KEY_OF_FIELD.get((table.split('.')[-1], name), name)}", exc.message)


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


SOLVERS = ("CLARABEL", "OSQP", "HIGHS")
"""The convex solvers the scenario program accepts (HIGHS for the LP, mu = 0, only)."""


def decision_variables(out_dim: int, mu: float) -> int:
    """d of the scenario program, the number the PAC bounds depend on: w (``out_dim`` entries),
    gamma, c and eta, plus one epigraph variable for the quadratic objective when mu > 0."""
    return int(out_dim) + 3 + (1 if mu > 0 else 0)


@dataclass(frozen=True)
class BarrierConfig:
    """Hyper-parameters of the barrier fit (:func:`barrierkit.barrier.fit_barrier`)."""

    width: int = setting(32, "hidden units of the barrier's trunk")
    out_dim: int = setting(8, "m, the trunk's outputs: each is one decision variable in the PAC bound")
    epochs: int = setting(300, "full-batch Adam steps of the fit")
    lr: float = setting(1e-2, "initial learning rate of the fit, cosine-annealed to lr × final_lr_fraction")
    final_lr_fraction: float = setting(0.01, "final learning rate of the fit, as a fraction of lr, in (0, 1]")
    margin: float = setting(16.0, "hinge margin, in units of the gap λ − γ = 1 (C3: of K × increment); above 1 − kappa "
                                 "it asks B to fall along every training run (docs/METHOD.md §5)")
    kappa: float = setting(0.1, "C4 slack: K·c ≤ 1 − kappa (a certification's kappa; CertifyConfig checks they agree)")
    weight_decay: float = setting(1e-4, "L2 penalty on the trunk's weight matrices and w (not biases, γ, c)")
    seed: int = setting(0, "seed of the trunk's initialisation")

    def __post_init__(self) -> None:
        _plain(self)
        for name in ("width", "out_dim", "epochs"):
            _check(_positive_int(getattr(self, name)), f"BarrierConfig.{name}", f"must be an integer >= 1, got {getattr(self, name)!r}")
        _check(_seed(self.seed), "BarrierConfig.seed", f"must be an integer in [0, 2**63), got {self.seed!r}")
        for name, low_open in (("lr", True), ("margin", False), ("weight_decay", False)):
            value = getattr(self, name)
            _check(_finite(value) and value >= 0 and not (low_open and value == 0), f"BarrierConfig.{name}",
                   f"must be a finite number {'> 0' if low_open else '>= 0'}, got {value!r}")
        _check(_finite(self.final_lr_fraction) and 0 < self.final_lr_fraction <= 1, "BarrierConfig.final_lr_fraction",
               f"must lie in (0, 1], got {self.final_lr_fraction!r}")
        _check(_finite(self.kappa) and 0 < self.kappa < 1, "BarrierConfig.kappa", f"must lie in (0, 1), got {self.kappa!r}")


def check_attack_names(attacks: Any, field_name: str, known: Tuple[str, ...] = ATTACKS,
                       what: str = "sampling") -> Tuple[str, ...]:
    """A non-empty sequence of attack names from ``known``, none twice, as a tuple (a ConfigError
    naming ``field_name`` otherwise)."""
    _check(isinstance(attacks, (list, tuple)) and all(isinstance(a, str) for a in attacks), field_name,
           f"must be a list of attack names, got {attacks!r}")
    names = tuple(attacks)
    _check(bool(names), field_name, f"name at least one {what} attack")
    for name in names:
        _check(name in known, field_name, f"unknown {what} attack {name!r}; known: {', '.join(known)}")
    _check(len(set(names)) == len(names), field_name, f"an attack is named twice: {', '.join(names)}")
    return names


@dataclass(frozen=True)
class CertifyConfig:
    """A whole certification: the sampled runs, the safety threshold, the PAC levels, the search.

    The unsafe pool comes from ``n_pool`` runs poisoned more heavily than any probe (fraction
    ``pool_rho``, budget ``pool_delta``, default the largest the domain admits).
    ``epsilon`` is the largest violation level the user accepts; ``n_verify`` verification runs
    must reach it at confidence 1 - beta/max_probes with the barrier's d decision variables.
    Construction does not check that: :func:`barrierkit.pac.check_verify_runs` does (naming the
    N needed), and ``certify`` and the command line call it before any work. ``barrier`` holds
    the trunk's settings (a :class:`BarrierConfig` or its dict; default when None); ``kappa`` is
    one value for the fit and the scenario program, so a barrier given with another kappa is
    refused.
    """

    sample: SampleConfig = field(default_factory=SampleConfig)
    alpha: float = setting(0.05, "a run is unsafe when its accuracy drop G = g_c − g exceeds alpha, in [0, 1]")
    epsilon: float = setting(0.02, "largest acceptable violation level ε, in (0, 1)")
    beta: float = setting(1e-4, "1 − confidence, split over the probes")
    n_verify: int = setting(2000, "verification runs per probe, N_v")
    n_train: int = setting(500, "training-split runs per probe (they fit the barrier)")
    n_clean: int = setting(200, "clean runs, whose median test accuracy is g_c")
    n_pool: int = setting(200, "heavily poisoned runs for the unsafe pool")
    pool_delta: float | None = setting(None, "budget of the unsafe pool's runs (never above the largest budget the "
                                             "domain admits)", unset="that largest budget")
    pool_rho: float = setting(1.0, "probability that a training point of a pool run is poisoned, in (0, 1]")
    pool_states: str = setting("heavy", "the unsafe pool: 'heavy' (the heavy-poison runs' unsafe terminal states) or "
                                        "'heavy+larger' (also unsafe training-split states of probes at larger budgets)")
    max_probes: int = setting(8, "K_max, probes in the search (beta is split over them)")
    emp_attacks: Tuple[str, ...] | None = setting(None, "comma-separated attacks whose empirical radius δ_emp the "
                                                        "certificate measures beside the sampling attack's, at every "
                                                        "probed budget (--emp: " + ",".join(EMP_ATTACKS) + "; when the search "
                                                        "runs over δ′: " + ",".join(EMP_EVASION_ATTACKS) + ")",
                                                  unset="none: no other attack is tried")
    emp_runs: int = setting(300, "runs per attack and probed budget behind δ_emp (the same seeds for every attack)")
    delta_start: float = setting(0.05, "first probe when bracketing by doubling (not used when delta_hi is set)")
    delta_hi: float | None = setting(None, "upper end of the search: probed first, then bisected below",
                                     unset="bracket by doubling from delta_start")
    rel_tol: float = setting(0.05, "stop bisecting at this bracket width relative to its upper end, in (0, 1)")
    kappa: float = setting(0.1, "C4 slack, K·c ≤ 1 − kappa, in (0, 1): one value for the barrier fit and the scenario "
                                "program")
    tau: float = setting(1e-7, "a probe certifies only when the float64 re-check gives η < −tau")
    mu: float = setting(1e-3, "proximal weight (mu/2)‖w − w0‖² of the scenario program; 0 makes it an LP")
    w_bound: float = setting(100.0, "bound W on the scenario program's weights: ‖w‖∞ ≤ W")
    solver: str = setting("CLARABEL", "CLARABEL, OSQP (re-checked, falls back) or HIGHS (LP only: needs mu = 0)")
    seed: int = setting(0, "master seed; every run's seeds derive from it")
    barrier: BarrierConfig | Dict[str, Any] | None = None

    def __post_init__(self) -> None:
        _plain(self)
        _check(self.barrier is None or isinstance(self.barrier, (BarrierConfig, dict)), "barrier",
               f"must be a BarrierConfig (or its dict), got {type(self.barrier).__name__}")
        _check(_finite(self.kappa) and 0.0 < self.kappa < 1.0, "kappa", f"must be in (0, 1), got {self.kappa!r}")
        if not isinstance(self.barrier, BarrierConfig):
            object.__setattr__(self, "barrier", BarrierConfig(**{"kappa": self.kappa, **(self.barrier or {})}))
        check_alpha(self.alpha)
        _check(_finite(self.epsilon) and 0.0 < self.epsilon < 1.0, "epsilon", f"must be in (0, 1), got {self.epsilon!r}")
        _check(_finite(self.beta) and 0.0 < self.beta < 1.0, "beta", f"must be in (0, 1), got {self.beta!r}")
        for name in ("n_verify", "n_train", "n_clean", "n_pool", "max_probes", "emp_runs"):
            _check(_positive_int(getattr(self, name)), name, f"must be an int >= 1, got {getattr(self, name)!r}")
        _check(_finite(self.rel_tol) and 0.0 < self.rel_tol < 1.0, "rel_tol",
               f"must be in (0, 1) (the bracket width, relative to its upper end, at which bisection stops), got {self.rel_tol!r}")
        kind = self.sample.threat_kind
        _check(kind == "evasion" or self.sample.threat.rho > 0.0, "rho",
               "must be > 0 for a certificate: with rho = 0 no point is poisoned")
        _check(kind == "poisoning" or self.sample.evasion.rho > 0.0, "evasion.rho",
               "must be > 0 for a certificate: with rho' = 0 no test point is perturbed")
        if self.emp_attacks is not None:
            known, what = (EMP_EVASION_ATTACKS, "test-time") if self.sample.searches_evasion else (ATTACKS, "sampling")
            object.__setattr__(self, "emp_attacks", check_attack_names(self.emp_attacks, "emp_attacks", known, what))
        for name in ("delta_start", "tau", "w_bound"):
            _check(_finite(getattr(self, name)) and getattr(self, name) > 0, name, f"must be a finite number > 0, got {getattr(self, name)!r}")
        for name in ("pool_delta", "delta_hi"):
            v = getattr(self, name)
            _check(v is None or (_finite(v) and v > 0), name, f"must be a finite number > 0 (or unset), got {v!r}")
        _check(_finite(self.pool_rho) and 0.0 < self.pool_rho <= 1.0, "pool_rho", f"must be in (0, 1], got {self.pool_rho!r}")
        _check(self.pool_states in POOL_STATES, "pool_states", f"must be one of {', '.join(POOL_STATES)}, got {self.pool_states!r}")
        _check(self.barrier.kappa == self.kappa, "kappa",
               f"is {self.kappa!r} but barrier.kappa is {self.barrier.kappa!r}: the fit and the scenario program share one "
               "kappa (give the barrier as a dict to take kappa from here, or set BarrierConfig(kappa=...) to match)")
        _check(_finite(self.mu) and self.mu >= 0, "mu", f"must be >= 0, got {self.mu!r}")
        if isinstance(self.solver, str):
            object.__setattr__(self, "solver", self.solver.strip().upper())
        _check(self.solver in SOLVERS, "solver", f"must be one of {SOLVERS}, got {self.solver!r}")
        _check(self.solver != "HIGHS" or self.mu == 0, "solver", "HIGHS solves LPs only: set mu = 0")
        _check(_seed(self.seed), "seed", "must be an int in [0, 2**63)")

    @property
    def decision_variables(self) -> int:
        """d of every probe's scenario program (:func:`decision_variables`)."""
        return decision_variables(self.barrier.out_dim, self.mu)

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
        try:
            d["sample"] = SampleConfig.from_dict(d.get("sample", {}))
        except ConfigError as exc:
            raise within("sample", exc) from None
        try:
            return cls(**d)
        except ConfigError as exc:
            if exc.field.startswith("BarrierConfig."):
                raise within("barrier", exc) from None
            raise
