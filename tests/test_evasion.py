"""Test-time attacks and interval bounds (barrierkit/evasion.py) against readable per-model twins.

The twins: PGD by autograd on one ``nn.Module`` at a time; interval arithmetic written with
W+ and W- in numpy; the exact worst case of a linear model by enumerating the corners of the box.
"""
import itertools
import os

import numpy as np
import pytest
import torch

from barrierkit import evasion as EV
from barrierkit.config import EVASION_ATTACKS, ConfigError, EvasionThreat
from barrierkit.models import MLPShape, forward, init_params, to_module

DOMAIN = (0.0, 1.0)


def models_and_points(n_models, n_points, dim, hidden, n_classes, seed=0, scale=3.0):
    """Random MLPs (weights scaled up so margins vary) and points labelled by model 0's own
    prediction, so most points start correctly classified."""
    shape = MLPShape(dim, tuple(hidden), n_classes)
    params = [p * scale for p in init_params(shape, np.arange(seed, seed + n_models), dtype=torch.float64)]
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n_points, dim, generator=gen, dtype=torch.float64)
    y = forward([p[:1] for p in params], x)[0][0].argmax(dim=-1)
    seeds = torch.arange(1000 + seed, 1000 + seed + n_models, dtype=torch.int64)
    return params, x, y, seeds


def pgd_twin(module, x, y, x_start, delta, norm, settings):
    """One start of PGD by autograd on one model: the last iterate, and whether any iterate was
    misclassified."""
    flipped = torch.zeros(x.shape[0], dtype=torch.bool)
    x_adv = x_start.clone()
    for _ in range(settings.steps):
        x_adv = x_adv.detach().requires_grad_(True)
        logits = module(x_adv)
        if settings.loss == "ce":
            loss = torch.nn.functional.cross_entropy(logits, y, reduction="sum")
        else:
            other = logits.clone()
            other[torch.arange(len(y)), y] = -float("inf")
            loss = (other.max(dim=1).values - logits[torch.arange(len(y)), y]).sum()
        (grad,) = torch.autograd.grad(loss, x_adv)
        flipped |= logits.argmax(dim=1) != y
        with torch.no_grad():
            if norm == "inf":
                step = torch.sign(grad)
            else:
                length = grad.norm(dim=1, keepdim=True)
                step = torch.where(length > 0, grad / torch.where(length > 0, length, 1.0), 0.0)
            x_adv = plain_projection(x_adv + settings.step_size * delta * step, x, delta, norm)
    with torch.no_grad():
        flipped |= module(x_adv).argmax(dim=1) != y
    return x_adv.detach(), flipped


def plain_projection(x_adv, x, delta, norm):
    if norm == "inf":
        x_adv = torch.maximum(torch.minimum(x_adv, x + delta), x - delta)
    else:
        d = x_adv - x
        length = d.norm(dim=1, keepdim=True)
        x_adv = x + torch.where(length > delta, d * delta / length, d)
    return x_adv.clamp(*DOMAIN)


def ibp_twin(weights, x, y, delta, norm):
    """Interval arithmetic, one model, one point: l' = W+ l + W- u + b, u' = W+ u + W- l + b."""
    ws = [w.numpy() for w in weights[0::2]]
    bs = [b.numpy() for b in weights[1::2]]
    x = x.numpy()
    lo, hi = DOMAIN
    if norm == "inf":
        low, high = np.clip(x - delta, lo, hi), np.clip(x + delta, lo, hi)
    layers = list(zip(ws, bs))
    if len(layers) == 1:
        w, b = layers[0]
        return min(diff_bound(w[y] - w[j], b[y] - b[j], low, high) if norm == "inf" else
                   max((w[y] - w[j]) @ x + b[y] - b[j] - delta * np.linalg.norm(w[y] - w[j]),
                       diff_bound(w[y] - w[j], b[y] - b[j], np.full_like(x, lo), np.full_like(x, hi)))
                   for j in range(w.shape[0]) if j != y)
    w, b = layers[0]
    if norm == "inf":
        low, high = affine(w, b, low, high)
    else:
        ball = w @ x + b, np.linalg.norm(w, axis=1) * delta
        box_low, box_high = affine(w, b, np.full_like(x, lo), np.full_like(x, hi))
        low, high = np.maximum(ball[0] - ball[1], box_low), np.minimum(ball[0] + ball[1], box_high)
    for w, b in layers[1:-1]:
        low, high = affine(w, b, np.maximum(low, 0), np.maximum(high, 0))
    w, b = layers[-1]
    low, high = np.maximum(low, 0), np.maximum(high, 0)
    return min(diff_bound(w[y] - w[j], b[y] - b[j], low, high) for j in range(w.shape[0]) if j != y)


