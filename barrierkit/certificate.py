"""The Certificate: statuses, the JSON document, its integrity check and the plain-text report.

The document is the product: configuration, threat model and sampling attack, data and model
hashes, g_c, alpha, epsilon, beta, the N's, d, k, eta*, eta_check, every probe, the radii, the
radius in context, timings, throughput, versions and device. It is written with owner-only
permissions (a certificate tells an attacker where attacks do not work; seed 002) and carries a
sha256 digest of its content, which ``verify`` checks: it catches edits and corruption, not a
forger who recomputes the digest; the numbers themselves are re-derived by ``verify`` too.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from . import pac
from .io import write_json

FORMAT = "barrierkit.certificate/1"
STATUSES = ("CERTIFIED", "REFUTED", "INCONCLUSIVE", "ERROR")


class CertificateError(ValueError):
    """A certificate file is unreadable, malformed or fails its checks."""


def digest(doc: Dict[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, allow_nan=False).encode()).hexdigest()


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

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Certificate":
        """Read a certificate; a malformed or edited file raises CertificateError."""
        try:
            with open(path) as fh:
                doc = json.load(fh)
        except (OSError, json.JSONDecodeError) as exc:
            raise CertificateError(f"certificate: cannot read {os.fspath(path)}: {exc}") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise CertificateError(f"certificate: {os.fspath(path)} is not a {FORMAT} document")
        if doc.get("digest") != digest(doc):
            raise CertificateError("certificate: digest mismatch: the file was edited or corrupted after it was written")
        doc.pop("digest")
        return cls(doc)

    def check(self) -> List[str]:
        """Re-derive the certificate's numbers; a list of problems (empty when all hold)."""
        return check_document(self.doc)

    def summary(self) -> str:
        return summary_text(self.doc)


def guarantee_sentence(doc: Dict[str, Any]) -> str:
    """The guarantee in one sentence (or why there is none)."""
    cfg, radii = doc["config"], doc["radii"]
    threat, attack = cfg["sample"]["threat"], cfg["sample"]["attack"]
    norm = "ℓ∞" if threat["norm"] == "inf" else "ℓ2"
    if doc["status"] != "CERTIFIED":
        return (f"No budget was certified ({doc['status']}): {doc['reason']}")
    where = f"the {norm} budget δ = {radii['delta_cert']:.4g}" + (" (the whole input domain)" if radii["whole_domain"] else "")
    return (
        f"With confidence at least {1 - cfg['beta']:.6g} over the sampled verification runs, a fresh training run "
        f"of this recipe whose training points are each poisoned with probability ρ = {threat['rho']:g} by the "
        f"'{attack['kind']}' sampling attack at {where} ends with an accuracy drop G = g_c − g ≤ α = {cfg['alpha']:g} "
        f"(g_c = {doc['g_clean']:.4f}) with probability at least 1 − ε = {1 - doc['epsilon']:.4g}."
    )


NOT_MEANT = [
    "It bounds the chance of an unsafe outcome under the named sampling attack A_δ only; a stronger or "
    "different attack (another norm, adaptive or label poisoning) is not covered.",
    "It says nothing about whether a given dataset or input was attacked, and a certified radius tells an "
    "attacker where attacks do not work: keep the file private.",
    "It is about the simulated training dynamics (this recipe, backend and precision), and probability ε of an "
    "unsafe run remains; it is not a worst-case guarantee.",
    "It holds at the probed budget; smaller budgets are covered only if robustness is monotone in δ, which the "
    "bisection assumes but does not prove.",
]


