"""verify re-derives every derivable field of a certificate; --replay re-runs its runs.

Each forgery below edits a certificate and recomputes its digest, as a forger would; every one
must be caught. A digest is a checksum, not a signature, so the checks are what stands between
a user and a self-contradicting document.
"""
import json
import os

import numpy as np
import pytest

from barrierkit import pac
from barrierkit.certificate import Certificate
from barrierkit.cli import main
from barrierkit.labels import SafetyRule
from barrierkit.outcomes import label_fields



def forged(cli_certificate, tmp_path, edit, name="forged.json"):
    """The fixture's certificate with ``edit(doc)`` applied and the digest recomputed."""
    cert = Certificate.load(cli_certificate)
    edit(cert.doc)
    path = tmp_path / name
    cert.save(path)
    return path


def first(doc, status):
    return next(p for p in doc["probes"] if p["status"] == status)


def certified(doc):
    return max((p for p in doc["probes"] if p["status"] == "CERTIFIED"), key=lambda p: p["delta"])


@pytest.mark.portability  # the end-to-end certificate verifies under every CPU capability (tests/test_portability.py)
def test_the_fixture_has_what_the_forgeries_need(cli_certificate):
    doc = Certificate.load(cli_certificate).doc
    assert doc["status"] == "CERTIFIED" and first(doc, "REFUTED")["witness"] is not None
    assert Certificate.load(cli_certificate).check() == []


def promote_refuted(doc):
    """A REFUTED probe made CERTIFIED with an epsilon and its counts zeroed; its hit counts, witness
    and accuracy-drop summary (max above alpha) stay inside."""
    p = first(doc, "REFUTED")
    p.update(status="CERTIFIED", n_unsafe_verify=0, n_unsafe_train=0,
             epsilon=pac.epsilon(p["n_verify"], p["d"], p["beta"]))
    p["direct"]["passed"] = True


def tighten_alpha(doc):
    doc["config"]["alpha"] = doc["alpha"] = 0.01


def change_d_keep_w(doc):
    for p in doc["probes"]:
        p["d"] += 1
    doc["d"] += 1


def change_out_dim(doc):
    doc["config"]["barrier"]["out_dim"] += 1


def forge_a_posteriori(doc):
    p = certified(doc)
    p["epsilon_a_posteriori"] = doc["epsilon_a_posteriori"] = 1e-4


def inflate_context(doc):
    doc["context"]["radius_over_median_distance"] *= 2


def inflate_context_radius(doc):
    doc["context"]["radius"] *= 2


def change_g_clean_once(doc):
    doc["g_clean"] += 0.01


def change_rho_in_config_only(doc):
    doc["config"]["sample"]["threat"]["rho"] = 0.1


def witness_not_unsafe(doc):
    p = first(doc, "REFUTED")
    w = p["witness"]
    w["test_hits"] = int(doc["clean_accuracy"]["median_hits"])
    w["test_accuracy"] = w["test_hits"] / doc["test_size"]
    w["accuracy_drop"] = 0.0


def witness_seeds(doc):
    first(doc, "REFUTED")["witness"]["seeds"]["poison"] += 1


def unsafe_hit_in_certified(doc):
    certified(doc)["hits"]["verify"][3] = 0


def lower_drop_summary(doc):
    first(doc, "REFUTED")["verify_accuracy_drop"]["max"] = 0.01


def pool_count(doc):
    doc["pool"]["n_unsafe"] -= 1


def drop_last_probe(doc):
    doc["probes"].pop()


def shift_a_budget(doc):
    doc["probes"][-1]["delta"] *= 1.01


def forge_eta_check(doc):
    p = certified(doc)
    p["eta_check"] = doc["eta_check"] = -1.0


def forge_max_margin(doc):
    """The largest stored margin (the one eta_check is the max of) lowered."""
    v = certified(doc)["verdict"]
    top = max(v["trajectory_margins"] + [v["pool_margin"]])
    v["trajectory_margins"] = [m - 0.5 if m == top else m for m in v["trajectory_margins"]]
    if v["pool_margin"] == top:
        v["pool_margin"] -= 0.5


