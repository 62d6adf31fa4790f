import json
import math

import numpy as np
import pandas as pd
import pytest

from finetune.curves import CurveError, Fit
from finetune.forecast import backtest, fit_curves, multipliers, plan_next_round
from finetune.heads import training_steps
from finetune.levers import lever_table

CHANCE, CLASSES = 0.1, 10
PER_CLASS = [1, 2, 5, 10, 20, 50]


def frame_from(truths: dict[str, Fit], noise: float = 0.003, seeds: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for arm, truth in truths.items():
        for budget in PER_CLASS:
            n = budget * CLASSES
            for seed in range(seeds):
                accuracy = float(truth.predict(np.array(n), CHANCE)) + rng.normal(0, noise)
                rows.append(
                    {
                        "arm": arm,
                        "budget": str(budget),
                        "seed": seed,
                        "n_labels": n,
                        "labels_per_class": float(budget),
                        "accuracy": accuracy,
                    }
                )
    return pd.DataFrame(rows)


def test_multiplier_recovers_a_known_label_saving():
    # scratch(n) == ssl(n / 3): the pretrained arm is worth exactly 3 labels per label.
    ssl, scratch = Fit("power", 0.95, 20.0, 0.8), Fit("power", 0.95, 60.0, 0.8)
    frame = frame_from({"ssl-linear": ssl, "scratch": scratch})
    study = fit_curves(frame, CLASSES, n_bootstrap=40)
    assert list(study.curves) == ["ssl-linear", "scratch"]  # the study's arm order
    assert not study.no_forecast and not study.missing
    table = multipliers(study, frame, [1, 5, 20])
    assert len(table) == 3
    assert table.multiplier.to_numpy() == pytest.approx([3, 3, 3], rel=0.15)
    assert (table.low <= table.multiplier).all() and (table.multiplier <= table.high).all()


def test_backtest_scores_held_out_budgets():
    frame = frame_from({"scratch": Fit("arctan", 0.9, 80.0, 0.9)}, noise=0.004)
    scores = backtest(frame, CLASSES, cut_labels=100, n_bootstrap=40)
    assert sorted(scores.n_labels) == [200, 500]
    assert (scores.abs_error < 0.03).all()
    assert scores.label_ratio.between(0.5, 2).all()
    # 80% intervals on a curve of its own family and little noise cover most held-out budgets
    assert scores.covered.mean() >= 0.5


def test_backtest_needs_budgets_above_and_below_the_cut():
    frame = frame_from({"scratch": Fit("mmf", 0.9, 30.0, 1.0)})
    with pytest.raises(CurveError, match="no measured budget above the cut"):
        backtest(frame, CLASSES, cut_labels=10_000)
    with pytest.raises(CurveError, match="leaves 2 budgets to fit on and a curve needs at least 3: raise --cut"):
        backtest(frame, CLASSES, cut_labels=20)


def test_a_study_without_finished_runs_is_an_error():
    with pytest.raises(CurveError, match="no finished runs"):
        fit_curves(frame_from({}), CLASSES)


def test_plan_steps_to_a_quantile_and_caps_the_round():
    frame = frame_from({"scratch": Fit("power", 0.97, 40.0, 0.7)})
    (curve,) = fit_curves(frame, CLASSES, n_bootstrap=60).curves.values()
    near = plan_next_round(curve, "scratch", target=0.85, current_labels=500, quantile=0.75)
    assert near.next_labels >= near.needed.point  # a conservative quantile, not the point estimate
    assert near.next_labels % CLASSES == 0 and near.next_per_class == near.next_labels / CLASSES
    assert near.reach_probability >= 0.75
    far = plan_next_round(curve, "scratch", target=0.96, current_labels=500, quantile=0.75)
    assert far.next_labels == pytest.approx(2000, abs=CLASSES)  # at most 4x today's labels per round
    assert far.needed.point > 10_000  # the truth needs about 23,500 labels for 0.96
    assert far.reach_probability < 0.5


def test_a_multiplier_past_the_limit_is_infinite_and_says_its_limit():
    ssl = Fit("power", 0.95, 20.0, 0.8)
    flat_scratch = Fit("power", 0.3, 5.0, 1.0)  # never reaches what the pretrained arm does
    frame = frame_from({"ssl-linear": ssl, "scratch": flat_scratch})
    table = multipliers(fit_curves(frame, CLASSES, n_bootstrap=20), frame, [5])
    (row,) = table.itertuples()
    assert math.isinf(row.multiplier) and row.limit == pytest.approx(10 * 500 / 50)
    from cluster.answers import _finite, _multiplier_cell

    assert "beyond what these runs can tell" in _multiplier_cell(row)
    assert json.loads(json.dumps(_finite(table.to_dict(orient="records")), allow_nan=False))[0]["multiplier"] is None


def test_more_labels_never_train_less():
    steps = [training_steps(n, epochs=10, batch_size=64, min_steps=150, max_steps=1000) for n in range(1, 20_000, 37)]
    assert steps[0] == 150 and steps[-1] == 1000
    assert np.all(np.diff(steps) >= 0)
    assert training_steps(1258, epochs=10, batch_size=64, min_steps=150, max_steps=1000) == 197  # the README's figure


def frame_of(means: dict[str, dict[int, list[float]]], classes: int = CLASSES) -> pd.DataFrame:
    """A results frame from measured accuracies: arm -> labels per class -> one accuracy per seed."""
    rows = [
        {
            "arm": arm,
            "budget": str(budget),
            "seed": seed,
            "n_labels": budget * classes,
            "labels_per_class": float(budget),
            "accuracy": accuracy,
        }
        for arm, budgets in means.items()
        for budget, runs in budgets.items()
        for seed, accuracy in enumerate(runs)
    ]
    return pd.DataFrame(rows)


def test_arms_with_different_budgets_answer_and_name_the_missing_points():
    """An interrupted study: ssl-linear stopped after 10/class, scratch went on to 50 (issue 31.1:
    the broken power law entered one arm's ensemble and not the other's, and zip() raised)."""
    ssl, scratch = Fit("power", 0.95, 20.0, 0.8), Fit("power", 0.95, 60.0, 0.8)
    frame = frame_from({"ssl-linear": ssl, "scratch": scratch})
    frame = frame[~((frame.arm == "ssl-linear") & (frame.labels_per_class > 10))]
    study = fit_curves(frame, CLASSES, n_bootstrap=20)
    assert study.missing == {"ssl-linear": [200, 500]}
    assert {f.family for f in study.curves["scratch"].fits_} > {f.family for f in study.curves["ssl-linear"].fits_}
    table = multipliers(study, frame, [1, 5])
    assert table.multiplier.to_numpy() == pytest.approx([3, 3], rel=0.25)
    levers = lever_table(study, 0.8)
    assert levers.set_index("arm").multiplier["ssl-linear"] == pytest.approx(3, rel=0.25)


# 6 classes; both pretrained arms plateau at 0.995+ with the whole pool, scratch reaches 0.99 at 120/class
PLATEAU = {
    "ssl-linear": {
        1: [0.80, 0.86],
        5: [0.95, 0.93],
        20: [0.975, 0.985],
        60: [0.986, 0.988],
        120: [0.9905, 0.9895],
        350: [0.9967, 0.9967],
    },
    "ssl-finetune": {
        1: [0.70, 0.78],
        5: [0.90, 0.93],
        20: [0.97, 0.96],
        60: [0.985, 0.984],
        120: [0.9925, 0.9915],
        350: [0.9955, 0.9955],
    },
    "scratch": {
        1: [0.50, 0.60],
        5: [0.85, 0.80],
        20: [0.95, 0.94],
        60: [0.975, 0.978],
        120: [0.986, 0.988],
        350: [0.9925, 0.9935],
    },
}


def test_a_plateau_at_0_99_never_contradicts_its_measurements():
    frame = frame_of(PLATEAU, classes=6)
    study = fit_curves(frame, 6, n_bootstrap=40)
    assert set(study.curves) == {"ssl-linear", "ssl-finetune", "scratch"} and not study.no_forecast
    for arm, curve in study.curves.items():
        best = max(np.mean(runs) - np.std(runs, ddof=1) / math.sqrt(len(runs)) for runs in PLATEAU[arm].values())
        assert curve.ceiling().point >= best - 1e-9 and curve.ceiling().low >= best - 1e-9, arm
    # 0.995 was measured at 350/class by both pretrained arms: reachable, and at most 350/class
    for arm in ["ssl-linear", "ssl-finetune"]:
        needed = study.curves[arm].labels_needed(0.995)
        assert needed.reached_at == 350 * 6 and needed.reachable, arm
        assert 120 * 6 <= needed.low <= needed.point <= needed.high <= 350 * 6, arm
    # 0.99: ssl-linear first measured it at 120/class, after 0.987 at 60: the interval is inside (60, 120]
    needed = study.curves["ssl-linear"].labels_needed(0.99)
    assert 60 * 6 <= needed.low <= needed.point <= needed.high <= 120 * 6
    # scratch measured 0.987 at 120/class and 0.993 at 350: crossing 0.99 in between
    needed = study.curves["scratch"].labels_needed(0.99)
    assert 120 * 6 <= needed.low <= needed.high <= 350 * 6
    # at 20/class ssl-linear measured 0.98; scratch measured 0.9765 at 60 and 0.987 at 120: 3x to 6x
    row = multipliers(study, frame, [20]).set_index("arm").loc["ssl-linear"]
    assert 3 <= row.multiplier <= 6
    # the interval carries ssl-linear's own uncertainty, at most into scratch's neighbouring brackets
    assert 1 <= row.low <= row.multiplier <= row.high <= 350 / 20


def test_a_target_already_reached_says_where_and_plans_no_round():
    frame = frame_of(PLATEAU, classes=6)
    curve = fit_curves(frame, 6, n_bootstrap=20).curves["ssl-linear"]
    needed = curve.labels_needed(0.75)  # below the smallest budget's mean (0.83 at 1/class)
    assert needed.reached_at == 6 and needed.point <= 6 and needed.high <= 6
    step = plan_next_round(curve, "ssl-linear", 0.98, current_labels=350 * 6)
    assert step.reached and step.next_labels == 20 * 6 and step.reach_probability == 1.0  # 0.98 at 20/class


CHANCE_LEVEL = {  # 4 classes, every arm near chance from 1 label per class to the whole pool
    "ssl-linear": {1: [0.26, 0.22], 5: [0.24, 0.27], 50: [0.25, 0.23], 200: [0.26, 0.25], 718: [0.25, 0.25]},
    "scratch": {1: [0.17, 0.28], 5: [0.22, 0.30], 50: [0.29, 0.21], 200: [0.24, 0.26], 718: [0.30, 0.22]},
}


def test_curves_at_chance_get_no_forecast_and_say_so():
    frame = frame_of(CHANCE_LEVEL, classes=4)
    study = fit_curves(frame, 4, n_bootstrap=10)
    assert not study.curves
    assert set(study.no_forecast) == {"ssl-linear", "scratch"}
    assert all(line.startswith("nothing learned") and "chance 0.250" in line for line in study.no_forecast.values())
    levers = lever_table(study, 0.5)
    assert levers.labels.isna().all() and levers.multiplier.isna().all() and (levers.note != "").all()


def test_a_curve_above_chance_without_a_rise_has_no_trend():
    flat = {1: [0.55, 0.62], 5: [0.60, 0.57], 20: [0.58, 0.61], 100: [0.56, 0.60], 400: [0.59, 0.57]}
    study = fit_curves(frame_of({"scratch": flat}, classes=4), 4, n_bootstrap=10)
    assert study.no_forecast["scratch"].startswith("no trend")
    # the majority-class rate of the test split is the floor where it is above chance
    study = fit_curves(frame_of({"scratch": flat}, classes=4), 4, majority=0.6, n_bootstrap=10)
    said = study.no_forecast["scratch"]
    assert "nothing learned" in said and "majority-class rate 0.600" in said


def test_a_backtest_counts_no_interval_wider_than_half_the_range_as_covered():
    # seeds that disagree by 0.6-0.7: the interval for the held-out mean spans most of the range
    noisy = {1: [0.15, 0.8], 2: [0.25, 0.85], 5: [0.35, 0.95], 10: [0.45, 0.98], 20: [0.7, 0.72]}
    (row,) = backtest(frame_of({"scratch": noisy}), CLASSES, cut_labels=100, n_bootstrap=20).itertuples()
    assert row.low <= row.measured <= row.high and row.high - row.low >= 0.5 * (1 - CHANCE)
    assert not row.covered
