"""Answers from a measured study: labels for a target, the label multiplier, backtests, plans.

Inputs are the study's results frame (one row per finished run, as in ``results.csv``); all
label counts are totals over classes unless a name says ``per_class``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from finetune.arms import ARMS, SCRATCH
from finetune.curves import MIN_BUDGETS, CurveError, Estimate, LearningCurve
from finetune.measured import measured_points, nothing_learned

# an interval wider than this share of the range from chance to 1 says nothing: it is no answer,
# and a backtest does not count a measurement inside it as covered
UNINFORMATIVE = 0.5


@dataclass
class StudyCurves:
    """The learning curves of a study's finished runs, and why the other arms have none.

    ``curves``: one fitted :class:`LearningCurve` per arm that learned; ``no_forecast``: per arm
    without a curve, one line saying why (nothing learned, no trend, too few budgets);
    ``missing``: per arm, the budgets (labels) other arms measured and it did not: an interrupted
    study is a normal state, and every answer says what it was computed without.
    """

    curves: dict[str, LearningCurve]
    no_forecast: dict[str, str] = field(default_factory=dict)
    missing: dict[str, list[int]] = field(default_factory=dict)


def fit_curves(frame: pd.DataFrame, n_classes: int, majority: float | None = None, **curve_options) -> StudyCurves:
    """Check each arm's runs for learning, then fit a :class:`LearningCurve` to those that learned.

    ``majority``: the test split's majority-class rate, where known (a curve at that rate
    learned nothing even when it is above 1 / ``n_classes``).
    """
    if frame.empty:
        raise CurveError("the study has no finished runs: run `labelcurve run` first")
    order = {arm: i for i, arm in enumerate(ARMS)}
    every_budget = set(frame.n_labels.astype(int))
    study, too_few = StudyCurves({}), []
    for arm, part in sorted(frame.groupby("arm"), key=lambda item: order.get(item[0], len(order))):
        missing = sorted(every_budget - set(part.n_labels.astype(int)))
        if missing:
            study.missing[arm] = missing
        if part.n_labels.nunique() < MIN_BUDGETS:
            study.no_forecast[arm] = (
                f"a curve needs at least {MIN_BUDGETS} budgets with finished runs, got {part.n_labels.nunique()}"
            )
            too_few.append(arm)
            continue
        verdict = nothing_learned(measured_points(part.n_labels, part.accuracy), 1 / n_classes, majority)
        if verdict:
            study.no_forecast[arm] = verdict
        else:
            study.curves[arm] = LearningCurve(n_classes, **curve_options).fit(part.n_labels, part.accuracy)
    if len(too_few) == len(study.no_forecast) == frame.arm.nunique():  # nothing to answer with: say the first
        raise CurveError(f"arm '{too_few[0]}': {study.no_forecast[too_few[0]]}")
    return study


def paired(first: list, second: list) -> list[tuple]:
    """Bootstrap fits of two independent arms, paired to the longer list's length (an arm with five
    budgets has the broken power law in its ensemble and more fits than an arm with four)."""
    size = max(len(first), len(second))
    return [(first[i % len(first)], second[i % len(second)]) for i in range(size)]


def label_multiplier(
    arm: LearningCurve, baseline: LearningCurve, n_labels: float, measured: float | None = None
) -> Estimate:
    """How many times ``n_labels`` the baseline arm needs to match ``arm`` at ``n_labels``.

    ``measured``: ``arm``'s measured mean at ``n_labels``, where it was measured: the accuracy
    compared is then the measurement, not the fit. The baseline's labels for it stay inside the
    budgets where its own measured means crossed it, so the multiplier never contradicts the
    measured table. The interval pairs bootstrap fits of both arms. Where the baseline would need
    more than its curve's limit the multiplier is ``inf`` and ``limit`` says the most these runs
    can state (``limit / n_labels``).
    """
    chance = baseline.chance_
    fitted = float(arm.predict(n_labels))
    shift = 0.0 if measured is None else measured - fitted
    reached = min(fitted + shift, 1 - 1e-9)
    point = baseline.labels_needed(reached).point / n_labels if reached > chance else 0.0
    ratios = []
    for a, b in paired(arm.bootstrap_fits_, baseline.bootstrap_fits_):
        accuracy = min(float(a.predict(np.array(n_labels), chance)) + shift, 1 - 1e-9)
        ratios.append(float(baseline.bound(b.labels_for(accuracy, chance), accuracy)) / n_labels)
    limit = baseline.limit_ / n_labels
    ratios = np.where(np.array(ratios) > limit, math.inf, ratios)
    low, high = np.quantile(ratios, [(1 - baseline.interval) / 2, (1 + baseline.interval) / 2], method="inverted_cdf")
    return Estimate(point, min(float(low), point), max(float(high), point), limit)


def multipliers(study: StudyCurves, frame: pd.DataFrame, per_class: list[int]) -> pd.DataFrame:
    """Label multiplier of every fitted arm against ``scratch`` at each per-class budget, at the
    measured accuracy where the arm was measured at that budget."""
    curves = study.curves
    if SCRATCH not in curves:
        return pd.DataFrame()
    rows = []
    for arm, curve in curves.items():
        if arm == SCRATCH:
            continue
        for budget in per_class:
            n = budget * curve.n_classes
            runs = frame[(frame.arm == arm) & np.isclose(frame.labels_per_class, budget)]
            m = label_multiplier(curve, curves[SCRATCH], n, float(runs.accuracy.mean()) if len(runs) else None)
            rows.append(
                {
                    "arm": arm,
                    "labels_per_class": budget,
                    "multiplier": m.point,
                    "low": m.low,
                    "high": m.high,
                    "limit": m.limit,
                }
            )
    return pd.DataFrame(rows)


def backtest(frame: pd.DataFrame, n_classes: int, cut_labels: float, **curve_options) -> pd.DataFrame:
    """Fit each arm on budgets up to ``cut_labels`` and score it at the larger measured budgets.

    Per held-out budget: the absolute accuracy error, Mahmood et al.'s label-count ratio (the
    labels that reached the measured accuracy over the labels the fit said it would take) and
    whether the interval for a mean of that many runs covered the measured mean (an interval
    wider than :data:`UNINFORMATIVE` of the range from chance to 1 covers nothing). Arms without a
    curve on the seen budgets (nothing learned, no trend) are left out.
    """
    seen = frame[frame.n_labels <= cut_labels]
    held = frame[frame.n_labels > cut_labels]
    if held.empty:
        raise CurveError(f"no measured budget above the cut of {cut_labels:.0f} labels: lower the cut")
    fit_on = seen.n_labels.nunique()
    if fit_on < 3:
        raise CurveError(
            f"the cut of {cut_labels:.0f} labels leaves {fit_on} budgets to fit on and a curve needs at least 3: "
            "raise --cut or --cut-labels"
        )
    curves = fit_curves(seen, n_classes, **curve_options).curves
    rows = []
    for (arm, n), part in held.groupby(["arm", "n_labels"]):
        if arm not in curves:
            continue
        curve = curves[arm]
        measured = float(part.accuracy.mean())
        predicted = float(curve.predict(n))
        low, high = curve.predict_interval([n], runs=len(part))
        needed = curve.labels_needed(measured).point if curve.chance_ < measured < 1 else math.inf
        rows.append(
            {
                "arm": arm,
                "n_labels": int(n),
                "measured": measured,
                "predicted": predicted,
                "abs_error": abs(predicted - measured),
                "low": float(low[0]),
                "high": float(high[0]),
                # inf: the fit put the measured accuracy above its ceiling (no finite prediction)
                "label_ratio": n / needed if math.isfinite(needed) else math.inf,
                "covered": bool(
                    low[0] <= measured <= high[0] and high[0] - low[0] < UNINFORMATIVE * (1 - curve.chance_)
                ),
            }
        )
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class NextRound:
    """The next total budget to label for one arm, and what it buys."""

    arm: str
    current_labels: int
    next_labels: float
    next_per_class: int
    reach_probability: float
    needed: Estimate

    @property
    def reached(self) -> bool:
        """The target was already measured at or below today's labels: no round is needed."""
        return self.needed.reached_at is not None and self.needed.reached_at <= self.current_labels


