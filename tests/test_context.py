"""The data distances behind the radius in context, against a per-pair numpy twin."""
import numpy as np
import pytest

from barrierkit.context import nearest_other_class_distances, pairwise_distances


def _twin(a, b, norm):
    order = np.inf if norm == "inf" else float(norm)
    return np.array([[np.linalg.norm(p - q, ord=order) for q in b] for p in a])


@pytest.mark.parametrize("norm", ["inf", "2", "1"])
@pytest.mark.parametrize("n,m,dim", [(1, 1, 1), (7, 13, 5), (33, 4, 97)])
def test_pairwise_distances_equal_the_twin(norm, n, m, dim):
    rng = np.random.default_rng(n * m + dim)
    a, b = rng.random((n, dim)), rng.random((m, dim))
    fast, slow = pairwise_distances(a, b, norm), _twin(a, b, norm)
    if norm == "inf":
        assert np.array_equal(fast, slow), "l_inf distances are exact: the same bits by any route"
    else:
        np.testing.assert_allclose(fast, slow, rtol=1e-13, atol=0)


def test_nearest_other_class_ignores_the_own_class_and_chunks_invisibly():
    x = np.array([[0.0], [0.1], [1.0], [0.5]])
    y = np.array([0, 0, 1, 1])
    assert nearest_other_class_distances(x, y, "inf").tolist() == [0.5, 0.4, 0.9, 0.4]
    rng = np.random.default_rng(1)
    x, y = rng.random((50, 6)), rng.integers(0, 3, 50)
    assert np.array_equal(nearest_other_class_distances(x, y, "2", chunk=7), nearest_other_class_distances(x, y, "2"))


def test_the_median_uses_a_regular_subsample_of_large_sets_only():
    from barrierkit.context import query_points

    assert query_points(1437).tolist() == list(range(1437)), "small sets: every point, as before"
    big = query_points(6001)
    assert len(big) <= 2000 and big[0] == 0 and np.all(np.diff(big) == 4)
    rng = np.random.default_rng(2)
    x, y = rng.random((30, 4)), rng.integers(0, 2, 30)
    rows = np.array([3, 17, 29])
    assert np.array_equal(nearest_other_class_distances(x, y, "inf", queries=rows), nearest_other_class_distances(x, y, "inf")[rows])
