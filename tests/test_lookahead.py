"""The lookahead (gradient-matching) attack: each run's poison turns its points' parameter
gradients against the gradient of the run's clean training loss, re-aimed every interval."""
import dataclasses

import numpy as np
import pytest
import torch

from barrierkit.attacks import lookahead_directions
from barrierkit.backends import resolve
from barrierkit.config import ConfigError, SamplingAttack
from barrierkit.engine import sample
from barrierkit.models import MLPShape, forward, init_params, to_module
from barrierkit.rng import Purpose, trajectory_seeds
from test_adaptive import _config


def _twin(params, x, y):
    """The slow twin: one model and one point at a time, as nn.Modules with autograd."""
    out = torch.zeros(params[0].shape[0], *x.shape, dtype=torch.float64)
    for n in range(params[0].shape[0]):
        module = to_module([p.detach() for p in params], n).to(torch.float64)
        objective = torch.nn.functional.cross_entropy(module(x), y)  # mean clean training loss
        u = [-g for g in torch.autograd.grad(objective, list(module.parameters()))]
        for i in range(x.shape[0]):
            xi = x[i:i + 1].clone().requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(module(xi), y[i:i + 1])
            grads = torch.autograd.grad(loss, list(module.parameters()), create_graph=True)
            alignment = sum((g * v).sum() for g, v in zip(grads, u))
            out[n, i] = torch.autograd.grad(alignment, xi)[0][0]
    return out


@pytest.mark.parametrize("hidden,n,dim,classes", [((5,), 9, 6, 4), ((7, 3), 7, 5, 3), ((2,), 11, 3, 2)])
@pytest.mark.parametrize("norm", ["inf", "2"])
def test_batched_directions_equal_the_per_point_twin(hidden, n, dim, classes, norm):
    g = torch.Generator().manual_seed(n)
    params = init_params(MLPShape(dim, hidden, classes), np.array([21, 22, 23]), dtype=torch.float32)
    x = torch.rand(n, dim, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=g)
    slow = _twin([p.to(torch.float64) for p in params], x, y)
    fast = lookahead_directions(params, x, y, norm)
    assert fast.shape == (3, n, dim) and fast.dtype == torch.float64
    if norm == "inf":
        assert torch.equal(fast, torch.sign(slow))
    else:
        length = torch.linalg.vector_norm(slow, dim=-1, keepdim=True)
        torch.testing.assert_close(fast, torch.where(length > 0, slow / length.clamp_min(1e-300), 0.0), rtol=1e-10, atol=1e-12)


def test_a_step_on_the_poisoned_points_raises_the_watched_loss_more_than_on_clean_ones():
    """First order: SGD on points moved along the directions descends the clean training loss
    less than SGD on the clean points (the attack's purpose), for every run."""
    g = torch.Generator().manual_seed(5)
    shape = MLPShape(6, (8,), 3)
    params = [p.to(torch.float64) for p in init_params(shape, np.array([1, 2, 3, 4]), dtype=torch.float32)]
    x = torch.rand(40, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=g)
    d = lookahead_directions(params, x, y, "inf")

    def loss_after_step(points):
        wide = [p.clone().requires_grad_(True) for p in params]
        logits, _ = forward(wide, points)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 3), y.repeat(4), reduction="sum") / 40
        grads = torch.autograd.grad(loss, wide)
        stepped = [p - 0.05 * gr for p, gr in zip(params, grads)]
        logits, _ = forward(stepped, x)
        return torch.nn.functional.cross_entropy(logits.reshape(-1, 3), y.repeat(4), reduction="none").view(4, -1).mean(dim=1)

    clean = loss_after_step(x.expand(4, -1, -1))
    poisoned = loss_after_step(x.expand(4, -1, -1) + 0.02 * d)
    assert torch.all(poisoned > clean)


def test_engine_runs_replay_and_stay_on_the_torch_reference(small_data):
    config = dataclasses.replace(_config(), attack=SamplingAttack(kind="lookahead"))
    seeds = trajectory_seeds(6, Purpose.SAMPLE, 4)
    whole = sample(config, 0.2, seeds, data=small_data, backend="torch", progress=False)
    parts = sample(config, 0.2, seeds, data=small_data, backend="torch", progress=False, chunk=3)
    assert np.array_equal(whole.features, parts.features)
    adaptive = sample(_config(), 0.2, seeds, data=small_data, backend="torch", progress=False)
    assert not np.array_equal(whole.features[:, 1:], adaptive.features[:, 1:]), "its own directions, not adaptive's"
    assert resolve("auto", "cpu", "float32", attack="lookahead").name == "torch"
    pytest.importorskip("numba")
    with pytest.raises(ConfigError, match="numba does not train under the lookahead attack"):
        resolve("numba", "cpu", "float32", attack="lookahead")
