"""Configuration files: ``--config run.toml`` and ``--dump-config``, and the Python functions
behind them (barrierkit.config_file): an exact round trip, options overriding the file, and one
line with exit status 2 naming the file and the key for every kind of bad file."""
import os

import numpy as np
import pytest

from barrierkit import cli
from barrierkit.cli import main
from barrierkit.config import (BarrierConfig, CertifyConfig, ConfigError, FeatureSpec, ModelSpec, SampleConfig,
                               SamplingAttack, ThreatModel, TrainRecipe)
from barrierkit.config_file import ConfigFileError, dump_config, load_config, tomllib
from barrierkit.outputs import lock_path
from conftest import TINY_CERTIFY, no_work

CHANGED = CertifyConfig(
    sample=SampleConfig(dataset="synthetic", model=ModelSpec(hidden=(16, 8)),
                        recipe=TrainRecipe(steps=60, batch=16, lr=0.05, momentum=0.5, weight_decay=1e-3, record_every=20,
                                           dtype="float64"),
                        threat=ThreatModel(norm="2", rho=0.25, domain=(-1.0, 1.0)),
                        attack=SamplingAttack(kind="gradient", sign_noise=0.125, reference_seed=7),
                        features=FeatureSpec(projection_dim=4, probe_size=64, seed=3), memory_budget_mb=512.0),
    alpha=0.1, epsilon=0.3, beta=0.01, n_verify=4321, n_train=50, n_clean=30, n_pool=20, pool_delta=0.2, pool_rho=0.75,
    max_probes=3, delta_start=0.02, delta_hi=0.4, rel_tol=0.1, kappa=0.2, tau=1e-6, mu=0.0, w_bound=50.0, solver="HIGHS",
    seed=2**63 - 1, barrier=BarrierConfig(width=12, out_dim=4, epochs=30, lr=0.02, final_lr_fraction=0.5, margin=0.1,
                                          kappa=0.2, weight_decay=0.0, seed=5),
)
"""Every setting away from its default (and every optional one set)."""

TINY = TINY_CERTIFY[1:]


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def built(*argv):
    """The CertifyConfig the command line ``certify ARGV`` builds, without running anything."""
    return cli.certify_config_from_args(cli.build_parser().parse_args(["certify", *argv]))


def one_line_error(capsys, *needles):
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    return err


# ------------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("config", [CertifyConfig(), CHANGED], ids=["defaults", "every-setting-changed"])
def test_a_dumped_config_loads_back_identical(tmp_path, config):
    path = write(tmp_path / "run.toml", dump_config(config))
    loaded = load_config(path)
    assert loaded == config and loaded.to_dict() == config.to_dict()
    assert dump_config(loaded) == dump_config(config)


def test_unset_optional_values_are_left_out_and_read_back_unset(tmp_path):
    text = dump_config(CertifyConfig())
    table = tomllib.loads(text)
    assert "pool_delta" not in table and "delta_hi" not in table and "memory_budget_mb" not in table["sample"]
    assert "pool_delta" in text.split("\n", 2)[1], "the header says which keys were left out"
    loaded = load_config(write(tmp_path / "run.toml", text))
    assert loaded.pool_delta is None and loaded.delta_hi is None and loaded.sample.memory_budget_mb is None
    set_ = tomllib.loads(dump_config(CHANGED))
    assert set_["pool_delta"] == 0.2 and set_["delta_hi"] == 0.4 and set_["sample"]["memory_budget_mb"] == 512.0


def test_the_file_is_nested_like_to_dict_and_the_barrier_kappa_follows_kappa(tmp_path):
    table = tomllib.loads(dump_config(CHANGED))
    assert set(table["sample"]) == {"dataset", "model", "recipe", "threat_kind", "threat", "attack", "evasion", "features", "search_budget",
                                    "memory_budget_mb"}
    assert table["sample"]["recipe"]["steps"] == 60 and table["barrier"]["width"] == 12
    assert "kappa" not in table["barrier"], "written once, as the certification's kappa"
    path = write(tmp_path / "run.toml", "kappa = 0.3\n[barrier]\nwidth = 4\n")
    assert load_config(path).barrier == BarrierConfig(width=4, kappa=0.3)


def test_numpy_scalars_dump_and_load_back(tmp_path):
    config = CertifyConfig(
        sample=SampleConfig(model=ModelSpec(hidden=(np.int64(16),)),
                            recipe=TrainRecipe(steps=np.int32(80), lr=np.float32(0.25), record_every=np.int64(20)),
                            threat=ThreatModel(rho=np.float64(0.5), domain=(np.float32(0), np.float64(1))),
                            memory_budget_mb=np.float64(100.0)),
        alpha=np.float64(0.1), n_verify=np.int64(3000), pool_delta=np.float32(0.5), seed=np.uint32(9),
        barrier={"width": np.int16(8), "lr": np.float64(0.02)})
    assert type(config.n_verify) is int and type(config.sample.recipe.lr) is float
    loaded = load_config(write(tmp_path / "run.toml", dump_config(config)))
    assert loaded == config and loaded.barrier.width == 8


