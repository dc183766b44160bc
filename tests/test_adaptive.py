"""The adaptive sampling attack: each run's poison re-aimed at its own current model every interval."""
import numpy as np
import pytest
import torch

from barrierkit.attacks import adaptive_directions, input_gradients
from barrierkit.backends import resolve
from barrierkit.config import ConfigError, FeatureSpec, ModelSpec, SampleConfig, SamplingAttack, ThreatModel, TrainRecipe
from barrierkit.engine import sample
from barrierkit.models import MLPShape, init_params, to_module
from barrierkit.rng import Purpose, trajectory_seeds


def _autograd_input_gradients(params, x, y):
    """The slow twin: each model as an nn.Module, the summed cross-entropy's input gradient by autograd."""
    out = []
    for i in range(params[0].shape[0]):
        module = to_module([p.detach() for p in params], i).to(torch.float64)
        xi = x.clone().requires_grad_(True)
        torch.nn.functional.cross_entropy(module(xi), y, reduction="sum").backward()
        out.append(xi.grad)
    return torch.stack(out)


@pytest.mark.parametrize("hidden", [(5,), (7, 3)])
@pytest.mark.parametrize("norm", ["inf", "2"])
def test_batched_directions_match_autograd_per_model(hidden, norm):
    g = torch.Generator().manual_seed(3)
    shape = MLPShape(6, hidden, 4)
    params = init_params(shape, np.array([11, 12, 13]), dtype=torch.float32)
    x = torch.rand(9, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (9,), generator=g)
    wide = [p.to(torch.float64) for p in params]
    fast = input_gradients(wide, x, y)
    slow = _autograd_input_gradients(wide, x, y)
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-14)
    d = adaptive_directions(params, x, y, norm)
    assert d.shape == (3, 9, 6) and d.dtype == torch.float64
    if norm == "inf":
        assert torch.equal(d, torch.sign(slow))
    else:
        length = torch.linalg.vector_norm(slow, dim=-1)
        live = length > 0  # a point whose every hidden unit is dead has no gradient: no direction
        torch.testing.assert_close(torch.linalg.vector_norm(d, dim=-1), live.to(torch.float64))
        torch.testing.assert_close(d[live], slow[live] / length[live].unsqueeze(-1))


def _config(norm="inf", rho=0.6, domain=(0.0, 1.0)):
    return SampleConfig(dataset="unused", model=ModelSpec(hidden=(6,)), recipe=TrainRecipe(steps=12, batch=8, lr=0.3, record_every=4),
                        threat=ThreatModel(norm=norm, rho=rho, domain=domain), attack=SamplingAttack(kind="adaptive"),
                        features=FeatureSpec(projection_dim=2, probe_size=16))


def test_the_poison_is_aimed_at_each_runs_current_model_and_stays_in_budget(small_data):
    """Within an interval a poisoned point gets delta * sign(its input gradient under the run's
    model at the interval's start), clipped to the domain; unpoisoned points are untouched."""
    from barrierkit.backends import StepProblem
    from barrierkit.poison import poison_batch

    config = _config()
    seeds = torch.as_tensor(trajectory_seeds(4, Purpose.SAMPLE, 3))
    x, y = torch.as_tensor(small_data.x_train, dtype=torch.float64), torch.as_tensor(small_data.y_train)
    params = init_params(MLPShape(small_data.input_dim, (6,), small_data.n_classes), seeds[:, 0].numpy(), dtype=torch.float32)
    problem = StepProblem.from_config(config, x, y, seeds, 0.1)
    problem.poison.directions = adaptive_directions(params, x, y, "inf")
    idx = problem.schedule.indices(0)
    poisoned = poison_batch(problem.poison, x[idx], idx, torch.float64)
    mask = problem.poison.point_mask.gather(1, idx)
    want = torch.clamp(x[idx] + 0.1 * torch.sign(_autograd_input_gradients([p.to(torch.float64) for p in params], x, y))
                       [torch.arange(3).view(-1, 1), idx], 0.0, 1.0)
    assert torch.equal(poisoned[mask], want[mask]) and torch.equal(poisoned[~mask], x[idx][~mask])
    assert (poisoned - x[idx]).abs().max() <= 0.1 + 1e-15 and poisoned.min() >= 0.0 and poisoned.max() <= 1.0


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_runs_replay_from_their_seeds_whatever_the_chunking(small_data, norm):
    config = _config(norm=norm)
    seeds = trajectory_seeds(5, Purpose.SAMPLE, 5)
    whole = sample(config, 0.2, seeds, data=small_data, backend="torch", progress=False)
    parts = sample(config, 0.2, seeds, data=small_data, backend="torch", progress=False, chunk=2)
    alone = sample(config, 0.2, seeds[3:4], data=small_data, backend="torch", progress=False)
    assert np.array_equal(whole.features, parts.features) and np.array_equal(whole.features[3], alone.features[0])
    clean = sample(config, 0.0, seeds, data=small_data, backend="torch", progress=False)
    assert not np.array_equal(whole.features[:, 1:], clean.features[:, 1:]), "the poison changes training"
    assert whole.meta["backend"] == "torch" and whole.meta["fallbacks"] == []


def test_the_backend_record_says_who_trains_under_it():
    pytest.importorskip("numba")
    assert resolve("auto", "cpu", "float32", attack="adaptive").name == "torch"
    assert resolve("auto", "cpu", "float32", attack="gradient").name == "numba"
    assert resolve("auto", "cuda", "float32", attack="adaptive").name == "torch"
    with pytest.raises(ConfigError, match="backend: numba does not train under the adaptive attack"):
        resolve("numba", "cpu", "float32", attack="adaptive")


def test_bad_input_is_one_error_naming_the_field(small_data):
    with pytest.raises(ConfigError, match="sign_noise: applies to the gradient attack only"):
        SamplingAttack(kind="adaptive", sign_noise=0.1)
    with pytest.raises(ConfigError, match="attack: must be one of"):
        SamplingAttack(kind="optimal")
    with pytest.raises(ConfigError, match="backend: numba does not train under the adaptive attack"):
        pytest.importorskip("numba")
        sample(_config(), 0.1, trajectory_seeds(0, Purpose.SAMPLE, 2), data=small_data, backend="numba", progress=False)
