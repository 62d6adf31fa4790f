"""Answers from a measured study: labels for a target, the label multiplier, backtests, plans.

Inputs are the study's results frame (one row per finished run, as in ``results.csv``); all
label counts are totals over classes unless a name says ``per_class``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from finetune.arms import ARMS, SCRATCH
from finetune.curves import CurveError, Estimate, LearningCurve


def fit_curves(frame: pd.DataFrame, n_classes: int, **curve_options) -> dict[str, LearningCurve]:
    """One fitted :class:`LearningCurve` per arm."""
    if frame.empty:
        raise CurveError("the study has no finished runs: run `labelcurve run` first")
    curves = {}
    order = {arm: i for i, arm in enumerate(ARMS)}
    for arm, part in sorted(frame.groupby("arm"), key=lambda item: order.get(item[0], len(order))):
        try:
            curves[arm] = LearningCurve(n_classes, **curve_options).fit(part.n_labels, part.accuracy)
        except CurveError as error:
            raise CurveError(f"arm '{arm}': {error}") from None
    return curves


def label_multiplier(pretrained: LearningCurve, scratch: LearningCurve, n_labels: float) -> Estimate:
    """How many times ``n_labels`` the scratch arm needs to match the pretrained arm at ``n_labels``.

    The interval pairs bootstrap fits of both arms, so it carries the uncertainty of both. Where
    scratch would need more than its curve's limit the multiplier is ``inf`` and its ``limit``
    says the most these runs can state (``limit / n_labels``).
    """
    chance = scratch.chance_
    reached = float(pretrained.predict(n_labels))
    point = scratch.labels_needed(reached).point / n_labels if reached > chance else 0.0
    ratios = [
        r.labels_for(float(p.predict(np.array(n_labels), chance)), chance) / n_labels
        for p, r in zip(pretrained.bootstrap_fits_, scratch.bootstrap_fits_, strict=True)
    ]
    limit = scratch.limit_ / n_labels
    ratios = np.where(np.array(ratios) > limit, math.inf, ratios)
    low, high = np.quantile(ratios, [(1 - scratch.interval) / 2, (1 + scratch.interval) / 2], method="inverted_cdf")
    return Estimate(point, float(low), float(high), limit)


def multipliers(curves: dict[str, LearningCurve], per_class: list[int]) -> pd.DataFrame:
    """Label multiplier of every non-scratch arm against ``scratch`` at each per-class budget."""
    if SCRATCH not in curves:
        return pd.DataFrame()
    rows = []
    for arm, curve in curves.items():
        if arm == SCRATCH:
            continue
        for budget in per_class:
            m = label_multiplier(curve, curves[SCRATCH], budget * curve.n_classes)
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
    whether the interval for a mean of that many runs covered the measured mean.
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
    curves = fit_curves(seen, n_classes, **curve_options)
    rows = []
    for (arm, n), part in held.groupby(["arm", "n_labels"]):
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
                # inf: the fit put the measured accuracy above its ceiling (no finite prediction)
                "label_ratio": n / needed if math.isfinite(needed) else math.inf,
                "covered": bool(low[0] <= measured <= high[0]),
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


def plan_next_round(
    curve: LearningCurve, arm: str, target: float, current_labels: int, quantile: float = 0.75, max_step: float = 4.0
) -> NextRound:
    """Label up to the ``quantile`` of the labels-needed distribution, at most ``max_step`` x now.

    A quantile, not the point estimate: falling short costs a whole extra round, so the step is
    sized to reach the target with probability ``quantile`` under the fit. The step is capped
    because a curve extrapolated far beyond its data is least trustworthy (Mahmood et al., 2022);
    after labeling, measure again and re-plan.
    """
    needed = curve.labels_needed(target)
    counts = curve.bootstrap_labels(target)
    wanted = float(np.quantile(counts, quantile, method="inverted_cdf"))
    step = min(wanted, max_step * current_labels)
    step = max(step, current_labels)
    per_class = math.ceil(step / curve.n_classes)
    return NextRound(
        arm, current_labels, per_class * curve.n_classes, per_class, float(np.mean(counts <= step)), needed
    )
