"""Test setup: Triton's interpreter must be chosen before anything imports triton."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def digits():
    from barrierkit.data import load_digits

    return load_digits()


@pytest.fixture(scope="session")
def small_data():
    """A small synthetic dataset with odd sizes, for fast engine tests."""
    from barrierkit.data import make_synthetic

    return make_synthetic(n_train=150, n_test=60, dim=13, n_classes=3, spread=0.2, seed=3)


@pytest.fixture
def np_rng():
    return np.random.default_rng(12345)
