"""The plain-text report of a certificate: the guarantee, the radii, the probes, context, warnings,
and what the certificate does not mean. It states only what the document supports."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from .config import ATTACK_DESCRIPTIONS, EVASION_ATTACKS, SUBSET_RULES


def _norm(threat: Dict[str, Any]) -> str:
    return "ℓ∞" if threat["norm"] == "inf" else "ℓ2"


def subset_rule(threat: Dict[str, Any]) -> str:
    """The threat's subset rule (a document written before the rule existed used ``random``)."""
    return threat.get("subset", "random")


def poisoned_points(threat: Dict[str, Any]) -> str:
    """Which training points the guarantee's runs poison, in words."""
    if subset_rule(threat) == "chosen":
        return (f"whose ⌈ρ·n⌉ training points (ρ = {threat['rho']:g}) of lowest clean margin are poisoned, the same "
                "points in every run (the attacker's chosen subset),")
    return f"whose training points are each poisoned with probability ρ = {threat['rho']:g}"


def searches_evasion(doc: Dict[str, Any]) -> bool:
    """Whether the document's radius is the test-time budget δ′."""
    return doc["threat_model"]["searched"] == "evasion"


def perturbed_test_points(evasion: Dict[str, Any], budget: str) -> str:
    """How the guarantee's trained models are attacked at test time, in words."""
    if evasion["attack"] == "ibp":
        how = ("judged by interval bound propagation, which counts every perturbed point it cannot prove robust as "
               "flipped: a bound on every test-time attack")
    else:
        how = f"by the '{evasion['attack']}' test-time attack"
    if evasion.get("subset", "random") == "chosen":
        return (f"whose test points are then perturbed within the {_norm(evasion)} budget {budget} at up to "
                f"⌊ρ′·P⌋ points of the attacker's choice (ρ′ = {evasion['rho']:g}, the points it can flip; {how})")
    return (f"whose test points are then each perturbed with probability ρ′ = {evasion['rho']:g} within the "
            f"{_norm(evasion)} budget {budget} ({how})")


def guarantee_sentence(doc: Dict[str, Any]) -> str:
    """The guarantee in one sentence (or why there is none)."""
    cfg, radii, tm = doc["config"], doc["radii"], doc["threat_model"]
    if doc["status"] != "CERTIFIED":
        return in_searched_budget(doc, [f"No budget was certified ({doc['status']}): {doc['reason']}"])[0]
    whole = " (the whole input domain)" if radii["whole_domain"] else ""
    opening = f"With confidence at least {1 - cfg['beta']:.6g} over the sampled verification runs, a fresh "
    closing = f" with probability at least 1 − ε = {1 - doc['epsilon']:.4g}."
    if tm["kind"] == "evasion":
        budget = f"δ′ = {radii['delta_cert']:.4g}{whole}"
        return (opening + f"clean training run of this recipe, {perturbed_test_points(tm['evasion'], budget)}, "
                f"loses at most α = {cfg['alpha']:g} of its own test accuracy (G′ = g − g_attacked ≤ α)" + closing)
    delta, delta_test = radii["delta_cert"], None
    if tm["kind"] == "both":
        delta, delta_test = (tm["fixed_budget"], radii["delta_cert"]) if searches_evasion(doc) else (radii["delta_cert"], tm["fixed_budget"])
    poisoning = tm["poisoning"]
    where = f"the {_norm(poisoning)} budget δ = {delta:.4g}" + ("" if tm["kind"] == "both" and searches_evasion(doc) else whole)
    attacked = "" if delta_test is None else (
        ", " + perturbed_test_points(tm["evasion"], f"δ′ = {delta_test:.4g}" + (whole if searches_evasion(doc) else "")) + ",")
    measured = "g_c − g" if delta_test is None else "g_c − g_attacked"
    return (opening + f"training run of this recipe {poisoned_points(poisoning)} by the "
            f"'{poisoning['sampling_attack']['kind']}' sampling attack at {where}{attacked} ends with an accuracy drop "
            f"G = {measured} ≤ α = {cfg['alpha']:g} (g_c = {doc['g_clean']:.4f})" + closing)