def summary_text(doc: Dict[str, Any]) -> str:
    """The plain-text report: guarantee, radii, what it does not mean, the radius in context."""
    radii = doc["radii"]
    lines = [f"barrierkit certificate: {doc['status']}", "", guarantee_sentence(doc), ""]
    if radii["whole_domain"]:
        lines.append("Even the whole input domain certifies: there is no finite radius to report.")
    elif radii["delta_cert"] is not None:
        tail = ("the user's upper limit; larger budgets were not searched" if radii["capped_by_user"]
                else (f"first failing budget {radii['delta_fail']:.4g}" if radii["delta_fail"] is not None
                      else "no larger budget was probed"))
        lines.append(f"δ_cert   = {radii['delta_cert']:.4g}   ({tail})")
    else:
        lines.append("δ_cert   = none certified")
    direct = radii["delta_direct"]
    lines.append(f"δ_direct = {direct:.4g}   (no barrier: d = 1 bound on the terminal labels of the same runs)" if direct is not None
                 else "δ_direct = none passed")
    if radii["delta_cert"] is not None and direct is not None and radii["delta_cert"] > direct:
        lines.append("note: δ_cert > δ_direct, which the method does not expect; inspect the probes.")
    lines += ["", "Probes:"]
    for p in doc["probes"]:
        eps = f"ε={p['epsilon']:.4g}" if p.get("epsilon") is not None else "ε=–"
        lines.append(f"  δ={p['delta']:<8.4g} {p['status']:<12} unsafe {p['n_unsafe_verify']}/{p['n_verify']} verify, "
                     f"{p['n_unsafe_train']}/{p['n_train']} train  {eps}  direct {'pass' if p['direct']['passed'] else 'fail'}")
        if (p.get("train_consistency") or {}).get("contradicts"):
            lines.append(f"    the training split contradicts ε: unsafe rate ≥ {p['train_consistency']['rate_lower_bound']:.4g}")
    ctx = doc.get("context")
    if ctx:
        lines += ["", "The radius in context:"]
        cov = ctx["covered_radius_in"]
        lines.append(f"  covers ℓ1 ≤ {cov['1']:.4g}, ℓ2 ≤ {cov['2']:.4g}, ℓ∞ ≤ {cov['inf']:.4g} (Theorem 2 of Cullen et al.: r_q = min(D^(1/q−1/p), 1)·r_p, D = {ctx['input_dim']})")
        ratio = ctx["radius_over_median_distance"]
        lines.append(f"  median distance to the nearest differently-labelled training point: {ctx['median_nearest_other_class_distance']:.4g}"
                     + (f" (the radius is {ratio:.1%} of it)" if ratio is not None else ""))
    lines += ["", "What this does not mean:"] + [f"  - {s}" for s in NOT_MEANT]
    return "\n".join(lines)


def _close(a: Optional[float], b: Optional[float], rel: float = 1e-9) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-15)


def check_document(doc: Dict[str, Any]) -> List[str]:
    """Re-check PAC arithmetic, eta_check from the stored margins, statuses and radii."""
    try:
        return _check_document(doc)
    except (KeyError, TypeError, ValueError) as exc:
        return [f"malformed document ({type(exc).__name__}: {exc})"]


def _check_probe(p: Dict[str, Any], cfg: Dict[str, Any], beta_probe: float) -> List[str]:
    problems: List[str] = []
    tag = f"probe {p['index']} (δ={p['delta']:g})"
    d_expected = cfg["barrier"]["out_dim"] + 3 + (1 if cfg["mu"] > 0 else 0)
    if p["d"] != d_expected:
        problems.append(f"{tag}: d={p['d']} is not out_dim + 3 (+1 when mu > 0) = {d_expected}")
    if (p["n_train"], p["n_verify"]) != (cfg["n_train"], cfg["n_verify"]):
        problems.append(f"{tag}: split sizes differ from the configuration")
    if p["direct"]["n"] != p["n_train"] + p["n_verify"]:
        problems.append(f"{tag}: direct n is not n_train + n_verify")
    if not _close(p["beta"], beta_probe):
        problems.append(f"{tag}: beta {p['beta']} is not beta/max_probes = {beta_probe}")
    if not _close(p["direct"]["epsilon"], pac.epsilon(p["direct"]["n"], 1, beta_probe)):
        problems.append(f"{tag}: direct epsilon does not match epsilon(n={p['direct']['n']}, d=1)")
    direct_ok = p["n_unsafe_train"] + p["n_unsafe_verify"] == 0 and p["direct"]["epsilon"] <= cfg["epsilon"]
    if p["direct"]["passed"] != direct_ok:
        problems.append(f"{tag}: direct pass flag is inconsistent with its counts")
    if p.get("epsilon") is not None and not _close(p["epsilon"], pac.epsilon(p["n_verify"], p["d"], beta_probe)):
        problems.append(f"{tag}: epsilon does not match epsilon(N_v={p['n_verify']}, d={p['d']}, beta/K_max)")
    if (p["status"] == "REFUTED") != (p["n_unsafe_verify"] > 0):
        problems.append(f"{tag}: status {p['status']} is inconsistent with {p['n_unsafe_verify']} unsafe verification runs")
    if p["status"] == "REFUTED" and not p.get("witness"):
        problems.append(f"{tag}: REFUTED without a witness")
    v = p.get("verdict")
    if v is not None and v["solver_status"] == "optimal":
        margins = v["trajectory_margins"]
        if len(margins) != p["n_verify"] or any(m is None for m in margins) or v["pool_margin"] is None:
            problems.append(f"{tag}: stored margins are incomplete or non-finite")
        elif not _close(max(margins + [v["pool_margin"]]), p["eta_check"], 1e-12):
            problems.append(f"{tag}: eta_check {p['eta_check']} differs from the stored margins' max")
    tc = p.get("train_consistency")  # informational (absent from certificates made before the check)
    if tc is not None and (tc["n_unsafe"], tc["n"]) != (p["n_unsafe_train"], p["n_train"]):
        problems.append(f"{tag}: the training split's consistency record does not match its counts")
    if p["status"] == "CERTIFIED":
        # re-derived from the counts every certificate stores, so older certificates are checked too
        if p.get("epsilon") is not None and pac.rate_lower_bound(p["n_unsafe_train"], p["n_train"], beta_probe) > p["epsilon"]:
            problems.append(f"{tag}: CERTIFIED although {p['n_unsafe_train']}/{p['n_train']} unsafe training runs "
                            f"contradict epsilon {p['epsilon']}")
        if v is None or v["solver_status"] != "optimal":
            problems.append(f"{tag}: CERTIFIED without an OPTIMAL solver status")
        elif not (p["eta_check"] is not None and p["eta_check"] < -cfg["tau"] and v["rounding_bound"] < cfg["tau"]):
            problems.append(f"{tag}: CERTIFIED but eta_check {p['eta_check']} is not below -tau (tau = {cfg['tau']})")
        if p.get("epsilon") is None or p["epsilon"] > cfg["epsilon"]:
            problems.append(f"{tag}: CERTIFIED with epsilon {p.get('epsilon')} above the requested {cfg['epsilon']}")
    return problems


