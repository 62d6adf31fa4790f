import math

import numpy as np
import pytest

from finetune.curves import CurveError, Fit, LearningCurve, distinct_runs

CHANCE = 0.1
BUDGETS = np.repeat([10, 20, 50, 100, 200], 3)


@pytest.mark.parametrize("family", ["power", "arctan", "mmf"])
def test_fit_recovers_known_parameters(family):
    truth = Fit(family, ceiling=0.93, scale=40.0, alpha=0.8)
    curve = LearningCurve(n_classes=10, families=(family,), n_bootstrap=5, ceiling_prior=None)
    curve.fit(BUDGETS, truth.predict(BUDGETS, CHANCE))
    (fit,) = curve.fits_
    assert fit.ceiling == pytest.approx(0.93, abs=1e-3)
    assert fit.scale == pytest.approx(40.0, rel=1e-2)
    assert fit.alpha == pytest.approx(0.8, rel=1e-2)
    assert curve.labels_needed(0.85).point == pytest.approx(truth.labels_for(0.85, CHANCE), rel=1e-2)


def test_labels_needed_inverts_predict():
    rng = np.random.default_rng(0)
    accuracy = Fit("power", 0.95, 30.0, 0.7).predict(BUDGETS, CHANCE) + rng.normal(0, 0.01, len(BUDGETS))
    curve = LearningCurve(n_classes=10, n_bootstrap=20).fit(BUDGETS, accuracy)
    for target in [0.3, 0.6, 0.8, 0.85]:
        estimate = curve.labels_needed(target)
        assert curve.predict(estimate.point) == pytest.approx(target, abs=1e-6)
        assert estimate.low <= estimate.point <= estimate.high
    for n in [5, 50, 500]:
        assert curve.labels_needed(float(curve.predict(n))).point == pytest.approx(n, rel=1e-4)


def test_target_above_the_ceiling_is_not_reachable():
    curve = LearningCurve(n_classes=10, n_bootstrap=20, ceiling_prior=None).fit(
        BUDGETS, Fit("mmf", 0.8, 30.0, 1.0).predict(BUDGETS, CHANCE)
    )
    assert curve.ceiling().point == pytest.approx(0.8, abs=0.02)
    estimate = curve.labels_needed(0.9)
    assert not estimate.reachable and math.isinf(estimate.high)


def test_intervals_cover_the_truth_at_about_their_nominal_rate():
    """Fit on 4 budgets x 3 seeds; cover the true curve inside and beyond the data (80% intervals)."""
    rng = np.random.default_rng(1)
    n = np.repeat([10, 20, 50, 100], 3)
    draws, covered_acc, covered_labels = 45, 0, 0
    for draw in range(draws):
        family = ["power", "arctan", "mmf"][draw % 3]
        truth = Fit(family, rng.uniform(0.85, 0.99), rng.uniform(10, 60), rng.uniform(0.5, 1.2))
        accuracy = truth.predict(n, CHANCE) + rng.normal(0, 0.015, len(n))
        curve = LearningCurve(n_classes=10, n_bootstrap=30, random_state=draw).fit(n, accuracy)
        low, high = curve.predict_interval([30, 200])
        covered_acc += np.sum(
            (low <= truth.predict(np.array([30, 200]), CHANCE)) & (truth.predict(np.array([30, 200]), CHANCE) <= high)
        )
        estimate = curve.labels_needed(float(truth.predict(np.array([200.0]), CHANCE)[0]))
        covered_labels += estimate.low <= 200 <= estimate.high
    assert 0.7 <= covered_acc / (2 * draws) <= 0.95
    assert 0.65 <= covered_labels / draws <= 0.95


@pytest.mark.parametrize(
    ("n", "target", "message"),
    [
        ([10, 10, 20, 20], 0.5, "at least 3 budgets"),
        ([10, 20, 50], 0.1, "at or below chance"),
        ([10, 20, 50], 1.0, "not below 1"),
    ],
)
def test_bad_requests_are_one_line_errors(n, target, message):
    with pytest.raises(CurveError, match=message):
        curve = LearningCurve(n_classes=10, n_bootstrap=2).fit(n, np.linspace(0.4, 0.6, len(n)))
        curve.labels_needed(target)


