"""Bad input gives one clear error naming the field; the CLI exits 2 and writes nothing."""
import numpy as np
import pytest

from barrierkit.cli import main
from barrierkit.config import ConfigError, ModelSpec, SampleConfig, SamplingAttack, ThreatModel, TrainRecipe, check_delta
from barrierkit.data import Dataset, load_digits, make_synthetic
from barrierkit.engine import sample
from barrierkit.rng import trajectory_seeds


@pytest.mark.parametrize("make,field", [
    (lambda: ThreatModel(rho=1.5), "rho"),
    (lambda: ThreatModel(rho=-0.1), "rho"),
    (lambda: ThreatModel(norm="3"), "norm"),
    (lambda: SamplingAttack(kind="pgd"), "attack"),
    (lambda: TrainRecipe(lr=0.0), "lr"),
    (lambda: TrainRecipe(steps=10, record_every=3), "record_every"),
    (lambda: TrainRecipe(momentum=1.0), "momentum"),
    (lambda: ModelSpec(hidden=(8, 8, 8)), "hidden"),
    (lambda: check_delta(-0.1), "delta"),
    (lambda: check_delta(float("nan")), "delta"),
])
def test_config_errors_name_the_field(make, field):
    with pytest.raises(ConfigError) as err:
        make()
    assert err.value.field == field and str(err.value).startswith(field)


def test_norm_aliases():
    assert ThreatModel(norm="linf").norm == "inf" and ThreatModel(norm="L2").norm == "2" and ThreatModel(norm=2).norm == "2"


def test_sample_rejects_bad_seeds_and_counts(small_data):
    cfg = SampleConfig(model=ModelSpec(hidden=(4,)), recipe=TrainRecipe(steps=4, batch=4, record_every=2))
    with pytest.raises(ConfigError, match="seeds"):
        sample(cfg, 0.1, np.zeros((0, 3), dtype=np.int64), data=small_data)
    with pytest.raises(ConfigError, match="seeds"):
        sample(cfg, 0.1, np.zeros((2, 2), dtype=np.int64), data=small_data)
    with pytest.raises(ConfigError, match="n"):
        trajectory_seeds(0, 1, 0)
    with pytest.raises(ConfigError, match="batch"):
        sample(SampleConfig(recipe=TrainRecipe(batch=1000, steps=4, record_every=2)), 0.1, trajectory_seeds(0, 1, 2), data=small_data)


def test_dataset_validation(digits):
    assert digits.x_train.shape == (1437, 64) and digits.x_test.shape == (360, 64)
    assert digits.x_train.min() >= 0 and digits.x_train.max() <= 1
    # stratified: every class has about 20 % of its points in the test split
    for c in range(10):
        frac = (digits.y_test == c).sum() / ((digits.y_test == c).sum() + (digits.y_train == c).sum())
        assert abs(frac - 0.2) < 0.02
    assert load_digits().content_hash == digits.content_hash
    x = digits.x_train.copy()
    x[3, 5] = np.nan
    with pytest.raises(ConfigError, match="x_train"):
        Dataset("bad", x, digits.y_train, digits.x_test, digits.y_test, 10)
    with pytest.raises(ConfigError, match="x_train"):
        Dataset("bad", digits.x_train + 0.5, digits.y_train, digits.x_test, digits.y_test, 10)
    with pytest.raises(ConfigError, match="y_train"):
        Dataset("bad", digits.x_train, digits.y_train[:-1], digits.x_test, digits.y_test, 10)
    with pytest.raises(ConfigError, match="x_test"):
        Dataset("bad", digits.x_train, digits.y_train, digits.x_test[:, :10], digits.y_test, 10)
    with pytest.raises(ConfigError, match="x_train"):
        Dataset("bad", digits.x_train[:, 0], digits.y_train, digits.x_test, digits.y_test, 10)


def test_content_hash_changes_with_data():
    a = make_synthetic(n_train=20, n_test=10, dim=5, n_classes=2)
    b = make_synthetic(n_train=20, n_test=10, dim=5, n_classes=2, seed=1)
    assert a.content_hash != b.content_hash
    assert np.all((a.x_train >= 0) & (a.x_train <= 1))