def _check_document(doc: Dict[str, Any]) -> List[str]:
    problems: List[str] = []
    if doc.get("status") not in STATUSES:
        return [f"unknown status {doc.get('status')!r}"]
    cfg = doc["config"]
    beta_probe = cfg["beta"] / cfg["max_probes"]
    probes = doc["probes"]
    if len(probes) > cfg["max_probes"]:
        problems.append(f"{len(probes)} probes exceed max_probes={cfg['max_probes']}: the union bound fails")
    if sorted(p["index"] for p in probes) != list(range(len(probes))):
        problems.append("probe indices are not 0..n-1 (each index keys fresh seeds)")
    for p in probes:
        problems += _check_probe(p, cfg, beta_probe)
    certified = [p for p in probes if p["status"] == "CERTIFIED"]
    radii = doc["radii"]
    best = max(certified, key=lambda p: p["delta"]) if certified else None
    if not _close(radii["delta_cert"], best["delta"] if best else None):
        problems.append(f"delta_cert {radii['delta_cert']} is not the largest certified probe")
    passed = [p["delta"] for p in probes if p["direct"]["passed"]]
    if not _close(radii["delta_direct"], max(passed) if passed else None):
        problems.append(f"delta_direct {radii['delta_direct']} is not the largest probe passing the direct bound")
    above = [p["delta"] for p in probes if p["status"] != "CERTIFIED" and (best is None or p["delta"] > best["delta"])]
    if not _close(radii["delta_fail"], min(above) if above else None):
        problems.append(f"delta_fail {radii['delta_fail']} is not the smallest non-certified probe above delta_cert")
    if radii["whole_domain"] and not (best is not None and best["delta"] >= radii["max_budget"]):
        problems.append("whole_domain is claimed but the largest admissible budget was not certified")
    if radii["capped_by_user"] and not (best is not None and cfg["delta_hi"] is not None
                                        and _close(best["delta"], cfg["delta_hi"]) and best["delta"] < radii["max_budget"]):
        problems.append("capped_by_user is inconsistent with delta_hi and the certified probe")
    if (doc["status"] == "CERTIFIED") != bool(certified):
        problems.append(f"status {doc['status']} is inconsistent with the probes")
    if best is not None:
        for key in ("epsilon", "eta_check", "eta_star", "n_support", "epsilon_a_posteriori"):
            if not _close(doc.get(key), best.get(key)):
                problems.append(f"{key} is not the certified probe's {key}")
    elif doc["epsilon"] is not None:
        problems.append("epsilon is given although nothing was certified")
    elif probes:
        first = min(probes, key=lambda p: p["delta"])
        expected = "REFUTED" if first["status"] == "REFUTED" else "INCONCLUSIVE"
        if doc["status"] != expected:
            problems.append(f"status {doc['status']} should be {expected} (the smallest probe's outcome)")
    return problems
