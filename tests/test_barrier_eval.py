"""The fused barrier-trunk / scenario-row kernel (kernels/barrier_eval.py) against barrierkit.

References: ``Barrier.psi`` (float64 numpy) for psi, ``scenario.row_values`` and
``scenario.trajectory_margins`` for the rows and per-trajectory maxima.

Without a GPU the kernel runs in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1):
this proves its logic (indexing, masks, the carried increment, margins, C2 masking), not that it
compiles; ``test_kernel_compiles_for_sm90`` compiles it for Hopper with Triton's bundled ptxas.
On a CUDA machine run ``TRITON_INTERPRET=0 python -m pytest tests/test_barrier_eval.py``: every
test then runs compiled on the GPU, plus the N=4000, K=50 test and the CuPy test.

Tolerances, with scale = 1 + max |reference| of the compared array:
* float64: |out - ref| <= 1e-12 * scale (observed ~1e-15: only the summation order differs);
* float32 (features rounded to fp32; the reference is Barrier.psi of those same fp32 values in
  float64, so only the kernel's arithmetic is measured): psi, initial, terminal, increments within
  2e-6 * scale_psi, row values within 2e-6 * scale_psi * (1 + ||w||_1). Observed in the
  interpreter: <= 1.4e-7 * scale (fp64: <= 2.6e-16 * scale); on a GPU fp32 exp is ex2.approx and
  division div.full (a few ulp more), still well inside.
"""
import numpy as np
import pytest

from conftest import compile_reports, forbid_launch
import torch

from barrierkit.barrier import Barrier, BarrierConfig, fit_barrier
from barrierkit.kernels import barrier_eval as BE
from barrierkit.scenario import ScenarioProblem, row_values, trajectory_margins

COMPILED = torch.cuda.is_available() and not BE.interpreting()
DEVICE = torch.device("cuda" if COMPILED else "cpu")
pytestmark = pytest.mark.skipif(not (COMPILED or BE.interpreting()),
                                reason="needs CUDA, or TRITON_INTERPRET=1 before triton is imported")
cuda_only = pytest.mark.skipif(not COMPILED, reason="needs a CUDA device and compiled Triton (TRITON_INTERPRET=0)")

TOL64 = 1e-12
TOL32 = 2e-6


# --------------------------------------------------------------------------- helpers


def random_barrier(k, width, m, seed, weight_scale=1.5):
    """A Barrier with random layers (tanh inputs reach the saturated range) and random standardisation."""
    r = np.random.default_rng(seed)
    layers = [(r.normal(size=(width, k)) * weight_scale / np.sqrt(k), r.normal(size=width) * 0.5),
              (r.normal(size=(m, width)) / np.sqrt(width), r.normal(size=m) * 0.5)]
    return Barrier(mean=r.normal(size=k), scale=r.uniform(0.3, 3.0, size=k), layers=layers,
                   w0=r.normal(size=m), gamma0=0.0, c0=0.0, config=BarrierConfig(width=width, out_dim=m),
                   train_loss=0.0)


def random_features(N, K, k, seed):
    r = np.random.default_rng(seed + 1000)
    x = r.normal(size=(N, K + 1, k)) * r.uniform(0.5, 4.0, size=k) + r.normal(size=k)
    x[:, :, 0] *= 10.0  # a wide feature: some hidden units saturate
    return np.cumsum(x * 0.3, axis=1)  # trajectories drift


def reference(barrier, feats64, unsafe, w, gamma, c):
    psi = barrier.psi(feats64)
    prob = ScenarioProblem(initial=psi[:, 0], increments=np.diff(psi, axis=1), terminal=psi[:, -1],
                           unsafe=unsafe, pool=psi[:1, 0], w0=w)
    n, K = psi.shape[0], psi.shape[1] - 1
    rows = row_values(prob, w, gamma, c)
    c1, c3, c2 = rows[:n], rows[n:n + n * K].reshape(n, K), rows[n + n * K:n + n * K + int(unsafe.sum())]
    margins, _ = trajectory_margins(prob, w, gamma, c)
    return psi, c1, c3, c2, margins


def close(name, got, ref, tol):
    got = got.detach().cpu().to(torch.float64).numpy()
    assert got.shape == ref.shape, f"{name}: shape {got.shape} != {ref.shape}"
    if ref.size == 0:
        return
    err = float(np.max(np.abs(got - ref)))
    bound = tol * (1.0 + float(np.max(np.abs(ref))))
    assert err <= bound, f"{name}: max error {err:.3g} > {bound:.3g}"


