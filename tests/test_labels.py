"""Safety labels are exact: integer hit counts, alpha as the decimal it is written as, NaN an error."""
from fractions import Fraction

import numpy as np
import pytest

from barrierkit.labels import SafetyRule, chance_hits, exact_alpha, hits_from_accuracy, median_hits_x2
from barrierkit.trajectories import Trajectories

pytestmark = pytest.mark.portability  # also run under ATEN_CPU_CAPABILITY=default and avx2 (tests/test_portability.py)


def test_alpha_is_the_decimal_it_is_written_as():
    assert exact_alpha(0.05) == Fraction(1, 20) and exact_alpha(0.3) == Fraction(3, 10)
    assert exact_alpha(1e-3) == Fraction(1, 1000) and exact_alpha(1) == 1 and exact_alpha(0) == 0
    with pytest.raises(ValueError, match="alpha"):
        exact_alpha(float("nan"))


def test_a_run_losing_exactly_alpha_of_the_test_set_is_safe():
    """digits: 360 test points, alpha = 0.05 is exactly 18 of them. The float64 drop of such a
    run is 0.050000000000000044 > 0.05, which labelled it unsafe."""
    rule = SafetyRule.from_clean_hits([337] * 5, 360, 0.05)
    assert 337 / 360 - 319 / 360 > 0.05, "the float64 comparison gets the tie wrong"
    assert rule.unsafe(np.array([319, 318, 337, 0])).tolist() == [False, True, False, True]
    assert rule.max_unsafe_hits == 318 and rule.g_clean == 337 / 360


def test_the_median_of_an_even_number_of_counts_is_a_half_count():
    rule = SafetyRule.from_clean_hits([300, 301, 290, 320], 360, 0.05)  # median 300.5
    assert rule.clean_hits_x2 == 601 and rule.clean_median_hits == 300.5 and rule.g_clean == 601 / 720
    # unsafe iff 300.5 - hits > 18, i.e. hits < 282.5
    assert rule.unsafe(np.array([282, 283])).tolist() == [True, False]
    assert median_hits_x2([5]) == 10 and median_hits_x2([1, 9, 4]) == 8 and median_hits_x2([2, 3]) == 5


def slow_unsafe(clean_hits, hits, test_size, alpha):
    """The readable twin: the median with Fractions, then G > alpha run by run."""
    h = sorted(int(c) for c in clean_hits)
    mid = len(h) // 2
    median = Fraction(h[mid]) if len(h) % 2 else Fraction(h[mid - 1] + h[mid], 2)
    a = Fraction(repr(float(alpha)))
    return [median / test_size - Fraction(int(x), test_size) > a for x in hits]


@pytest.mark.parametrize("test_size", [1, 7, 60, 360, 1001])
@pytest.mark.parametrize("alpha", [0.0, 0.05, 0.1, 0.3, 1 / 3, 0.123456789, 1.0])
@pytest.mark.parametrize("n_clean", [1, 4, 5])
def test_fast_labels_match_the_fraction_twin(test_size, alpha, n_clean):
    rng = np.random.default_rng(test_size * 31 + n_clean)
    clean = rng.integers(0, test_size + 1, size=n_clean)
    hits = np.arange(test_size + 1)  # every possible count, ties included
    rule = SafetyRule.from_clean_hits(clean, test_size, alpha)
    assert rule.unsafe(hits).tolist() == slow_unsafe(clean, hits, test_size, alpha)


@pytest.mark.parametrize("bad,match", [
    (np.array([0.5, np.nan, 0.25, np.inf]), "runs 1, 3"),
    (np.array([0.5, 0.3]), "not a count"),
    (np.array([1.5]), "outside"),
])
def test_accuracies_that_are_not_counts_are_errors_never_labels(bad, match):
    with pytest.raises((FloatingPointError, ValueError), match=match):
        hits_from_accuracy(bad, 4)


def test_nan_accuracy_is_a_floating_point_error():
    with pytest.raises(FloatingPointError, match="cannot be labelled"):
        hits_from_accuracy([np.nan], 10)


def test_hits_round_trip_every_count():
    for P in (1, 3, 360, 599, 10000):
        h = np.arange(P + 1)
        assert np.array_equal(hits_from_accuracy(h / P, P), h)


@pytest.mark.parametrize("kwargs,field", [
    (dict(clean_hits_x2=721, test_size=360, alpha=0.05), "clean_hits_x2"),
    (dict(clean_hits_x2=10, test_size=0, alpha=0.05), "test_size"),
    (dict(clean_hits_x2=10, test_size=10, alpha=1.5), "alpha"),
    (dict(clean_hits_x2=10, test_size=10, alpha=float("nan")), "alpha"),
    (dict(clean_hits_x2=2.0, test_size=10, alpha=0.05), "clean_hits_x2"),
])
def test_safety_rule_validates_its_fields(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SafetyRule(**kwargs)


def test_near_chance_means_a_majority_predictor_would_be_safe():
    y = np.array([0] * 36 + [1] * 324)
    assert chance_hits(y) == 324
    assert SafetyRule.from_clean_hits([340], 360, 0.05).near_chance(324)  # 340 - 18 = 322 <= 324
    assert not SafetyRule.from_clean_hits([350], 360, 0.05).near_chance(324)


def test_trajectories_hold_counts_and_reject_anything_else():
    f = np.zeros((2, 3, 4))
    seeds = np.zeros((2, 3), dtype=np.int64)
    t = Trajectories(f, np.array([3, 4]), 4, seeds, np.zeros(2), 0.1)
    assert t.test_accuracy.tolist() == [0.75, 1.0]
    for hits, match in ((np.array([0.5, 1.0]), "integer"), (np.array([3, 5]), r"\[0, 4\]"), (np.array([1]), "shape")):
        with pytest.raises(ValueError, match=match):
            Trajectories(f, hits, 4, seeds, np.zeros(2), 0.1)


@pytest.mark.parametrize("backend", ["torch", "numba", "triton"])
def test_every_backend_yields_hit_counts(small_data, backend):
    from barrierkit.config import FeatureSpec, ModelSpec, SampleConfig, TrainRecipe
    from barrierkit.engine import sample
    from barrierkit.rng import trajectory_seeds

    cfg = SampleConfig(model=ModelSpec(hidden=(5,)), recipe=TrainRecipe(steps=8, batch=8, record_every=4),
                       features=FeatureSpec(projection_dim=2, probe_size=16))
    runs = sample(cfg, 0.1, trajectory_seeds(0, 2, 3), data=small_data, backend=backend, progress=False)
    assert runs.test_hits.dtype == np.int64 and runs.test_size == small_data.x_test.shape[0]
    assert np.array_equal(runs.test_accuracy, runs.test_hits / runs.test_size)


def test_a_nan_accuracy_stops_sampling_naming_the_run(small_data, nan_accuracy):
    """NaN > alpha is False: one NaN accuracy used to make a run 'safe'. Now it is an error."""
    from barrierkit.config import FeatureSpec, ModelSpec, SampleConfig, TrainRecipe
    from barrierkit.engine import sample
    from barrierkit.rng import trajectory_seeds

    nan_accuracy(1)
    cfg = SampleConfig(model=ModelSpec(hidden=(5,)), recipe=TrainRecipe(steps=8, batch=8, record_every=4),
                       features=FeatureSpec(projection_dim=2, probe_size=16))
    with pytest.raises(FloatingPointError, match="runs 1:"):
        sample(cfg, 0.1, trajectory_seeds(0, 2, 3), data=small_data, backend="torch", progress=False)
