"""The numba CPU backend against the torch reference: Philox bits, poisoned rows, SGD trajectories.

Tolerances: the Philox words and the poisoned rows (float64) must be identical; parameters after
several SGD steps must agree to 1e-12 (float64, rtol 0) and 1e-5 (float32, rtol 0: the two
backends sum the matrix products in different orders, and torch fuses a multiply-add in its
SGD update where numba rounds twice).
"""
import numpy as np
import pytest
import torch

pytest.importorskip("numba")

from barrierkit import rng  # noqa: E402
from barrierkit.backends import numba_cpu, torch_ref  # noqa: E402
from barrierkit.backends.torch_ref import StepProblem, TrainState  # noqa: E402
from barrierkit.data import make_synthetic  # noqa: E402
from barrierkit.models import MLPShape, flatten, init_params  # noqa: E402
from barrierkit.poison import PoisonSpec, poison_batch  # noqa: E402
from barrierkit.schedule import Schedule  # noqa: E402

# Random123 known-answer vectors for Philox4x32-10: (counter, key, expected words).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]
N_TRAIN = 41  # odd: with batch 8, an epoch is 5 steps and drops one point


@pytest.fixture(scope="module")
def datasets():
    cache = {}

    def get(dim, n_classes):
        if (dim, n_classes) not in cache:
            cache[dim, n_classes] = make_synthetic(n_train=N_TRAIN, n_test=5, dim=dim, n_classes=n_classes, spread=0.25, seed=dim)
        return cache[dim, n_classes]

    return get


def _directions(n, dim, norm, seed=0):
    """Unit attack directions (their values do not matter to the backend, only their use)."""
    g = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return torch.sign(g) if norm == "inf" else g / g.norm(dim=1, keepdim=True)


def _seeds(n, salt=0):
    return torch.as_tensor(rng.derive_seeds(1234 + salt, 1, 0, 3 * n).astype(np.int64)).view(n, 3)


def _spec(seeds, kind, norm, n_train, dim, cached, rho=0.45, delta=0.2, sign_noise=0.3):
    directions = _directions(n_train, dim, norm) if kind == "gradient" else None
    spec = PoisonSpec(seeds=seeds[:, 1], rho=rho, delta=delta, norm=norm, kind=kind, sign_noise=sign_noise, directions=directions)
    return spec.with_point_draws(n_train) if cached else spec


# --------------------------------------------------------------------------- Philox


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_philox_known_answers(counter, key, expected):
    assert [int(v) for v in numba_cpu.philox4x32(*counter, *key)] == list(expected)


def test_philox_matches_rng_on_random_inputs(np_rng):
    n = 400
    seeds = np_rng.integers(0, 2**63, size=n, dtype=np.int64).astype(np.uint64)
    c0, c1, c3 = (np_rng.integers(0, 2**32, size=n, dtype=np.int64) for _ in range(3))
    c0[:4] = [0, 1, 2**32 - 1, 2**31]
    for stream in rng.Stream:
        expected = np.stack(rng.bits_numpy(seeds, c0, c1, stream, c3), axis=1)
        got = np.array([numba_cpu.philox4x32(c0[j], c1[j], int(stream), c3[j], seeds[j] & np.uint64(0xFFFFFFFF),
                                             seeds[j] >> np.uint64(32)) for j in range(n)], dtype=np.uint64)
        assert np.array_equal(got, expected), stream


# --------------------------------------------------------------------------- poison

ATTACKS = [("gradient", "inf"), ("gradient", "2"), ("sign", "inf"), ("sign", "2"), ("uniform", "inf"), ("uniform", "2")]


