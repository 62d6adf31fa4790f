"""The questions a study answers, read back from MLflow: predict, backtest, plan.

Each command fits learning curves to the finished runs of a study's latest study run, prints a
table, and logs its numbers (and the forecast plot) to that study run.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from cluster.results import study_results
from cluster.tracking import POOL_SIZE, TEST_COUNTS, StudyTracker, tracking_uri
from finetune.arms import SCRATCH
from finetune.curves import CurveError, Estimate, LearningCurve
from finetune.forecast import StudyCurves, backtest, fit_curves, multipliers, plan_next_round
from finetune.levers import lever_table
from finetune.report import forecast_png, study_subtitle
from finetune.report_html import report_html


def _count(value: float) -> str:
    return "∞" if not math.isfinite(value) else f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _interval(e: Estimate, fmt=_count) -> str:
    return f"{fmt(e.point)} [{fmt(e.low)}, {fmt(e.high)}]"


def _per_class(e: Estimate, n_classes: int) -> Estimate:
    return Estimate(e.point / n_classes, e.low / n_classes, e.high / n_classes)


def _load(study: str | None):
    """The study's tracker, latest study run, finished runs and class count; ``study`` defaults to
    the store's only study."""
    uri = tracking_uri()
    tracker = StudyTracker.existing(uri, study or StudyTracker.only_study(uri))
    parent = tracker.latest_parent()
    frame, n_classes = study_results(tracker, parent)
    return tracker, parent, frame, n_classes


def _test_counts(tracker: StudyTracker, parent: str) -> dict[str, int] | None:
    """Test images per class, as the study run recorded them (``None`` for runs of earlier releases)."""
    recorded = tracker.client.get_run(parent).data.tags.get(TEST_COUNTS)
    return json.loads(recorded) if recorded else None


def _majority(tracker: StudyTracker, parent: str) -> float | None:
    """The test split's majority-class rate: a curve at it learned nothing, even above 1/classes."""
    counts = _test_counts(tracker, parent)
    return max(counts.values()) / sum(counts.values()) if counts and sum(counts.values()) else None


def _fit(tracker: StudyTracker, parent: str, frame: pd.DataFrame, n_classes: int) -> StudyCurves:
    """The study's curves, checked against the test split's majority-class rate where it is known."""
    return fit_curves(frame, n_classes, majority=_majority(tracker, parent))


def _pool(tracker: StudyTracker, parent: str, frame: pd.DataFrame) -> tuple[int | None, str]:
    """The labeled pool's size in labels and where it came from (``None``: not recorded)."""
    recorded = tracker.client.get_run(parent).data.tags.get(POOL_SIZE)
    measured_all = frame.loc[frame.budget == "all", "n_labels"]
    if recorded:
        return int(recorded), "the labeled pool"
    if not measured_all.empty:
        return int(measured_all.max()), "the labeled pool (its 'all' budget)"
    return None, "pool size not recorded"


def _default_cut(tracker: StudyTracker, parent: str, frame: pd.DataFrame, cut: float) -> tuple[int, str]:
    """``cut`` of the labeled pool, in labels, and where the pool size came from."""
    total, why = _pool(tracker, parent, frame)
    if total is None:  # a study run of the first release without an 'all' budget
        total, why = int(frame.n_labels.max()), f"the largest measured budget ({why})"
    return int(cut * total), f"{cut:.0%} of {why}, {total} labels"


