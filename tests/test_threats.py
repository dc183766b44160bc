"""Certificates over a test-time budget: threat_kind evasion (clean training, attacked test set,
each run judged against its own clean accuracy) and both (poisoned training and an attacked test
set, judged against g_c, one budget searched and the other fixed)."""
import dataclasses
import json

import numpy as np
import pytest
import torch

from barrierkit.api import certify, pool_sample_config, replay
from barrierkit.certificate import Certificate
from barrierkit.cli import main
from barrierkit.config import CertifyConfig, ConfigError, EvasionThreat, FeatureSpec, SampleConfig, TrainRecipe
from barrierkit.engine import clean_runs, sample
from barrierkit.evasion import ibp_proven
from barrierkit.features import ROBUSTNESS_FEATURE, probe_indices
from barrierkit.labels import SafetyRule
from barrierkit.models import MLPShape
from conftest import TINY_CERTIFY, no_work

portable = pytest.mark.portability  # numbers that decide labels and certificates: also under other CPU kernels

SHORT = TrainRecipe(steps=8, record_every=4)
SEEDS = np.arange(15, dtype=np.int64).reshape(5, 3) + 11


def short_config(kind="evasion", **kw) -> SampleConfig:
    kw.setdefault("evasion", EvasionThreat(steps=2))
    return SampleConfig(recipe=SHORT, threat_kind=kind, features=FeatureSpec(projection_dim=2, probe_size=37), **kw)


# ------------------------------------------------------------------------------ configuration


@pytest.mark.parametrize("kwargs,field", [
    (dict(threat_kind="both"), "fixed_budget"),
    (dict(threat_kind="both", search_budget="evasion"), "fixed_budget"),
    (dict(threat_kind="both", fixed_budget=-0.1), "fixed_budget"),
    (dict(threat_kind="both", fixed_budget=float("nan")), "fixed_budget"),
    (dict(fixed_budget=0.1), "fixed_budget"),
    (dict(threat_kind="evasion", search_budget="evasion"), "search_budget"),
    (dict(threat_kind="both", fixed_budget=0.1, search_budget="test"), "search_budget"),
])
def test_a_bad_budget_setting_names_its_field(kwargs, field):
    with pytest.raises(ConfigError) as err:
        SampleConfig(**kwargs)
    assert err.value.field == field


def test_which_budget_the_search_runs_over():
    assert SampleConfig().budgets(0.1) == (0.1, None)
    assert SampleConfig(threat_kind="evasion").budgets(0.1) == (0.0, 0.1)
    both = SampleConfig(threat_kind="both", fixed_budget=0.02, evasion=EvasionThreat(norm="2"))
    assert both.budgets(0.1) == (0.1, 0.02) and both.search_norm == "inf" and not both.searches_evasion
    over_test = dataclasses.replace(both, search_budget="evasion")
    assert over_test.budgets(0.1) == (0.02, 0.1) and over_test.search_norm == "2" and over_test.searches_evasion
    assert SampleConfig().feature_dim + 1 == both.feature_dim == SampleConfig(threat_kind="evasion").feature_dim


@pytest.mark.parametrize("kwargs,field", [
    (dict(sample=SampleConfig(threat_kind="evasion", evasion=EvasionThreat(rho=0.0))), "evasion.rho"),
    (dict(sample=SampleConfig(threat_kind="evasion"), emp_attacks=("unrolled",)), "emp_attacks"),
    (dict(sample=SampleConfig(threat_kind="evasion"), emp_attacks=("ibp",)), "emp_attacks"),
    (dict(emp_attacks=("pgd",)), "emp_attacks"),
])
def test_a_certification_refuses_what_it_cannot_measure(kwargs, field):
    with pytest.raises(ConfigError) as err:
        CertifyConfig(**kwargs)
    assert err.value.field == field