@pytest.mark.parametrize("kind,norm", ATTACKS)
@pytest.mark.parametrize("dim", [5, 37])  # 37: a partial Philox block and a second 32-bit sign word
@pytest.mark.parametrize("cached", [False, True])
def test_poisoned_rows_equal_reference(kind, norm, dim, cached):
    data = make_synthetic(n_train=N_TRAIN, n_test=5, dim=dim, n_classes=3, spread=0.4, seed=1)
    seeds = _seeds(6, salt=dim)
    spec = _spec(seeds, kind, norm, N_TRAIN, dim, cached)
    x = torch.as_tensor(data.x_train)
    idx = torch.as_tensor(np.random.default_rng(dim).integers(0, N_TRAIN, size=(6, 9)))
    expected = poison_batch(spec, x[idx], idx, torch.float64).numpy()
    got = numba_cpu.poison_rows(spec, x, idx, torch.float64)
    assert got.dtype == np.float64 and np.array_equal(got, expected)
    assert not np.array_equal(got, x[idx].numpy()), "the poison must move some rows"


def test_poisoned_rows_round_once_to_float32():
    data = make_synthetic(n_train=N_TRAIN, n_test=5, dim=37, n_classes=3, spread=0.4, seed=1)
    spec = _spec(_seeds(4), "uniform", "inf", N_TRAIN, 37, cached=False)
    x = torch.as_tensor(data.x_train)
    idx = torch.as_tensor(np.random.default_rng(0).integers(0, N_TRAIN, size=(4, 5)))
    got = numba_cpu.poison_rows(spec, x, idx, torch.float32)
    assert got.dtype == np.float32 and np.array_equal(got, poison_batch(spec, x[idx], idx, torch.float32).numpy())


def test_subset_is_the_rng_subset_stream():
    """Which rows move is exactly u < rho for u from rng.bits_numpy (Stream.SUBSET), on the fly."""
    dim, n = 40, 8
    data = make_synthetic(n_train=N_TRAIN, n_test=5, dim=dim, n_classes=3, spread=0.2, seed=2)
    seeds = _seeds(n, salt=7)
    spec = _spec(seeds, "sign", "inf", N_TRAIN, dim, cached=False, delta=0.05)
    x = torch.as_tensor(data.x_train)
    idx = torch.arange(N_TRAIN).view(1, -1).expand(n, -1)
    moved = np.any(numba_cpu.poison_rows(spec, x, idx, torch.float64) != x[idx].numpy(), axis=2)
    u = rng.uniform_from_bits_numpy(rng.bits_numpy(seeds[:, 1].numpy()[:, None], idx.numpy(), 0, rng.Stream.SUBSET)[0])
    assert np.array_equal(moved, u < spec.rho) and 0 < moved.mean() < 1


def test_inactive_poison_is_clean_rounded_data():
    data = make_synthetic(n_train=N_TRAIN, n_test=5, dim=13, n_classes=3, seed=4)
    spec = _spec(_seeds(3), "sign", "inf", N_TRAIN, 13, cached=False, delta=0.0)
    x = torch.as_tensor(data.x_train)
    idx = torch.arange(12).view(3, 4)
    assert np.array_equal(numba_cpu.poison_rows(spec, x, idx, torch.float64), x[idx].numpy())


# --------------------------------------------------------------------------- training

# (N, D, hidden, classes, batch, attack, norm, momentum, weight decay, dtype, cached point draws, delta)
CASES = [
    (1, 5, (7,), 2, 1, "gradient", "inf", 0.0, 0.0, "float64", True, 0.2),
    (3, 13, (7, 5), 3, 8, "gradient", "2", 0.9, 1e-2, "float64", False, 0.2),
    (17, 5, (7, 5), 2, 8, "sign", "inf", 0.0, 1e-2, "float64", True, 0.2),
    (3, 13, (7,), 3, 1, "sign", "2", 0.9, 0.0, "float64", True, 0.2),
    (17, 13, (7,), 3, 8, "uniform", "inf", 0.9, 1e-2, "float64", False, 0.2),
    (1, 13, (7, 5), 2, 8, "uniform", "2", 0.0, 0.0, "float64", True, 0.2),
    (3, 5, (7,), 3, 8, "gradient", "inf", 0.9, 1e-2, "float64", True, 0.0),  # inactive poison: clean runs
    (17, 13, (7, 5), 3, 8, "gradient", "inf", 0.9, 1e-2, "float32", True, 0.2),
    (3, 5, (7, 5), 2, 1, "sign", "inf", 0.0, 1e-2, "float32", False, 0.2),
    (1, 13, (7, 5), 3, 8, "uniform", "inf", 0.0, 0.0, "float32", True, 0.2),
    (17, 5, (7,), 2, 8, "uniform", "2", 0.9, 0.0, "float32", False, 0.2),
    (3, 13, (7,), 3, 8, "sign", "2", 0.9, 1e-2, "float32", True, 0.2),
]
TOL = {"float64": 1e-12, "float32": 1e-5}