def test_a_sample_config_round_trips_too(tmp_path):
    config = CHANGED.sample
    path = write(tmp_path / "sample.toml", dump_config(config))
    assert "[recipe]" in path.read_text() and "[sample" not in path.read_text()
    assert load_config(path, SampleConfig) == config


def test_a_number_where_a_float_is_expected_may_be_written_as_an_integer(tmp_path):
    config = load_config(write(tmp_path / "run.toml", "w_bound = 20\n[sample.recipe]\nlr = 1\n"))
    assert config.w_bound == 20.0 and type(config.w_bound) is float and type(config.sample.recipe.lr) is float


# ----------------------------------------------------------------------- the command line


def test_dump_config_prints_what_config_reads_back_and_does_no_work(tmp_path, capsys, monkeypatch):
    no_work(monkeypatch)
    out = tmp_path / "c.json"
    argv = ["certify", "--kappa", "0.2", "--mu", "0", "--solver", "highs", "--pool-delta", "0.3", "--barrier-width", "16",
            "--hidden", "64,32", "--domain", "0,2", "--n-verify", "3000", "--feature-seed", "4", "--out", str(out)]
    assert main([*argv, "--dump-config"]) == 0
    text = capsys.readouterr().out
    assert not out.exists() and not os.path.exists(lock_path(str(out))), "nothing written, nothing locked"
    path = write(tmp_path / "run.toml", text)
    expected = built(*argv[1:])
    assert load_config(path) == expected
    assert expected.barrier.kappa == 0.2 and expected.barrier.width == 16 and expected.sample.features.seed == 4
    assert main(["certify", "--config", str(path), "--dump-config"]) == 0
    assert capsys.readouterr().out == text, "the dump of the loaded file is the same text"
    assert built("--config", str(path)) == expected


def test_options_override_the_file(tmp_path):
    path = write(tmp_path / "run.toml", dump_config(CHANGED))
    config = built("--config", str(path), "--rho", "0.4", "--kappa", "0.3", "--steps", "120", "--barrier-epochs", "7")
    assert config.sample.threat.rho == 0.4 and config.sample.recipe.steps == 120 and config.barrier.epochs == 7
    assert config.kappa == config.barrier.kappa == 0.3, "--kappa sets the barrier's kappa too"
    assert config.sample.recipe.record_every == 20 and config.n_verify == 4321 and config.solver == "HIGHS", "the rest from the file"
    assert built("--config", str(path)) == CHANGED


def test_options_may_complete_a_file_that_is_not_valid_alone(tmp_path, capsys, monkeypatch):
    path = write(tmp_path / "run.toml", 'solver = "HIGHS"\n')
    assert built("--config", str(path), "--mu", "0").solver == "HIGHS"
    no_work(monkeypatch)
    assert main(["certify", "--config", str(path), "--dump-config"]) == 2
    one_line_error(capsys, str(path), "solver", "mu = 0")
    assert main(["certify", "--config", str(path), "--mu", "0.5", "--dump-config"]) == 2
    one_line_error(capsys, "solver", str(path), "with the options given")


def test_the_file_keys_left_out_take_their_field_defaults(tmp_path):
    path = write(tmp_path / "run.toml", "n_verify = 5000\n[sample.recipe]\nsteps = 80\n")
    assert built("--config", str(path)) == CertifyConfig(n_verify=5000, sample=SampleConfig(recipe=TrainRecipe(steps=80)))


def test_sample_reads_and_dumps_its_own_config(tmp_path, capsys, monkeypatch):
    no_work(monkeypatch)
    assert main(["sample", "--dump-config", "--hidden", "8", "--steps", "20", "--record-every", "10"]) == 0
    text = capsys.readouterr().out
    path = write(tmp_path / "sample.toml", text)
    assert load_config(path, SampleConfig) == SampleConfig(model=ModelSpec(hidden=(8,)),
                                                           recipe=TrainRecipe(steps=20, record_every=10))
    args = cli.build_parser().parse_args(["sample", "--config", str(path), "--lr", "0.5", "--delta", "0.1"])
    assert cli.config_from_args(args, SampleConfig).recipe == TrainRecipe(steps=20, record_every=10, lr=0.5)
    assert main(["sample", "--config", str(write(tmp_path / "c.toml", dump_config(CHANGED))), "--dump-config"]) == 2
    one_line_error(capsys, "c.toml", "alpha", "unknown key in the top-level table")


