"""barrierkit attack / empirical.attack_strength: unsafe fractions per attack and budget, and δ_emp."""
import json

import pytest

from barrierkit.cli import main
from barrierkit.config import ConfigError, FeatureSpec, ModelSpec, SampleConfig, ThreatModel, TrainRecipe
from barrierkit.data import Dataset, make_synthetic, register_dataset
from barrierkit.empirical import attack_strength, check_attacks, clopper_pearson


@pytest.fixture(scope="module")
def tiny():
    d = make_synthetic(n_train=150, n_test=60, dim=13, n_classes=3, spread=0.2, seed=3)
    register_dataset(Dataset("tiny-attack", d.x_train, d.y_train, d.x_test, d.y_test, d.n_classes))
    return SampleConfig(dataset="tiny-attack", model=ModelSpec(hidden=(6,)),
                        recipe=TrainRecipe(steps=30, batch=10, lr=0.5, record_every=10), threat=ThreatModel(rho=0.8),
                        features=FeatureSpec(projection_dim=2, probe_size=16))


def test_counts_labels_and_the_empirical_radius(tiny):
    from barrierkit.engine import clean_runs, sample
    from barrierkit.labels import SafetyRule
    from barrierkit.rng import Purpose, trajectory_seeds

    found = attack_strength(tiny, ["gradient", "unrolled_test"], [0.4, 0.1], 12, 8, backend="torch", progress=False)
    assert found["deltas"] == [0.1, 0.4] and [(r["attack"], r["delta"]) for r in found["rows"]] == [
        ("gradient", 0.1), ("gradient", 0.4), ("unrolled_test", 0.1), ("unrolled_test", 0.4)]
    # the same labels as a certification's, from the same seeds
    clean = clean_runs(tiny, 8, 0, backend="torch", progress=False)
    rule = SafetyRule.from_clean_hits(clean.test_hits, clean.test_size, 0.05)
    runs = sample(tiny, 0.4, trajectory_seeds(0, Purpose.SAMPLE, 12), backend="torch", progress=False)
    assert found["g_clean"] == rule.g_clean and found["rows"][1]["unsafe"] == int(rule.unsafe(runs.test_hits).sum())
    for kind in ("gradient", "unrolled_test"):
        broken = [r["delta"] for r in found["rows"] if r["attack"] == kind and r["unsafe"]]
        assert found["delta_emp"][kind] == (min(broken) if broken else None)
    assert any(r["unsafe"] for r in found["rows"]), "the case must have unsafe runs to test δ_emp"
    for r in found["rows"]:
        assert r["interval_95"] == clopper_pearson(r["unsafe"], r["n"]) and r["fraction"] == r["unsafe"] / r["n"]


@pytest.mark.parametrize("attacks,match", [([], "name at least one"), (["gradient", "gradient"], "named twice"),
                                           (["optimal"], "unknown sampling attack 'optimal'")])
def test_attack_lists_are_checked(attacks, match):
    with pytest.raises(ConfigError, match=f"attacks: .*{match}"):
        check_attacks(attacks)


def test_the_cli_writes_the_results_and_refuses_bad_input_before_any_work(tiny, tmp_path, capsys):
    out = tmp_path / "strength.json"
    args = ["attack", "--dataset", "tiny-attack", "--hidden", "6", "--steps", "30", "--batch", "10", "--lr", "0.5",
            "--record-every", "10", "--rho", "0.8", "--projection-dim", "2", "--probe-size", "16", "--backend", "torch",
            "--n", "6", "--n-clean", "4", "--attacks", "gradient,unrolled", "--deltas", "0.1,0.4", "--quiet"]
    assert main([*args, "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["format"] == "barrierkit.attack-strength/1" and len(doc["rows"]) == 4 and set(doc["delta_emp"]) == {"gradient", "unrolled"}
    assert "δ_emp(gradient)" in capsys.readouterr().out
    for bad, field in ((["--attacks", "gradient,bogus"], "attacks"), (["--deltas", "0.1,x"], "deltas"), (["--deltas", "-0.1"], "delta"),
                       (["--attack", "sign"], "attack"), (["--attacks", "adaptive", "--backend", "numba"], "backend"),
                       (["--n", "0"], "n")):
        path = tmp_path / f"bad-{field}.json"
        assert main([*args, *bad, "--out", str(path)]) == 2, bad
        assert f"{field}:" in capsys.readouterr().err and not path.exists()
