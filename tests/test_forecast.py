import json
import math

import numpy as np
import pandas as pd
import pytest

from finetune.curves import CurveError, Fit
from finetune.forecast import backtest, fit_curves, multipliers, plan_next_round
from finetune.heads import training_steps

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
    curves = fit_curves(frame_from({"ssl-linear": ssl, "scratch": scratch}), CLASSES, n_bootstrap=40)
    assert list(curves) == ["ssl-linear", "scratch"]  # the study's arm order
    table = multipliers(curves, [1, 5, 20])
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
    (curve,) = fit_curves(frame, CLASSES, n_bootstrap=60).values()
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
    curves = fit_curves(frame_from({"ssl-linear": ssl, "scratch": flat_scratch}), CLASSES, n_bootstrap=20)
    table = multipliers(curves, [5])
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