def flip_status(doc):
    doc["status"] = "REFUTED"


def inflate_delta_cert(doc):
    doc["radii"]["delta_cert"] *= 2


def claim_whole_domain(doc):
    doc["radii"]["whole_domain"] = True


def inflate_throughput(doc):
    doc["throughput"]["trajectory_steps_per_s"] *= 2


def forge_direct_epsilon(doc):
    doc["probes"][0]["direct"]["epsilon"] = 1e-6


def renumber_probe(doc):
    doc["probes"][0]["index"] = 5


def hide_contradiction(doc):
    certified(doc)["train_consistency"]["rate_lower_bound"] = -1.0


def add_warning(doc):
    doc["warnings"].append("nothing to see")


def impossible_chance(doc):
    doc["chance_hits"] = doc["test_size"] + 1


def forge_top_epsilon_direct(doc):
    doc["epsilon_direct"] /= 2


def forge_clean_hits(doc):
    doc["clean_accuracy"]["hits"][0] = 0


def forge_param_count(doc):
    doc["param_count"] += 1


def forge_support(doc):
    p = certified(doc)
    p["n_support"] = doc["n_support"] = p["n_support"] + 1


def threat_model_only(doc):
    doc["threat_model"]["norm"] = "2"


def break_c4(doc):
    certified(doc)["verdict"]["c"] = 1.0


def change_reason(doc):
    doc["reason"] = "trust me"


def forge_test_size(doc):
    """Counts read against a made-up test-set size: g_c and every drop change (quick verify loads
    the dataset and sees 360 points)."""
    doc["test_size"] = 400
    doc["g_clean"] = doc["clean_accuracy"]["median_hits"] / 400


def forge_chance_hits(doc):
    doc["chance_hits"] = 36 if doc["chance_hits"] != 36 else 37


def forge_input_dim_consistently(doc):
    from barrierkit.models import MLPShape

    doc["input_dim"] = 65
    shape = MLPShape(65, tuple(doc["config"]["sample"]["model"]["hidden"]), doc["n_classes"])
    doc["param_count"], doc["model_hash"], doc["context"]["input_dim"] = shape.param_count, shape.spec_hash, 65


def config_names_another_dataset(doc):
    doc["config"]["sample"]["dataset"] = "synthetic"


def add_a_claim(doc):
    doc["delta_certified"] = 0.9


def consistency_on_a_refuted_probe(doc):
    first(doc, "REFUTED")["train_consistency"] = {"n_unsafe": 1, "n": 80, "beta": 0.01, "rate_lower_bound": 0.5,
                                                  "contradicts": True}


def forge_eta_star(doc):
    p = certified(doc)
    p["eta_star"] = doc["eta_star"] = -5.0


def huge_w(doc):
    certified(doc)["verdict"]["w"][0] = 1e300


def highs_fell_back(doc):
    v = certified(doc)["verdict"]
    v["solver"], v["fell_back"] = "HIGHS", True


def forge_row_count(doc):
    certified(doc)["verdict"]["n_rows_total"] += 1


def forge_psi_backend(doc):
    certified(doc)["psi_backend"] = "triton"


def seed_as_float(doc):
    w = first(doc, "REFUTED")["witness"]["seeds"]
    w["poison"] = float(w["poison"])


def count_as_float(doc):
    doc["n_verify"] = float(doc["n_verify"])


def extra_hits_split(doc):
    doc["probes"][0]["hits"]["holdout"] = [1, 2]


def extra_trunk_field(doc):
    certified(doc)["barrier"]["trunk"]["audited"] = True


def invented_violation(doc):
    b = certified(doc)["barrier"]
    b["train_violations"]["C5"] = b["trunk"]["train_violations"]["C5"] = 0.0


def train_loss_as_text(doc):
    certified(doc)["barrier"]["train_loss"] = "perfect"


def extra_timing(doc):
    doc["timings"]["audit_s"] = 1.0


