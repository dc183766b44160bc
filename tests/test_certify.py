"""Certification end to end: planted cases, witnesses, the certificate document and the CLI."""
import json
import os

import numpy as np
import pytest

import barrierkit

from barrierkit.cli import main
from barrierkit.config import (CertifyConfig, ConfigError, FeatureSpec, SampleConfig, SamplingAttack,
                               ThreatModel, TrainRecipe)
from barrierkit.engine import clean_accuracy
from barrierkit.probe import PURPOSE_POOL, CertifyContext, run_probe
from barrierkit.certificate import Certificate

pytestmark = pytest.mark.portability  # also run under ATEN_CPU_CAPABILITY=default and avx2 (tests/test_portability.py)

# the default dynamics (400 steps, lr 0.1), recorded coarsely (K = 10) to keep the tests fast
FAST_RECIPE = TrainRecipe(steps=400, record_every=40)


def fast_config(rho=0.5, attack="gradient", **kw) -> CertifyConfig:
    sample = SampleConfig(recipe=FAST_RECIPE, threat=ThreatModel(rho=rho), attack=SamplingAttack(kind=attack),
                          features=FeatureSpec(projection_dim=4, probe_size=64))
    base = dict(sample=sample, alpha=0.05, epsilon=0.3, beta=0.05, n_verify=120, n_train=80, n_clean=40, n_pool=40,
                max_probes=4, seed=1)
    base.update(kw)
    return CertifyConfig(**base)


@pytest.fixture(scope="module")
def planted_context(digits):
    """Clean reference accuracy and a heavy-poison unsafe pool, shared by the planted probes."""
    config = fast_config(rho=0.05)
    g_c, _ = clean_accuracy(config.sample, config.n_clean, config.seed, data=digits, progress=False)
    ctx = CertifyContext(config, digits, g_c, pool=[], progress=False)
    heavy_cfg = SampleConfig(recipe=FAST_RECIPE, threat=ThreatModel(rho=1.0), features=config.sample.features)
    heavy = ctx.sample(1.0, PURPOSE_POOL, config.n_pool, "pool", sample_config=heavy_cfg)
    unsafe = heavy.unsafe(g_c, config.alpha)
    assert unsafe.mean() > 0.9, "heavy poisoning must destroy accuracy"
    ctx.pool.append((1.0, heavy.features[unsafe, -1]))
    return ctx


@pytest.fixture(scope="module")
def tiny_budget_record(planted_context):
    return run_probe(planted_context, 0.01, 0)


def test_tiny_budget_certifies(planted_context, tiny_budget_record):
    record = tiny_budget_record
    assert record["n_unsafe_verify"] == 0
    assert record["status"] == "CERTIFIED", record["reason"]
    assert record["eta_check"] < -record["tau"] and record["verdict"]["solver_status"] == "optimal"
    assert record["epsilon"] <= planted_context.config.epsilon and record["direct"]["passed"]
    assert record["train_consistency"] == {"n_unsafe": 0, "n": 80, "beta": record["beta"], "rate_lower_bound": 0.0,
                                           "contradicts": False}


def test_unsafe_training_runs_that_contradict_epsilon_block_certified(planted_context, tiny_budget_record):
    """A CERTIFIED probe whose independent training split shows an unsafe rate above epsilon (at
    confidence 1 - beta/K_max) is downgraded by the probe, and a forged one is caught by verify."""
    from barrierkit.certificate import _check_probe
    from barrierkit.probe import training_split_consistency

    cfg = planted_context.config
    record = json.loads(json.dumps(tiny_budget_record))
    assert _check_probe(record, cfg.to_dict(), cfg.beta_per_probe) == []
    eps, beta = record["epsilon"], record["beta"]
    assert not training_split_consistency(1, 80, eps, beta)["contradicts"]  # one unsafe run is consistent
    heavy = training_split_consistency(60, 80, eps, beta)
    assert heavy["contradicts"] and heavy["rate_lower_bound"] > eps
    forged = dict(record, n_unsafe_train=60, train_consistency=dict(heavy, contradicts=False))
    assert any("contradict" in p for p in _check_probe(forged, cfg.to_dict(), cfg.beta_per_probe))
    old_format = {k: v for k, v in record.items() if k != "train_consistency"}  # made before the check existed
    assert _check_probe(old_format, cfg.to_dict(), cfg.beta_per_probe) == []
    assert any("contradict" in p for p in _check_probe(dict(old_format, n_unsafe_train=60), cfg.to_dict(), cfg.beta_per_probe))
    mismatched = dict(record, train_consistency=dict(record["train_consistency"], n_unsafe=3))
    assert any("does not match" in p for p in _check_probe(mismatched, cfg.to_dict(), cfg.beta_per_probe))


def test_probe_downgrades_a_contradicted_certificate(planted_context, monkeypatch):
    from barrierkit import pac

    monkeypatch.setattr(pac, "rate_lower_bound", lambda k, n, beta: 1.0)  # as if every training run were unsafe
    record = run_probe(planted_context, 0.01, 0)
    assert record["status"] == "INCONCLUSIVE" and "contradict" in record["reason"]
    assert record["train_consistency"]["contradicts"] and record["eta_check"] < -record["tau"]