def _finite(value):
    """``value`` with every non-finite float as ``None``: JSON has no Infinity."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value


def _needed_cells(needed: Estimate, n_classes: int, pool: int | None) -> list[str]:
    if not needed.reachable:
        return [f"beyond what these runs can tell (> {_count(needed.limit)})", ""]
    past = " (past the pool)" if pool is not None and needed.point > pool else ""
    measured = f" (reached at {_count(needed.reached_at)})" if needed.reached_at is not None else ""
    return [_interval(needed) + past + measured, _interval(_per_class(needed, n_classes))]


def _say_gaps(study: StudyCurves, n_classes: int, console: Console) -> None:
    """One line per arm without a forecast, and per arm with budgets that other arms measured."""
    for arm, why in study.no_forecast.items():
        console.print(f"{arm}: no forecast: {why}")
    for arm, budgets in study.missing.items():
        shown = ", ".join(f"{b:,} ({b / n_classes:g}/class)" for b in budgets)
        console.print(
            f"{arm}: no finished runs at {shown} labels, which other arms have: forecast from the rest "
            "(`labelcurve run` with the same config finishes them)"
        )


def _lever_view(levers: pd.DataFrame, target: float) -> Table:
    view = Table(title=f"levers: labels for accuracy {target:g}, and how many labels `{SCRATCH}` needs per label")
    for column in ["lever", "arm", "labels needed", "x fewer labels than scratch"]:
        view.add_column(column, justify="right")
    for row in levers.itertuples():
        if row.note:
            view.add_row(row.lever, row.arm, "no forecast (above)", "")
            continue
        needed = Estimate(row.labels, row.labels_low, row.labels_high)
        labels = _interval(needed) if needed.reachable else "beyond what these runs can tell"
        if not pd.isna(row.reached_at):
            labels += f" (reached at {_count(row.reached_at)})"
        if pd.isna(row.multiplier):
            ratio = "" if needed.reachable else "unknown: the lever's count is open"
        elif not math.isfinite(row.multiplier):
            ratio = f"> {row.multiplier_low:.1f}x (scratch: beyond what these runs can tell)"
        else:
            high = f"{row.multiplier_high:.1f}" if math.isfinite(row.multiplier_high) else "∞"
            ratio = f"{row.multiplier:.1f}x [{row.multiplier_low:.1f}, {high}]"
        view.add_row(row.lever, row.arm, labels, ratio)
    return view


def _multiplier_cell(m) -> str:
    if not math.isfinite(m.multiplier):
        return f"> {m.limit:.0f}x (scratch: beyond what these runs can tell)"
    high = f"{m.high:.1f}" if math.isfinite(m.high) else f"> {m.limit:.0f}"
    return f"{m.multiplier:.1f}x [{m.low:.1f}, {high}]"


def _report_page(tracker: StudyTracker, parent: str, frame: pd.DataFrame, levers: pd.DataFrame, title: str) -> bytes:
    """The study's report.html again, with the lever table under the results table."""
    params = tracker.client.get_run(parent).data.params
    setup = {"dataset": params.get("data.name", ""), "method": params.get("pretrain.method", "")}
    setup["backbone"] = params.get("pretrain.backbone", "")
    arms = list(dict.fromkeys(frame.arm))
    counts = _test_counts(tracker, parent)
    return report_html(frame, arms, title, study_subtitle(**setup), levers=levers, test_counts=counts)