def plan_next_round(
    curve: LearningCurve, arm: str, target: float, current_labels: int, quantile: float = 0.75, max_step: float = 4.0
) -> NextRound:
    """Label up to the ``quantile`` of the labels-needed distribution, at most ``max_step`` x now.

    A quantile, not the point estimate: falling short costs a whole extra round, so the step is
    sized to reach the target with probability ``quantile`` under the fit. The step is capped
    because a curve extrapolated far beyond its data is least trustworthy (Mahmood et al., 2022);
    after labeling, measure again and re-plan. A target the runs already reached at today's
    labels or fewer needs no round: the answer is the budget that reached it.
    """
    needed = curve.labels_needed(target)
    if needed.reached_at is not None and needed.reached_at <= current_labels:
        per_class = math.ceil(needed.reached_at / curve.n_classes)
        return NextRound(arm, current_labels, needed.reached_at, per_class, 1.0, needed)
    counts = curve.bootstrap_labels(target)
    wanted = float(np.quantile(counts, quantile, method="inverted_cdf"))
    step = min(wanted, max_step * current_labels)
    step = max(step, current_labels)
    per_class = math.ceil(step / curve.n_classes)
    return NextRound(
        arm, current_labels, per_class * curve.n_classes, per_class, float(np.mean(counts <= step)), needed
    )