def test_a_plateaued_curve_keeps_its_ceiling_above_what_was_measured():
    """Measured means rise to 0.991 and flatten: today's fit put the ceiling at 0.976."""
    per_class = [1, 2, 5, 10, 20, 50]
    means = [0.62, 0.80, 0.93, 0.972, 0.985, 0.991]
    rng = np.random.default_rng(0)
    n = np.repeat(np.array(per_class) * 4, 3).astype(float)
    accuracy = np.repeat(means, 3) + rng.normal(0, 0.004, len(n))
    curve = LearningCurve(n_classes=4, n_bootstrap=40).fit(n, accuracy)
    best = accuracy[n == n.max()]
    assert curve.ceiling().point >= best.mean() - curve.noise_sd(n.max()) / math.sqrt(3) - 1e-9
    # every measured mean is reachable, with a finite count no larger than a few times its budget
    for budget in per_class:
        measured = accuracy[n == budget * 4].mean()
        estimate = curve.labels_needed(measured)
        assert estimate.reachable and 0 < estimate.point <= 3 * budget * 4
    grid = np.geomspace(1, 10 * n.max(), 200)
    assert np.all(np.diff(curve.predict(grid)) >= -1e-12)  # monotone
    for low, high in zip(*curve.predict_interval(grid), strict=True):
        assert 0.25 <= low <= high <= 1


def test_a_noisy_flat_curve_gives_finite_answers_within_the_limit():
    rng = np.random.default_rng(3)
    n = np.repeat([10, 20, 50, 100, 200, 500], 3).astype(float)
    accuracy = 0.5 + rng.normal(0, 0.03, len(n))
    curve = LearningCurve(n_classes=10, n_bootstrap=40, limit=2000).fit(n, accuracy)
    grid = np.geomspace(1, 1e6, 100)
    predicted = curve.predict(grid)
    assert np.all(np.isfinite(predicted)) and np.all(np.diff(predicted) >= -1e-12)
    assert 0.1 < predicted.min() <= predicted.max() <= 1
    far = curve.labels_needed(0.9)  # far above anything measured
    assert not far.reachable and far.limit == 2000
    assert np.all(np.isinf(curve.bootstrap_labels(0.9)) | (curve.bootstrap_labels(0.9) <= 2000))
    near = curve.labels_needed(0.45)
    assert near.reachable and near.point <= 2000


def test_the_noise_of_a_run_shrinks_with_its_labels():
    rng = np.random.default_rng(0)
    n = np.repeat([10, 20, 50, 100, 200, 500, 1000], 8).astype(float)
    truth = Fit("power", 0.9, 40.0, 0.8)
    accuracy = truth.predict(n, CHANCE) + rng.normal(0, 1, len(n)) * np.sqrt(1e-5 + 0.02 / n)
    curve = LearningCurve(n_classes=10, n_bootstrap=5).fit(n, accuracy)
    assert curve.noise_sd(10) > 3 * curve.noise_sd(1000)
    assert curve.noise_sd(10) == pytest.approx(math.sqrt(1e-5 + 0.002), rel=0.5)


def test_identical_runs_count_once():
    n = np.array([10, 10, 10, 20, 20, 20, 50, 50, 50])
    accuracy = np.array([0.5, 0.52, 0.48, 0.6, 0.61, 0.62, 0.7, 0.7, 0.7])
    kept_n, kept_acc = distinct_runs(n, accuracy)
    assert list(kept_n) == [10, 10, 10, 20, 20, 20, 50]
    assert list(kept_acc[-1:]) == [0.7]


def test_the_broken_power_law_joins_the_ensemble_with_enough_budgets():
    five = np.repeat([10, 20, 50, 100, 200], 3)
    four = np.repeat([10, 20, 50, 100], 3)
    truth = Fit("broken", 0.95, 20.0, 0.4, (10.0, 1.5))
    accuracy = truth.predict(five, CHANCE)
    assert "broken" in {f.family for f in LearningCurve(10, n_bootstrap=2).fit(five, accuracy).fits_}
    assert "broken" not in {f.family for f in LearningCurve(10, n_bootstrap=2).fit(four, accuracy[:12]).fits_}
    (fit,) = LearningCurve(10, families=("broken",), n_bootstrap=2).fit(five, accuracy).fits_
    assert fit.predict(five, CHANCE) == pytest.approx(accuracy, abs=2e-3)
    assert fit.labels_for(0.8, CHANCE) == pytest.approx(truth.labels_for(0.8, CHANCE), rel=0.05)