def test_bad_threat_options_on_the_command_line_write_nothing(tmp_path, monkeypatch, capsys):
    no_work(monkeypatch)
    out = tmp_path / "c.json"
    assert main([*TINY_CERTIFY, "--threat", "both", "--out", str(out)]) == 2
    assert "fixed_budget" in capsys.readouterr().err
    assert main([*TINY_CERTIFY, "--threat", "evasion", "--evasion-rho", "1.5", "--out", str(out)]) == 2
    assert main([*TINY_CERTIFY, "--threat", "evasion", "--evasion-attack", "fgsm", "--out", str(out)]) == 2
    assert main([*TINY_CERTIFY, "--fixed-budget", "0.1", "--out", str(out)]) == 2
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ labels


def test_an_evasion_rule_judges_each_run_against_its_own_clean_count():
    rule = SafetyRule.for_threat("evasion", [300, 340, 341], 360, 0.05)
    attacked, own = np.array([322, 321, 100, 5]), np.array([340, 340, 100, 23])  # losses 18 (safe), 19, 0, 18
    assert rule.own_reference and rule.unsafe(attacked, own).tolist() == [False, True, False, False]
    assert rule.accuracy_drop(attacked, own).tolist() == pytest.approx([18 / 360, 19 / 360, 0.0, 18 / 360])
    with pytest.raises(ValueError, match="reference_hits"):
        rule.unsafe(attacked)
    against_gc = SafetyRule.for_threat("both", [300, 340, 341], 360, 0.05)
    assert not against_gc.own_reference and against_gc.unsafe(attacked, own).tolist() == [False, True, True, True]


# ------------------------------------------------------------------------------ engine


def robust_fraction_twin(params, x, y, delta, norm, domain):
    """The robustness entry computed one model at a time, with no blocks."""
    out = []
    for n in range(params[0].shape[0]):
        one = [p[n:n + 1].to(torch.float64) for p in params]
        out.append(float(ibp_proven(one, x, y, delta, norm, domain).to(torch.float64).mean()))
    return np.array(out)


@portable
@pytest.mark.parametrize("norm", ["inf", "2"])
def test_the_robustness_entry_is_the_interval_bounds_proven_fraction_of_the_probe_points(digits, norm):
    config = short_config(evasion=EvasionThreat(steps=2, norm=norm))
    seen = {}

    def keep(lo, hi, params):
        seen[lo] = [p.clone() for p in params]

    runs = sample(config, 0.05, SEEDS, data=digits, chunk=3, terminal=keep)
    params = [torch.cat([seen[0][i], seen[3][i]]) for i in range(len(seen[0]))]
    idx = probe_indices(config.features, digits.x_train.shape[0])
    x, y = torch.as_tensor(digits.x_train[idx], dtype=torch.float64), torch.as_tensor(digits.y_train[idx])
    twin = robust_fraction_twin(params, x, y, 0.05, norm, config.threat.domain)
    assert runs.meta["feature_names"][-1] == ROBUSTNESS_FEATURE
    assert np.array_equal(runs.features[:, -1, -1], twin)
    whole = sample(config, 0.05, SEEDS, data=digits)
    assert np.array_equal(whole.features, runs.features), "the chunking changes no feature"
    larger = sample(config, 0.2, SEEDS, data=digits)
    assert (larger.features[:, :, -1] <= runs.features[:, :, -1]).all(), "a larger ball proves fewer points"
    assert np.array_equal(larger.features[:, :, :-1], runs.features[:, :, :-1]), "training does not see δ′"