def affine(w, b, low, high):
    wp, wn = np.maximum(w, 0), np.minimum(w, 0)
    return wp @ low + wn @ high + b, wp @ high + wn @ low + b


def diff_bound(d, c, low, high):
    return np.maximum(d, 0) @ low + np.minimum(d, 0) @ high + c


@pytest.mark.parametrize("norm", ["inf", "2"])
@pytest.mark.parametrize("dims", [(5, 7, (9,), 3), (3, 11, (6, 4), 5), (4, 6, (), 4)])
def test_interval_bounds_match_the_plain_interval_arithmetic(norm, dims):
    n_models, n_points, hidden, n_classes = dims[0], dims[1], dims[2], dims[3]
    params, x, y, _ = models_and_points(n_models, n_points, 13, hidden, n_classes, seed=n_points)
    delta = 0.05 if norm == "inf" else 0.3
    got = EV.ibp_margin_bound(params, x, y, delta, norm, DOMAIN)
    for m in range(n_models):
        for p in range(n_points):
            want = ibp_twin([t[m] for t in params], x[p], int(y[p]), delta, norm)
            assert got[m, p].item() == pytest.approx(want, abs=1e-10), (m, p)


def test_a_linear_models_bound_is_its_exact_worst_case_over_the_boxes_corners():
    params, x, y, _ = models_and_points(3, 8, 4, (), 3, seed=5)
    delta = 0.1
    got = EV.ibp_margin_bound(params, x, y, delta, "inf", DOMAIN)
    for m in range(3):
        for p in range(8):
            low, high = (x[p] - delta).clamp(*DOMAIN), (x[p] + delta).clamp(*DOMAIN)
            corners = torch.tensor(list(itertools.product(*zip(low.tolist(), high.tolist()))), dtype=torch.float64)
            margins = EV.logit_margin(forward([t[m:m + 1] for t in params], corners)[0], y[p].expand(len(corners)).view(1, -1))
            assert got[m, p].item() == pytest.approx(margins.min().item(), abs=1e-12)


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_no_attack_flips_a_point_the_interval_bound_proves(norm):
    params, x, y, seeds = models_and_points(6, 40, 10, (12,), 4, seed=3)
    delta = 0.02 if norm == "inf" else 0.06
    proven = EV.ibp_proven(params, x, y, delta, norm, DOMAIN)
    assert 0 < int(proven.sum()) < proven.numel(), "the bound proves some points and not others at this budget"
    idx = torch.arange(40).view(1, -1).expand(6, -1)
    settings = EvasionThreat(steps=30, restarts=2, loss="margin")
    flipped_pgd = EV.pgd_flipped(params, x, y, seeds, idx, delta, norm, DOMAIN, settings)
    flipped_random = EV.random_flipped(params, x, y, seeds, idx, delta, norm, DOMAIN)
    assert not (proven & flipped_pgd).any() and not (proven & flipped_random).any()
    # the ReLU network's bound is never above any point's actual margin (corners and draws)
    bound = EV.ibp_margin_bound(params, x, y, delta, norm, DOMAIN)
    for draw in range(3):
        moved = EV.project(x + EV.uniform_in_ball(seeds, idx, 10, delta, norm, draw), x.expand(6, -1, -1), delta, norm, DOMAIN)
        assert (EV.logit_margin(forward(params, moved)[0], y.expand(6, -1)) >= bound - 1e-12).all()


