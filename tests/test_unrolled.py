"""The unrolled sampling attacks: a perturbation table optimised through training, drawn like a table."""
import numpy as np
import pytest
import torch

from barrierkit import unrolled
from barrierkit.config import ConfigError, FeatureSpec, ModelSpec, SampleConfig, SamplingAttack, ThreatModel, TrainRecipe
from barrierkit.engine import sample
from barrierkit.models import MLPShape, init_params, to_module
from barrierkit.poison import subset_mask
from barrierkit.rng import Purpose, trajectory_seeds
from barrierkit.schedule import Schedule


def _config(kind="unrolled", norm="inf", domain=(0.0, 1.0), momentum=0.0):
    return SampleConfig(dataset="unused", model=ModelSpec(hidden=(5,)),
                        recipe=TrainRecipe(steps=6, batch=7, lr=0.4, momentum=momentum, weight_decay=1e-3, record_every=3),
                        threat=ThreatModel(norm=norm, rho=0.5, domain=domain), attack=SamplingAttack(kind=kind),
                        features=FeatureSpec(projection_dim=2, probe_size=16))


def _twin_gradient(config, shape, x, y, x_obj, y_obj, table, seeds):
    """The slow twin: each attacker run alone as an nn.Module, its SGD written out step by step
    (torch.optim.SGD semantics), autograd from the mean objective back to the table."""
    table = table.detach().clone().requires_grad_(True)
    r = config.recipe
    total = 0.0
    for u in range(len(seeds)):
        s = torch.as_tensor(seeds[u:u + 1])
        mask = subset_mask(s[:, 1], torch.arange(x.shape[0]).view(1, -1), config.threat.rho)[0].unsqueeze(-1)
        data = torch.where(mask, (x + table).clamp(*config.threat.domain), x)
        module = to_module(init_params(shape, seeds[u:u + 1, 0], dtype=torch.float64), 0)
        weights = [p.detach().clone().requires_grad_(True) for p in module.parameters()]
        schedule, buffers = Schedule(s[:, 2], x.shape[0], r.batch), None
        for t in range(r.steps):
            idx = schedule.indices(t)[0]
            loss = torch.nn.functional.cross_entropy(torch.func.functional_call(module, dict(zip(
                [n for n, _ in module.named_parameters()], weights)), (data[idx],)), y[idx])
            grads = torch.autograd.grad(loss, weights, create_graph=True)
            grads = [g + r.weight_decay * w for g, w in zip(grads, weights)]
            if r.momentum:
                buffers = grads if buffers is None else [r.momentum * b + g for b, g in zip(buffers, grads)]
                grads = buffers
            weights = [w - r.lr * g for w, g in zip(weights, grads)]
        logits = torch.func.functional_call(module, dict(zip([n for n, _ in module.named_parameters()], weights)), (x_obj,))
        total = total + torch.nn.functional.cross_entropy(logits, y_obj) / len(seeds)
    (grad,) = torch.autograd.grad(total, table)
    return grad


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_the_ascent_gradient_matches_the_slow_twin(small_data, momentum):
    config = _config(momentum=momentum)
    shape = MLPShape.from_spec(config.model, small_data.input_dim, small_data.n_classes)
    x, y = torch.as_tensor(small_data.x_train, dtype=torch.float64), torch.as_tensor(small_data.y_train)
    xo, yo = torch.as_tensor(small_data.x_test, dtype=torch.float64), torch.as_tensor(small_data.y_test)
    table = 0.05 * torch.sign(torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    seeds = trajectory_seeds(9, Purpose.SAMPLE, 3)
    fast = unrolled.ascent_gradient(config, shape, x, y, xo, yo, table, seeds)
    slow = _twin_gradient(config, shape, x, y, xo, yo, table, seeds)
    assert fast.abs().max() > 0
    torch.testing.assert_close(fast, slow, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", unrolled.UNROLLED_ATTACKS)
@pytest.mark.parametrize("norm,domain", [("inf", (0.0, 1.0)), ("2", (0.0, 1.0)), ("inf", (-0.5, 2.0))])
def test_the_table_stays_in_the_budget_and_the_domain_and_replays(small_data, kind, norm, domain, monkeypatch):
    monkeypatch.setattr(unrolled, "_CACHE", {})
    config = _config(kind, norm, domain)
    table = unrolled.unrolled_table(config, small_data, 0.2)
    x = small_data.x_train
    size = np.abs(table).max(axis=1) if norm == "inf" else np.linalg.norm(table, axis=1)
    assert size.max() <= 0.2 and np.abs(table).max() > 0
    assert (x + table).min() >= domain[0] and (x + table).max() <= domain[1]
    monkeypatch.setattr(unrolled, "_CACHE", {})
    assert np.array_equal(unrolled.unrolled_table(config, small_data, 0.2), table), "the table is a function of its setting"


def test_the_test_aware_attacker_optimises_another_objective(small_data):
    a = unrolled.unrolled_table(_config("unrolled"), small_data, 0.2)
    b = unrolled.unrolled_table(_config("unrolled_test"), small_data, 0.2)
    assert not np.array_equal(a, b)


def test_every_backend_trains_under_the_table(small_data):
    """Drawn as a table, the unrolled attack runs on the numba path like the gradient attack."""
    pytest.importorskip("numba")
    config = _config()
    seeds = trajectory_seeds(3, Purpose.SAMPLE, 4)
    ref = sample(config, 0.2, seeds, data=small_data, backend="torch", progress=False)
    fast = sample(config, 0.2, seeds, data=small_data, backend="numba", progress=False)
    np.testing.assert_allclose(fast.features, ref.features, rtol=1e-4, atol=1e-5)
    clean = sample(config, 0.0, seeds, data=small_data, backend="torch", progress=False)
    assert not np.array_equal(ref.features[:, 1:], clean.features[:, 1:])


def test_unknown_attacks_and_sign_noise_are_refused():
    with pytest.raises(ConfigError, match="sign_noise: applies to the gradient attack only"):
        SamplingAttack(kind="unrolled", sign_noise=0.2)
    with pytest.raises(ValueError, match="attack: 'gradient' is not an unrolled attack"):
        unrolled.unrolled_table(SampleConfig(), None, 0.1)
