"""One table of the levers a study measured: labels needed for a target, each against the plain baseline.

A team with a labeling budget chooses between levers (pretrain on its own pool, start from public
weights, and, as the study grid gains axes, pick images, clean labels, use the pool while
fine-tuning). Each lever is an arm (or a line of a later axis) of the study; its worth is how many
labels the plain baseline (``scratch``: random init, random labels, clean) needs for the same
target, per label of the lever: ``baseline labels / lever labels``. Both counts are inside what
their runs measured (:meth:`finetune.curves.LearningCurve.labels_needed`), and the interval pairs
the bootstrap fits of both curves.

Example::

    study = fit_curves(frame, n_classes=10)
    table = lever_table(study, target=0.9)   # one row per arm: labels needed, multiplier, interval
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from finetune.arms import BY_NAME, LINEAR, SCRATCH, SSL, TRANSFER
from finetune.forecast import StudyCurves, paired

_STARTS = {SSL: "pretraining on the pool", TRANSFER: "transfer weights"}


def lever_name(arm: str) -> str:
    """'pretraining on the pool, linear probe': what choosing this arm means to a team."""
    if arm == SCRATCH:
        return "baseline (scratch)"
    spec = BY_NAME.get(arm)
    if spec is None:
        return arm
    return f"{_STARTS.get(spec.start, spec.start)}, {'linear probe' if spec.head == LINEAR else 'fine-tuned'}"


def _ratio_interval(baseline: np.ndarray, lever: np.ndarray, interval: float) -> tuple[float, float]:
    pairs = paired(list(baseline), list(lever))
    ratios = np.array([b / a if a > 0 else math.inf for b, a in pairs])
    tail = (1 - interval) / 2
    low, high = np.quantile(ratios, [tail, 1 - tail], method="inverted_cdf")
    return float(low), float(high)


def lever_table(study: StudyCurves, target: float, baseline: str = SCRATCH) -> pd.DataFrame:
    """Per arm: labels needed for ``target`` and the multiplier against ``baseline``.

    Columns: ``lever``, ``arm``, ``labels``, ``labels_low``, ``labels_high``, ``reached_at`` (the
    measured budget that first reached the target, or NaN), ``multiplier``, ``multiplier_low``,
    ``multiplier_high`` (``inf``: the baseline needs more than its runs can tell; NaN: no
    multiplier) and ``note`` (why an arm has no forecast).
    """
    rows = []
    base = study.curves.get(baseline)
    base_needed = base.labels_needed(target) if base is not None else None
    for arm in [*study.curves, *study.no_forecast]:
        row = {"lever": lever_name(arm), "arm": arm, "note": study.no_forecast.get(arm, "")}
        curve = study.curves.get(arm)
        if curve is None:
            rows.append(row)
            continue
        needed = curve.labels_needed(target)
        row.update(labels=needed.point, labels_low=needed.low, labels_high=needed.high, reached_at=needed.reached_at)
        if arm != baseline and base is not None and base_needed is not None and needed.reachable:
            low, high = _ratio_interval(base.bootstrap_labels(target), curve.bootstrap_labels(target), curve.interval)
            point = base_needed.point / needed.point if needed.point > 0 else math.inf
            row.update(multiplier=point, multiplier_low=min(low, point), multiplier_high=max(high, point))
        elif arm == baseline:
            row.update(multiplier=1.0, multiplier_low=1.0, multiplier_high=1.0)
        rows.append(row)
    columns = ["lever", "arm", "labels", "labels_low", "labels_high", "reached_at"]
    columns += ["multiplier", "multiplier_low", "multiplier_high", "note"]
    return pd.DataFrame(rows, columns=columns)
