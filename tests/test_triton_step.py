"""The fused Triton SGD kernel (kernels/mlp_step.py) and its backend against the torch reference.

On a machine without a GPU the kernels run in Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 before triton is imported) on CPU tensors: these tests prove the kernel's
logic (indexing, masks, poison bits, backward, SGD), not that it compiles. On a CUDA machine run
``TRITON_INTERPRET=0 python -m pytest tests/test_triton_step.py``: the same tests then compile and
run on the GPU, and the CUDA-only tests (MNIST-sized N=4000, CuPy) run too.

Tolerances (float32): after 1 to 5 SGD steps every parameter and momentum buffer is within
atol 2e-6 + rtol 1e-5 of torch_ref (both compute in fp32 with different summation orders; the
poisoned inputs differ by at most ~2 ulp because the reference adds in float64); the poisoned
batches are within 2.5e-7 (2 ulp at 1.0) of poison.poison_batch, and the set of poisoned rows
is identical.
"""

import dataclasses

import numpy as np
import pytest

from conftest import compile_reports
import torch

from barrierkit import rng
from barrierkit.backends import torch_ref
from barrierkit.backends import triton_gpu
from barrierkit.backends.base import StepProblem, TrainState
from barrierkit.config import ConfigError
from barrierkit.kernels import mlp_step
from barrierkit.models import MLPShape, init_params
from barrierkit.poison import PoisonSpec, poison_batch
from barrierkit.schedule import Schedule

COMPILED = torch.cuda.is_available() and not mlp_step.interpreting()
DEVICE = torch.device("cuda" if COMPILED else "cpu")
pytestmark = pytest.mark.skipif(not (COMPILED or mlp_step.interpreting()),
                                reason="needs CUDA, or TRITON_INTERPRET=1 before triton is imported")
cuda_only = pytest.mark.skipif(not COMPILED, reason="needs a CUDA device and compiled Triton (TRITON_INTERPRET=0)")

ATOL, RTOL = 2e-6, 1e-5
POISON_ATOL = 2.5e-7


# --------------------------------------------------------------------------- helpers


