"""The Python API a tool calls: exports, input types it accepts or refuses clearly, files it reads."""
import numpy as np
import pytest
import torch

import barrierkit
from barrierkit.config import ConfigError


def test_the_package_exports_the_configuration_and_the_entry_points():
    from barrierkit import (BarrierConfig, CertifyConfig, FeatureSpec, ModelSpec, SampleConfig, SamplingAttack, ThreatModel,
                            TrainRecipe)
    from barrierkit.api import certify
    from barrierkit.engine import sample
    from barrierkit.trajectories import Trajectories

    assert barrierkit.certify is certify and barrierkit.sample is sample and barrierkit.Trajectories is Trajectories
    assert CertifyConfig().barrier == BarrierConfig() and SampleConfig().model == ModelSpec()
    assert {TrainRecipe, ThreatModel, SamplingAttack, FeatureSpec} <= {getattr(barrierkit, n) for n in barrierkit.__all__}
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        barrierkit.nothing  # noqa: B018


def test_configs_accept_numpy_scalars_and_store_python_numbers():
    from barrierkit import CertifyConfig, ModelSpec, SampleConfig, ThreatModel, TrainRecipe

    sample = SampleConfig(model=ModelSpec(hidden=(np.int64(16),)), recipe=TrainRecipe(steps=np.int32(40), lr=np.float32(0.5)),
                          threat=ThreatModel(rho=np.float64(0.25), domain=(np.float32(0), np.int64(1))))
    config = CertifyConfig(sample=sample, n_verify=np.int64(2000), alpha=np.float64(0.1), seed=np.uint32(7))
    assert type(config.n_verify) is int and type(config.alpha) is float and type(config.seed) is int
    assert type(sample.recipe.steps) is int and sample.model.hidden == (16,) and type(sample.model.hidden[0]) is int
    assert sample.recipe.lr == float(np.float32(0.5)) and sample.threat.domain == (0.0, 1.0)
    assert CertifyConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="steps"):
        TrainRecipe(steps=np.float64(40.0))  # a float is not a step count, numpy or not


def test_kappa_is_one_value_for_the_fit_and_the_program():
    from barrierkit import BarrierConfig, CertifyConfig

    assert CertifyConfig(kappa=0.2).barrier.kappa == 0.2
    assert CertifyConfig(kappa=0.2, barrier={"epochs": 10}).barrier.kappa == 0.2
    with pytest.raises(ConfigError, match="kappa: is 0.2 but barrier.kappa is 0.1"):
        CertifyConfig(kappa=0.2, barrier=BarrierConfig())
    with pytest.raises(ConfigError, match="barrier: must be a BarrierConfig"):
        CertifyConfig(barrier=3)


def test_certify_given_the_wrong_config_type_says_so():
    from barrierkit import SampleConfig

    with pytest.raises(ConfigError, match="config: certify\\(\\) needs a CertifyConfig, got SampleConfig"):
        barrierkit.certify(SampleConfig())


def test_dataset_converts_torch_tensors_and_refuses_what_it_cannot():
    from barrierkit.data import Dataset

    g = torch.Generator().manual_seed(0)
    data = Dataset("tensors", torch.rand(6, 3, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2]),
                   torch.rand(3, 3, generator=g), torch.tensor([2, 1, 0]), n_classes=np.int64(3))
    assert isinstance(data.x_train, np.ndarray) and data.y_train.dtype == np.int64 and type(data.n_classes) is int
    numpy_twin = Dataset("tensors", data.x_train, data.y_train, data.x_test, data.y_test, 3)
    assert numpy_twin.content_hash == data.content_hash
    with pytest.raises(ConfigError, match="y_train: must be a real or integer array, got a torch.bool tensor"):
        Dataset("bad", torch.rand(2, 3), torch.tensor([True, False]), torch.rand(1, 3), torch.tensor([0]), 2)
    with pytest.raises(ConfigError, match="y_train: labels must be integers"):
        Dataset("bad", torch.rand(2, 3), torch.tensor([0.0, 1.0]), torch.rand(1, 3), torch.tensor([0]), 2)