def check_all(barrier, feats64, dtype, unsafe_kind, seed, **kw):
    """Run the kernel and compare every output with the float64 reference."""
    N = feats64.shape[0]
    r = np.random.default_rng(seed + 7)
    feats = torch.from_numpy(feats64).to(dtype)
    ref_feats = feats.to(torch.float64).numpy()  # what the kernel actually sees
    m = barrier.out_dim
    w = r.normal(size=m)
    gamma, c = float(r.normal()), float(r.uniform(0.0, 0.1))
    unsafe = {"none": np.zeros(N, bool), "random": r.random(N) < 0.5, "all": np.ones(N, bool)}[unsafe_kind]
    out = BE.barrier_eval(feats.to(DEVICE), barrier.mean, barrier.scale, barrier.layers, w=w, gamma=gamma, c=c,
                          unsafe=None if unsafe_kind == "none" else torch.from_numpy(unsafe).to(DEVICE),
                          return_psi=True, **kw)
    psi, c1, c3, c2, margins = reference(barrier, ref_feats, unsafe, w, gamma, c)
    for key in ("psi", "initial", "increments", "terminal", "c1", "c3", "c2", "margins"):
        assert out[key].dtype == dtype and out[key].device.type == DEVICE.type, key
    tol = TOL64 if dtype == torch.float64 else TOL32
    psi_scale = 1.0 + float(np.abs(psi).max())
    row_tol = tol if dtype == torch.float64 else tol * psi_scale * (1.0 + float(np.abs(w).sum()))
    close("psi", out["psi"], psi, tol)
    close("initial", out["initial"], psi[:, 0], tol)
    close("terminal", out["terminal"], psi[:, -1], tol)
    close("increments", out["increments"], np.diff(psi, axis=1), tol * psi_scale)
    close("c1", out["c1"], c1, row_tol)
    close("c3", out["c3"], c3, row_tol)
    c2_out = out["c2"].cpu()
    assert torch.isneginf(c2_out[torch.from_numpy(~unsafe)]).all(), "c2 must be -inf where not unsafe"
    close("c2", c2_out[torch.from_numpy(unsafe)], c2, row_tol)
    close("margins", out["margins"], margins, row_tol)
    return out


# --------------------------------------------------------------------------- values


CASES = [  # N, K, k, width, m, unsafe labels: every value of every axis appears, in both dtypes
    (1, 1, 3, 7, 1, "none"),
    (3, 5, 11, 32, 8, "random"),
    (17, 5, 3, 32, 1, "random"),
    (17, 1, 11, 7, 8, "none"),
    (3, 1, 3, 32, 8, "all"),
    (1, 5, 11, 7, 1, "all"),
    (17, 5, 11, 32, 8, "random"),
    (3, 5, 3, 7, 8, "none"),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "N{}-K{}-k{}-h{}-m{}-{}".format(*c))
def test_matches_barrier_and_scenario(case, dtype):
    N, K, k, width, m, unsafe_kind = case
    seed = N * 1000 + K * 100 + k * 10 + m
    barrier = random_barrier(k, width, m, seed)
    check_all(barrier, random_features(N, K, k, seed), dtype, unsafe_kind, seed)


def test_fitted_barrier_and_w0():
    """A Barrier from fit_barrier (float32-trained, float64-held) on tiny random data."""
    r = np.random.default_rng(5)
    N, K, k = 9, 4, 5
    feats = np.cumsum(r.normal(size=(N, K + 1, k)), axis=1)
    unsafe = r.random(N) < 0.3
    pool = r.normal(size=(6, k)) + 3.0
    barrier = fit_barrier(feats, unsafe, pool, BarrierConfig(width=7, out_dim=3, epochs=5, seed=1))
    out = BE.barrier_eval(torch.from_numpy(feats).to(DEVICE), barrier.mean, barrier.scale, barrier.layers,
                          w=barrier.w0, gamma=barrier.gamma0, c=barrier.c0, unsafe=torch.from_numpy(unsafe).to(DEVICE))
    psi, c1, c3, c2, margins = reference(barrier, feats, unsafe, barrier.w0, barrier.gamma0, barrier.c0)
    assert "psi" not in out
    close("increments", out["increments"], np.diff(psi, axis=1), TOL64)
    close("c3", out["c3"], c3, TOL64)
    close("margins", out["margins"], margins, TOL64)
    # the dict feeds ScenarioProblem directly
    prob = ScenarioProblem(initial=out["initial"].cpu().numpy(), increments=out["increments"].cpu().numpy(),
                           terminal=out["terminal"].cpu().numpy(), unsafe=unsafe, pool=barrier.psi(pool), w0=barrier.w0)
    per, _ = trajectory_margins(prob, barrier.w0, barrier.gamma0, barrier.c0)
    close("margins via ScenarioProblem", out["margins"], per, TOL64)