def make_problem(N, D, hidden, C, B, n, *, kind="sign", norm="inf", rho=0.5, delta=0.1, sign_noise=0.0, lr=0.5,
                 momentum=0.0, weight_decay=0.0, seed=0, device=DEVICE, cached_draws=True):
    """Random data in [0, 1]^D, N initial models and a StepProblem (the engine's float32 setting)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, D, dtype=torch.float64, generator=g)
    x[: n // 4, : max(1, D // 3)] = 1.0  # points on the boundary: clipping must match
    x[n // 4: n // 2, : max(1, D // 3)] = 0.0
    y = torch.randint(0, C, (n,), generator=g)
    directions = None
    if kind == "gradient":
        raw = torch.randn(n, D, dtype=torch.float64, generator=g)
        directions = raw.sign() if norm == "inf" else raw / raw.norm(dim=1, keepdim=True)
        directions = directions.to(device)
    seeds = torch.randint(0, 2**62, (N, 3), generator=g)
    spec = PoisonSpec(seeds=seeds[:, 1].to(device), rho=rho, delta=delta, norm=norm, kind=kind, sign_noise=sign_noise,
                      directions=directions)
    if cached_draws:
        spec = spec.with_point_draws(n)
    shape = MLPShape(D, tuple(hidden), C)
    params = init_params(shape, seeds[:, 0].numpy(), dtype=torch.float32, device=device)

    def problem():  # a fresh Schedule each time: it caches one epoch permutation
        return StepProblem(x.to(device), y.to(device), Schedule(seeds[:, 2].to(device), n, B), spec, lr,
                                     momentum, weight_decay, torch.float32)

    return params, problem


def run_both(params, problem, t0, t1, segment=triton_gpu.train_segment):
    ref = TrainState([p.clone() for p in params])
    out = TrainState([p.clone() for p in params])
    p_ref, p_out = problem(), problem()
    torch_ref.train_segment(ref, p_ref, 0, t0)  # both start from the same state at t0
    torch_ref.train_segment(out, p_out, 0, t0)
    if out.momentum is not None:
        out.momentum = [m.clone() for m in out.momentum]
    torch_ref.train_segment(ref, p_ref, t0, t1)
    run_both.fallback = segment(out, p_out, t0, t1)  # the reason the steps ran on torch_ref, or None
    return ref, out


def assert_states_close(ref, out, atol=ATOL, rtol=RTOL):
    for k, (a, b) in enumerate(zip(ref.params, out.params)):
        assert torch.isfinite(b).all(), f"param {k} not finite"
        torch.testing.assert_close(b, a, atol=atol, rtol=rtol, msg=lambda m: f"param {k}: {m}")
    if ref.momentum is not None:
        assert out.momentum is not None
        for k, (a, b) in enumerate(zip(ref.momentum, out.momentum)):
            torch.testing.assert_close(b, a, atol=atol, rtol=rtol, msg=lambda m: f"momentum buffer {k}: {m}")


# --------------------------------------------------------------------------- the RNG contract


def test_stream_tags_match_rng():
    assert mlp_step.STREAM_SUBSET == rng.Stream.SUBSET
    assert mlp_step.STREAM_DELTA == rng.Stream.DELTA
    assert mlp_step.STREAM_SIGN_FLIP == rng.Stream.SIGN_FLIP


def test_tl_philox_is_random123_and_rng():
    """tl.philox(seed, c0, c1, c2, c3) == barrierkit.rng with key (seed low, seed high) == Random123."""
    kat = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
           ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
           ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]
    for counter, (k0, k1), expected in kat:
        seed = (k1 << 32) | k0
        seed = seed - 2**64 if seed >= 2**63 else seed  # the same 64 bits as int64
        words = mlp_step.philox_words(*(torch.tensor([v], device=DEVICE) for v in (seed, *counter)))
        assert [int(w) for w in words[0]] == list(expected)
    g = torch.Generator().manual_seed(7)
    seeds = torch.randint(0, 2**63 - 1, (300,), generator=g)
    c0, c1, c3 = (torch.randint(0, 2**32, (300,), generator=g) for _ in range(3))
    for stream in (rng.Stream.SUBSET, rng.Stream.DELTA, rng.Stream.SIGN_FLIP):
        c2 = torch.full((300,), int(stream))
        got = mlp_step.philox_words(*(t.to(DEVICE) for t in (seeds, c0, c1, c2, c3))).cpu()
        ref = torch.stack(rng.bits_torch(seeds, c0, c1, stream, c3), dim=1)
        assert torch.equal(got, ref)


def test_probability_threshold_is_exact():
    """bits < thr(p)  <=>  (bits + 0.5) / 2**32 < p, for edge and random p (float64 reference)."""
    g = np.random.default_rng(3)
    ps = [0.0, 1.0, 0.5, 1e-300, 2.0**-33, 2.0**-32, 1.5 * 2.0**-32, 1 - 2.0**-33, 0.1, 0.3]
    ps += list(g.random(20))
    k = g.integers(0, 2**32, 50)
    ps += [float((kk + 0.5) / 2**32) for kk in k] + [np.nextafter((kk + 0.5) / 2**32, 2.0) for kk in k]
    for p in ps:
        thr = mlp_step.probability_threshold(float(p))
        assert 0 <= thr <= 2**32
        bits = np.unique(np.concatenate([g.integers(0, 2**32, 200, dtype=np.uint64),
                                         np.array([0, 2**32 - 1, max(thr - 1, 0), min(thr, 2**32 - 1)], dtype=np.uint64)]))
        expected = rng.uniform_from_bits_numpy(bits) < p
        assert np.array_equal(bits.astype(np.int64) < thr, expected), p


# --------------------------------------------------------------------------- the in-kernel poison


@pytest.mark.parametrize("kind,norm,D,sign_noise,rho,block_d", [
    ("sign", "inf", 300, 0.0, 0.5, 16),    # crosses Philox blocks of 128 elements
    ("sign", "inf", 300, 0.0, 0.5, 128),   # one tile = one Philox block
    ("sign", "2", 100, 0.0, 0.5, 32),
    ("uniform", "inf", 100, 0.0, 0.7, 16),
    ("uniform", "inf", 100, 0.0, 0.7, 64),
    ("gradient", "inf", 37, 0.3, 0.5, 16),
    ("gradient", "2", 37, 0.0, 1.0, 32),
])
def test_poisoned_batch_equals_reference(kind, norm, D, sign_noise, rho, block_d):
    N, B, n, S = 3, 9, 40, 2
    params, problem = make_problem(N, D, (7,), 3, B, n, kind=kind, norm=norm, rho=rho, delta=0.3, sign_noise=sign_noise,
                                   cached_draws=False)
    prob = problem()
    spec = prob.poison
    idx = torch.stack([prob.schedule.indices(t) for t in range(S)], dim=1)
    dbg = torch.full((N, S, B, D), float("nan"), device=DEVICE)
    x32 = prob.x_train.float().contiguous()
    mlp_step.mlp_sgd_steps([p.clone() for p in params], idx.to(torch.int32).contiguous(), x32, prob.y_train.int(),
                           lr=0.1, attack=kind, norm=norm, seeds=spec.seeds, rho=rho, delta=0.3, sign_noise=sign_noise,
                           directions=None if spec.directions is None else spec.directions.float().contiguous(),
                           debug_poisoned=dbg, block_d=block_d)
    assert torch.isfinite(dbg).all(), "every element of the debug batch must be written"
    full_mask = spec.with_point_draws(n).point_mask
    for s in range(S):
        i = idx[:, s]
        expected = poison_batch(spec, prob.x_train[i], i, torch.float32)
        torch.testing.assert_close(dbg[:, s], expected, atol=POISON_ATOL, rtol=0)
        moved = (dbg[:, s] != x32[i]).any(dim=-1)
        mask = full_mask.gather(1, i)
        assert not (moved & ~mask).any(), "a point outside the poison subset moved"
        assert moved[mask].float().mean() > 0.9
        assert torch.equal(dbg[:, s][~mask], x32[i][~mask]), "unpoisoned rows are the clean rows, exactly"


def test_no_poison_when_rho_or_delta_is_zero():
    params, problem = make_problem(2, 20, (7,), 3, 5, 30, kind="sign", rho=0.0, delta=0.5)
    prob = problem()
    idx = prob.schedule.indices(0).unsqueeze(1).to(torch.int32).contiguous()
    dbg = torch.zeros((2, 1, 5, 20), device=DEVICE)
    x32 = prob.x_train.float().contiguous()
    mlp_step.mlp_sgd_steps([p.clone() for p in params], idx, x32, prob.y_train.int(), lr=0.1, attack="sign",
                           seeds=prob.poison.seeds, rho=0.0, delta=0.5, debug_poisoned=dbg)
    assert torch.equal(dbg[:, 0], x32[idx[:, 0].long()])


# --------------------------------------------------------------------------- training against torch_ref

# (N, D, hidden, classes, batch, n_train, attack, norm, momentum, weight_decay): odd shapes, every
# attack, momentum and weight decay, one and two hidden layers.
CASES = [
    (1, 5, (7,), 2, 1, 20, "sign", "inf", 0.0, 0.0),
    (3, 64, (32,), 10, 8, 40, "uniform", "inf", 0.9, 1e-3),
    (17, 100, (7,), 10, 33, 70, "gradient", "inf", 0.0, 0.0),
    (3, 100, (32,), 2, 33, 70, "sign", "2", 0.5, 0.0),
    (3, 5, (32,), 10, 8, 17, "gradient", "2", 0.0, 1e-2),
    (3, 13, (7, 5), 3, 8, 40, "gradient", "inf", 0.9, 1e-3),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "N{}-D{}-H{}-C{}-B{}-{}{}-m{}".format(
    c[0], c[1], "x".join(map(str, c[2])), c[3], c[4], c[6], c[7], c[8]))
@pytest.mark.parametrize("steps", [1, 5])
def test_steps_match_torch_ref(case, steps):
    N, D, hidden, C, B, n, kind, norm, mom, wd = case
    params, problem = make_problem(N, D, hidden, C, B, n, kind=kind, norm=norm, momentum=mom, weight_decay=wd,
                                   sign_noise=0.3 if kind == "gradient" else 0.0, seed=N + D)
    ref, out = run_both(params, problem, 0, steps)
    assert_states_close(ref, out)
    assert run_both.fallback is None


def test_segments_split_launches_and_epochs():
    """t0 > 0 with existing momentum buffers, several launches per segment, epoch boundaries inside."""
    params, problem = make_problem(5, 30, (16,), 4, 6, 20, kind="uniform", momentum=0.9, weight_decay=1e-3, seed=5)
    segment = triton_gpu.make_train_segment(max_steps=2, block_d=64)
    ref, out = run_both(params, problem, 2, 9, segment=segment)  # 3 steps per epoch
    assert_states_close(ref, out, atol=5e-6, rtol=2e-5)


def test_chunking_is_invisible_and_precision_is_recorded():
    """A trajectory's result does not depend on which others share the launch (bit for bit)."""
    params, problem = make_problem(5, 40, (16,), 4, 6, 30, kind="uniform", momentum=0.9, seed=9)
    record = triton_gpu.backend("tf32")
    segment = record.train_segment
    assert record.name == "triton_tf32" and record.precision == "tf32" and record.describe()["precision"] == "tf32"
    assert triton_gpu.backend().describe()["precision"] == "ieee"
    full = TrainState([p.clone() for p in params])
    segment(full, problem(), 0, 3)
    prob = problem()
    keep = torch.tensor([3, 1], device=DEVICE)
    prob.schedule = Schedule(prob.schedule.seeds[keep], prob.schedule.n, prob.schedule.batch)
    prob.poison = PoisonSpec(seeds=prob.poison.seeds[keep], rho=prob.poison.rho, delta=prob.poison.delta,
                             norm=prob.poison.norm, kind=prob.poison.kind)
    part = TrainState([p[keep].clone() for p in params])
    assert segment(part, prob, 0, 3) is None
    for a, b in zip(full.params, part.params):
        assert torch.equal(a[keep], b)