def test_certify_refuses_an_infeasible_n_verify_before_anything(tmp_path, capsys, monkeypatch):
    no_work(monkeypatch)
    for extra in ([], ["--dump-config"]):
        out = tmp_path / "c.json"
        assert main(["certify", "--n-verify", "100", "--epsilon", "0.01", "--out", str(out), *extra]) == 2
        one_line_error(capsys, "n_verify", "need N_v >= 3236")
        assert list(tmp_path.iterdir()) == []
    path = write(tmp_path / "run.toml", "n_verify = 100\nepsilon = 0.01\n")
    assert main(["certify", "--config", str(path), "--dump-config"]) == 2
    one_line_error(capsys, "n_verify")


# ------------------------------------------------------------------------------ bad files


@pytest.mark.parametrize("text,needles", [
    ("alpah = 0.1\n", ["alpah", "unknown key in the top-level table"]),
    ("[sample.recipe]\nstepz = 3\n", ["sample.recipe.stepz", "unknown key in table [sample.recipe]", "record_every"]),
    ("[samples]\ndataset = 'digits'\n", ["samples", "unknown key in the top-level table"]),
    ("[barrier]\nkapa = 0.1\n", ["barrier.kapa", "table [barrier]"]),
    ('alpha = "0.1"\n', ["alpha", "must be a number", "a string"]),
    ("n_verify = 2000.0\n", ["n_verify", "must be an integer", "a float"]),
    ("seed = true\n", ["seed", "must be an integer", "a boolean"]),
    ("[sample]\nthreat = 3\n", ["sample.threat", "must be a table"]),
    ("[sample.recipe.lr]\nx = 1\n", ["sample.recipe.lr", "must be a number", "a table"]),
    ("[sample.model]\nhidden = 32\n", ["sample.model.hidden", "must be an array"]),
    ("[sample.model]\nhidden = [32, 'a']\n", ["sample.model.hidden[1]", "must be an integer"]),
    ("[sample.threat]\ndomain = [0, 1, 2]\n", ["sample.threat.domain", "array of 2 values"]),
    ("pool_delta = 1979-05-27\n", ["pool_delta", "a date or time"]),
    ("alpha = 0.1\nbeta = \n", ["invalid TOML", "line 2"]),
    ("alpha = 0.1\nalpha = 0.2\n", ["invalid TOML", "line 2"]),
    ("[sample.threat]\nrho = 1.5\n", ["rho", "must be in [0, 1]"]),
    ("kappa = 0.2\n[barrier]\nkappa = 0.3\n", ["kappa", "barrier.kappa is 0.3"]),
])
def test_a_bad_file_is_one_line_naming_the_file_and_the_key_and_writes_nothing(tmp_path, capsys, monkeypatch, text,
                                                                              needles):
    no_work(monkeypatch)
    path = write(tmp_path / "run.toml", text)
    out = tmp_path / "c.json"
    assert main(["certify", *TINY, "--config", str(path), "--out", str(out)]) == 2
    one_line_error(capsys, str(path), *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.toml"]
    with pytest.raises(ConfigFileError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: ") and isinstance(err.value, ConfigError)


@pytest.mark.parametrize("make,needle", [
    (lambda d: d / "missing.toml", "cannot read: No such file"),
    (lambda d: d, "cannot read: Is a directory"),
    (lambda d: (d / "bin.toml").write_bytes(b"\xff\xfe\x00") and d / "bin.toml", "not UTF-8 text"),
])
def test_an_unreadable_file_is_bad_input(tmp_path, capsys, monkeypatch, make, needle):
    no_work(monkeypatch)
    folder = tmp_path / "in"
    folder.mkdir()
    path = make(folder)
    assert main(["certify", "--config", str(path), "--out", str(tmp_path / "c.json")]) == 2
    one_line_error(capsys, str(path), needle)
    assert not (tmp_path / "c.json").exists()


def test_an_output_or_log_that_is_the_config_file_is_refused(tmp_path, capsys, monkeypatch):
    no_work(monkeypatch)
    path = write(tmp_path / "run.toml", dump_config(CertifyConfig(n_verify=3000)))
    before = path.read_bytes()
    assert main(["certify", "--config", str(path), "--out", str(path)]) == 2
    one_line_error(capsys, "out", "same file as config")
    assert main(["certify", "--config", str(path), "--log-file", str(path)]) == 2
    one_line_error(capsys, "log-file", "same file as config")
    assert main(["sample", "--delta", "0.1", "--config", str(write(tmp_path / "s.toml", "")), "--summary",
                 str(tmp_path / "s.toml")]) == 2
    one_line_error(capsys, "summary", "same file as config")
    assert path.read_bytes() == before