@pytest.mark.parametrize("norm,loss,restarts", [("inf", "margin", 1), ("inf", "ce", 0), ("2", "margin", 2), ("2", "ce", 1)])
def test_batched_pgd_matches_autograd_pgd_on_each_model(norm, loss, restarts):
    params, x, y, seeds = models_and_points(5, 23, 9, (7, 5), 3, seed=restarts)
    delta = 0.08 if norm == "inf" else 0.25
    settings = EvasionThreat(steps=7, step_size=0.3, restarts=restarts, loss=loss)
    idx = torch.arange(23).view(1, -1).expand(5, -1)
    xs, ys = x.expand(5, -1, -1), y.expand(5, -1)
    anywhere = torch.zeros(5, 23, dtype=torch.bool)
    for start in range(restarts + 1):
        x_start = EV.pgd_start(seeds, idx, xs, delta, norm, DOMAIN, start)
        size = (x_start - xs).abs().amax(-1) if norm == "inf" else (x_start - xs).norm(dim=-1)
        assert (size <= delta + 1e-15).all() and (start == 0 or (size > 0).all())
        last, flipped = EV.pgd_ascent(params, xs, ys, x_start, delta, norm, DOMAIN, settings)
        for m in range(5):
            want_last, want_flipped = pgd_twin(to_module(params, m), x, y, x_start[m], delta, norm, settings)
            assert torch.allclose(last[m], want_last, rtol=0, atol=1e-12), (start, m)
            assert torch.equal(flipped[m], want_flipped), (start, m)
        anywhere |= flipped
    got = EV.pgd_flipped(params, x, y, seeds, idx, delta, norm, DOMAIN, settings)
    assert torch.equal(got, anywhere)
    assert got.any() and not got.all(), "the budget flips some points, not all"


def test_the_evaluation_does_not_depend_on_how_models_and_points_are_chunked():
    params, x, y, seeds = models_and_points(70, 131, 6, (5,), 3, seed=2)  # past one block of models and of points
    for attack in EVASION_ATTACKS:
        kwargs = dict(threat=EvasionThreat(attack=attack, rho=0.6, steps=3, restarts=1), delta=0.1, domain=DOMAIN)
        clean, attacked = EV.evaluate(params, x, y, seeds, **kwargs)
        assert (attacked <= clean).all() and (attacked < clean).any(), attack
        part = slice(63, 70)
        c2, a2 = EV.evaluate([p[part] for p in params], x, y, seeds[part], **kwargs)
        assert torch.equal(c2, clean[part]) and torch.equal(a2, attacked[part]), attack
        # the points a run leaves alone are untouched: only its perturbed subset can lose hits
        mask = EV.perturbed_points(seeds, 131, 0.6)
        assert 0.45 < mask.double().mean() < 0.75


def test_zero_budget_or_no_perturbed_points_leave_the_clean_count():
    params, x, y, seeds = models_and_points(4, 30, 5, (6,), 3)
    for attack in EVASION_ATTACKS:
        for delta, rho in ((0.0, 0.5), (0.2, 0.0)):
            clean, attacked = EV.evaluate(params, x, y, seeds, EvasionThreat(attack=attack, rho=rho), delta, DOMAIN)
            assert torch.equal(clean, attacked)
    clean, _ = EV.evaluate(params, x, y, seeds, EvasionThreat(), 0.0, DOMAIN)
    want = (forward(params, x)[0].argmax(-1) == y).sum(1)
    assert torch.equal(clean, want)


def test_the_interval_bound_is_the_worst_and_random_the_weakest_judge():
    params, x, y, seeds = models_and_points(8, 60, 8, (10,), 4, seed=7)
    counts = {attack: EV.evaluate(params, x, y, seeds, EvasionThreat(attack=attack, rho=1.0), 0.05, DOMAIN)[1]
              for attack in EVASION_ATTACKS}
    assert (counts["ibp"] <= counts["pgd"]).all()
    assert counts["pgd"].sum() < counts["random"].sum()


def test_random_draws_replay_from_the_seeds_and_stay_in_the_ball():
    seeds = torch.tensor([3, 4], dtype=torch.int64)
    idx = torch.arange(50).view(1, -1).expand(2, -1)
    for norm, dim in (("inf", 7), ("2", 7), ("2", 8)):
        a = EV.uniform_in_ball(seeds, idx, dim, 0.2, norm, 0)
        assert torch.equal(a, EV.uniform_in_ball(seeds, idx, dim, 0.2, norm, 0))
        assert not torch.equal(a, EV.uniform_in_ball(seeds, idx, dim, 0.2, norm, 1))
        size = a.abs().amax(-1) if norm == "inf" else a.norm(dim=-1)
        assert (size <= 0.2 + 1e-15).all() and size.max() > 0.1
    assert torch.equal(EV.perturbed_points(seeds, 40, 0.5), EV.perturbed_points(seeds, 40, 0.5))


@pytest.mark.parametrize("field,kwargs", [("steps", dict(steps=0)), ("step_size", dict(step_size=0.0)),
                                          ("restarts", dict(restarts=-1)), ("loss", dict(loss="hinge")),
                                          ("attack", dict(attack="fgsm")), ("rho", dict(rho=1.5)), ("norm", dict(norm="1"))])