def extra_version(doc):
    doc["versions"]["audited_by"] = "someone"


def forge_features_by(doc):
    doc["features_by"] = "oracle"


def forge_device(doc):
    doc["device"] = "cpu, audited"


def emp_cell(doc, attack="gradient"):
    return next(r for r in doc["empirical"]["rows"] if r["attack"] == attack)


def forge_emp_count(doc):
    emp_cell(doc)["unsafe"] += 1


def forge_emp_comparison(doc):
    doc["empirical"]["comparison"]["verdict"] = "strongest" if doc["empirical"]["comparison"]["verdict"] != "strongest" else "broken"


def drop_emp_cell(doc):
    doc["empirical"]["rows"].pop()


def forge_emp_radius(doc):
    doc["empirical"]["delta_emp"]["sign"] = 1e-9


def emp_without_config(doc):
    doc["config"]["emp_attacks"] = None


def emp_hits_too_few(doc):
    emp_cell(doc)["hits"].pop()


def emp_backend(doc):
    emp_cell(doc)["backend"] = "oracle"


def safe_hits_in_emp(doc):
    """An unsafe δ_emp run made safe: the cell's count and interval no longer follow."""
    r = max(doc["empirical"]["rows"], key=lambda r: r["unsafe"])
    i = min(range(len(r["hits"])), key=lambda i: r["hits"][i])
    r["hits"][i] = doc["test_size"]


FORGERIES = [
    (forge_emp_count, "empirical.rows[0].unsafe"), (forge_emp_comparison, "empirical.comparison"),
    (drop_emp_cell, "empirical.rows are the cells"), (forge_emp_radius, "empirical.delta_emp.sign"),
    (emp_without_config, "empirical is given"), (emp_hits_too_few, "emp_runs"), (emp_backend, "backend 'oracle'"),
    (safe_hits_in_emp, "empirical.rows"),
    (seed_as_float, "witness.seeds.poison"), (count_as_float, "n_verify"), (extra_hits_split, "hits has fields"),
    (extra_trunk_field, "barrier.trunk has fields"), (invented_violation, "train_violations has fields"),
    (train_loss_as_text, "barrier.train_loss"), (extra_timing, "timings has fields"), (extra_version, "versions has fields"),
    (forge_features_by, "features_by"), (forge_device, "device"),
    (forge_test_size, "test_size"), (forge_chance_hits, "chance_hits"), (forge_input_dim_consistently, "input_dim"),
    (config_names_another_dataset, "data_hash"), (add_a_claim, "should not have"),
    (consistency_on_a_refuted_probe, "should not have"), (forge_eta_star, "eta_star"), (huge_w, "box"),
    (highs_fell_back, "solver"), (forge_row_count, "n_rows_total"), (forge_psi_backend, "psi_backend"),
    (promote_refuted, "n_unsafe_verify"), (tighten_alpha, "n_unsafe"), (change_d_keep_w, "d is"),
    (change_out_dim, "w has"), (forge_a_posteriori, "epsilon_a_posteriori"), (inflate_context, "context"),
    (inflate_context_radius, "context.radius"), (change_g_clean_once, "g_clean"), (change_rho_in_config_only, "threat_model"),
    (witness_not_unsafe, "witness"), (witness_seeds, "witness.seeds.poison"), (unsafe_hit_in_certified, "n_unsafe_verify"),
    (lower_drop_summary, "verify_accuracy_drop.max"), (pool_count, "pool.n_unsafe"), (drop_last_probe, "search"),
    (shift_a_budget, "search path"), (forge_eta_check, "eta_check"), (forge_max_margin, "eta_check"), (flip_status, "status"),
    (inflate_delta_cert, "radii.delta_cert"), (claim_whole_domain, "radii.whole_domain"),
    (inflate_throughput, "throughput"), (forge_direct_epsilon, "direct.epsilon"), (renumber_probe, "indices"),
    (hide_contradiction, "train_consistency"), (add_warning, "warnings"), (impossible_chance, "chance_hits"),
    (forge_top_epsilon_direct, "epsilon_direct"), (forge_clean_hits, "clean_accuracy"), (forge_param_count, "param_count"),
    (forge_support, "n_support"), (threat_model_only, "threat_model"), (break_c4, "K*c"), (change_reason, "reason"),
]


