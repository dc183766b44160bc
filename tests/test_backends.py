"""The backend contract: one record per backend, resolved once, saying what it supports."""
import numpy as np
import pytest
import torch

from barrierkit import backends
from barrierkit.backends import BACKENDS, Backend, StepProblem, get, resolve
from barrierkit.config import ConfigError, SampleConfig, SamplingAttack, ThreatModel, TrainRecipe
from barrierkit.rng import Purpose, trajectory_seeds


@pytest.mark.parametrize("name", BACKENDS)
def test_every_backend_is_a_record_named_as_registered(name):
    if name == "numba":
        pytest.importorskip("numba")
    record = get(name)
    assert isinstance(record, Backend) and record.name == name
    assert record.describe()["backend"] == name and record.describe()["precision"] == record.precision
    caps = record.capabilities
    assert caps.dtypes <= {"float32", "float64"} and caps.devices <= {"cpu", "cuda"} and "mlp" in caps.families
    assert callable(record.train_segment) and callable(record.feature_map)


def test_auto_resolves_once_to_a_record_and_records_pass_through():
    cpu = torch.device("cpu")
    auto = resolve("auto", cpu, "float32")
    assert auto.name == backends.cpu_default()
    assert resolve(auto, cpu, "float32") is auto
    assert resolve("auto", "cuda", "float64").name == "torch"  # the fused kernel trains in float32 only


def test_unsupported_device_or_dtype_is_refused_with_the_reason(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError, match="backend: numba runs on cpu; device is cuda"):
        resolve("numba", "cuda", "float32")
    with pytest.raises(ConfigError, match="TRITON_INTERPRET=1"):
        resolve("triton", "cpu", "float32")
    with pytest.raises(ConfigError, match="trains in float32, the recipe's dtype is float64"):
        resolve("triton", "cuda", "float64")
    with pytest.raises(ConfigError, match="unknown backend 'torch_ref'"):
        resolve("torch_ref", "cpu")
    with pytest.raises(ConfigError, match="not cnn"):
        resolve("torch", "cpu", "float32", family="cnn")


def test_capabilities_say_which_attacks_run_natively():
    assert all(get("torch").runs_natively(kind, norm) for kind in ("uniform", "sign", "gradient") for norm in ("inf", "2"))
    triton = get("triton")
    assert triton.runs_natively("sign", "2") and not triton.runs_natively("uniform", "2")
    assert get("triton_tf32").precision == "tf32" and triton.precision == "ieee"


def test_step_problem_from_config_is_what_the_engine_trains(small_data):
    """StepProblem.from_config: the recipe's hyper-parameters and dtype, the poison from the
    threat and attack with the per-point draws made, the schedule from the seeds' last column."""
    config = SampleConfig(recipe=TrainRecipe(steps=4, batch=5, lr=0.3, momentum=0.5, weight_decay=1e-3, record_every=2,
                                             dtype="float64"),
                          threat=ThreatModel(norm="2", rho=0.25, domain=(-1.0, 2.0)), attack=SamplingAttack(kind="sign"))
    seeds = torch.as_tensor(trajectory_seeds(0, Purpose.SAMPLE, 3))
    x, y = torch.as_tensor(small_data.x_train), torch.as_tensor(small_data.y_train)
    p = StepProblem.from_config(config, x, y, seeds, delta=0.2)
    assert (p.lr, p.momentum, p.weight_decay, p.dtype) == (0.3, 0.5, 1e-3, torch.float64)
    assert (p.poison.rho, p.poison.delta, p.poison.norm, p.poison.kind, p.poison.domain) == (0.25, 0.2, "2", "sign", (-1.0, 2.0))
    assert p.poison.point_mask.shape == (3, x.shape[0]) and torch.equal(p.poison.seeds, seeds[:, 1])
    assert torch.equal(p.schedule.seeds, seeds[:, 2]) and p.schedule.batch == 5


def test_engine_records_the_backend_and_no_fallback(small_data):
    from barrierkit.config import FeatureSpec, ModelSpec
    from barrierkit.engine import sample

    config = SampleConfig(dataset="unused", model=ModelSpec(hidden=(5,)), recipe=TrainRecipe(steps=4, batch=4, record_every=2),
                          features=FeatureSpec(projection_dim=2, probe_size=8))
    runs = sample(config, 0.1, trajectory_seeds(1, Purpose.SAMPLE, 2), data=small_data, backend="torch", progress=False)
    assert runs.meta["backend"] == "torch" and runs.meta["backend_meta"]["precision"] == "ieee"
    assert runs.meta["fallbacks"] == [] and np.isfinite(runs.features).all()