@portable
def test_both_poisons_training_and_attacks_the_trained_model(digits):
    both = short_config("both", fixed_budget=0.05)
    runs = sample(both, 0.3, SEEDS, data=digits)
    poisoned = sample(dataclasses.replace(both, threat_kind="poisoning", fixed_budget=None), 0.3, SEEDS, data=digits)
    assert np.array_equal(runs.features[:, :, :-1], poisoned.features), "the same poisoned training"
    assert np.array_equal(runs.reference_hits, poisoned.test_hits), "own count: the poisoned model's clean accuracy"
    assert (runs.test_hits <= runs.reference_hits).all() and runs.poison_fraction.mean() > 0
    over_test = dataclasses.replace(both, search_budget="evasion", fixed_budget=0.3)
    swapped = sample(over_test, 0.05, SEEDS, data=digits)
    assert np.array_equal(swapped.features, runs.features) and np.array_equal(swapped.test_hits, runs.test_hits)
    assert swapped.meta["budgets"] == {"poisoning": 0.3, "evasion": 0.05}


@pytest.mark.parametrize("kind,extra", [("evasion", {}), ("both", dict(fixed_budget=0.05))])
def test_clean_runs_are_clean_whatever_the_threat(digits, kind, extra):
    plain = clean_runs(short_config("poisoning"), 4, 7, data=digits)
    runs = clean_runs(short_config(kind, **extra), 4, 7, data=digits)
    assert np.array_equal(runs.test_hits, plain.test_hits) and runs.reference_hits is None


def test_the_unsafe_pool_raises_the_searched_budgets_probability():
    evasion = CertifyConfig(sample=SampleConfig(threat_kind="evasion"), pool_rho=0.9)
    assert pool_sample_config(evasion).evasion.rho == 0.9 and pool_sample_config(evasion).threat.rho == 0.5
    both = CertifyConfig(sample=SampleConfig(threat_kind="both", fixed_budget=0.1), pool_rho=0.9)
    assert pool_sample_config(both).threat.rho == 0.9 and pool_sample_config(both).evasion.rho == 0.5


# ------------------------------------------------------------------------------ certify, verify, replay


TINY_EVASION = [*TINY_CERTIFY, "--threat", "evasion", "--evasion-steps", "2", "--probe-size", "32"]


@pytest.fixture(scope="module")
def evasion_certificate(tmp_path_factory):
    path = tmp_path_factory.mktemp("evasion") / "ev.json"
    assert main([*TINY_EVASION, "--emp-attacks", "random", "--emp-runs", "6", "--quiet", "--out", str(path)]) in (0, 3, 4)
    return path


@portable
def test_an_evasion_certificate_verifies_and_names_its_budget(evasion_certificate, capsys):
    doc = Certificate.load(evasion_certificate).doc
    assert doc["threat_model"]["kind"] == "evasion" and doc["threat_model"]["searched"] == "evasion"
    assert "poisoning" not in doc["threat_model"] and doc["threat_model"]["evasion"]["attack"] == "pgd"
    for p in doc["probes"]:
        assert len(p["reference_hits"]["verify"]) == p["n_verify"]
        assert all(a <= r for a, r in zip(p["hits"]["verify"], p["reference_hits"]["verify"]))
    assert doc["pool"]["n_unsafe"] == doc["pool"]["n"], "at the whole domain every trained model loses its accuracy"
    assert [r["attack"] for r in doc["empirical"]["rows"]][0] == "pgd"
    assert main(["verify", str(evasion_certificate)]) == 0
    assert main(["report", str(evasion_certificate)]) == 0
    out = capsys.readouterr().out
    assert "δ′_direct" in out and "Test-time attack 'pgd'" in out and "Sampling attack" not in out
    assert "monotone in δ′" in out


@pytest.mark.parametrize("change,needle", [(40, "n_unsafe_verify"), ("below", "more attacked hits")])
def test_verify_catches_an_edited_own_clean_count(evasion_certificate, tmp_path, capsys, change, needle):
    """40 more own points: the run lost more than α, against its stored label; an own count below
    the attacked one: no attack adds hits (the label itself stays safe)."""
    from barrierkit.certificate import digest

    doc = json.loads(evasion_certificate.read_text())
    p = doc["probes"][0]
    p["reference_hits"]["verify"][0] += 40 if change == 40 else -(p["reference_hits"]["verify"][0] - p["hits"]["verify"][0] + 1)
    doc.pop("digest")
    doc["digest"] = digest(doc)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(doc))
    assert main(["verify", "--quiet", str(path)]) == 6
    assert needle in capsys.readouterr().err