def test_without_w_and_single_state_pool():
    """w=None returns only the psi-derived arrays; K = 0 ([P, 1, k]) evaluates single states (the pool)."""
    barrier = random_barrier(4, 9, 3, seed=11)
    feats = random_features(5, 3, 4, seed=11)
    out = BE.barrier_eval(torch.from_numpy(feats).to(DEVICE), barrier.mean, barrier.scale, barrier.layers)
    assert set(out) == {"initial", "increments", "terminal"}
    psi = barrier.psi(feats)
    close("increments", out["increments"], np.diff(psi, axis=1), TOL64)
    pool = feats[:, 1]
    w = np.array([0.5, -1.0, 2.0])
    res = BE.barrier_eval(torch.from_numpy(pool[:, None, :].copy()).to(DEVICE), barrier.mean, barrier.scale,
                          barrier.layers, w=w, gamma=0.25, c=0.0, unsafe=torch.ones(5, dtype=torch.bool, device=DEVICE),
                          return_psi=True)
    assert tuple(res["increments"].shape) == (5, 0, 3) and tuple(res["c3"].shape) == (5, 0)
    ref_pool = barrier.psi(pool)
    close("pool psi", res["psi"][:, 0], ref_pool, TOL64)
    close("pool rows", res["c2"], 0.25 + 1.0 - ref_pool @ w, TOL64)
    close("pool margins", res["margins"], np.maximum(ref_pool @ w - 0.25, 0.25 + 1.0 - ref_pool @ w), TOL64)


def test_tuning_and_batch_independence():
    """Tuning changes nothing but summation order; a trajectory's outputs do not depend on its batch."""
    barrier = random_barrier(11, 32, 8, seed=3)
    feats = torch.from_numpy(random_features(17, 3, 11, seed=3)).to(DEVICE)
    w = np.linspace(-1.0, 1.0, 8)
    base = BE.barrier_eval(feats, barrier.mean, barrier.scale, barrier.layers, w=w, gamma=0.1, c=0.01, return_psi=True)
    for block_n, warps in ((1, 1), (4, 2), (32, 4)):
        other = BE.barrier_eval(feats, barrier.mean, barrier.scale, barrier.layers, w=w, gamma=0.1, c=0.01,
                                return_psi=True, block_n=block_n, num_warps=warps)
        for key in base:
            torch.testing.assert_close(other[key], base[key], rtol=1e-14, atol=1e-14)
    alone = BE.barrier_eval(feats[5:6].contiguous(), barrier.mean, barrier.scale, barrier.layers, w=w, gamma=0.1,
                            c=0.01, return_psi=True, block_n=8)
    for key in base:
        assert torch.equal(alone[key][0], base[key][5]), key


def test_torch_parameters_and_fp32_cast():
    """Parameters as torch tensors (any float dtype) are cast to the features' dtype."""
    barrier = random_barrier(3, 7, 2, seed=4)
    feats = torch.from_numpy(random_features(3, 2, 3, seed=4)).to(torch.float32).to(DEVICE)
    layers = [(torch.from_numpy(W), torch.from_numpy(b).to(torch.float32)) for W, b in barrier.layers]
    out = BE.barrier_eval(feats, torch.from_numpy(barrier.mean), torch.from_numpy(barrier.scale), layers,
                          return_psi=True)
    assert out["psi"].dtype == torch.float32
    close("psi", out["psi"], barrier.psi(feats.cpu().to(torch.float64).numpy()), TOL32)


# --------------------------------------------------------------------------- validation


@pytest.fixture
def no_launch(monkeypatch):
    """Any launch fails the test: validation must raise before the kernel is reached."""
    forbid_launch(monkeypatch, BE, "_barrier_eval_kernel")


def _args(N=3, K=2, k=4, width=5, m=2):
    barrier = random_barrier(k, width, m, seed=9)
    feats = torch.from_numpy(random_features(N, K, k, seed=9)).to(DEVICE)
    return dict(features=feats, mean=barrier.mean.copy(), scale=barrier.scale.copy(),
                layers=[(W.copy(), b.copy()) for W, b in barrier.layers], w=np.ones(m), gamma=0.0, c=0.0,
                unsafe=torch.zeros(N, dtype=torch.bool, device=DEVICE))


def _nan_features(a):
    a["features"] = a["features"].clone()
    a["features"][1, 2, 3] = float("nan")


