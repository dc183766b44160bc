"""The trajectory engine against an independent nn.Module + torch.optim.SGD implementation."""
import os
from fractions import Fraction

import numpy as np
import pytest
import torch

from barrierkit.config import FeatureSpec, ModelSpec, SampleConfig, SamplingAttack, ThreatModel, TrainRecipe
from barrierkit.engine import clean_runs, sample
from barrierkit.rng import Purpose, trajectory_seeds
from barrierkit.labels import SafetyRule
from barrierkit.models import MLPShape, flatten, init_params, to_module
from barrierkit.poison import PoisonSpec, poison_batch
from barrierkit.attacks import gradient_directions
from barrierkit.schedule import Schedule

ATTACKS = [("gradient", "inf"), ("gradient", "2"), ("sign", "inf"), ("sign", "2"), ("uniform", "inf"), ("uniform", "2")]


def make_config(attack="gradient", norm="inf", rho=0.4, hidden=(7,), steps=24, batch=8, momentum=0.0, dtype="float64",
                record_every=4, sign_noise=0.0):
    return SampleConfig(
        dataset="unused",
        model=ModelSpec(hidden=hidden),
        recipe=TrainRecipe(steps=steps, batch=batch, lr=0.2, momentum=momentum, weight_decay=1e-3 if momentum else 0.0,
                           record_every=record_every, dtype=dtype),
        threat=ThreatModel(norm=norm, rho=rho),
        attack=SamplingAttack(kind=attack, sign_noise=sign_noise),
        features=FeatureSpec(projection_dim=4, probe_size=32),
    )


def poisoned_dataset(config, data, poison_seed, delta):
    """Materialise one trajectory's whole poisoned training set (tests only)."""
    directions = None
    if config.attack.kind == "gradient":
        directions = torch.as_tensor(gradient_directions(config, data))
    spec = PoisonSpec(seeds=torch.tensor([poison_seed]), rho=config.threat.rho, delta=delta, norm=config.threat.norm,
                      kind=config.attack.kind, sign_noise=config.attack.sign_noise, directions=directions)
    x = torch.as_tensor(data.x_train, dtype=torch.float64)
    idx = torch.arange(x.shape[0]).view(1, -1)
    return poison_batch(spec, x[idx], idx, torch.float64)[0], spec


def reference_run(config, data, seeds_row, delta):
    """One trajectory with nn.Module + torch.optim.SGD + autograd, on the same poisoned data and order."""
    dtype = torch.float64 if config.recipe.dtype == "float64" else torch.float32
    shape = MLPShape.from_spec(config.model, data.input_dim, data.n_classes)
    module = to_module(init_params(shape, [seeds_row[0]], dtype=dtype), 0)
    x_poison, _ = poisoned_dataset(config, data, int(seeds_row[1]), delta)
    x_poison = x_poison.to(dtype)
    y = torch.as_tensor(data.y_train)
    r = config.recipe
    opt = torch.optim.SGD(module.parameters(), lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay)
    sched = Schedule(torch.tensor([seeds_row[2]]), data.x_train.shape[0], r.batch)
    loss_fn = torch.nn.CrossEntropyLoss()
    for t in range(r.steps):
        idx = sched.indices(t)[0]
        opt.zero_grad()
        loss_fn(module(x_poison[idx]), y[idx]).backward()
        opt.step()
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


BACKENDS_F64 = ["torch", "numba"]  # triton trains in float32 only
BACKENDS_ALL = ["torch", "numba", "triton"]
# triton runs in the interpreter on CPU tensors, or compiled on a CUDA device (TRITON_INTERPRET=0)
TRITON_DEVICE = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1" else "cpu"


def device_for(backend):
    return TRITON_DEVICE if backend == "triton" else "cpu"