@portable
def test_verify_replay_reruns_an_evasion_certificate(evasion_certificate, capsys):
    assert main(["verify", "--replay", "--quiet", str(evasion_certificate)]) == 0
    assert "REPLAY OK" in capsys.readouterr().out


@portable
def test_an_evasion_witness_replays_from_its_seeds(digits):
    config = CertifyConfig(sample=short_config(), alpha=0.0, n_verify=20, n_train=10, n_clean=6, n_pool=6, max_probes=1,
                           epsilon=0.9, beta=0.5, delta_hi=0.3)
    cert = certify(config, backend="torch", device="cpu", progress=False)
    witness = cert.doc["probes"][0]["witness"]
    assert cert.status == "REFUTED" and witness["reference_hits"] > witness["test_hits"]
    again = replay(config.sample, witness["delta"], witness["seeds"], backend=witness["backend"], device="cpu")
    assert (int(again.test_hits[0]), int(again.reference_hits[0])) == (witness["test_hits"], witness["reference_hits"])
    assert cert.check() == []


@portable
def test_a_both_certificate_states_both_budgets(digits):
    sample_config = short_config("both", fixed_budget=0.01, search_budget="evasion")
    config = CertifyConfig(sample=sample_config, n_verify=20, n_train=10, n_clean=6, n_pool=6, max_probes=1, epsilon=0.9,
                           beta=0.5, delta_hi=0.02, alpha=0.5)
    cert = certify(config, backend="torch", device="cpu", progress=False)
    assert cert.check() == []
    from barrierkit.rerun import replay_certificate

    assert replay_certificate(cert.doc).ok, "verify --replay re-runs it"
    tm = cert.doc["threat_model"]
    assert (tm["kind"], tm["searched"], tm["fixed_budget"]) == ("both", "evasion", 0.01)
    assert cert.doc["probes"][0]["reference_hits"] is None, "both judges against g_c"
    text = cert.summary()
    assert "δ′ was fixed" not in text and "δ was fixed at 0.01" in text
    if cert.status == "CERTIFIED":
        assert "budget δ = 0.01" in text and "δ′ = 0.02" in text


@portable
@pytest.mark.parametrize("attack", ["pgd", "ibp", "random"])
def test_a_chosen_subset_loses_the_flippable_points_up_to_its_cap(digits, attack):
    """The attacker's choice: a run loses min(⌊ρ′·P⌋, points its attack flips among all correctly
    classified ones), which the random subset with ρ′ = 1 counts exactly."""
    from barrierkit.evasion import evaluate

    config = short_config(evasion=EvasionThreat(steps=2, attack=attack))
    seen = {}
    sample(config, 0.1, SEEDS, data=digits, terminal=lambda lo, hi, params: seen.setdefault("p", [p.clone() for p in params]))
    x, y, s = torch.as_tensor(digits.x_test), torch.as_tensor(digits.y_test), torch.as_tensor(SEEDS[:, 1])
    clean, every = evaluate(seen["p"], x, y, s, dataclasses.replace(config.evasion, rho=1.0), 0.1, (0.0, 1.0))
    flippable = clean - every
    for rho, cap in ((0.03, 10), (0.5, 180)):  # ⌊0.03 · 360⌋ = 10 (float 0.03 · 360 is 10.799...)
        threat = dataclasses.replace(config.evasion, rho=rho, subset="chosen")
        _, attacked = evaluate(seen["p"], x, y, s, threat, 0.1, (0.0, 1.0))
        assert torch.equal(clean - attacked, flippable.clamp(max=cap))
    assert attack == "random" or (flippable > 10).any(), "the cap binds for some run"
    with pytest.raises(ConfigError, match="subset"):
        EvasionThreat(subset="all")