def predict(study: str | None, target: float, console: Console) -> dict:
    """Per arm: accuracy at the next budgets, labels for ``target``, the label multiplier, and the
    lever table; arms that learned nothing or lack budgets say so instead."""
    tracker, parent, frame, n_classes = _load(study)
    study = tracker.study
    pool, _ = _pool(tracker, parent, frame)
    fitted = _fit(tracker, parent, frame, n_classes)
    curves = fitted.curves
    largest = int(frame.labels_per_class.max())
    next_per_class = [2 * largest, 5 * largest]
    share = round(LearningCurve(n_classes).interval * 100)
    limit = 10 * float(frame.n_labels.max())
    view = Table(title=f"{study}: forecast for target accuracy {target:g} ({share}% intervals)")
    past = ["" if pool is None or b * n_classes <= pool else " (past the pool)" for b in next_per_class]
    columns = [
        "arm",
        "ceiling",
        *[f"acc @ {b}/class{mark}" for b, mark in zip(next_per_class, past, strict=True)],
        "labels needed",
        "per class",
    ]
    for column in columns:
        view.add_column(column, justify="right")
    answer: dict = {"study": study, "target": target, "interval": share / 100, "limit": limit, "arms": {}}
    if pool is not None:
        answer["pool"] = pool
    series: dict[str, dict[int, float]] = {}
    step = round(target * 100)
    for arm, curve in curves.items():
        ceiling, needed = curve.ceiling(), curve.labels_needed(target)
        low, high = curve.predict_interval([b * n_classes for b in next_per_class])
        points = curve.predict([b * n_classes for b in next_per_class])
        cells = [f"{p:.3f} [{lo:.3f}, {hi:.3f}]" for p, lo, hi in zip(points, low, high, strict=True)]
        view.add_row(arm, _interval(ceiling, "{:.3f}".format), *cells, *_needed_cells(needed, n_classes, pool))
        answer["arms"][arm] = {"ceiling": vars(ceiling), "labels_needed": vars(needed)}
        series[f"ceiling/{arm}"] = {0: ceiling.point}
        for key, value in (
            ("labels_needed", needed.point),
            ("labels_needed_low", needed.low),
            ("labels_needed_high", needed.high),
        ):
            if math.isfinite(value):
                series[f"{key}/{arm}"] = {step: value}
    for arm, why in fitted.no_forecast.items():
        answer["arms"][arm] = {"no_forecast": why}
    if fitted.missing:
        answer["missing"] = fitted.missing
    if curves:
        console.print(view)
        console.print(
            f"label counts past {_count(limit)} (10x the largest measured budget) are not extrapolated"
            + (f"; the labeled pool holds {pool:,}" if pool is not None else "")
        )
    _say_gaps(fitted, n_classes, console)
    ratios = multipliers(fitted, frame, [b for b in (1, 2, 5, 10) if b <= largest])
    if not ratios.empty:
        table = Table(title=f"label multiplier: labels `{SCRATCH}` needs to match each arm, per label of that arm")
        for column in ["arm", "labels/class", "multiplier"]:
            table.add_column(column, justify="right")
        for row in ratios.itertuples():
            table.add_row(row.arm, str(row.labels_per_class), _multiplier_cell(row))
            if math.isfinite(row.multiplier):
                series.setdefault(f"label_multiplier/{row.arm}", {})[row.labels_per_class] = row.multiplier
        console.print(table)
        answer["label_multiplier"] = ratios.to_dict(orient="records")
    levers = lever_table(fitted, target)
    console.print(_lever_view(levers, target))
    answer["levers"] = levers.astype(object).where(levers.notna(), None).to_dict(orient="records")
    answer = _finite(answer)
    tracker.log_series(parent, series)
    title = f"{study}: fitted curves and target {target:g}"
    artifacts = {
        "prediction.json": json.dumps(answer, indent=2, allow_nan=False).encode(),
        "report.html": _report_page(tracker, parent, frame, levers, f"{study}: test accuracy vs labels"),
    }
    if curves:
        artifacts["prediction.png"] = forecast_png(frame, curves, target, title)
    tracker.log_artifacts(parent, artifacts)
    console.print(f"logged to study run {parent}: {', '.join(sorted(artifacts))}, labels_needed/<arm>")
    return answer