NOT_MEANT = [
    "It bounds the chance of an unsafe outcome under the named sampling attack A_δ only; a stronger or "
    "different attack (an optimised or adaptive poison, another norm, label poisoning) is not covered, and no "
    "smaller ball in another norm is covered either: the attack draws particular perturbations, not every point "
    "of its ball.",
    "It says nothing about whether a given dataset or input was attacked, and a certified radius tells an "
    "attacker where attacks do not work: keep the file private.",
    "It is about the simulated training dynamics (this recipe, backend and precision), and probability ε of an "
    "unsafe run remains; it is not a worst-case guarantee.",
    "It holds at the probed budget; smaller budgets are covered only if robustness is monotone in δ, which the "
    "bisection assumes but does not prove.",
]


EVASION_NOT_MEANT = (
    "It bounds the chance of an unsafe outcome under the named test-time attack only; PGD and random draws are "
    "heuristics, and a stronger attack may flip points they did not (a certificate judged by the interval bound, "
    "--evasion-attack ibp, covers every perturbation in the ball).")
WORST_CASE_EVASION_NOT_MEANT = (
    "Its test-time side is worst case (every choice of up to ⌊ρ′·P⌋ points and every perturbation in their balls, "
    "through the interval bound), but the training side is sampled: it is PAC over training runs, not worst case.")
SOUND_EVASION_NOT_MEANT = (
    "Its test-time side is worst case (the interval bound covers every perturbation in the ball of every perturbed "
    "point), but which points are perturbed is drawn with probability ρ′, and the training side is still sampled.")


def not_meant(doc: Dict[str, Any]) -> List[str]:
    """What the certificate does not mean, for its threat kind."""
    tm = doc["threat_model"]
    lines = list(NOT_MEANT) if tm["kind"] != "evasion" else NOT_MEANT[1:]
    lines[-1] = in_searched_budget(doc, [lines[-1]])[0]  # monotone in the searched budget
    if tm["kind"] != "poisoning":
        sound, chosen = tm["evasion"]["attack"] == "ibp", tm["evasion"].get("subset", "random") == "chosen"
        lines.insert(0, (WORST_CASE_EVASION_NOT_MEANT if chosen else SOUND_EVASION_NOT_MEANT) if sound else EVASION_NOT_MEANT)
    return lines


def certified_attack(doc: Dict[str, Any]) -> str:
    """The attack the radius is relative to: the test-time one when δ′ was searched, else the
    sampling attack."""
    tm = doc["threat_model"]
    return tm["evasion"]["attack"] if searches_evasion(doc) else tm["poisoning"]["sampling_attack"]["kind"]


def searched_threat(doc: Dict[str, Any]) -> Dict[str, Any]:
    """The threat table of the searched budget (its norm and rho)."""
    tm = doc["threat_model"]
    return tm["evasion"] if searches_evasion(doc) else tm["poisoning"]


def in_searched_budget(doc: Dict[str, Any], lines: List[str]) -> List[str]:
    """Report lines about the searched budget, written with δ′ when that budget is the test-time one."""
    return [line.replace("δ", "δ′") for line in lines] if searches_evasion(doc) else lines


def _probe_at(doc: Dict[str, Any], delta: Optional[float]) -> Optional[Dict[str, Any]]:
    return next((p for p in doc["probes"] if delta is not None and p["delta"] == delta), None)


