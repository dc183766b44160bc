"""The fused feature kernel (kernels/mlp_features.py) against its torch twin, barrierkit.features.

The reference is what FeatureMap computes: ``flatten(params) @ P.T``, ``loss_and_accuracy`` on
the points and ``||theta - theta0||_2``, all in float64. Without a GPU the kernel runs in Triton's
interpreter (tests/conftest.py sets TRITON_INTERPRET=1), which proves its logic (segment offsets,
masks, padded classes, the first-maximum rule), not that it compiles;
``test_kernel_compiles_for_sm90`` compiles it for Hopper with Triton's bundled ptxas. On a CUDA
machine run ``TRITON_INTERPRET=0 python -m pytest tests/test_mlp_features.py``.

Tolerance: both sides compute in float64 from the same parameters (fp32 parameters are widened
exactly), so only the summation order differs: |out - ref| <= 1e-12 * (1 + max |ref|) per column
group for either parameter dtype (observed ~1e-15). The accuracy is a count and must be equal.
"""
import numpy as np
import pytest
import torch

from conftest import compile_reports, forbid_launch
from barrierkit.config import FeatureSpec
from barrierkit.features import FeatureMap, projection_matrix
from barrierkit.kernels import mlp_features as MF
from barrierkit.models import MLPShape, flatten, init_params, loss_and_accuracy

COMPILED = torch.cuda.is_available() and not MF.interpreting()
DEVICE = torch.device("cuda" if COMPILED else "cpu")
pytestmark = pytest.mark.skipif(not (COMPILED or MF.interpreting()),
                                reason="needs CUDA, or TRITON_INTERPRET=1 before triton is imported")
cuda_only = pytest.mark.skipif(not COMPILED, reason="needs a CUDA device and compiled Triton (TRITON_INTERPRET=0)")

TOL = 1e-12


def make_case(N, D, hidden, C, P, dtype=torch.float32, k=4, seed=0):
    """Trained-looking models (initialisation plus noise, so logits spread), points, labels,
    the seeded projection and reference parameters theta0."""
    shape = MLPShape(D, tuple(hidden), C)
    gen = torch.Generator().manual_seed(seed)
    params = [(p + 0.5 * torch.randn(p.shape, generator=gen, dtype=torch.float64)).to(dtype).to(DEVICE)
              for p in init_params(shape, range(seed, seed + N), dtype=torch.float64)]
    x = torch.rand(P, D, generator=gen, dtype=torch.float64).to(DEVICE)
    y = torch.randint(0, C, (P,), generator=gen).to(DEVICE)
    proj = torch.as_tensor(projection_matrix(FeatureSpec(projection_dim=k, seed=seed), shape.param_count), device=DEVICE)
    theta0 = flatten(init_params(shape, range(1000 + seed, 1000 + seed + N), dtype=dtype, device=DEVICE)).to(torch.float64)
    return params, x, y, proj, theta0


def reference(params, x, y, proj=None, theta0=None):
    p64 = [p.to(torch.float64) for p in params]
    theta = flatten(p64)
    loss, acc = loss_and_accuracy(p64, x, y)
    drift = torch.linalg.vector_norm(theta - (0.0 if theta0 is None else theta0), dim=1)
    cols = ([theta @ proj.T] if proj is not None and proj.shape[0] else []) + [loss[:, None], acc[:, None], drift[:, None]]
    return torch.cat(cols, dim=1)


def check(out, ref, k):
    assert out.dtype == torch.float64 and out.shape == ref.shape
    assert torch.isfinite(out).all()
    for name, sl in (("projection", slice(0, k)), ("loss", slice(k, k + 1)), ("drift", slice(k + 2, k + 3))):
        o, r = out[:, sl].cpu(), ref[:, sl].cpu()
        if r.numel():
            err = float((o - r).abs().max())
            assert err <= TOL * (1.0 + float(r.abs().max())), f"{name}: max error {err:.3e}"
    assert torch.equal(out[:, k + 1].cpu(), ref[:, k + 1].cpu()), "accuracy"


