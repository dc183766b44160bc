"""The backend contract: the step problem, the training state, and the Backend record.

A backend advances N trajectories by SGD steps. Everything downstream of
:func:`barrierkit.backends.resolve` receives one :class:`Backend` record: its name (recorded in
every result, because the backend is part of the simulated dynamics), the dot-product precision,
the ``train_segment`` and feature-map callables, and what it supports. New model families,
attacks or dtypes are new entries in :class:`Capabilities`, not new string switches.

``train_segment(state, problem, t0, t1)`` advances every trajectory in ``state`` from step t0
to t1 (exclusive) in place, reading the clean data, batch order and poison from ``problem``. It
returns None when the backend ran the steps itself, or the reason it handed them to the torch
reference (same contract, so results stay valid); the engine records the reasons.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple

import torch

from ..config import ATTACKS, DTYPES, NORMS, SampleConfig
from ..features import FeatureMap
from ..models import Params
from ..poison import PoisonSpec, spec_kind
from ..schedule import Schedule

TORCH_DTYPES: Dict[str, torch.dtype] = {name: getattr(torch, name) for name in DTYPES}
"""The training dtypes of :data:`barrierkit.config.DTYPES` as torch dtypes."""


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a recipe's ``dtype`` name."""
    return TORCH_DTYPES[name]


@dataclass
class StepProblem:
    """What the steps of one chunk read: clean data, batch order, poison, hyper-parameters."""

    x_train: torch.Tensor  # [n, D] float64, clean, on the compute device
    y_train: torch.Tensor  # [n] int64
    schedule: Schedule
    poison: PoisonSpec
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    dtype: torch.dtype = torch.float32

    @classmethod
    def from_config(cls, config: SampleConfig, x_train: torch.Tensor, y_train: torch.Tensor, seeds: torch.Tensor,
                    delta: float, directions: Optional[torch.Tensor] = None,
                    chosen: Optional[torch.Tensor] = None) -> "StepProblem":
        """The problem of trajectories with ``seeds`` ([N, 3] init, poison, schedule) at budget
        ``delta`` under ``config``'s recipe, threat and attack, with the per-point poison draws made
        once (:meth:`PoisonSpec.with_point_draws`). ``directions`` are the gradient attack's,
        ``chosen`` the chosen subset's points (bool [n_train]; needed when the threat's subset is
        ``chosen`` and the budget poisons)."""
        threat, attack, recipe = config.threat, config.attack, config.recipe
        n_train = int(x_train.shape[0])
        if threat.subset == "chosen" and delta > 0 and chosen is None:
            raise ValueError("subset: the chosen subset rule needs its points (barrierkit.attacks.chosen_subset)")
        poison = PoisonSpec(seeds=seeds[:, 1], rho=threat.rho, delta=delta, norm=threat.norm, kind=spec_kind(attack.kind),
                            domain=threat.domain, sign_noise=attack.sign_noise, directions=directions,
                            chosen=chosen if threat.subset == "chosen" else None)
        return cls(x_train=x_train, y_train=y_train, schedule=Schedule(seeds[:, 2], n_train, recipe.batch),
                   poison=poison.with_point_draws(n_train), lr=recipe.lr, momentum=recipe.momentum,
                   weight_decay=recipe.weight_decay, dtype=torch_dtype(recipe.dtype))


@dataclass
class TrainState:
    """Parameters of N models (updated in place) and their momentum buffers."""

    params: Params
    momentum: Optional[List[torch.Tensor]] = field(default=None)


SegmentFn = Callable[[TrainState, StepProblem, int, int], Optional[str]]
FeatureMapFactory = Callable[..., FeatureMap]
"""``(spec: FeatureSpec, shape: MLPShape, data: Dataset, device=...) -> FeatureMap``."""

ALL_ATTACKS: FrozenSet[Tuple[str, str]] = frozenset((kind, norm) for kind in ATTACKS for norm in NORMS)


@dataclass(frozen=True)
class Capabilities:
    """What a backend runs: device types, training dtypes, model families, the sampling attacks
    it trains under (``attacks``), and the (attack, norm) pairs of those it runs itself
    (``native_attacks``; the others it hands to the torch reference)."""

    devices: FrozenSet[str]
    dtypes: FrozenSet[str]
    families: FrozenSet[str] = frozenset({"mlp"})
    attacks: FrozenSet[str] = frozenset(ATTACKS)  # the sampling attacks it trains under at all
    native_attacks: FrozenSet[Tuple[str, str]] = ALL_ATTACKS
    cpu_needs_interpreter: bool = False  # runs on the CPU only under TRITON_INTERPRET=1 (tests)


@dataclass(frozen=True)
class Backend:
    """One concrete backend (see the module docstring)."""

    name: str
    precision: str  # "ieee": dots in the training dtype; "tf32": tensor-core TF32 dots
    train_segment: SegmentFn
    feature_map: FeatureMapFactory
    capabilities: Capabilities
    summary: str
    tuning: Dict[str, Any] = field(default_factory=dict, hash=False)  # launch settings that do not change results

    def unsupported(self, device: torch.device, dtype: str, family: str = "mlp", attack: Optional[str] = None) -> Optional[str]:
        """Why this backend cannot train ``family`` in ``dtype`` on ``device`` under the sampling
        attack ``attack`` (None: any it knows), or None."""
        caps = self.capabilities
        if device.type not in caps.devices and not (device.type == "cpu" and caps.cpu_needs_interpreter and _interpreting()):
            where = " (on the CPU only under TRITON_INTERPRET=1, for tests)" if caps.cpu_needs_interpreter else ""
            return f"{self.name} runs on {' or '.join(sorted(caps.devices))}{where}; device is {device}"
        if dtype not in caps.dtypes:
            return f"{self.name} trains in {' or '.join(sorted(caps.dtypes))}, the recipe's dtype is {dtype}"
        if family not in caps.families:
            return f"{self.name} trains {', '.join(sorted(caps.families))} models, not {family}"
        if attack is not None and attack not in caps.attacks:
            return f"{self.name} does not train under the {attack} attack (it takes {', '.join(sorted(caps.attacks))})"
        return None

    def runs_natively(self, kind: str, norm: str) -> bool:
        """Whether this backend runs attack ``kind`` in ``norm`` itself (else on the torch reference)."""
        return (kind, norm) in self.capabilities.native_attacks

    def describe(self) -> Dict[str, Any]:
        """What the backend simulates, for a result's metadata (JSON-safe)."""
        return {"backend": self.name, "precision": self.precision, **self.tuning}


def _interpreting() -> bool:
    from ..kernels._host import interpreting

    return interpreting()


__all__ = ["Backend", "Capabilities", "StepProblem", "TrainState", "SegmentFn", "TORCH_DTYPES", "torch_dtype", "ALL_ATTACKS"]