def test_destructive_budget_is_refuted_with_a_replayable_witness(digits):
    config = fast_config(rho=0.9, attack="sign")
    g_c, _ = clean_accuracy(config.sample, config.n_clean, config.seed, data=digits, progress=False)
    ctx = CertifyContext(config, digits, g_c, pool=[(1.0, np.zeros((1, config.sample.features.dim)))], progress=False)
    record = run_probe(ctx, 1.0, 0)
    assert record["status"] == "REFUTED" and record["n_unsafe_verify"] > 0
    w = record["witness"]
    assert w["accuracy_drop"] > config.alpha
    again = barrierkit.replay(config.sample, w["delta"], w["seeds"], data=digits, backend=w["backend"])
    assert again.test_accuracy[0] == w["test_accuracy"], "a witness must replay exactly"


@pytest.fixture(scope="module")
def cli_certificate(tmp_path_factory):
    out = tmp_path_factory.mktemp("cert") / "cert.json"
    args = ["certify", "--record-every", "40", "--n-verify", "120",
            "--n-train", "80", "--n-clean", "40", "--n-pool", "40", "--epsilon", "0.3", "--beta", "0.05",
            "--max-probes", "4", "--seed", "1", "--out", str(out), "--quiet"]
    assert main(args) == 0
    return out


def test_cli_certify_round_trip_and_verify(cli_certificate, capsys):
    cert = Certificate.load(cli_certificate)
    assert (os.stat(cli_certificate).st_mode & 0o077) == 0, "owner-only permissions"
    assert cert.status in ("CERTIFIED", "REFUTED", "INCONCLUSIVE")
    assert json.loads(cert.to_json())["digest"]
    assert Certificate(json.loads(json.dumps(cert.doc))).to_json() == cert.to_json()
    assert len(cert.doc["probes"]) <= 4
    if cert.delta_cert is not None and cert.delta_direct is not None:
        assert cert.delta_cert <= cert.delta_direct
    if cert.delta_cert is not None:
        assert cert.delta_direct is not None, "whatever the barrier certifies, the direct bound passes"
    assert main(["verify", str(cli_certificate)]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["report", str(cli_certificate)]) == 0
    assert "What this does not mean" in capsys.readouterr().out


def test_verify_rejects_tampered_and_inconsistent_certificates(cli_certificate, tmp_path, capsys):
    doc = json.loads(cli_certificate.read_text())
    edited = dict(doc, g_clean=doc["g_clean"] + 0.01)
    bad = tmp_path / "edited.json"
    bad.write_text(json.dumps(edited))
    assert main(["verify", str(bad)]) == 2
    assert "digest" in capsys.readouterr().err
    # a consistent-looking forgery (digest recomputed) still fails the re-derivation of its numbers
    cert = Certificate.load(cli_certificate)
    cert.doc["probes"][0]["epsilon"] = 1e-6 if cert.doc["probes"][0].get("epsilon") is not None else None
    cert.doc["probes"][0]["direct"]["epsilon"] = 1e-6
    forged = tmp_path / "forged.json"
    cert.save(forged)
    assert main(["verify", str(forged)]) == 2
    assert "epsilon" in capsys.readouterr().err
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    assert main(["verify", str(garbage)]) == 2
    assert main(["verify", str(tmp_path / "missing.json")]) == 2


@pytest.mark.parametrize("args,field", [
    (["--epsilon", "0"], "epsilon"),
    (["--epsilon", "1.5"], "epsilon"),
    (["--beta", "1"], "beta"),
    (["--alpha", "1.2"], "alpha"),
    (["--n-verify", "100", "--epsilon", "0.01"], "n_verify"),
])
def test_certify_bad_input_exits_2_without_output(tmp_path, capsys, args, field):
    out = tmp_path / "c.json"
    assert main(["certify", "--out", str(out), "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert field in err and not out.exists()


def test_n_verify_error_names_the_n_needed():
    with pytest.raises(ConfigError) as err:
        CertifyConfig(n_verify=100, epsilon=0.01)
    from barrierkit.pac import n_min

    assert str(n_min(0.01, 12, 1e-4 / 8)) in str(err.value)


def test_certificate_summary_states_the_guarantee(cli_certificate):
    text = Certificate.load(cli_certificate).summary()
    if Certificate.load(cli_certificate).status == "CERTIFIED":
        assert "With confidence at least" in text and "sampling attack" in text and "covers ℓ1" in text
    else:
        assert "No budget was certified" in text


@pytest.mark.parametrize("forge,needle", [
    (lambda d: d["probes"][0].__setitem__("d", 1), "d=1"),
    (lambda d: d["radii"].__setitem__("whole_domain", True), "whole_domain"),
    (lambda d: d["probes"][0]["direct"].__setitem__("n", 10**6), "direct n"),
    (lambda d: d["probes"][0].__setitem__("index", 5), "indices"),
    (lambda d: d.__setitem__("status", "CERTIFIED" if d["status"] != "CERTIFIED" else "REFUTED"), "status"),
])
def test_verify_rederives_what_a_forger_would_change(cli_certificate, tmp_path, capsys, forge, needle):
    cert = Certificate.load(cli_certificate)
    forge(cert.doc)
    path = tmp_path / "forged.json"
    cert.save(path)  # a forger who recomputes the digest
    assert main(["verify", str(path)]) == 2
    assert needle in capsys.readouterr().err