def test_synthetic_mean_width_brings_classes_closer():
    def mean_gap(d):
        means = np.stack([d.x_train[d.y_train == c].mean(0) for c in range(d.n_classes)])
        return np.abs(means[0] - means[1]).mean()

    wide = make_synthetic(n_train=400, n_test=10, dim=50, n_classes=2, spread=0.05)
    narrow = make_synthetic(n_train=400, n_test=10, dim=50, n_classes=2, spread=0.05, mean_low=0.45, mean_width=0.1)
    assert mean_gap(narrow) < 0.25 * mean_gap(wide)
    assert np.all(np.abs(narrow.x_train - 0.5) <= 0.05 + 6 * 0.05)
    for bad, field in [({"mean_low": -0.1}, "mean_low"), ({"mean_low": 1.0}, "mean_low"), ({"mean_width": 0.0}, "mean_width"),
                       ({"mean_low": 0.5, "mean_width": 0.6}, "mean_width"), ({"mean_width": "wide"}, "mean_width")]:
        with pytest.raises(ConfigError, match=field):
            make_synthetic(n_train=4, n_test=2, dim=3, **bad)


SYNTHETIC_MNIST_HASH = "07e6e242af729d80fbf034eb174833077038d16a81a07c43d74ed390cb7a6c10"


def test_synthetic_datasets_keep_their_bits():
    """Content hashes pinned when the Box-Muller draws were made CPU-independent (the same bits with
    AVX2 and AVX-512): a change would silently break the replay of every result and witness made
    on them, and a failure on one kind of CPU only means the draws hinge on its rounding."""
    from barrierkit.data import get_dataset

    assert get_dataset("synthetic").content_hash == "b5efae3a2031dc1218e17a4ec5387fca41d8e1ee751d719898e1812cd8b47fa8"
    small = make_synthetic(n_train=150, n_test=60, dim=13, n_classes=3, spread=0.2, seed=3)
    assert small.content_hash == "96bcb287abb63c7682a999acb6704b50c332ab4a2da72e626bd6f652f6603108"
    assert get_dataset("synthetic-mnist").content_hash == SYNTHETIC_MNIST_HASH


@pytest.mark.parametrize("args,field", [
    (["--delta", "-1"], "delta"),
    (["--delta", "0.1", "--rho", "2"], "rho"),
    (["--delta", "0.1", "--n", "0"], "n"),
    (["--delta", "0.1", "--norm", "3"], "norm"),
    (["--delta", "0.1", "--attack", "pgd"], "attack"),
    (["--delta", "0.1", "--dataset", "nope"], "dataset"),
    (["--delta", "0.1", "--device", "nonsense"], "device"),
    (["--delta", "0.1", "--device", "meta"], "device"),
    (["--delta", "0.1", "--memory-mb", "-5"], "memory_budget_mb"),
    (["--delta", "0.1", "--backend", "jax"], "backend"),
])
def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, args, field):
    out = tmp_path / "t.npz"
    code = main(["sample", "--out", str(out), "--quiet", *args])
    assert code == 2
    assert field in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_sample_writes_trajectories_and_summary(tmp_path, capsys):
    import json

    from barrierkit.trajectories import Trajectories

    out = tmp_path / "t.npz"
    code = main(["sample", "--dataset", "synthetic", "--n", "3", "--delta", "0.1", "--steps", "8", "--record-every", "4",
                 "--hidden", "5", "--n-clean", "2", "--out", str(out), "--quiet"])
    assert code == 0
    runs = Trajectories.load(out)
    summary = json.loads((tmp_path / "t.json").read_text())
    assert runs.n == 3 and runs.intervals == 2 and summary["n"] == 3 and 0 <= summary["unsafe_fraction"] <= 1
    assert "wrote" in capsys.readouterr().out


def test_resolve_device_auto_and_errors():
    import torch

    from barrierkit.backends import resolve_device

    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == resolve_device(" CPU ") == torch.device("cpu")
    from barrierkit.backends import resolve

    assert resolve("auto", "cuda", dtype="float32").name == "triton" and resolve("auto", "cuda", dtype="float64").name == "torch"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device.*CUDA"):
            resolve_device("cuda")


def test_memory_budget_defaults_to_2048_mb_on_the_cpu(digits):
    from barrierkit.config import SampleConfig
    from barrierkit.engine import bytes_per_trajectory, chunk_size, memory_budget_mb

    auto, explicit = SampleConfig(), SampleConfig(memory_budget_mb=2048.0)
    assert auto.memory_budget_mb is None and memory_budget_mb(auto, "cpu") == 2048.0
    assert chunk_size(auto, digits, 10**6) == chunk_size(explicit, digits, 10**6) == 2048 * 2**20 // bytes_per_trajectory(auto, digits)
    assert chunk_size(SampleConfig(memory_budget_mb=1e-3), digits, 50) == 1
    assert SampleConfig.from_dict(auto.to_dict()) == auto
    with pytest.raises(ConfigError, match="memory_budget_mb"):
        SampleConfig(memory_budget_mb=float("nan"))