def test_a_bad_evasion_setting_names_the_field(field, kwargs):
    with pytest.raises(ConfigError, match=f"^{field}:"):
        EvasionThreat(**kwargs)


def test_the_engine_hands_each_chunks_trained_models_to_the_terminal_hook():
    from barrierkit.config import SampleConfig, TrainRecipe
    from barrierkit.engine import sample
    from barrierkit.models import flatten

    config = SampleConfig(recipe=TrainRecipe(steps=8, record_every=4))
    seeds = np.arange(15, dtype=np.int64).reshape(5, 3) + 1
    seen = {}
    whole = sample(config, 0.05, seeds, chunk=2, terminal=lambda lo, hi, params: seen.update({(lo, hi): flatten(params).clone()}))
    assert sorted(seen) == [(0, 2), (2, 4), (4, 5)]
    # the hook sees theta(T): the engine's own accuracy of those parameters is the recorded one
    for (lo, hi), theta in seen.items():
        alone = {}
        sample(config, 0.05, seeds[lo:hi], terminal=lambda a, b, params: alone.update(theta=flatten(params).clone()))
        assert torch.equal(alone["theta"], theta)
    assert whole.n == 5


def test_the_evasion_bench_measures_ibp_below_pgd_below_clean(tmp_path):
    from bench.evasion import main as evasion_main

    doc = evasion_main(["--quick", "--deltas", "0.02", "0.05", "--out", str(tmp_path)])
    rows = doc["rows"]
    assert doc["quick"] and len(rows) == 6 and os.path.exists(next(iter(tmp_path.glob("evasion-*.csv"))))
    for delta in (0.02, 0.05):
        by = {r["judge"]: r for r in rows if r["delta"] == delta}
        assert by["ibp"]["accuracy_mean"] <= by["pgd"]["accuracy_mean"] <= by["random"]["accuracy_mean"] <= by["pgd"]["clean_mean"]
    assert {r["judge"]: r for r in rows if r["delta"] == 0.05}["ibp"]["accuracy_mean"] < \
        {r["judge"]: r for r in rows if r["delta"] == 0.02}["ibp"]["accuracy_mean"]


# --- evasion runs through the engine, the trajectories file and `barrierkit sample` -------------

def evasion_config(**evasion):
    from barrierkit.config import SampleConfig, TrainRecipe

    return SampleConfig(recipe=TrainRecipe(steps=8, record_every=4), threat_kind="evasion",
                        evasion=EvasionThreat(**{"steps": 3, **evasion}))


def test_evasion_runs_train_clean_and_count_their_own_and_attacked_hits():
    import dataclasses

    from barrierkit.engine import sample

    config = evasion_config()
    seeds = np.arange(18, dtype=np.int64).reshape(6, 3) + 5
    runs = sample(config, 0.1, seeds, chunk=4)
    clean = sample(dataclasses.replace(config, threat_kind="poisoning"), 0.0, seeds)
    assert np.array_equal(runs.features[:, :, :-1], clean.features), "training is clean whatever the test-time budget"
    assert runs.reference_hits is not None and (runs.test_hits <= runs.reference_hits).all()
    assert (runs.test_hits < runs.reference_hits).any()
    assert runs.delta == 0.1 and runs.poison_fraction.max() == 0
    untouched = sample(config, 0.0, seeds)
    assert np.array_equal(untouched.test_hits, untouched.reference_hits) and np.array_equal(untouched.reference_hits, runs.reference_hits)
    # a run replays alone, in any chunk
    alone = sample(config, 0.1, seeds[4:5])
    assert alone.test_hits[0] == runs.test_hits[4] and alone.reference_hits[0] == runs.reference_hits[4]
    ibp = sample(evasion_config(attack="ibp"), 0.1, seeds)
    assert (ibp.test_hits <= runs.test_hits).all()


def test_evasion_labels_are_exact_at_alpha():
    from barrierkit.labels import evasion_unsafe

    reference = np.array([340, 340, 340, 18])
    attacked = np.array([322, 321, 340, 0])  # losses 18 (= 0.05 * 360: safe), 19, 0, 18
    assert evasion_unsafe(reference, attacked, 360, 0.05).tolist() == [False, True, False, False]
    with pytest.raises(ValueError, match="reference_hits"):
        evasion_unsafe(reference[:3], attacked, 360, 0.05)


