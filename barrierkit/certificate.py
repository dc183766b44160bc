"""The Certificate: the JSON document, its checksum, and reading it back strictly.

The document is the product: configuration, threat model and sampling attack, data and model
hashes, the clean runs' hit counts behind g_c, alpha, epsilon, beta, the N's, d, every probe
(with its runs' hit counts, the barrier, the scenario program's solution and margins), the radii,
the radius in context, warnings, timings, throughput, versions and device. It is written with
owner-only permissions (a certified radius tells an attacker where attacks do not work, as
Cullen et al. warn in "Position: Certified Robustness Does Not (Yet) Imply Model Security").

The sha256 digest is a checksum, not a signature: it catches corruption and careless edits, not
a forger, who can recompute it. ``verify`` (barrierkit.verify) re-derives every field that
follows from other fields; ``verify --replay`` (barrierkit.rerun) re-runs the runs themselves.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional

import numpy as np

from .io import write_json
from .labels import SafetyRule, chance_hits

if TYPE_CHECKING:  # assemble's imports are made when it runs: reading a certificate needs none of them
    from .config import CertifyConfig
    from .data import Dataset

FORMAT = "barrierkit.certificate/5"
OLD_FORMATS = {
    "barrierkit.certificate/1": "written before safety labels were exact (its ties may be mislabelled)",
    "barrierkit.certificate/2": "written before the unsafe pool's rule (pool_states) and the empirical radii were recorded",
    "barrierkit.certificate/3": "whose barriers were fitted with the training split's unsafe runs as C2 rows, which "
                                "this version's replay would not fit again",
    "barrierkit.certificate/4": "written before test-time threats (its threat model does not say which budget was "
                                "searched)",
}
"""Formats this version refuses, and why each cannot be read as today's."""
STATUSES = ("CERTIFIED", "REFUTED", "INCONCLUSIVE")
CERTIFIED_FIELDS = ("eta_star", "eta_check", "n_support", "epsilon_a_posteriori", "tau")
"""Fields of the certified probe that the document repeats at its top level."""
DOCUMENT_FIELDS = (
    "format", "status", "reason", "config", "threat_model", "dataset", "data_hash", "input_dim", "n_classes",
    "model_hash", "param_count", "test_size", "chance_hits", "g_clean", "clean_accuracy", "alpha", "beta",
    "beta_per_probe", "epsilon", "epsilon_requested", "n_verify", "n_train", "d", "epsilon_direct", "pool", "probes",
    "radii", "context", "empirical", "warnings", "timings", "throughput", "versions", "backend", "device", "features_by",
)
"""Every top-level field of a document (plus CERTIFIED_FIELDS when a probe certified)."""


class CertificateError(ValueError):
    """A certificate file is unreadable, malformed or not a certificate this version reads."""


class DigestMismatch(CertificateError):
    """The document does not match its checksum: edited or corrupted after it was written."""


def digest(doc: Dict[str, Any]) -> str:
    """sha256 of the document without its digest: a checksum, not a signature."""
    body = {k: v for k, v in doc.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, allow_nan=False).encode()).hexdigest()


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of the range of a float")
    return value


def _unique_keys(pairs: List[tuple]) -> Dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        twice = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"the field{'s' if len(twice) > 1 else ''} {', '.join(map(repr, twice))} appear{'' if len(twice) > 1 else 's'} "
                         "more than once (readers disagree on which one counts)")
    return dict(pairs)