def test_uniform_l2_falls_back_to_torch_ref():
    params, problem = make_problem(3, 13, (7,), 3, 8, 40, kind="uniform", norm="2", momentum=0.9)
    ref, out = run_both(params, problem, 0, 3)
    for a, b in zip(ref.params, out.params):
        assert torch.equal(a, b)
    assert "uniform l_2" in run_both.fallback
    assert not triton_gpu.backend().runs_natively("uniform", "2") and triton_gpu.backend().runs_natively("uniform", "inf")


def test_chosen_subset_falls_back_to_torch_ref():
    n = 40
    params, problem = make_problem(3, 13, (7,), 3, 8, n, kind="sign", cached_draws=False)
    chosen = torch.zeros(n, dtype=torch.bool, device=DEVICE)
    chosen[::3] = True

    def chosen_problem():
        p = problem()
        return dataclasses.replace(p, poison=dataclasses.replace(p.poison, chosen=chosen).with_point_draws(n))

    ref, out = run_both(params, chosen_problem, 0, 3)
    for a, b in zip(ref.params, out.params):
        assert torch.equal(a, b)
    assert "chosen subset" in run_both.fallback
    random_ref, _ = run_both(params, problem, 0, 3)
    assert not torch.equal(random_ref.params[0], ref.params[0]), "the chosen points are not the random subset"


