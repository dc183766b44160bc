"""Certification end to end: planted cases, witnesses, the certificate document and the CLI."""
import dataclasses
import json
import math
import os

import numpy as np
import pytest

import barrierkit

from barrierkit.cli import main
from barrierkit.config import (CertifyConfig, ConfigError, FeatureSpec, SampleConfig, SamplingAttack,
                               ThreatModel, TrainRecipe)
from barrierkit.engine import clean_runs
from barrierkit.labels import SafetyRule
from barrierkit.probe import Certification, run_probe
from barrierkit.rng import Purpose
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


def clean_rule(config: CertifyConfig, data) -> SafetyRule:
    clean = clean_runs(config.sample, config.n_clean, config.seed, data=data, progress=False)
    return SafetyRule.from_clean_hits(clean.test_hits, clean.test_size, config.alpha)


@pytest.fixture(scope="module")
def planted_context(digits):
    """Clean reference accuracy and a heavy-poison unsafe pool, shared by the planted probes."""
    config = fast_config(rho=0.05)
    ctx = Certification(config, digits, clean_rule(config, digits), pool=[], progress=False)
    heavy_cfg = SampleConfig(recipe=FAST_RECIPE, threat=ThreatModel(rho=1.0), features=config.sample.features)
    heavy = ctx.sample(1.0, Purpose.POOL, config.n_pool, "pool", sample_config=heavy_cfg)
    unsafe = ctx.rule.unsafe(heavy.test_hits)
    assert unsafe.mean() > 0.9, "heavy poisoning must destroy accuracy"
    ctx.pool.append((math.inf, heavy.features[unsafe, -1]))
    return ctx


@pytest.mark.parametrize("rule, expected", [("heavy", [math.inf]), ("heavy+larger", [math.inf, 0.2, 0.3])])
def test_pool_states_rule(digits, rule, expected):
    """'heavy' keeps only the heavy-poison states; 'heavy+larger' adds strictly larger budgets' states."""
    config = fast_config(pool_states=rule)
    k = config.sample.features.dim
    stored = [(math.inf, np.full((2, k), math.inf)), (0.1, np.full((1, k), 0.1)), (0.2, np.full((1, k), 0.2)),
              (0.3, np.full((3, k), 0.3))]
    ctx = Certification(config, digits, SafetyRule.from_clean_hits(np.array([90]), 100, 0.05), pool=stored, progress=False)
    pool = ctx.pool_above(0.1)
    assert sorted(set(pool[:, 0])) == sorted(expected)
    assert len(pool) == sum(len(states) for budget, states in stored if budget in expected)


@pytest.mark.parametrize("rule, expected", [("heavy", 7), ("heavy+larger", 7 + 2 + 5)])
def test_pool_size_follows_the_rule(rule, expected):
    """verify counts a probe's pool rows by the rule the probe used (the probe at 0.1 and a smaller one are left out)."""
    from barrierkit.outcomes import pool_size
    earlier = [{"delta": 0.2, "n_unsafe_train": 2}, {"delta": 0.1, "n_unsafe_train": 3}, {"delta": 0.4, "n_unsafe_train": 5},
               {"delta": 0.05, "n_unsafe_train": 11}]
    assert pool_size(rule, 7, earlier, 0.1) == expected


def test_pool_states_checked():
    with pytest.raises(ConfigError, match="pool_states"):
        CertifyConfig(pool_states="larger")


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


def test_training_split_consistency_contradicts_only_a_high_unsafe_rate(tiny_budget_record):
    """One unsafe training run is consistent with the certificate; 60 of 80 contradict it."""
    from barrierkit.outcomes import training_split_consistency

    eps, beta = tiny_budget_record["epsilon"], tiny_budget_record["beta"]
    assert not training_split_consistency(1, 80, eps, beta)["contradicts"]
    heavy = training_split_consistency(60, 80, eps, beta)
    assert heavy["contradicts"] and heavy["rate_lower_bound"] > eps


def test_probe_downgrades_a_contradicted_certificate(planted_context, monkeypatch):
    from barrierkit import pac

    monkeypatch.setattr(pac, "rate_lower_bound", lambda k, n, beta: 1.0)  # as if every training run were unsafe
    record = run_probe(planted_context, 0.01, 0)
    assert record["status"] == "INCONCLUSIVE" and "contradict" in record["reason"]
    assert record["train_consistency"]["contradicts"] and record["eta_check"] < -record["tau"]


