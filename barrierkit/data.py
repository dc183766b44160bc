"""Datasets: the embedded digits set and a synthetic generator, both in [0, 1]^D.

A :class:`Dataset` is validated on construction (shapes, finite values, labels, domain) and
carries a content hash that certificates record, so a result names exactly the data it used.
"""
from __future__ import annotations

import hashlib
import numbers
import sys
from dataclasses import dataclass
from typing import Any, Dict, Tuple

import numpy as np

from .config import ConfigError
from .rng import Stream, bits_numpy, normal_pair_numpy, uniform_from_bits_numpy

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


@dataclass(frozen=True)
class Dataset:
    """A classification dataset with a fixed train/test split, inputs in ``domain``^D."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    domain: Tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        for name in ("x_train", "y_train", "x_test", "y_test"):
            object.__setattr__(self, name, _host_array(getattr(self, name), name))
        if isinstance(self.n_classes, numbers.Integral) and not isinstance(self.n_classes, bool):
            object.__setattr__(self, "n_classes", int(self.n_classes))
        else:
            raise ConfigError("n_classes", f"must be an int, got {self.n_classes!r}")
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if not isinstance(x, np.ndarray) or x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
                raise ConfigError(f"x_{split}", f"must be a 2-D array [n, D] with n, D >= 1, got shape {getattr(x, 'shape', None)}")
            if not isinstance(y, np.ndarray) or y.shape != (x.shape[0],):
                raise ConfigError(f"y_{split}", f"must be a 1-D array of {x.shape[0]} labels, got shape {getattr(y, 'shape', None)}")
            if not np.all(np.isfinite(x)):
                raise ConfigError(f"x_{split}", "contains NaN or infinite values")
            lo, hi = self.domain
            if x.min() < lo or x.max() > hi:
                raise ConfigError(f"x_{split}", f"values must lie in the domain [{lo}, {hi}], found [{x.min()}, {x.max()}]")
            if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= self.n_classes:
                raise ConfigError(f"y_{split}", f"labels must be integers in [0, {self.n_classes})")
        if self.x_test.shape[1] != self.x_train.shape[1]:
            raise ConfigError("x_test", f"has {self.x_test.shape[1]} features, x_train has {self.x_train.shape[1]}")
        if self.n_classes < 2:
            raise ConfigError("n_classes", "must be >= 2")

    @property
    def input_dim(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def content_hash(self) -> str:
        """sha256 over the split arrays (float64/int64 bytes) and the class count."""
        h = hashlib.sha256()
        for a in (self.x_train, self.y_train, self.x_test, self.y_test):
            arr = np.ascontiguousarray(a, dtype=np.float64 if a.dtype.kind == "f" else np.int64)
            h.update(str(arr.shape).encode())
            h.update(arr.tobytes())
        h.update(str(self.n_classes).encode())
        return h.hexdigest()


def _host_array(a: Any, name: str) -> Any:
    """A torch tensor (on any device) as a numpy array (floating tensors as float64); anything
    else unchanged (checked after). torch is not imported for this: without it, nothing is a tensor."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(a, torch.Tensor):
        return a
    if a.is_complex() or a.dtype == torch.bool:
        raise ConfigError(name, f"must be a real or integer array, got a {a.dtype} tensor")
    a = a.detach().cpu()
    return (a.to(torch.float64) if a.is_floating_point() else a).numpy().copy()