@pytest.mark.parametrize("edit,needle", FORGERIES, ids=[f.__name__ for f, _ in FORGERIES])
def test_verify_catches_every_forgery_with_a_recomputed_digest(cli_certificate, tmp_path, capsys, edit, needle):
    path = forged(cli_certificate, tmp_path, edit)
    assert main(["verify", str(path)]) == 6
    err = capsys.readouterr().err
    assert "FAILED" in err and needle in err, err
    assert main(["report", str(path)]) == 6, "report refuses what verify refuses"
    assert capsys.readouterr().err == err.replace("barrierkit verify", "barrierkit report")


def test_an_edit_without_a_new_digest_is_a_digest_mismatch(cli_certificate, tmp_path, capsys):
    doc = json.loads(cli_certificate.read_text())
    doc["g_clean"] += 0.01
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(doc))
    assert main(["verify", str(path)]) == 6
    assert "digest mismatch" in capsys.readouterr().err


@pytest.mark.parametrize("content,needle", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "binary"),
    (b"{not json", "invalid JSON"),
    (b'{"format": "barrierkit.certificate/3", "g_clean": NaN}', "NaN"),
    (b'[1, 2, 3]', "not a barrierkit certificate"),
    (b'{"format": "barrierkit.certificate/1", "status": "CERTIFIED"}', "before safety labels were exact"),
    (b'{"format": "barrierkit.certificate/2", "status": "CERTIFIED"}', "before the unsafe pool's rule"),
    (b'{"format": "something/else"}', "not a barrierkit certificate"),
    (b'{"format": "barrierkit.certificate/99"}', "another barrierkit version"),
    (b'{"format": "barrierkit.certificate/3", "epsilon": 1e999}', "out of the range"),
    (b'{"format": "barrierkit.certificate/3", "epsilon": 0.0001, "epsilon": 0.5}', "more than once"),
    (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
])
@pytest.mark.parametrize("command", ["verify", "report"])
def test_unreadable_files_are_one_line_naming_the_file(tmp_path, capsys, content, needle, command):
    path = tmp_path / "cert.json"
    path.write_bytes(content)
    assert main([command, str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and needle in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["verify", "report"])
def test_missing_file_and_folder_are_bad_input(tmp_path, capsys, command):
    assert main([command, str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
    assert main([command, str(tmp_path)]) == 2
    assert str(tmp_path) in capsys.readouterr().err


@pytest.mark.parametrize("edit", [lambda d: d.pop("probes"), lambda d: d.__setitem__("n_classes", 0),
                                  lambda d: d.__setitem__("test_size", 10 ** 400), lambda d: d.__setitem__("versions", None),
                                  lambda d: d["probes"][0].__setitem__("delta", 10 ** 400),
                                  lambda d: d["probes"][0]["verdict"].__setitem__("w", [10 ** 400] * 8)])
def test_a_malformed_document_is_a_failed_check_not_a_crash(cli_certificate, tmp_path, capsys, edit):
    path = forged(cli_certificate, tmp_path, edit)
    assert main(["report", str(path)]) == 6
    err = capsys.readouterr().err
    assert "FAILED" in err and "internal error" not in err


# ---------------------------------------------------------------------------------------- replay


def consistent_hits_forgery(doc):
    """One verification run of the certified probe credited one more correct point, with every
    derived field updated to match: quick verify cannot see it; only re-running the run can."""
    p = certified(doc)
    rule = SafetyRule.from_clean_hits(doc["clean_accuracy"]["hits"], doc["test_size"], doc["alpha"])
    i = int(np.argmin(p["hits"]["verify"]))
    p["hits"]["verify"][i] += 1
    p.update(label_fields(rule, {s: np.array(h) for s, h in p["hits"].items()}, p["beta"], doc["epsilon_requested"]))


def consistent_support_forgery(doc):
    """No support scenarios, so a smaller a-posteriori epsilon: only solving again shows it."""
    p = certified(doc)
    p["verdict"]["support_indices"] = []
    p["n_support"] = doc["n_support"] = 0
    p["epsilon_a_posteriori"] = doc["epsilon_a_posteriori"] = pac.epsilon_a_posteriori(p["n_verify"], 0, p["beta"], p["d"])


def consistent_margin_forgery(doc):
    """A margin that is not the largest, moved: eta_check is unchanged, so quick verify passes."""
    v = certified(doc)["verdict"]
    i = int(np.argmin(v["trajectory_margins"]))
    v["trajectory_margins"][i] -= 0.01


@pytest.mark.portability
def test_verify_replay_reproduces_the_certificate(cli_certificate, capsys):
    assert main(["verify", "--replay", str(cli_certificate)]) == 0
    out = capsys.readouterr()
    assert "REPLAY OK" in out.out and "largest margin difference 0," in out.out
    assert "replay: probe 1" in out.err, "replay logs its progress"


def consistent_emp_hits_forgery(doc):
    """A δ_emp run that did better than stored, by one test point: safe either way, the median unmoved."""
    r = emp_cell(doc)
    i = max(range(len(r["hits"])), key=lambda i: r["hits"][i])
    assert r["hits"][i] < doc["test_size"]
    r["hits"][i] += 1


@pytest.mark.parametrize("edit,needle", [
    (consistent_hits_forgery, "verify split: run"),
    (consistent_emp_hits_forgery, "empirical gradient δ="),
    (consistent_margin_forgery, "the margin of verification run"),
    (consistent_support_forgery, "support scenarios"),
])
def test_verify_replay_catches_what_quick_verify_cannot(cli_certificate, tmp_path, capsys, edit, needle):
    path = forged(cli_certificate, tmp_path, edit)
    assert main(["verify", str(path)]) == 0, "the forgery is self-consistent"
    capsys.readouterr()
    assert main(["verify", "--replay", "--quiet", str(path)]) == 6
    err = capsys.readouterr().err
    assert "REPLAY FAILED" in err and needle in err, err


def test_verify_replay_catches_a_barrier_not_fitted_on_the_training_split(tmp_path, capsys, monkeypatch):
    """Every field is consistent (the probe computed rows, solution and margins from this barrier),
    but the barrier was fitted on the training runs in another order: only fitting it again shows it."""
    import barrierkit.probe
    from conftest import CLI_CERTIFY_ARGS

    real = barrierkit.probe.fit_barrier
    monkeypatch.setattr(barrierkit.probe, "fit_barrier", lambda f, u, pool, cfg: real(f[::-1].copy(), u[::-1].copy(), pool, cfg))
    out = tmp_path / "c.json"
    args = [a for a in CLI_CERTIFY_ARGS if a != "4"]
    args[args.index("--max-probes") + 1:args.index("--max-probes") + 1] = ["1"]
    assert main([*args, "--out", str(out)]) == 0
    monkeypatch.setattr(barrierkit.probe, "fit_barrier", real)
    assert main(["verify", str(out)]) == 0
    assert main(["verify", "--replay", "--quiet", str(out)]) == 6
    assert "not the stored one" in capsys.readouterr().err


def test_verify_replay_on_another_kind_of_cpu_compares_statuses(cli_certificate, tmp_path, capsys):
    path = forged(cli_certificate, tmp_path, lambda d: d["versions"].__setitem__("cpu", "another CPU"))
    assert main(["verify", "--replay", str(path)]) == 0
    out = capsys.readouterr()
    assert "was made on another CPU" in out.err and "on another kind of CPU, every probe's status follows" in out.out


def test_certificate_is_owner_only_and_loads_back(cli_certificate):
    assert (os.stat(cli_certificate).st_mode & 0o077) == 0
    cert = Certificate.load(cli_certificate)
    assert Certificate(json.loads(json.dumps(cert.doc))).to_json() == cert.to_json()