@pytest.mark.parametrize("backend", BACKENDS_F64)
@pytest.mark.parametrize("attack,norm", [("gradient", "inf"), ("sign", "2"), ("uniform", "inf")])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_equivalence_float64_against_nn_module(small_data, attack, norm, momentum, backend):
    config = make_config(attack, norm, momentum=momentum, hidden=(7, 5))
    seeds = trajectory_seeds(11, Purpose.SAMPLE, 3)
    delta = 0.15
    engine_params = _final_params(config, small_data, seeds, delta, backend)
    for i in range(3):
        ref = reference_run(config, small_data, seeds[i], delta)
        np.testing.assert_allclose(engine_params[i].numpy(), ref.numpy(), rtol=0, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS_ALL)
def test_equivalence_float32_against_nn_module(small_data, backend):
    config = make_config("gradient", "inf", dtype="float32", hidden=(7,))
    seeds = trajectory_seeds(12, Purpose.SAMPLE, 3)
    engine_params = _final_params(config, small_data, seeds, 0.1, backend)
    for i in range(3):
        ref = reference_run(config, small_data, seeds[i], 0.1)
        # float32: different summation orders in bmm vs nn.Linear; 24 steps stay within 1e-5
        np.testing.assert_allclose(engine_params[i].numpy(), ref.numpy(), rtol=0, atol=1e-5)


def _final_params(config, data, seeds, delta, backend="torch"):
    """The engine's final parameters (via the backend contract the engine itself uses)."""
    from barrierkit.backends import StepProblem, TrainState, get, torch_dtype

    dtype = torch_dtype(config.recipe.dtype)
    dev = device_for(backend)
    shape = MLPShape.from_spec(config.model, data.input_dim, data.n_classes)
    s = torch.as_tensor(seeds, device=dev)
    directions = torch.as_tensor(gradient_directions(config, data), device=dev) if config.attack.kind == "gradient" else None
    problem = StepProblem.from_config(config, torch.as_tensor(data.x_train, dtype=torch.float64, device=dev),
                                      torch.as_tensor(data.y_train, device=dev), s, delta, directions)
    state = TrainState(init_params(shape, seeds[:, 0], dtype=dtype, device=dev))
    get(backend).train_segment(state, problem, 0, config.recipe.steps)
    return flatten(state.params).cpu()


@pytest.mark.parametrize("attack,norm", ATTACKS)
def test_budget_holds(small_data, attack, norm):
    config = make_config(attack, norm, rho=0.3)
    delta = 0.2
    x = torch.as_tensor(small_data.x_train, dtype=torch.float64)
    fractions = []
    for seed in (3, 4, 5):
        xp, spec = poisoned_dataset(config, small_data, seed, delta)
        diff = (xp - x).numpy()
        norms = np.abs(diff).max(axis=1) if norm == "inf" else np.linalg.norm(diff, axis=1)
        assert norms.max() <= delta * (1 + 1e-12)
        assert xp.min() >= 0.0 and xp.max() <= 1.0
        moved = np.any(diff != 0, axis=1)
        mask = spec.with_point_draws(x.shape[0]).point_mask[0].numpy()
        assert not np.any(moved & ~mask), "a point outside the poison subset moved"
        assert moved[mask].mean() > 0.9, "the attack must actually move the subset"
        fractions.append(mask.mean())
    n = x.shape[0]
    assert abs(np.mean(fractions) - 0.3) < 5 * np.sqrt(0.3 * 0.7 / (3 * n))


def test_unclipped_budget_is_used():
    """Before clipping, sign and l_inf-uniform draws reach the budget (uniform is not degenerate)."""
    from barrierkit.poison import perturbation

    spec = PoisonSpec(seeds=torch.tensor([1, 2]), rho=1.0, delta=0.3, norm="inf", kind="sign")
    idx = torch.arange(50).view(1, -1).expand(2, -1)
    d = perturbation(spec, idx, 37)
    assert torch.all(d.abs() == 0.3)
    assert 0.4 < (d > 0).double().mean() < 0.6
    spec2 = PoisonSpec(seeds=torch.tensor([1, 2]), rho=1.0, delta=0.3, norm="2", kind="uniform")
    d2 = perturbation(spec2, idx, 37)
    r = torch.linalg.vector_norm(d2, dim=-1)
    assert torch.all(r <= 0.3 + 1e-12) and r.mean() > 0.25  # uniform in the ball: radius concentrates near delta
    # every coordinate is symmetric, the last of an odd dimension too (its Box-Muller partner is a drawn word)
    many = PoisonSpec(seeds=torch.arange(2000), rho=1.0, delta=0.3, norm="2", kind="uniform")
    for dim in (1, 3):
        negative = (perturbation(many, torch.zeros(2000, 1, dtype=torch.int64), dim)[:, 0] < 0).double().mean(dim=0)
        assert ((negative > 0.45) & (negative < 0.55)).all(), (dim, negative)