def load_digits() -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 images) scaled to [0, 1], fixed stratified split."""
    from sklearn.datasets import load_digits as _load
    from sklearn.model_selection import train_test_split

    bunch = _load()
    x = bunch.data.astype(np.float64) / 16.0
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SPLIT_SEED, stratify=y
    )
    return Dataset("digits", x_tr, y_tr, x_te, y_te, n_classes=10)


def make_synthetic(
    n_train: int = 2000, n_test: int = 500, dim: int = 784, n_classes: int = 10, spread: float = 0.15, seed: int = 0,
    mean_low: float = 0.2, mean_width: float = 0.6,
) -> Dataset:
    """Class-conditional Gaussian blobs in [0,1]^dim (clipped), from the counter-based RNG.

    Class means are uniform in [mean_low, mean_low + mean_width]^dim (computed as
    ``mean_low + mean_width * u``, so the defaults give the same bits as ever); points are
    mean + spread * N(0, I), clipped. A narrower width brings the classes closer, so poisoning
    can hurt.
    """
    for name, v in (("n_train", n_train), ("n_test", n_test), ("dim", dim), ("n_classes", n_classes)):
        if not isinstance(v, int) or v < 1:
            raise ConfigError(name, f"must be an int >= 1, got {v!r}")
    if n_classes < 2:
        raise ConfigError("n_classes", "must be >= 2")
    if not spread > 0:
        raise ConfigError("spread", "must be > 0")
    if not (isinstance(mean_low, (int, float)) and 0.0 <= mean_low < 1.0):
        raise ConfigError("mean_low", f"must be in [0, 1), got {mean_low!r}")
    if not (isinstance(mean_width, (int, float)) and 0.0 < mean_width <= 1.0 - mean_low):
        raise ConfigError("mean_width", f"must be in (0, 1 - mean_low], got {mean_width!r}")
    cls_idx = np.arange(n_classes * dim, dtype=np.uint64)
    means = mean_low + mean_width * uniform_from_bits_numpy(bits_numpy(seed, cls_idx, 0, Stream.DATA)[0]).reshape(n_classes, dim)

    def draw(n: int, split: int) -> Tuple[np.ndarray, np.ndarray]:
        y = np.arange(n, dtype=np.int64) % n_classes
        cells = np.arange(n * ((dim + 1) // 2), dtype=np.uint64)
        r = bits_numpy(seed, cells, 1 + split, Stream.DATA)
        z0, z1 = normal_pair_numpy(r[0], r[1])
        z = np.stack([z0, z1], axis=-1).reshape(n, -1)[:, :dim]
        x = np.clip(means[y] + spread * z, 0.0, 1.0)
        return x, y

    x_tr, y_tr = draw(n_train, 0)
    x_te, y_te = draw(n_test, 1)
    return Dataset(f"synthetic-{dim}d-{n_classes}c", x_tr, y_tr, x_te, y_te, n_classes=n_classes)


SYNTHETIC_MNIST_MEANS = {"mean_low": 0.3, "mean_width": 0.4}
"""Class means of ``synthetic-mnist``: uniform in (0.3, 0.7). With (0.2, 0.8) every run of the MNIST-shaped recipe
(784-64-10, batch 64, 400 steps, lr 0.1) reached accuracy 1.0 even at delta = 0.2, so nothing
could be certified or refuted. With (0.3, 0.7), measured on the CI CPU (numba): 300/300 clean runs
and 300/300 runs at delta <= 0.06 (gradient attack, rho 0.5, l_inf) and 100/100 at 0.08 and 0.1
reach 1.0; at 0.14 10 % and at 0.2 91 % of runs drop by more than alpha = 0.05."""


_REGISTERED: Dict[str, Dataset] = {}
BUILT_IN = ("digits", "synthetic", "synthetic-mnist")


def register_dataset(data: Dataset) -> None:
    """Make ``data`` resolvable by its name in this process, so a certification can name it
    (``SampleConfig(dataset=data.name)``) and verify can reload it and check its content hash."""
    if not isinstance(data, Dataset):
        raise ConfigError("data", f"must be a Dataset, got {type(data).__name__}")
    if data.name in BUILT_IN:
        raise ConfigError("name", f"{data.name!r} is a built-in dataset; give yours another name")
    _REGISTERED[data.name] = data


def get_dataset(name: str) -> Dataset:
    """Resolve a dataset name: one given to :func:`register_dataset`, ``digits``, ``synthetic``
    (64-d) or ``synthetic-mnist`` (784-d, 6000 training points, class means in
    :data:`SYNTHETIC_MNIST_MEANS`)."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name == "digits":
        return load_digits()
    if name == "synthetic":
        return make_synthetic(n_train=1000, n_test=300, dim=64)
    if name == "synthetic-mnist":
        return make_synthetic(n_train=6000, n_test=1000, dim=784, **SYNTHETIC_MNIST_MEANS)
    known = ", ".join([*BUILT_IN, *sorted(_REGISTERED)])
    raise ConfigError("dataset", f"unknown dataset {name!r}; known: {known} (register your own with "
                                 "barrierkit.data.register_dataset)")