@pytest.mark.parametrize("kind", ["uniform", "sign", "gradient", "adaptive", "lookahead"])
@pytest.mark.parametrize("norm", ["inf", "2"])
def test_the_record_says_what_the_kernel_runs(kind, norm):
    """The backend record's native attacks are exactly those the fused kernel takes."""
    runs = mlp_step.unsupported_reason(kind, norm, [8], 8, 3) is None
    assert triton_gpu.backend().runs_natively(kind, norm) == runs == triton_gpu.backend("tf32").runs_natively(kind, norm)


def test_records_are_made_once():
    from barrierkit import backends

    assert backends.get("triton") is backends.get("triton") and hash(backends.get("triton_tf32"))


def test_engine_sample_with_triton_backend(small_data):
    """engine.sample with the triton segment function: the same features as the torch backend (fp32)."""
    from barrierkit import engine
    from barrierkit.config import FeatureSpec, ModelSpec, SampleConfig, SamplingAttack, ThreatModel, TrainRecipe

    config = SampleConfig(dataset="unused", model=ModelSpec(hidden=(7,)),
                          recipe=TrainRecipe(steps=8, batch=8, lr=0.2, momentum=0.9, record_every=4, dtype="float32"),
                          threat=ThreatModel(norm="inf", rho=0.4), attack=SamplingAttack(kind="gradient", sign_noise=0.2),
                          features=FeatureSpec(projection_dim=4, probe_size=32))
    seeds = rng.trajectory_seeds(3, rng.Purpose.SAMPLE, 3)
    ref = engine.sample(config, 0.2, seeds, data=small_data, progress=False, device=DEVICE)
    out = engine.sample(config, 0.2, seeds, data=small_data, progress=False, device=DEVICE, backend="triton")
    assert out.meta["backend"] == "triton" and out.meta["fallbacks"] == []
    np.testing.assert_allclose(out.features, ref.features, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- validation before launch


def _launch_args(N=2, D=6, H=7, C=3, B=4, n=10):
    params, problem = make_problem(N, D, (H,), C, B, n)
    prob = problem()
    idx = prob.schedule.indices(0).unsqueeze(1).to(torch.int32).contiguous()
    return [p.clone() for p in params], idx, prob.x_train.float().contiguous(), prob.y_train.int(), prob.poison.seeds


def test_validation_rejects_bad_inputs_before_launch():
    params, idx, x, y, seeds = _launch_args()
    ok = dict(lr=0.1, attack="sign", seeds=seeds, rho=0.5, delta=0.1)
    before = [p.clone() for p in params]

    def rejects(match, **changes):
        args = dict(params=params, idx=idx, x=x, y=y)
        kwargs = dict(ok)
        for key, value in changes.items():
            (args if key in args else kwargs)[key] = value
        with pytest.raises(ValueError, match=match):
            mlp_step.mlp_sgd_steps(args.pop("params"), args.pop("idx"), args.pop("x"), args.pop("y"), **kwargs)

    bad = x.clone()
    bad[3, 2] = float("nan")
    rejects(r"^x: .*NaN", x=bad)
    bad = x.clone()
    bad[1, 1] = 1.5
    rejects(r"^x: .*domain", x=bad)
    rejects(r"^x: .*domain", domain=(0.0, 0.5))
    bad_params = [p.clone() for p in params]
    bad_params[2][0, 0, 0] = float("nan")
    rejects(r"^params\[2\]: .*NaN", params=bad_params)
    rejects(r"^params\[0\] \(W1\): must be torch.float32", params=[p.double() for p in params])
    rejects(r"^params\[1\] \(b1\): must have shape", params=[params[0], params[1][:, :3].contiguous(), *params[2:]])
    rejects(r"^params: expected", params=params[:3])
    rejects(r"^idx: batch indices", idx=idx + 100)
    rejects(r"^idx: must be torch.int32", idx=idx.long())
    rejects(r"^y: labels", y=y + 5)
    rejects(r"^x: must be torch.float32", x=x.double())
    rejects(r"^attack: uniform l_2", attack="uniform", norm="2")
    rejects(r"^attack: unknown", attack="pgd")
    rejects(r"^seeds: .*required", seeds=None)
    rejects(r"^directions: ", attack="gradient")
    rejects(r"^momentum_buffers: required", momentum=0.9)
    rejects(r"^lr: ", lr=float("nan"))
    rejects(r"^input_precision: ", input_precision="bf16")
    rejects(r"^block_d: ", block_d=24)
    for a, b in zip(before, params):
        assert torch.equal(a, b), "nothing may run before validation fails"


def test_three_hidden_layers_are_rejected():
    params, problem = make_problem(2, 6, (5,), 3, 4, 10)
    prob = problem()
    idx = prob.schedule.indices(0).unsqueeze(1).to(torch.int32).contiguous()
    six = init_params(MLPShape(6, (5, 5, 5), 3), [1, 2], device=DEVICE)
    with pytest.raises(ValueError, match="^params: expected"):
        mlp_step.mlp_sgd_steps(six, idx, prob.x_train.float(), prob.y_train.int(), lr=0.1)


def test_backend_rejects_float64():
    params, problem = make_problem(2, 6, (5,), 3, 4, 10)
    prob = problem()
    prob.dtype = torch.float64
    state = TrainState([p.double() for p in params])
    with pytest.raises(ConfigError, match="float32"):
        triton_gpu.train_segment(state, prob, 0, 1)


def test_backend_validates_data_once():
    params, problem = make_problem(2, 6, (5,), 3, 4, 10)
    prob = problem()
    prob.x_train = prob.x_train.clone()
    prob.x_train[0, 0] = float("nan")
    with pytest.raises(ValueError, match="^x: .*NaN"):
        triton_gpu.train_segment(TrainState([p.clone() for p in params]), prob, 0, 1)


# --------------------------------------------------------------------------- compiles for Hopper (no GPU needed)


def test_kernel_compiles_for_sm90():
    """triton.compile for GPUTarget('cuda', 90) with Triton's bundled ptxas: catches what the
    interpreter cannot (tl.dot shape/layout rules, lowering); runs in a subprocess because this one
    imported triton in interpreter mode."""
    reports = compile_reports("mlp_step", "[dict(), dict(input_precision='tf32'), dict(attack='uniform', hidden=(64, 32), input_precision='tf32', debug=True), dict(attack='sign', hidden=(7,), batch=1, n_classes=2, momentum=False, weight_decay=False)]")
    assert reports[1]["sass"]["HGMMA"] > 0, "tf32 dots must use Hopper tensor cores (wgmma)"
    assert reports[0]["sass"]["HGMMA"] == 0, "ieee dots must not use tensor cores"
    assert reports[1]["stack"] == 0, f"the tf32 MNIST-shaped kernel should not spill: {reports[1]}"


# --------------------------------------------------------------------------- CUDA only


@cuda_only
@pytest.mark.parametrize("precision,atol", [("ieee", 2e-5), ("tf32", 5e-3)])
def test_mnist_shaped_n4000_against_torch_ref(precision, atol):
    """784-64-10, batch 64, N = 4000, gradient attack with momentum: 8 steps on the GPU."""
    params, problem = make_problem(4000, 784, (64,), 10, 64, 2048, kind="gradient", rho=0.5, delta=0.2, sign_noise=0.1,
                                   lr=0.1, momentum=0.9, weight_decay=5e-4, seed=1)
    segment = triton_gpu.make_train_segment(input_precision=precision)
    ref, out = run_both(params, problem, 0, 8, segment=segment)
    for p in out.params:
        assert torch.isfinite(p).all()
    assert_states_close(ref, out, atol=atol, rtol=1e-3)
    assert segment.meta["input_precision"] == precision


@cuda_only
def test_cupy_arrays_via_dlpack_update_in_place():
    cupy = pytest.importorskip("cupy")
    params, problem = make_problem(5, 30, (16,), 4, 6, 20, kind="sign")
    prob = problem()
    idx = torch.stack([prob.schedule.indices(t) for t in range(3)], dim=1).to(torch.int32).contiguous()
    x32, y32 = prob.x_train.float().contiguous(), prob.y_train.int().contiguous()
    kwargs = dict(lr=0.5, attack="sign", seeds=prob.poison.seeds, rho=0.5, delta=0.1)
    expected = [p.clone() for p in params]
    mlp_step.mlp_sgd_steps(expected, idx, x32, y32, **kwargs)
    arrays = [cupy.from_dlpack(p.clone()) for p in params]
    mlp_step.mlp_sgd_steps(arrays, cupy.from_dlpack(idx), cupy.from_dlpack(x32), cupy.from_dlpack(y32), **kwargs)
    for a, e in zip(arrays, expected):
        assert torch.equal(torch.from_dlpack(a), e)
