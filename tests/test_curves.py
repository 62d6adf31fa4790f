import math

import numpy as np
import pytest

from finetune.curves import CurveError, Fit, LearningCurve

CHANCE = 0.1
BUDGETS = np.repeat([10, 20, 50, 100, 200], 3)


@pytest.mark.parametrize("family", ["power", "arctan", "mmf"])
def test_fit_recovers_known_parameters(family):
    truth = Fit(family, ceiling=0.93, scale=40.0, alpha=0.8)
    curve = LearningCurve(n_classes=10, families=(family,), n_bootstrap=5).fit(BUDGETS, truth.predict(BUDGETS, CHANCE))
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
    curve = LearningCurve(n_classes=10, n_bootstrap=20).fit(
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
