"""The ``chosen`` subset rule: the ⌈ρ·n⌉ points of lowest clean margin, the same in every run.

Its pieces against slow, readable twins (margins by a per-point loop, the choice by a sort of
(margin, index) pairs), the poison it gives on every backend, and the errors for bad input."""
import dataclasses
import math

import numpy as np
import pytest
import torch

from barrierkit.attacks import chosen_count, chosen_subset, clean_margins, lowest, train_reference
from barrierkit.backends.base import StepProblem
from barrierkit.cli import main
from barrierkit.config import ConfigError, SampleConfig, ThreatModel
from barrierkit.engine import sample
from barrierkit.models import MLPShape, init_params
from barrierkit.poison import PoisonSpec, poison_batch
from barrierkit.report import poisoned_points
from barrierkit.rng import Purpose, trajectory_seeds
from barrierkit.unrolled import attacker_subsets
from conftest import no_work
from test_engine import make_config


def margins_twin(params, x, y):
    """z_y − max_{j≠y} z_j, one model and one point at a time, in plain numpy."""
    weights = [p.numpy() for p in params]
    out = np.empty((weights[0].shape[0], x.shape[0]))
    for m in range(out.shape[0]):
        for i in range(x.shape[0]):
            h = x[i].numpy()
            for layer in range(len(weights) // 2):
                h = weights[2 * layer][m] @ h + weights[2 * layer + 1][m]  # W is [out, in]
                if layer < len(weights) // 2 - 1:
                    h = np.maximum(h, 0.0)
            label = int(y[i])
            out[m, i] = h[label] - max(h[j] for j in range(h.shape[0]) if j != label)
    return out


@pytest.mark.parametrize("hidden,n,dim,classes", [((5,), 13, 11, 4), ((7, 3), 9, 6, 3), ((1,), 17, 2, 2)])
def test_margins_equal_the_twin(hidden, n, dim, classes):
    g = torch.Generator().manual_seed(n)
    x = torch.rand(n, dim, dtype=torch.float64, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    params = init_params(MLPShape(dim, hidden, classes), np.array([3, 8]), dtype=torch.float64)
    np.testing.assert_allclose(clean_margins(params, x, y).numpy(), margins_twin(params, x, y), rtol=0, atol=1e-12)


@pytest.mark.parametrize("k", [0, 1, 4, 7])
def test_lowest_equals_the_sorted_twin(k):
    margins = np.array([0.3, -0.1, 0.3, 0.0, -0.1, 2.0, 0.3])  # ties: the lower index first
    twin = sorted(range(len(margins)), key=lambda i: (margins[i], i))[:k]
    assert np.flatnonzero(lowest(margins, k)).tolist() == sorted(twin)


@pytest.mark.parametrize("rho,n,k", [(0.5, 1437, 719), (0.1, 10, 1), (0.3, 10, 3), (1.0, 7, 7), (0.01, 5, 1), (0.7, 3, 3)])
def test_chosen_count_is_the_ceiling(rho, n, k):
    assert chosen_count(rho, n) == k


def _digits_config(rho=0.3, **kw):
    return dataclasses.replace(make_config(rho=rho, steps=16, **kw), dataset="digits",
                               threat=ThreatModel(rho=rho, subset="chosen"))


def test_chosen_subset_is_the_lowest_margins_of_the_reference_model(digits):
    config = _digits_config()
    chosen = chosen_subset(config, digits)
    assert chosen.sum() == math.ceil(0.3 * digits.x_train.shape[0])
    margins = margins_twin(train_reference(config, digits), torch.as_tensor(digits.x_train, dtype=torch.float64),
                           torch.as_tensor(digits.y_train))[0]
    assert margins[chosen].max() <= margins[~chosen].min()


def test_spec_poisons_the_chosen_points_in_every_run():
    n, dim = 11, 5
    chosen = torch.zeros(n, dtype=torch.bool)
    chosen[[0, 3, 4, 10]] = True
    seeds = torch.arange(1, 4, dtype=torch.int64) * 977
    spec = PoisonSpec(seeds=seeds, rho=0.4, delta=0.3, norm="inf", kind="sign", chosen=chosen)
    idx = torch.stack([torch.randperm(n, generator=torch.Generator().manual_seed(s))[:7] for s in range(3)])
    assert torch.equal(spec.mask_at(idx), chosen[idx])
    assert torch.equal(spec.with_point_draws(n).mask_at(idx), chosen[idx])
    x = torch.full((3, 7, dim), 0.5, dtype=torch.float64)
    moved = (poison_batch(spec, x, idx, torch.float64) != x).any(dim=-1)
    assert torch.equal(moved, chosen[idx])


def test_step_problem_needs_the_points():
    config = dataclasses.replace(make_config(), threat=ThreatModel(rho=0.4, subset="chosen"))
    x, y, seeds = torch.rand(9, 3, dtype=torch.float64), torch.zeros(9, dtype=torch.int64), torch.ones(2, 3, dtype=torch.int64)
    with pytest.raises(ValueError, match="chosen subset rule needs its points"):
        StepProblem.from_config(config, x, y, seeds, delta=0.1)
    clean = StepProblem.from_config(config, x, y, seeds, delta=0.0)  # no budget, no subset needed
    assert not clean.poison.active


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_engine_poisons_exactly_the_chosen_points(digits, backend):
    pytest.importorskip("numba") if backend == "numba" else None
    config = _digits_config(attack="sign", dtype="float64")
    seeds = trajectory_seeds(5, Purpose.SAMPLE, 3)
    runs = sample(config, 0.1, seeds, data=digits, backend=backend, progress=False)
    expected = chosen_subset(config, digits).mean()
    assert np.all(runs.poison_fraction == expected)
    if backend == "numba":
        ref = sample(config, 0.1, seeds, data=digits, backend="torch", progress=False)
        np.testing.assert_allclose(runs.features, ref.features, rtol=0, atol=1e-10)
        assert np.array_equal(runs.test_hits, ref.test_hits)


def test_chosen_and_random_runs_differ(digits):
    chosen = _digits_config(attack="sign")
    random = dataclasses.replace(chosen, threat=ThreatModel(rho=0.3))
    seeds = trajectory_seeds(5, Purpose.SAMPLE, 2)
    a = sample(chosen, 0.2, seeds, data=digits, backend="torch", progress=False)
    b = sample(random, 0.2, seeds, data=digits, backend="torch", progress=False)
    assert not np.array_equal(a.features, b.features)


def test_unrolled_attacker_runs_use_the_chosen_points():
    config = dataclasses.replace(make_config(), threat=ThreatModel(rho=0.4, subset="chosen"))
    chosen = torch.tensor([True, False, True, False, False])
    masks = attacker_subsets(config, torch.tensor([1, 2, 3]), 5, chosen)
    assert masks.shape == (3, 5) and all(torch.equal(m, chosen) for m in masks)
    with pytest.raises(ValueError, match="needs its points"):
        attacker_subsets(config, torch.tensor([1]), 5, None)


def test_rho_zero_or_an_unknown_rule_names_the_field():
    with pytest.raises(ConfigError, match="rho > 0") as exc:
        ThreatModel(rho=0.0, subset="chosen")
    assert exc.value.field == "subset"
    with pytest.raises(ConfigError) as exc:
        SampleConfig.from_dict({"threat": {"subset": "worst"}})
    assert exc.value.field == "threat.subset"
    assert ThreatModel(rho=0.0).subset == "random"


def test_cli_refuses_a_chosen_subset_with_rho_zero(tmp_path, capsys, monkeypatch):
    no_work(monkeypatch)
    out = tmp_path / "c.json"
    assert main(["certify", "--subset", "chosen", "--rho", "0", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "subset" in err and "rho > 0" in err and "Traceback" not in err
    assert not out.exists()


def test_report_names_the_rule():
    assert "chosen subset" in poisoned_points({"rho": 0.5, "subset": "chosen"})
    assert "probability ρ = 0.5" in poisoned_points({"rho": 0.5, "subset": "random"})
    assert poisoned_points({"rho": 0.5}) == poisoned_points({"rho": 0.5, "subset": "random"})  # older documents