def run_backtest(study: str | None, cut: float, cut_labels: int | None, console: Console) -> pd.DataFrame:
    """Fit on budgets up to the cut, score the predictions at the larger measured budgets."""
    tracker, parent, frame, n_classes = _load(study)
    study = tracker.study
    if cut_labels is None:
        cut_labels, why = _default_cut(tracker, parent, frame, cut)
    else:
        why = "--cut-labels"
    console.print(f"backtest: fitting on budgets of at most {cut_labels} labels ({why})")
    scores = backtest(frame, n_classes, cut_labels, majority=_majority(tracker, parent))
    if scores.empty:
        raise CurveError(
            "no arm has a curve on the budgets up to the cut (nothing learned or no trend there): "
            "raise --cut or --cut-labels, or look at `labelcurve predict`"
        )
    view = Table(title=f"{study}: backtest, fitted on <= {cut_labels} labels ({cut_labels / n_classes:.0f}/class)")
    for column in ["arm", "held-out labels", "measured", "predicted", "abs error", "label ratio", "in 80% interval"]:
        view.add_column(column, justify="right")
    for row in scores.itertuples():
        ratio = f"{row.label_ratio:.2f}" if math.isfinite(row.label_ratio) else "no answer"
        view.add_row(
            row.arm,
            f"{row.n_labels}",
            f"{row.measured:.3f}",
            f"{row.predicted:.3f}",
            f"{row.abs_error:.3f}",
            ratio,
            "yes" if row.covered else "no",
        )
    console.print(view)
    finite = scores.label_ratio[np.isfinite(scores.label_ratio)]
    summary = {
        "backtest/mean_abs_error": float(scores.abs_error.mean()),
        "backtest/median_label_ratio": float(np.median(finite)) if len(finite) else math.nan,
        "backtest/coverage": float(scores.covered.mean()),
    }
    unreachable = len(scores) - len(finite)
    ratio = (
        f"median label ratio {summary['backtest/median_label_ratio']:.2f}"
        if len(finite)
        else "no label ratio: the fit put every held-out accuracy above its ceiling or past its limit"
    )
    console.print(
        f"mean |error| {summary['backtest/mean_abs_error']:.3f}, {ratio}"
        + (
            f" ({unreachable} held-out accuracies the fit put above its ceiling or past its limit)"
            if unreachable and len(finite)
            else ""
        )
        + f", coverage {summary['backtest/coverage']:.0%} (nominal 80%; an interval wider than half the range "
        "from chance to 1 covers nothing)"
    )
    summary = {k: v for k, v in summary.items() if math.isfinite(v)}
    tracker.log_series(parent, {k: {cut_labels: v} for k, v in summary.items()})
    tracker.log_artifacts(parent, {"backtest.csv": scores.to_csv(index=False).encode()})
    return scores


def plan(study: str | None, target: float, quantile: float, cost_per_label: float | None, console: Console) -> list:
    """The next budget to label per arm: a quantile of the labels needed, capped per round; none
    where the runs already reached the target, and marked where it is past the labeled pool."""
    tracker, parent, frame, n_classes = _load(study)
    study = tracker.study
    pool, _ = _pool(tracker, parent, frame)
    fitted = _fit(tracker, parent, frame, n_classes)
    current = int(frame.n_labels.max())
    view = Table(title=f"{study}: next round toward accuracy {target:g} (now {current} labels)")
    for column in ["arm", "label up to", "per class", "P(reach target)", "point estimate"]:
        view.add_column(column, justify="right")
    if cost_per_label is not None:
        view.add_column("cost of the round", justify="right")
    rounds = []
    for arm, curve in fitted.curves.items():
        step = plan_next_round(curve, arm, target, current, quantile=quantile)
        if step.reached:
            measured = f"already reached: measured at {step.next_labels:,.0f} labels"
            cells = [arm, measured, f"{step.next_per_class}", "measured", _count(step.needed.point)]
        else:
            past = f" (past the pool of {pool:,})" if pool is not None and step.next_labels > pool else ""
            cells = [
                arm,
                f"{step.next_labels:,.0f}{past}",
                f"{step.next_per_class}",
                f"{step.reach_probability:.0%}",
                _count(step.needed.point),
            ]
        if cost_per_label is not None:
            cells.append("0.00" if step.reached else f"{max(step.next_labels - current, 0) * cost_per_label:,.2f}")
        view.add_row(*cells)
        rounds.append(step)
    if fitted.curves:
        console.print(view)
    _say_gaps(fitted, n_classes, console)
    console.print(
        f"quantile {quantile:g} of the labels needed, at most 4x the labels of today per round; "
        "label, run the study with the new budget, and plan again"
    )
    return rounds