def radii_lines(doc: Dict[str, Any]) -> List[str]:
    """δ_cert and δ_direct, what bounds each, and why they differ when they do."""
    radii = doc["radii"]
    cert, direct, fail = radii["delta_cert"], radii["delta_direct"], radii["delta_fail"]
    lines: List[str] = []
    if radii["whole_domain"]:
        lines.append("Even the whole input domain certifies: there is no finite radius to report.")
    elif cert is not None:
        if radii["capped_by_user"]:
            tail = "the user's upper limit; larger budgets were not searched"
        elif fail is not None:
            p = _probe_at(doc, fail)
            tail = f"smallest probed budget not certified: {fail:.4g}, {p['status']}: {p['reason']}"
        else:
            tail = "no larger budget was probed"
        lines.append(f"δ_cert   = {cert:.4g}   ({tail})")
    else:
        lines.append("δ_cert   = none certified")
    lines.append(f"δ_direct = {direct:.4g}   (no barrier: d = 1 bound on the terminal labels of each probe's "
                 "training and verification runs)" if direct is not None else "δ_direct = none passed")
    n_all = doc["n_train"] + doc["n_verify"]
    if cert is not None and (direct is None or cert > direct):
        p = _probe_at(doc, cert)
        n_unsafe = p["n_unsafe_train"] + p["n_unsafe_verify"]
        why = (f"{n_unsafe} of its {n_all} runs ended unsafe (training split {p['n_unsafe_train']}), and the direct bound "
               "counts every run of the probe" if n_unsafe else
               f"its ε = {p['direct']['epsilon']:.4g} with d = 1 exceeds the requested {doc['epsilon_requested']:g}")
        lines.append(f"  δ_cert > δ_direct: at δ = {cert:.4g} the barrier certified, but the direct bound failed: {why}.")
    elif direct is not None and (cert is None or direct > cert):
        above = [p for p in doc["probes"] if p["direct"]["passed"] and p["status"] != "CERTIFIED"
                 and (cert is None or p["delta"] > cert)]
        p = min(above, key=lambda q: q["delta"])
        lines.append(f"  δ_direct > δ_cert: no run was unsafe at δ = {p['delta']:.4g}, but the barrier could not certify "
                     f"it ({p['status']}: {p['reason']}).")
    return lines


def empirical_lines(doc: Dict[str, Any]) -> List[str]:
    """δ_emp of every attack tried beside δ_cert and δ_direct, the unsafe counts behind each, and
    the comparison; without --emp, that no other attack was tried."""
    own = certified_attack(doc)
    emp = doc.get("empirical")
    if emp is None:
        return [f"No other attack was tried: this radius is relative to '{own}' alone (certify --emp measures δ_emp "
                "of the strongest built-in attacks beside it)."]
    radii = doc["radii"]

    def text(value: Optional[float]) -> str:
        return "none" if value is None else f"{value:.4g}"

    lines = [f"Empirical radii: δ_emp is the smallest probed budget at which some of {emp['n']} runs ended unsafe "
             "(the same seeds for every attack; unsafe counts with 95% Clopper–Pearson intervals):"]
    for kind in emp["attacks"]:
        cells = [r for r in emp["rows"] if r["attack"] == kind]
        label = f"{kind} (certified attack)" if kind == own else kind
        lines.append(f"  {label:28s} δ_emp = {text(emp['delta_emp'][kind]):8s} "
                     + ", ".join(f"{r['delta']:.4g}: {r['unsafe']} [{r['interval_95'][0]:.3f}, {r['interval_95'][1]:.3f}]"
                                 for r in cells))
    lines.append(f"  δ_cert = {text(radii['delta_cert'])}, δ_direct = {text(radii['delta_direct'])}, "
                 + ", ".join(f"δ_emp({kind}) = {text(emp['delta_emp'][kind])}" for kind in emp["attacks"]))
    lines.append(f"  {emp['comparison']['text'][0].upper()}{emp['comparison']['text'][1:]}.")
    return lines