def _setup(case, data):
    n, dim, hidden, n_classes, batch, kind, norm, momentum, weight_decay, dtype_name, cached, delta = case
    dtype = getattr(torch, dtype_name)
    seeds = _seeds(n, salt=dim + batch)
    spec = _spec(seeds, kind, norm, N_TRAIN, dim, cached, delta=delta)
    problem = StepProblem(torch.as_tensor(data.x_train), torch.as_tensor(data.y_train), Schedule(seeds[:, 2], N_TRAIN, batch),
                          spec, lr=0.3, momentum=momentum, weight_decay=weight_decay, dtype=dtype)
    return TrainState(init_params(MLPShape(dim, hidden, n_classes), seeds[:, 0].numpy(), dtype=dtype)), problem


def _run(backend, case, data, segments):
    state, problem = _setup(case, data)
    for t0, t1 in segments:
        backend(state, problem, t0, t1)
    return state


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)).replace(" ", ""))
def test_train_segment_equals_torch_reference(datasets, case):
    data = datasets(case[1], case[3])
    segments = [(0, 5), (5, 6), (6, 13)]  # 13 steps: across epochs (5 steps each at batch 8) and calls
    ref = _run(torch_ref.train_segment, case, data, segments)
    got = _run(numba_cpu.train_segment, case, data, segments)
    tol = TOL[case[9]]
    assert got.params[0].dtype == ref.params[0].dtype
    np.testing.assert_allclose(flatten(got.params).numpy(), flatten(ref.params).numpy(), rtol=0, atol=tol)
    if case[7]:
        np.testing.assert_allclose(flatten(got.momentum).numpy(), flatten(ref.momentum).numpy(), rtol=0, atol=tol)
    else:
        assert got.momentum is None
    assert not torch.equal(flatten(got.params), flatten(_setup(case, data)[0].params)), "training must move the parameters"


@pytest.mark.parametrize("case", [CASES[0], CASES[1]], ids=["sgd", "momentum"])
def test_non_contiguous_parameters_are_updated_in_place(datasets, case):
    data = datasets(case[1], case[3])
    ref = _run(torch_ref.train_segment, case, data, [(0, 4)])
    state, problem = _setup(case, data)
    w1 = state.params[0].transpose(1, 2).contiguous().transpose(1, 2)  # same values, strided
    state.params[0] = w1
    assert not w1.is_contiguous()
    numba_cpu.train_segment(state, problem, 0, 4)
    assert state.params[0] is w1
    np.testing.assert_allclose(flatten(state.params).numpy(), flatten(ref.params).numpy(), rtol=0, atol=1e-12)


def test_rejects_what_torch_rejects(datasets):
    case = CASES[0]
    data = datasets(case[1], case[3])
    seeds = _seeds(1)
    spec = _spec(seeds, "sign", "inf", N_TRAIN, case[1], cached=False)
    problem = StepProblem(torch.as_tensor(data.x_train), torch.as_tensor(data.y_train), Schedule(seeds[:, 2], N_TRAIN, 1),
                          spec, lr=0.1, dtype=torch.float32)
    state = TrainState(init_params(MLPShape(case[1], (7,), 2), seeds[:, 0].numpy(), dtype=torch.float64))
    with pytest.raises(ValueError, match="dtype"):
        numba_cpu.train_segment(state, problem, 0, 1)
    state = TrainState(init_params(MLPShape(case[1], (7,), 3), seeds[:, 0].numpy(), dtype=torch.float32))
    state.params[2] = state.params[2][:, :2].contiguous()  # W2 [N, 2, 7] but b2 [N, 3]
    with pytest.raises(ValueError, match="params"):
        numba_cpu.train_segment(state, problem, 0, 1)
