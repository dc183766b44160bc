import numpy as np
import pytest
import torch
from scipy import stats

from barrierkit import rng

# Random123 known-answer vectors for Philox4x32-10.
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0), (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_known_answers(counter, key, expected):
    out_np = rng.philox4x32_numpy(*[np.uint64(v) for v in counter], *[np.uint64(v) for v in key])
    out_t = rng.philox4x32_torch(*[torch.tensor(v) for v in counter], *[torch.tensor(v) for v in key])
    assert [int(v) for v in out_np] == list(expected)
    assert [int(v) for v in out_t] == list(expected)


@pytest.mark.parametrize("stream", [rng.Stream.SUBSET, rng.Stream.DELTA, rng.Stream.SHUFFLE])
def test_torch_and_numpy_streams_identical(np_rng, stream):
    n = 5000
    seeds = np_rng.integers(0, 2**63, size=n, dtype=np.int64)
    c0 = np_rng.integers(0, 2**32, size=n, dtype=np.int64)
    c1 = np_rng.integers(0, 2**32, size=n, dtype=np.int64)
    words_np = np.stack(rng.bits_numpy(seeds.astype(np.uint64), c0, c1, stream)).astype(np.int64)
    words_t = np.stack([w.numpy() for w in rng.bits_torch(torch.as_tensor(seeds), torch.as_tensor(c0), torch.as_tensor(c1), stream)])
    assert np.array_equal(words_np, words_t)
    u_np = rng.uniform_from_bits_numpy(words_np[0].astype(np.uint64))
    u_t = rng.uniform_from_bits_torch(torch.as_tensor(words_t[0])).numpy()
    assert np.array_equal(u_np, u_t)
    z_np = rng.normal_pair_numpy(words_np[0].astype(np.uint64), words_np[1].astype(np.uint64))[0]
    z_t = rng.normal_pair_torch(torch.as_tensor(words_t[0]), torch.as_tensor(words_t[1]))[0].numpy()
    np.testing.assert_allclose(z_np, z_t, rtol=0, atol=1e-12)  # transcendental: a few ulp


def test_streams_differ_by_tag_and_seed():
    a = rng.bits_numpy(7, np.arange(100), 0, rng.Stream.SUBSET)[0]
    b = rng.bits_numpy(7, np.arange(100), 0, rng.Stream.DELTA)[0]
    c = rng.bits_numpy(8, np.arange(100), 0, rng.Stream.SUBSET)[0]
    assert not np.array_equal(a, b) and not np.array_equal(a, c)


def test_uniform_and_normal_statistics():
    words = rng.bits_numpy(2024, np.arange(100_000), 0, rng.Stream.TEST_UNIFORM)
    u = rng.uniform_from_bits_numpy(words[0])
    assert 0.0 < u.min() and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 4 * np.sqrt(1 / 12 / u.size)
    assert abs(u.var() - 1 / 12) < 0.002
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    z = np.concatenate(rng.normal_pair_numpy(words[1], words[2]))
    assert abs(z.mean()) < 4 / np.sqrt(z.size) and abs(z.std() - 1) < 0.01
    assert stats.kstest(z, "norm").pvalue > 1e-3
    # the 32-bit words themselves: every bit position is balanced
    bits = (words[3][:, None] >> np.arange(32, dtype=np.uint64)) & np.uint64(1)
    assert np.all(np.abs(bits.mean(axis=0) - 0.5) < 0.01)


def test_derive_seeds_is_pure_and_distinct():
    a = rng.derive_seeds(5, 1, 0, 1000)
    assert np.array_equal(a, rng.derive_seeds(5, 1, 0, 1000))
    assert np.array_equal(a[10:20], rng.derive_seeds(5, 1, 10, 10))
    assert len(np.unique(a)) == 1000 and a.max() < 2**63
    assert not np.array_equal(a, rng.derive_seeds(5, 2, 0, 1000))
    with pytest.raises(ValueError, match="seed"):
        rng.derive_seeds(-1, 1, 0, 3)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))])
def test_blocking_never_changes_a_bit(np_rng, monkeypatch, device):
    """Blocks of 7 (an odd tail), the device's default blocks and numpy give the same words."""
    n = 1000
    seeds = np_rng.integers(0, 2**63, size=n, dtype=np.int64)
    c0 = np_rng.integers(0, 2**32, size=n, dtype=np.int64)
    expected = np.stack(rng.bits_numpy(seeds.astype(np.uint64), c0, 3, rng.Stream.DELTA)).astype(np.int64)

    def words():
        out = rng.bits_torch(torch.as_tensor(seeds, device=device), torch.as_tensor(c0, device=device), 3, rng.Stream.DELTA)
        return np.stack([w.cpu().numpy() for w in out])

    assert np.array_equal(words(), expected)
    monkeypatch.setattr(rng, "PHILOX_BLOCK", 7)
    monkeypatch.setattr(rng, "PHILOX_BLOCK_CUDA", 7)
    assert np.array_equal(words(), expected)


def _edge_uniforms(np_rng):
    edges = [2.0**-33, 2.0**-32 * 0.5, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0 - 2.0**-33, 0.1, 1e-300]
    return np.concatenate([np_rng.random(20000), edges])


def test_portable_log_is_the_libm_log(np_rng):
    import math

    u = _edge_uniforms(np_rng)
    twin = np.array([math.log(x) for x in u])
    np.testing.assert_allclose(rng.log_portable(u), twin, rtol=4 * 2.0**-52, atol=0)


def test_portable_turns_are_libm_cos_sin(np_rng):
    import math

    v = _edge_uniforms(np_rng)[:-1]
    cos, sin = rng.cos_sin_turns_portable(v)
    np.testing.assert_allclose(cos, [math.cos(2 * math.pi * x) for x in v], rtol=0, atol=4 * 2.0**-52)
    np.testing.assert_allclose(sin, [math.sin(2 * math.pi * x) for x in v], rtol=0, atol=4 * 2.0**-52)
    assert cos[np.flatnonzero(v == 0.25)[0]] == pytest.approx(0.0, abs=1e-16)


def test_normal_pairs_use_only_exact_operations(np_rng, monkeypatch):
    """The numpy Box-Muller never calls a transcendental ufunc (whose last bits differ between
    SIMD paths): with np.log, np.cos and np.sin removed it gives the same bits."""
    words = np_rng.integers(0, 2**32, size=(2, 500), dtype=np.int64).astype(np.uint32)
    before = rng.normal_pair_numpy(words[0], words[1])
    for name in ("log", "cos", "sin", "exp"):
        monkeypatch.setattr(np, name, None)
    after = rng.normal_pair_numpy(words[0], words[1])
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