def test_on_the_fly_poison_equals_materialised(small_data):
    config = make_config("uniform", "2", rho=0.5)
    xp, spec = poisoned_dataset(config, small_data, 9, 0.3)
    idx = torch.tensor([[5, 77, 5, 149, 0]])
    x = torch.as_tensor(small_data.x_train, dtype=torch.float64)
    assert torch.equal(poison_batch(spec, x[idx], idx, torch.float64)[0], xp[idx[0]])


@pytest.mark.parametrize("backend", BACKENDS_ALL)
def test_replay_from_seeds_is_bit_exact_and_chunking_is_invisible(small_data, backend):
    # the Triton interpreter is slow: fewer steps, still two recorded intervals and three chunks
    config = make_config("gradient", "inf", dtype="float32", steps=8 if backend == "triton" else 24)
    seeds = trajectory_seeds(3, Purpose.SAMPLE, 7)
    dev = device_for(backend)
    full = sample(config, 0.2, seeds, data=small_data, progress=False, backend=backend, device=dev)
    chunked = sample(config, 0.2, seeds, data=small_data, chunk=3, progress=False, backend=backend, device=dev)
    assert np.array_equal(full.features, chunked.features)
    assert np.array_equal(full.test_accuracy, chunked.test_accuracy)
    one = sample(config, 0.2, seeds[4:5], data=small_data, progress=False, backend=backend, device=dev)
    assert np.array_equal(one.features[0], full.features[4])
    assert one.test_accuracy[0] == full.test_accuracy[4]


@pytest.mark.parametrize("backend", BACKENDS_ALL)
def test_delta_zero_reproduces_clean_runs(small_data, backend):
    seeds = trajectory_seeds(4, Purpose.SAMPLE, 4)
    dtype = "float32" if backend == "triton" else "float64"
    steps = 8 if backend == "triton" else 24  # the Triton interpreter is slow
    poisoned_cfg = make_config("sign", "inf", rho=0.5, dtype=dtype, steps=steps)
    clean_cfg = make_config("sign", "inf", rho=0.0, dtype=dtype, steps=steps)
    dev = device_for(backend)
    a = sample(poisoned_cfg, 0.0, seeds, data=small_data, progress=False, backend=backend, device=dev)
    b = sample(clean_cfg, 0.7, seeds, data=small_data, progress=False, backend=backend, device=dev)
    assert np.array_equal(a.features, b.features) and np.array_equal(a.test_accuracy, b.test_accuracy)
    c = sample(poisoned_cfg, 0.3, seeds, data=small_data, progress=False, backend=backend, device=dev)
    assert not np.array_equal(a.features, c.features), "poison must change the trajectories"