@dataclass
class Certificate:
    """A certification result; ``doc`` is the JSON document (see the module docstring)."""

    doc: Dict[str, Any]

    @property
    def status(self) -> str:
        return self.doc["status"]

    @property
    def delta_cert(self) -> Optional[float]:
        return self.doc["radii"]["delta_cert"]

    @property
    def delta_direct(self) -> Optional[float]:
        return self.doc["radii"]["delta_direct"]

    def to_json(self) -> str:
        doc = dict(self.doc, digest=digest(self.doc))
        return json.dumps(doc, indent=2, sort_keys=True, allow_nan=False)

    def save(self, path: str | os.PathLike) -> None:
        """Write the JSON atomically, readable by the owner only (0600)."""
        write_json(path, dict(self.doc, digest=digest(self.doc)))

    def check(self) -> List[str]:
        """Re-derive every field that follows from other fields; a list of problems (empty: all hold)."""
        from .verify import check_document

        return check_document(self.doc)

    def summary(self) -> str:
        """The plain-text report."""
        from .report import summary_text

        return summary_text(self.doc)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Certificate":
        """Read a certificate; an unreadable, binary, non-JSON (NaN included), foreign, old-format
        or edited file raises CertificateError naming the file."""
        name = os.fspath(path)
        try:
            with open(name, encoding="utf-8") as fh:
                doc = json.load(fh, parse_constant=_reject_constant, parse_float=_finite_float,
                                object_pairs_hook=_unique_keys)
        except UnicodeDecodeError:
            raise CertificateError(f"{name}: not a certificate (binary, not UTF-8 JSON text)") from None
        except json.JSONDecodeError as exc:
            raise CertificateError(f"{name}: not a certificate (invalid JSON: {exc})") from None
        except ValueError as exc:  # NaN, Infinity, 1e999, a field given twice
            raise CertificateError(f"{name}: not a certificate ({exc})") from None
        except RecursionError:
            raise CertificateError(f"{name}: not a certificate (nested too deeply)") from None
        except OSError as exc:
            raise CertificateError(f"{name}: cannot read: {exc.strerror or exc}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("format"), str) or not doc["format"].startswith("barrierkit.certificate/"):
            raise CertificateError(f"{name}: not a barrierkit certificate (no {FORMAT!r} format field)")
        if doc["format"] in OLD_FORMATS:
            raise CertificateError(f"{name}: a {doc['format']} certificate, {OLD_FORMATS[doc['format']]}; "
                                   f"this version reads {FORMAT}: certify again")
        if doc["format"] != FORMAT:
            raise CertificateError(f"{name}: format {doc['format']!r} is not {FORMAT!r} (made by another barrierkit version)")
        if doc.get("digest") != digest(doc):
            raise DigestMismatch(f"{name}: digest mismatch: the file was edited or corrupted after it was written")
        doc.pop("digest")
        return cls(doc)


def threat_model(config_dict: Dict[str, Any]) -> Dict[str, Any]:
    """The threat model as a certificate states it, from its config: which budget the radius is
    (``searched``: poisoning δ or evasion δ'), the poisoning threat and sampling attack when
    training is poisoned, the test-time threat when the test set is attacked, and under ``both``
    the budget held fixed."""
    from .config import SampleConfig

    sample = config_dict["sample"]
    kind = sample["threat_kind"]
    searched = "evasion" if SampleConfig.from_dict(sample).searches_evasion else "poisoning"
    stated: Dict[str, Any] = {"kind": kind, "searched": searched, "domain": sample["threat"]["domain"]}
    if kind != "evasion":
        stated["poisoning"] = {**sample["threat"], "sampling_attack": sample["attack"]}
    if kind != "poisoning":
        stated["evasion"] = dict(sample["evasion"])
    if kind == "both":
        stated["fixed_budget"] = sample["fixed_budget"]
    return stated


def clean_summary(rule: SafetyRule, hits: Any) -> Dict[str, Any]:
    """The clean runs behind g_c: their hit counts, the median count and the accuracy range."""
    h = np.asarray(hits, dtype=np.int64)
    return {"n": int(h.size), "hits": h.tolist(), "median_hits": rule.clean_median_hits, "median": rule.g_clean,
            "min": float(h.min() / rule.test_size), "max": float(h.max() / rule.test_size)}


def throughput(trajectories: int, steps: int, total_s: float, n_probes: int) -> Dict[str, Any]:
    """Runs, trajectory-steps per second and probes per hour of a whole certification."""
    return {"trajectories": int(trajectories), "trajectory_steps_per_s": trajectories * steps / max(total_s, 1e-9),
            "probes_per_hour": 3600.0 * n_probes / max(total_s, 1e-9)}


def near_chance_warning(rule: SafetyRule, chance_hits: int) -> str:
    """Why a claim about near-chance clean runs is true but vacuous."""
    return (f"g_c = {rule.g_clean:.4f} is near chance: always predicting the majority class scores "
            f"{chance_hits / rule.test_size:.4f}, so a poisoned model no better than that has G <= alpha = {rule.alpha:g} "
            "and counts as safe; the clean runs hardly learn (check the recipe, e.g. the learning rate), so the "
            "certificate is true but says little")


def warnings_for(rule: SafetyRule, chance_hits: int) -> List[str]:
    """The warnings a certificate carries, from its clean reference."""
    return [near_chance_warning(rule, chance_hits)] if rule.near_chance(chance_hits) else []


def assemble(config: CertifyConfig, data: Dataset, rule: SafetyRule, clean_hits: Any, pool: Dict[str, Any],
             probes: List[Dict[str, Any]], timings: Dict[str, float], trajectories: int, started: float,
             run: Dict[str, Any], cells: Optional[List[Dict[str, Any]]] = None) -> "Certificate":
    """The certificate of a finished search: its status and radii from the probe records, every
    fact about the data, model, PAC levels and pool, and the run's ``timings`` (``total_s`` is
    measured from ``started``, a ``time.perf_counter()`` value, to now). ``run`` holds what the
    run was made with: ``versions``, ``backend``, ``device`` and ``features_by``; ``cells`` the
    δ_emp measurements when the configuration asks for them (None otherwise)."""
    import time

    from . import pac
    from .context import radius_context
    from .empirical import empirical_record
    from .models import MLPShape
    from .outcomes import overall_status
    from .radius import max_budget, radii

    scfg = config.sample
    status, reason, best = overall_status(probes)
    top = max_budget(scfg.search_norm, scfg.threat.domain, data.input_dim)
    found = radii(probes, best, top, config.delta_hi)
    context = None
    if best is not None:
        context = radius_context(best["delta"], scfg.search_norm, data.x_train, data.y_train)
    total = time.perf_counter() - started
    shape = MLPShape.from_spec(scfg.model, data.input_dim, data.n_classes)
    settings = config.to_dict()
    doc: Dict[str, Any] = {
        "format": FORMAT, "status": status, "reason": reason, "config": settings, "threat_model": threat_model(settings),
        "dataset": data.name, "data_hash": data.content_hash, "input_dim": data.input_dim, "n_classes": data.n_classes,
        "model_hash": shape.spec_hash, "param_count": shape.param_count, "test_size": rule.test_size,
        "chance_hits": chance_hits(data.y_test), "g_clean": rule.g_clean, "clean_accuracy": clean_summary(rule, clean_hits),
        "alpha": config.alpha, "beta": config.beta, "beta_per_probe": config.beta_per_probe,
        "epsilon": best["epsilon"] if best else None, "epsilon_requested": config.epsilon,
        "n_verify": config.n_verify, "n_train": config.n_train, "d": config.decision_variables,
        "epsilon_direct": pac.epsilon(config.n_verify + config.n_train, 1, config.beta_per_probe),
        "pool": pool, "probes": probes, "radii": found, "context": context,
        "empirical": None if cells is None else empirical_record(config, cells, found["delta_cert"]),
        "warnings": warnings_for(rule, chance_hits(data.y_test)),
        "timings": {"total_s": total, **timings},
        "throughput": throughput(trajectories, scfg.recipe.steps, total, len(probes)),
        "versions": run["versions"], "backend": run["backend"], "device": run["device"], "features_by": run["features_by"],
    }
    if best is not None:
        doc.update({k: best[k] for k in CERTIFIED_FIELDS})
    return Certificate(doc)