# N in {1, 3, 17}; D in {5, 64, 100}; one and two hidden layers of odd widths; 2 and 10 classes;
# point counts below, at and above the 16/32-point tiles
SHAPES = [
    (1, 5, (7,), 2, 1),
    (3, 64, (32,), 10, 33),
    (17, 100, (7,), 10, 70),
    (3, 5, (7, 32), 2, 33),
    (1, 100, (32, 7), 10, 16),
    (3, 64, (7,), 10, 32),
]


@pytest.mark.parametrize("case", SHAPES, ids=lambda c: f"N{c[0]}-D{c[1]}-h{'x'.join(map(str, c[2]))}-C{c[3]}-P{c[4]}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_matches_the_torch_feature_map(case, dtype):
    N, D, hidden, C, P = case
    params, x, y, proj, theta0 = make_case(N, D, hidden, C, P, dtype=dtype, seed=len(SHAPES) * N + D)
    check(MF.mlp_features(params, x, y, proj, theta0), reference(params, x, y, proj, theta0), proj.shape[0])


def test_without_projection_or_theta0_gives_loss_accuracy_and_norm():
    params, x, y, _, _ = make_case(5, 13, (9,), 3, 40, seed=5)
    out = MF.mlp_features(params, x, y)
    assert out.shape == (5, 3)
    check(out, reference(params, x, y), 0)
    empty = torch.empty((0, sum(p[0].numel() for p in params)), dtype=torch.float64, device=DEVICE)
    assert torch.equal(MF.mlp_features(params, x, y, empty), out), "k = 0 projection"


def test_accuracy_ties_take_the_first_class_like_torch_argmax():
    """All-zero output layers: every logit ties, torch's argmax says class 0, so does the kernel;
    padded classes (C = 3 in a 16-wide tile) never win."""
    params, x, y, _, _ = make_case(2, 6, (5,), 3, 20, seed=6)
    params[2].zero_()
    params[3].zero_()
    y = torch.tensor([0, 1, 2, 0] * 5, device=DEVICE)
    out = MF.mlp_features(params, x, y)
    assert torch.equal(out[:, 1].cpu(), torch.full((2,), 0.5, dtype=torch.float64))
    check(out, reference(params, x, y), 0)
    assert torch.allclose(out[:, 0].cpu(), torch.full((2,), float(np.log(3.0)), dtype=torch.float64), rtol=0, atol=1e-15)


def test_a_models_features_do_not_depend_on_the_others():
    params, x, y, proj, theta0 = make_case(9, 21, (11,), 4, 35, seed=7)
    full = MF.mlp_features(params, x, y, proj, theta0)
    for i in (0, 4, 8):
        one = MF.mlp_features([p[i:i + 1].contiguous() for p in params], x, y, proj, theta0[i:i + 1].contiguous())
        assert torch.equal(one[0], full[i])


def test_feature_map_twins_agree():
    """FusedFeatureMap (what the triton backend records) against FeatureMap on one model stack."""
    from barrierkit.backends.triton_gpu import FusedFeatureMap
    from barrierkit.data import make_synthetic

    data = make_synthetic(n_train=90, n_test=40, dim=11, n_classes=3, spread=0.3, seed=8)
    spec = FeatureSpec(projection_dim=5, probe_size=33, seed=2)
    shape = MLPShape(11, (7, 6), 3)
    params, *_ = make_case(6, 11, (7, 6), 3, 1, seed=8)
    theta0 = flatten(init_params(shape, range(6), device=DEVICE)).to(torch.float64)
    torch_map, fused = FeatureMap(spec, shape, data, device=DEVICE), FusedFeatureMap(spec, shape, data, device=DEVICE)
    assert fused.name == "triton" and torch_map.name == "torch"
    check(fused(params, theta0), torch_map(params, theta0), 5)
    x_test = torch.as_tensor(data.x_test, dtype=torch.float64, device=DEVICE)
    y_test = torch.as_tensor(data.y_test, device=DEVICE)
    assert torch.equal(fused.accuracy(params, x_test, y_test), torch_map.accuracy(params, x_test, y_test))


def fallback_map(hidden, warning):
    """A FusedFeatureMap for a 4-input, 2-class model (built expecting ``warning``) and a check
    that it computes exactly what its torch twin does."""
    from barrierkit.backends.triton_gpu import FusedFeatureMap
    from barrierkit.data import make_synthetic

    data = make_synthetic(n_train=40, n_test=20, dim=4, n_classes=2, spread=0.3, seed=9)
    shape = MLPShape(4, hidden, 2)
    with pytest.warns(RuntimeWarning, match=warning):
        fused = FusedFeatureMap(FeatureSpec(projection_dim=2, probe_size=8), shape, data)
    params = init_params(shape, range(3))
    theta0 = flatten(params).to(torch.float64)
    assert torch.equal(fused(params, theta0), FeatureMap(fused.spec, shape, data)(params, theta0))
    return fused


def test_feature_map_falls_back_for_models_the_kernel_does_not_take():
    fused = fallback_map((3, 3, 3), "hidden layers")
    assert fused.name == "torch" and "hidden layers" in fused.fallback


def test_feature_map_falls_back_when_the_device_cannot_hold_the_kernel(monkeypatch):
    """A compiled launch that runs out of shared memory (wide layers on a real GPU) makes the map
    use its torch twin for the whole run, with a warning; found when the map is built."""
    from triton.runtime.errors import OutOfResources

    def too_big(*args, **kwargs):
        raise OutOfResources(360448, 232448, "shared memory")

    monkeypatch.setattr(MF, "interpreting", lambda: False)  # as when compiled: the trial launch runs
    monkeypatch.setattr(MF, "mlp_features", too_big)
    fused = fallback_map((5,), "shared memory")
    assert fused.name == "torch" and "does not fit" in fused.fallback


def test_masked_loads_stay_inside_every_tensor():
    """Each tensor sits at the start of a NaN-filled buffer: a load past its end (a missing mask on
    the last model's last row, say) would turn a feature into NaN. (memcheck proves it on a GPU.)"""
    params, x, y, proj, theta0 = make_case(2, 37, (9, 6), 3, 21, seed=13)

    def nan_tailed(t):
        buf = torch.full((t.numel() + 4096,), float("nan"), dtype=t.dtype, device=t.device)
        buf[:t.numel()] = t.reshape(-1)
        return buf[:t.numel()].view(t.shape)

    out = MF.mlp_features([nan_tailed(p) for p in params], nan_tailed(x), y, nan_tailed(proj), nan_tailed(theta0))
    check(out, reference(params, x, y, proj, theta0), proj.shape[0])


# --------------------------------------------------------------------------- validation


@pytest.fixture
def no_launch(monkeypatch):
    """Any launch fails the test: validation must raise before the kernel is reached."""
    forbid_launch(monkeypatch, MF, "_mlp_features_kernel")


def _args():
    params, x, y, proj, theta0 = make_case(3, 6, (5,), 3, 10, seed=10)
    return dict(params=params, x=x, y=y, projection=proj, theta0=theta0)


def _nan_param(a):
    a["params"][2] = a["params"][2].clone()
    a["params"][2][1, 0, 0] = float("nan")


def _nan_x(a):
    a["x"] = a["x"].clone()
    a["x"][3, 2] = float("inf")


BAD = {
    "nan W2": (_nan_param, r"^params\[2\]: contains NaN"),
    "inf x": (_nan_x, "^x: contains NaN"),
    "label out of range": (lambda a: a.update(y=a["y"] + 3), r"^y: labels must lie in \[0, 3\)"),
    "float labels": (lambda a: a.update(y=a["y"].double()), "^y: must be integer"),
    "label count": (lambda a: a.update(y=a["y"][:-1]), "^y:"),
    "fp32 x": (lambda a: a.update(x=a["x"].float()), "^x: must be torch.float64"),
    "x width": (lambda a: a.update(x=a["x"][:, :-1]), "^x: must be"),
    "projection width": (lambda a: a.update(projection=a["projection"][:, :-1].contiguous()), "^projection: must have shape"),
    "projection 1-D": (lambda a: a.update(projection=a["projection"][0]), "^projection: must be"),
    "theta0 rows": (lambda a: a.update(theta0=a["theta0"][:2]), "^theta0: must have shape"),
    "fp16 params": (lambda a: a.update(params=[p.half() for p in a["params"]]), r"^params\[0\] \(W1\): must be"),
    "mixed dtypes": (lambda a: a["params"].__setitem__(1, a["params"][1].double()), r"^params\[1\] \(b1\): must be"),
    "three params": (lambda a: a.update(params=a["params"][:3]), "^params: expected"),
    "b2 shape": (lambda a: a["params"].__setitem__(3, a["params"][3][:, :-1].contiguous()), r"\(b2\)"),
    "non-contiguous W1": (lambda a: a["params"].__setitem__(0, a["params"][0].transpose(1, 2)), r"\(W1\)"),
    "too many projection rows": (lambda a: a.update(projection=torch.zeros((MF.MAX_PROJECTION + 1, a["projection"].shape[1]),
                                                                           dtype=torch.float64, device=DEVICE)), "^projection: at most"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_invalid_inputs_raise_before_launch(name, no_launch):
    mutate, needle = BAD[name]
    args = _args()
    mutate(args)
    with pytest.raises(ValueError, match=needle):
        MF.mlp_features(**args)


def test_tuning_arguments_are_checked(no_launch):
    for kwargs, needle in ((dict(block_p=8), "block_p"), (dict(block_d=24), "block_d"), (dict(num_warps=3), "num_warps")):
        with pytest.raises(ValueError, match=needle):
            MF.mlp_features(**_args(), **kwargs)


def test_wide_models_are_refused_by_name():
    assert "widths" in MF.unsupported_reason((MF.MAX_WIDTH + 1,), 10, 8)
    assert "hidden layers" in MF.unsupported_reason((4, 4, 4), 10, 8)
    assert MF.unsupported_reason((64,), 10, 8) is None


# --------------------------------------------------------------------------- compiles for Hopper (no GPU needed)


def test_kernel_compiles_for_sm90():
    """triton.compile for GPUTarget('cuda', 90) with Triton's bundled ptxas (in a subprocess). The
    MNIST-shaped default must not spill, must use fp64 tensor-core MMAs (DMMA) and a correctly
    rounded fp64 square root; the deeper model and a tiny one must compile."""
    mnist, deep, tiny = compile_reports(
        "mlp_features", "[dict(), dict(hidden=(128, 128)), dict(hidden=(7,), n_classes=2, k=0, has_theta0=False)]")
    assert mnist["stack"] == 0, f"784-64-10 default spills: {mnist}"
    assert mnist["sass"]["DMMA"] > 0 and deep["sass"]["DMMA"] > 0
    assert mnist["ptx_sqrt"] == ["sqrt.rn.f64"], mnist["ptx_sqrt"]
    assert tiny["sass"]["STG"] > 0


# --------------------------------------------------------------------------- CUDA only


@cuda_only
def test_cuda_mnist_shape():
    """N = 4000 models of 784-64-10, 128 probe points, k = 8: the MNIST-shaped recording step."""
    params, x, y, proj, theta0 = make_case(4000, 784, (64,), 10, 128, k=8, seed=11)
    check(MF.mlp_features(params, x, y, proj, theta0), reference(params, x, y, proj, theta0), 8)


@cuda_only
def test_cupy_arguments_via_dlpack():
    cupy = pytest.importorskip("cupy")
    params, x, y, proj, theta0 = make_case(5, 30, (16,), 10, 40, seed=12)
    out = MF.mlp_features([cupy.asarray(p) for p in params], cupy.asarray(x), cupy.asarray(y),
                          cupy.asarray(proj), cupy.asarray(theta0))
    check(out, reference(params, x, y, proj, theta0), proj.shape[0])