def test_a_registered_dataset_resolves_by_name():
    from barrierkit.data import Dataset, get_dataset, register_dataset

    x = np.linspace(0, 1, 20).reshape(10, 2)
    data = Dataset("my-points", x, np.arange(10) % 2, x[:4], np.arange(4) % 2, 2)
    register_dataset(data)
    assert get_dataset("my-points") is data
    with pytest.raises(ConfigError, match="name: 'digits' is a built-in dataset"):
        register_dataset(Dataset("digits", x, np.arange(10) % 2, x[:4], np.arange(4) % 2, 2))
    with pytest.raises(ConfigError, match="unknown dataset 'nope'; known: digits, synthetic, synthetic-mnist, (.*, )?my-points"):
        get_dataset("nope")


@pytest.fixture(scope="module")
def saved_runs(tmp_path_factory, small_data):
    from barrierkit.config import FeatureSpec, ModelSpec, SampleConfig, TrainRecipe
    from barrierkit.engine import sample
    from barrierkit.rng import Purpose, trajectory_seeds

    config = SampleConfig(dataset="unused", model=ModelSpec(hidden=(4,)), recipe=TrainRecipe(steps=4, batch=4, record_every=2),
                          features=FeatureSpec(projection_dim=2, probe_size=8))
    runs = sample(config, 0.1, trajectory_seeds(2, Purpose.SAMPLE, 3), data=small_data, backend="torch", progress=False)
    path = tmp_path_factory.mktemp("runs") / "runs.npz"
    runs.save(path)
    return runs, path


def test_trajectories_round_trip(saved_runs):
    from barrierkit.trajectories import Trajectories

    runs, path = saved_runs
    back = Trajectories.load(path)
    assert np.array_equal(back.features, runs.features) and np.array_equal(back.test_hits, runs.test_hits)
    assert back.meta == runs.meta and back.delta == runs.delta


@pytest.mark.parametrize("damage", ["truncate-10", "truncate-half", "truncate-200", "flip-middle", "flip-end", "empty", "text"])
def test_a_damaged_trajectories_file_raises_one_clear_error_naming_it(saved_runs, tmp_path, damage):
    from barrierkit.trajectories import Trajectories, TrajectoriesError

    _, path = saved_runs
    blob = bytearray(path.read_bytes())
    if damage.startswith("truncate"):
        keep = {"truncate-10": 10, "truncate-half": len(blob) // 2, "truncate-200": len(blob) - 200}[damage]
        blob = blob[:keep]
    elif damage.startswith("flip"):
        at = len(blob) // 2 if damage == "flip-middle" else len(blob) - 30
        blob[at:at + 8] = bytes(b ^ 0xFF for b in blob[at:at + 8])
    elif damage == "empty":
        blob = bytearray()
    else:
        blob = bytearray(b"features,test_hits\n1,2\n")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(bytes(blob))
    with pytest.raises(TrajectoriesError, match=str(bad)):
        Trajectories.load(bad)


def test_a_missing_trajectories_file_names_it(tmp_path):
    from barrierkit.trajectories import Trajectories, TrajectoriesError

    with pytest.raises(TrajectoriesError, match="missing.npz: cannot read trajectories: No such file"):
        Trajectories.load(tmp_path / "missing.npz")


@pytest.mark.parametrize("table,key", [({"sample": {"recipe": {"lr": -1.0}}}, "sample.recipe.lr"),
                                       ({"barrier": {"width": 0}}, "barrier.width"),
                                       ({"sample": {"features": {"seed": -1}}}, "sample.features.seed"),
                                       ({"sample": {"attack": {"kind": "optimal"}}}, "sample.attack.kind"),
                                       ({"kappa": 1.5}, "kappa")])
def test_a_bad_setting_from_a_table_names_its_dotted_key(table, key):
    from barrierkit import CertifyConfig

    with pytest.raises(ConfigError) as err:
        CertifyConfig.from_dict(table)
    assert err.value.field == key


def test_solver_names_are_case_insensitive_everywhere():
    from barrierkit import CertifyConfig

    assert CertifyConfig(solver="highs", mu=0.0).solver == "HIGHS" == CertifyConfig.from_dict({"solver": " Highs ", "mu": 0}).solver


def test_dataset_converts_low_precision_float_tensors_to_float64():
    from barrierkit.data import Dataset

    x = torch.linspace(0, 1, 12, dtype=torch.bfloat16).reshape(4, 3)
    data = Dataset("bf16", x, torch.tensor([0, 1, 0, 1]), x[:2], torch.tensor([0, 1]), 2)
    assert data.x_train.dtype == np.float64 and np.allclose(data.x_train, x.to(torch.float64).numpy())