def _inf_w1(a):
    a["layers"][0][0][0, 0] = np.inf


def _nan_mean(a):
    a["mean"][0] = np.nan


def _zero_scale(a):
    a["scale"][1] = 0.0


BAD = {
    "nan features": (_nan_features, "^features: contains NaN"),
    "inf W1": (_inf_w1, r"^layers\[0\]\[0\] \(W1\): contains NaN"),
    "nan mean": (_nan_mean, "^mean: contains NaN"),
    "zero scale": (_zero_scale, "^scale: must be > 0"),
    "nan gamma": (lambda a: a.update(gamma=float("nan")), "^gamma:"),
    "bool c": (lambda a: a.update(c=True), "^c:"),
    "2-D features": (lambda a: a.update(features=a["features"][:, 0]), "^features:"),
    "int features": (lambda a: a.update(features=a["features"].to(torch.int32)), "^features:"),
    "fp16 features": (lambda a: a.update(features=a["features"].to(torch.float16)), "^features:"),
    "non-contiguous": (lambda a: a.update(features=a["features"].transpose(0, 1)), "^features:"),
    "mean shape": (lambda a: a.update(mean=a["mean"][:-1]), "^mean:"),
    "int scale": (lambda a: a.update(scale=np.ones(4, dtype=np.int64)), "^scale:"),
    "three layers": (lambda a: a.update(layers=a["layers"] + [a["layers"][1]]), "^layers:"),
    "W2 shape": (lambda a: a.update(layers=[a["layers"][0], (np.ones((2, 6)), np.ones(2))]), r"\(W2\)"),
    "b1 shape": (lambda a: a.update(layers=[(a["layers"][0][0], np.ones(4)), a["layers"][1]]), r"\(b1\)"),
    "w shape": (lambda a: a.update(w=np.ones(3)), "^w:"),
    "unsafe dtype": (lambda a: a.update(unsafe=torch.zeros(3, dtype=torch.int64, device=DEVICE)), "^unsafe:"),
    "unsafe shape": (lambda a: a.update(unsafe=torch.zeros(4, dtype=torch.bool, device=DEVICE)), "^unsafe:"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_invalid_inputs_raise_before_launch(name, no_launch):
    mutate, needle = BAD[name]
    args = _args()
    mutate(args)
    with pytest.raises(ValueError, match=needle):
        BE.barrier_eval(**args)


def test_tuning_arguments_are_checked(no_launch):
    with pytest.raises(ValueError, match="block_n"):
        BE.barrier_eval(**_args(), block_n=3)
    with pytest.raises(ValueError, match="num_warps"):
        BE.barrier_eval(**_args(), num_warps=3)


# --------------------------------------------------------------------------- compiles for Hopper (no GPU needed)


def test_kernel_compiles_for_sm90():
    """triton.compile for GPUTarget('cuda', 90) with Triton's bundled ptxas (in a subprocess: this
    process imported triton in interpreter mode). The default tunings must not spill, and the fp32
    kernel must contain no fp64 arithmetic (no accidental promotion)."""
    fp64, fp32, small = compile_reports("barrier_eval", "[dict(), dict(dtype='fp32'), dict(k=3, width=7, m=1, block_n=8, return_psi=True, has_unsafe=False)]")
    assert fp64["stack"] == 0 and fp32["stack"] == 0, f"default tunings spill: {fp64}, {fp32}"
    assert fp64["sass"]["DFMA"] > 0
    assert fp32["sass"]["DFMA"] == 0, f"fp32 kernel contains fp64 FMAs: {fp32}"
    assert small["sass"]["STG"] > 0


# --------------------------------------------------------------------------- CUDA only


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_cuda_verification_size(dtype):
    """N = 4000 trajectories, K = 50, k = 11, width 32, m = 8: the verifier's setting."""
    barrier = random_barrier(11, 32, 8, seed=21)
    check_all(barrier, random_features(4000, 50, 11, seed=21), dtype, "random", seed=21)


@cuda_only
def test_cupy_features_via_dlpack():
    cupy = pytest.importorskip("cupy")
    barrier = random_barrier(11, 32, 8, seed=22)
    feats = random_features(64, 10, 11, seed=22)
    out = BE.barrier_eval(cupy.asarray(feats), cupy.asarray(barrier.mean), cupy.asarray(barrier.scale),
                          [(cupy.asarray(W), cupy.asarray(b)) for W, b in barrier.layers], return_psi=True)
    close("psi", out["psi"], barrier.psi(feats), TOL64)