def test_trajectories_content_and_round_trip(small_data, tmp_path):
    config = make_config("gradient", "2")
    seeds = trajectory_seeds(5, Purpose.SAMPLE, 5)
    runs = sample(config, 0.1, seeds, data=small_data, progress=False)
    K = config.recipe.intervals
    assert runs.features.shape == (5, K + 1, config.features.dim)
    assert np.all(runs.features[:, 0, -1] == 0.0), "drift at step 0 is zero"
    assert np.all(np.diff(runs.features[:, :, -1], axis=1).sum(axis=1) > 0), "parameters move"
    assert np.all((runs.test_accuracy >= 0) & (runs.test_accuracy <= 1))
    assert runs.meta["data_hash"] == small_data.content_hash and runs.meta["timings"]["trajectory_steps_per_s"] > 0
    path = tmp_path / "t.npz"
    runs.save(path)
    back = type(runs).load(path)
    assert np.array_equal(back.features, runs.features) and np.array_equal(back.seeds, runs.seeds)
    assert np.array_equal(back.test_hits, runs.test_hits) and back.test_size == runs.test_size
    assert back.meta == runs.meta and back.delta == runs.delta
    assert (path.stat().st_mode & 0o077) == 0


def test_clean_runs_and_unsafe_labels(small_data):
    config = make_config("gradient", "inf", rho=0.9, steps=40)
    clean = clean_runs(config, 5, master_seed=1, data=small_data, progress=False)
    rule = SafetyRule.from_clean_hits(clean.test_hits, clean.test_size, 0.05)
    assert clean.test_size == small_data.x_test.shape[0] and clean.test_hits.dtype == np.int64
    assert rule.g_clean == np.median(clean.test_accuracy) and rule.g_clean > 0.5
    runs = sample(config, 1.0, trajectory_seeds(1, Purpose.SAMPLE, 5), data=small_data, progress=False)
    drop = rule.accuracy_drop(runs.test_hits)
    assert np.array_equal(runs.test_accuracy, runs.test_hits / runs.test_size)
    exact = [Fraction(rule.clean_hits_x2, 2) - int(h) > Fraction(1, 20) * runs.test_size for h in runs.test_hits]
    assert rule.unsafe(runs.test_hits).tolist() == exact and np.all(drop[exact] > 0.05)


def test_digits_gradient_attack_is_error_maximising(digits):
    """The default attack must actually hurt: much more than random sign poison at the same budget."""
    base = SampleConfig(features=FeatureSpec(projection_dim=2, probe_size=16))
    seeds = trajectory_seeds(0, Purpose.SAMPLE, 12)
    grad = sample(base, 0.3, seeds, data=digits, progress=False).test_accuracy
    sign_cfg = SampleConfig(attack=SamplingAttack(kind="sign"), features=base.features)
    rand = sample(sign_cfg, 0.3, seeds, data=digits, progress=False).test_accuracy
    assert np.median(rand) - np.median(grad) > 0.05


def test_in_fixed_blocks_pads_cuts_and_keeps_shapes():
    from barrierkit.models import in_fixed_blocks

    a, b = torch.randn(70, 3, dtype=torch.float64), torch.randn(70, dtype=torch.float64)
    seen = []

    def fn(x, y):
        seen.append(x.shape[0])
        return x.sum(dim=1) * y

    out = in_fixed_blocks(fn, [a, b], rows=16)
    assert seen == [16] * 5 and out.shape == (70,)
    assert torch.equal(out, a.sum(dim=1) * b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_cuda_chunking_is_invisible_at_n300(small_data, backend):
    """On a GPU cuBLAS and torch's reductions choose kernels by shape: features, accuracy and replay
    must still not depend on N or chunking (the feature map works in fixed blocks)."""
    if backend == "triton" and TRITON_DEVICE != "cuda":
        pytest.skip("triton is interpreted here")
    config = make_config("gradient", "inf", dtype="float32")
    seeds = trajectory_seeds(6, Purpose.SAMPLE, 300)
    full = sample(config, 0.2, seeds, data=small_data, progress=False, backend=backend, device="cuda")
    chunked = sample(config, 0.2, seeds, data=small_data, chunk=37, progress=False, backend=backend, device="cuda")
    one = sample(config, 0.2, seeds[211:212], data=small_data, progress=False, backend=backend, device="cuda")
    assert np.array_equal(full.features, chunked.features) and np.array_equal(full.test_accuracy, chunked.test_accuracy)
    assert np.array_equal(one.features[0], full.features[211]) and one.test_accuracy[0] == full.test_accuracy[211]