def test_trajectories_keep_the_reference_hits_and_read_the_previous_format(tmp_path):
    from barrierkit.engine import sample
    from barrierkit.trajectories import Trajectories

    runs = sample(evasion_config(), 0.05, np.arange(6, dtype=np.int64).reshape(2, 3) + 1)
    runs.save(tmp_path / "e.npz")
    back = Trajectories.load(tmp_path / "e.npz")
    assert np.array_equal(back.reference_hits, runs.reference_hits) and np.array_equal(back.test_hits, runs.test_hits)
    with np.load(tmp_path / "e.npz") as z:
        old = {k: z[k] for k in z.files if k != "reference_hits"}
    old["format"] = np.array("barrierkit.trajectories/2")
    np.savez(tmp_path / "old.npz", **old)
    assert Trajectories.load(tmp_path / "old.npz").reference_hits is None
    with pytest.raises(ValueError, match="reference_hits"):
        Trajectories(runs.features, runs.test_hits, runs.test_size, runs.seeds, runs.poison_fraction, 0.05,
                     reference_hits=np.array([1]))


def test_sample_threat_evasion_on_the_command_line(tmp_path, monkeypatch):
    import json

    from barrierkit.cli import main
    from conftest import TINY_CERTIFY, no_work

    out = tmp_path / "ev.npz"
    assert main(["sample", "--threat", "evasion", "--evasion-attack", "random", "--delta", "0.2", "--n", "3", "--steps", "8",
                 "--record-every", "4", "--out", str(out)]) == 0
    summary = json.load(open(tmp_path / "ev.json"))
    assert summary["n_unsafe"] == int(summary["unsafe_fraction"] * 3) and "g_clean" not in summary
    assert summary["meta"]["config"]["threat_kind"] == "evasion" and summary["meta"]["config"]["evasion"]["attack"] == "random"
    no_work(monkeypatch)
    assert main([*TINY_CERTIFY, "--threat", "both", "--out", str(tmp_path / "c.json")]) == 2  # no fixed budget
    assert main(["sample", "--threat", "evasion", "--evasion-rho", "2", "--delta", "0.1", "--out", str(tmp_path / "x.npz")]) == 2
    assert main(["attack", "--threat", "evasion", "--deltas", "0.05", "--out", str(tmp_path / "a.json")]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev.json", "ev.npz"]


@pytest.mark.parametrize("raw,field", [({"threat_kind": "all"}, "threat_kind"), ({"threat_kind": "both"}, "fixed_budget"), ({"evasion": {"attack": "fgsm"}}, "evasion.attack"),
                                       ({"evasion": {"rho": -1}}, "evasion.rho"), ({"attack": {"kind": "nope"}}, "attack.kind")])
def test_a_bad_threat_setting_in_a_configuration_names_its_key(raw, field):
    from barrierkit.config import SampleConfig

    with pytest.raises(ConfigError) as err:
        SampleConfig.from_dict(raw)
    assert err.value.field == field


def test_l2_draws_are_symmetric_in_every_coordinate_for_odd_dimensions():
    seeds = torch.arange(2000, dtype=torch.int64)
    idx = torch.zeros(2000, 1, dtype=torch.int64)
    for dim in (1, 3):
        draws = EV.uniform_in_ball(seeds, idx, dim, 0.2, "2", 0)[:, 0]
        negative = (draws < 0).double().mean(dim=0)
        assert ((negative > 0.45) & (negative < 0.55)).all(), (dim, negative)


def test_test_points_outside_the_domain_are_refused():
    params, x, y, seeds = models_and_points(2, 4, 3, (3,), 2)
    with pytest.raises(ValueError, match="^domain:"):
        EV.evaluate(params, x + 1.0, y, seeds, EvasionThreat(norm="2"), 0.1, DOMAIN)


def test_the_proof_leaves_room_for_the_rounding_of_large_logits():
    w = torch.tensor([[[1e-8], [0.0]]], dtype=torch.float64)
    b = torch.tensor([[1e8, np.nextafter(1e8, 2e8)]], dtype=torch.float64)
    x, y = torch.tensor([[0.5]], dtype=torch.float64), torch.tensor([1])
    assert EV.ibp_margin_bound([w, b], x, y, 0.25, "inf", DOMAIN).item() > EV.PROOF_TOL  # the bound in exact terms ...
    assert not EV.ibp_proven([w, b], x, y, 0.25, "inf", DOMAIN).any()  # ... but the forward pass can tie: not proven
    assert forward([w, b], torch.tensor([[0.75]], dtype=torch.float64))[0].argmax(-1).item() == 0