def test_the_probe_fits_its_barrier_without_the_training_splits_unsafe_runs(planted_context):
    """A training run that ends barely unsafe is not a C2 row of the probe's fit (docs/METHOD.md
    §11.4): the stored trunk is the one fitted with every training label safe, not the one that
    pushes that run above λ."""
    from barrierkit.barrier import fit_barrier
    from barrierkit.rng import probe_purpose

    ctx, delta = planted_context, 0.01
    config = dataclasses.replace(ctx.config, n_verify=20)  # few verification runs: the worst run is soon a training run
    for index in range(12):  # the first such probe (found by search: hit counts may differ by CPU kind)
        train = ctx.sample(delta, probe_purpose(index, "train"), config.n_train, "train")
        verify = ctx.sample(delta, probe_purpose(index, "verify"), config.n_verify, "verify")
        if train.test_hits.min() < verify.test_hits.min():
            break
    else:
        pytest.fail("no probe among the first 12 has its worst run in the training split")
    rule = SafetyRule(2 * (int(train.test_hits.min()) + 1), train.test_size, 0.0)  # unsafe: exactly those worst runs
    probe = Certification(config, ctx.data, rule, pool=list(ctx.pool), progress=False)
    record = run_probe(probe, delta, index)
    assert record["n_unsafe_train"] >= 1 and record["n_unsafe_verify"] == 0 and record["barrier"] is not None
    pool = probe.pool_above(delta)
    blind = fit_barrier(train.features, np.zeros(train.n, dtype=bool), pool, config.barrier).to_dict()
    labelled = fit_barrier(train.features, rule.unsafe(train.test_hits), pool, config.barrier).to_dict()
    assert record["barrier"]["trunk"] == blind and blind != labelled


def test_destructive_budget_is_refuted_with_a_replayable_witness(digits):
    config = fast_config(rho=0.9, attack="sign")
    rule = clean_rule(config, digits)
    ctx = Certification(config, digits, rule, pool=[(1.0, np.zeros((1, config.sample.features.dim)))], progress=False)
    record = run_probe(ctx, 1.0, 0)
    assert record["status"] == "REFUTED" and record["n_unsafe_verify"] > 0
    w = record["witness"]
    assert w["split"] == "verify" and w["test_hits"] <= rule.max_unsafe_hits and w["accuracy_drop"] > config.alpha
    assert record["hits"]["verify"][w["index"]] == w["test_hits"]
    again = barrierkit.replay(config.sample, w["delta"], w["seeds"], data=digits, backend=w["backend"])
    assert again.test_hits[0] == w["test_hits"] and again.test_accuracy[0] == w["test_accuracy"], "a witness must replay exactly"


def test_cli_certify_round_trip_and_verify(cli_certificate, capsys):
    cert = Certificate.load(cli_certificate)
    assert (os.stat(cli_certificate).st_mode & 0o077) == 0, "owner-only permissions"
    assert cert.status in ("CERTIFIED", "REFUTED", "INCONCLUSIVE")
    assert json.loads(cert.to_json())["digest"]
    assert Certificate(json.loads(json.dumps(cert.doc))).to_json() == cert.to_json()
    assert len(cert.doc["probes"]) <= 4
    assert main(["verify", str(cli_certificate)]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["report", str(cli_certificate)]) == 0
    assert "What this does not mean" in capsys.readouterr().out


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
    from barrierkit.pac import check_verify_runs, n_min

    with pytest.raises(ConfigError) as err:
        check_verify_runs(CertifyConfig(n_verify=100, epsilon=0.01))

    assert str(n_min(0.01, 12, 1e-4 / 8)) in str(err.value)


def test_certificate_summary_states_the_guarantee_and_no_lp_claim(cli_certificate):
    cert = Certificate.load(cli_certificate)
    text = cert.summary()
    assert cert.status == "CERTIFIED", "the fixture's recipe certifies a small budget"
    assert "With confidence at least" in text and "'gradient' sampling attack" in text
    assert "one-shot" in text and "does not adapt" in text, "the report says what the gradient attack is"
    # the l_p -> l_q conversion holds for worst-case balls, not for a sampling certificate
    assert "covers ℓ" not in text and "covered_radius_in" not in cert.doc["context"]
    assert "nearest differently-labelled" in text
    assert "first failing budget" not in text
    if cert.doc["radii"]["delta_fail"] is not None:
        assert "smallest probed budget not certified" in text


def test_the_package_functions_are_not_shadowed_by_modules():
    """``barrierkit.certify`` and ``barrierkit.replay`` stay functions whatever else was imported."""
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules(barrierkit.__path__):
        if mod.name not in ("__main__",):
            importlib.import_module(f"barrierkit.{mod.name}")
    from barrierkit import api, engine

    assert barrierkit.certify is api.certify and barrierkit.replay is api.replay and barrierkit.sample is engine.sample