def summary_text(doc: Dict[str, Any]) -> str:
    """The plain-text report: guarantee, attack, radii, probes, context, warnings, what it does not mean."""
    tm = doc["threat_model"]
    lines = [f"barrierkit certificate: {doc['status']}", "", guarantee_sentence(doc), ""]
    if "poisoning" in tm:
        attack = tm["poisoning"]["sampling_attack"]
        lines += [f"Sampling attack '{attack['kind']}': {ATTACK_DESCRIPTIONS[attack['kind']]}"
                  + (f"; each poisoned point's direction flipped with probability {attack['sign_noise']:g}"
                     if attack["kind"] == "gradient" and attack["sign_noise"] > 0 else "") + ".",
                  f"Subset rule '{subset_rule(tm['poisoning'])}': {SUBSET_RULES[subset_rule(tm['poisoning'])]}."]
    if "evasion" in tm:
        ev = tm["evasion"]
        settings = (f" ({ev['steps']} steps of {ev['step_size']:g}·δ′ on the {ev['loss']} loss, {ev['restarts']} random "
                    "restarts)" if ev["attack"] == "pgd" else "")
        lines.append(f"Test-time attack '{ev['attack']}'{settings}: {EVASION_ATTACKS[ev['attack']]}.")
    if tm["kind"] == "both":
        fixed = "δ′" if not searches_evasion(doc) else "δ"
        lines.append(f"The search ran over {'δ′' if searches_evasion(doc) else 'δ'}; {fixed} was fixed at {tm['fixed_budget']:g}.")
    lines.append("")
    lines += in_searched_budget(doc, radii_lines(doc))
    lines += [""] + in_searched_budget(doc, empirical_lines(doc))
    lines += ["", "Probes:"]
    for p in doc["probes"]:
        eps = f"ε={p['epsilon']:.4g}" if p.get("epsilon") is not None else "ε=–"
        lines.append(f"  {'δ′' if searches_evasion(doc) else 'δ'}={p['delta']:<8.4g} {p['status']:<12} unsafe {p['n_unsafe_verify']}/{p['n_verify']} verify, "
                     f"{p['n_unsafe_train']}/{p['n_train']} train  {eps}  direct {'pass' if p['direct']['passed'] else 'fail'}")
        if (p.get("train_consistency") or {}).get("contradicts"):
            lines.append(f"    the training split contradicts ε: unsafe rate ≥ {p['train_consistency']['rate_lower_bound']:.4g}")
    ctx = doc.get("context")
    if ctx:
        ratio = ctx["radius_over_median_distance"]
        lines += ["", "The radius in context:",
                  f"  median {'ℓ∞' if ctx['norm'] == 'inf' else 'ℓ2'} distance from a training point to the nearest "
                  f"differently-labelled one: {ctx['median_nearest_other_class_distance']:.4g}"
                  + (f" ({'δ′' if searches_evasion(doc) else 'δ'}_cert is {ratio:.1%} of it)" if ratio is not None else "")]
    if doc.get("warnings"):
        lines += ["", "Warnings:"] + [f"  - {w}" for w in doc["warnings"]]
    lines += ["", "What this does not mean:"] + [f"  - {s}" for s in not_meant(doc)]
    return "\n".join(lines)


PROFILE_STAGES = (("clean runs (g_c)", "clean_s"), ("sampling (pool, probe splits)", "sampling_s"),
                  ("barrier fit", "barrier_s"), ("scenario program", "scp_s"), ("empirical radii (--emp)", "empirical_s"))


def profile_stages(doc: Dict[str, Any]) -> List[tuple]:
    """[(stage, seconds, share of total)] from a certificate's timings; "other" is the rest."""
    t = doc["timings"]
    total = float(t["total_s"])
    rows = [(name, float(t.get(key, 0.0))) for name, key in PROFILE_STAGES]
    rows.append(("other (reference, bookkeeping)", max(0.0, total - sum(s for _, s in rows))))
    return [(name, s, s / total if total > 0 else 0.0) for name, s in rows] + [("total", total, 1.0 if total > 0 else 0.0)]


def profile_table(doc: Dict[str, Any]) -> str:
    """Where the time of a certification went, stage by stage (``certify --profile``)."""
    lines = ["profile: where the time went", f"  {'stage':32s} {'seconds':>10s} {'share':>7s}"]
    for name, seconds, share in profile_stages(doc):
        lines.append(f"  {name:32s} {seconds:10.2f} {share:7.1%}")
    t = doc["timings"]
    lines.append(f"  sampling (probes and pool; clean runs apart): training steps {t['sampling_train_s']:.2f} s, "
                 f"features phi {t['sampling_features_s']:.2f} s ({doc['features_by']}), "
                 + (f"attacked test set {t['sampling_eval_s']:.2f} s (the test-time attack on every trained model)"
                    if doc["threat_model"]["kind"] != "poisoning" else f"test accuracy {t['sampling_eval_s']:.2f} s"))
    tp = doc["throughput"]
    runs, steps = tp["trajectories"], doc["config"]["sample"]["recipe"]["steps"]
    sampling = float(t["clean_s"]) + float(t["sampling_s"])
    lines.append(f"  trajectory-steps/s: {tp['trajectory_steps_per_s']:,.0f} over the whole certification "
                 f"({runs} runs x {steps} steps); {runs * steps / sampling if sampling > 0 else 0.0:,.0f} while sampling")
    return "\n".join(lines)
