"""What the measured table says before any curve is fitted: the bounds no forecast may cross.

A fitted family is a guess about budgets nobody measured; the runs are facts about the budgets
that were. Two facts bound every answer a study gives:

- **the crossing**: if the mean at budget ``a`` is below a target and the mean at the next budget
  ``b`` reaches it, the labels needed lie in ``(a, b]``, whatever a fit says (a fit that puts them
  elsewhere contradicts the runs);
- **the learning check**: a curve whose means stay within noise of chance (or of the test split's
  majority-class rate) at every budget, or that does not rise significantly across budgets, has
  nothing to extrapolate: a ceiling or a label count read from it is noise.

Example::

    points = measured_points(n_labels, accuracy)
    crossing(points, 0.9)                 # Crossing(above=100.0, within=200.0)
    nothing_learned(points, chance=0.25)  # None, or one line saying why there is nothing to forecast
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import linregress

# An accuracy within this of chance is chance, however small the spread of the seeds: a test
# split of a few hundred images measures accuracy to about a point (binomial error).
MIN_NOISE = 0.01
SIGNIFICANCE = 0.05  # one-sided level of the test for a rise across budgets


@dataclass(frozen=True)
class MeasuredPoint:
    """The runs at one budget: their mean accuracy, its standard error, and how many runs."""

    n_labels: float
    mean: float
    sem: float
    runs: int


def measured_points(n_labels, accuracy) -> list[MeasuredPoint]:
    """Mean and standard error per budget, smallest budget first. A budget with one run takes the
    spread pooled over the budgets with several (a budget whose runs all agree has none)."""
    n = np.asarray(n_labels, dtype=float).ravel()
    acc = np.asarray(accuracy, dtype=float).ravel()
    budgets = np.unique(n)
    variances = [float(np.var(acc[n == b], ddof=1)) for b in budgets if np.sum(n == b) > 1]
    pooled = math.sqrt(float(np.mean(variances))) if variances else 0.0
    points = []
    for budget in budgets:
        runs = acc[n == budget]
        sd = float(np.std(runs, ddof=1)) if len(runs) > 1 else pooled
        points.append(MeasuredPoint(float(budget), float(runs.mean()), sd / math.sqrt(len(runs)), len(runs)))
    return points


@dataclass(frozen=True)
class Crossing:
    """Where the measured means put the labels for a target: more than ``above`` and at most
    ``within`` (``above`` 0: reached at the smallest budget; ``within`` inf: no budget reached it)."""

    above: float
    within: float

    @property
    def reached(self) -> bool:
        return math.isfinite(self.within)

    def clip(self, labels: np.ndarray | float) -> np.ndarray | float:
        """``labels`` moved into the measured bounds."""
        return np.clip(labels, self.above, self.within)


def crossing(points: list[MeasuredPoint], target: float) -> Crossing:
    """The first measured budget whose mean reaches ``target``, and the budget before it."""
    for i, point in enumerate(points):
        if point.mean >= target:
            return Crossing(points[i - 1].n_labels if i else 0.0, point.n_labels)
    return Crossing(points[-1].n_labels if points else 0.0, math.inf)


def interpolate(points: list[MeasuredPoint], bounds: Crossing, target: float) -> float:
    """Labels for ``target`` on the straight line between the two bracketing means (log labels):
    the measured answer where a fit has none inside the bracket."""
    if not bounds.reached or bounds.above <= 0:
        return bounds.within
    by_budget = {p.n_labels: p.mean for p in points}
    low, high = by_budget[bounds.above], by_budget[bounds.within]
    share = (target - low) / (high - low) if high > low else 1.0
    return float(math.exp(math.log(bounds.above) + share * (math.log(bounds.within) - math.log(bounds.above))))


def nothing_learned(points: list[MeasuredPoint], chance: float, majority: float | None = None) -> str | None:
    """One line saying why these runs hold nothing to forecast, or ``None`` when the curve learns.

    "No learning": every budget's mean is within noise (two standard errors, at least
    :data:`MIN_NOISE`) of chance or of the test split's majority-class rate, whichever is higher.
    "No trend": accuracy does not rise with log labels at the :data:`SIGNIFICANCE` level (a
    one-sided test of the slope over the per-budget means). Both need at least two budgets.
    """
    if len(points) < 2:
        return None
    floor = max(chance, majority or 0.0)
    what = f"majority-class rate {floor:.3f}" if majority and majority > chance else f"chance {floor:.3f}"
    first, last = points[0], points[-1]
    span = f"{first.mean:.3f} at {first.n_labels:,.0f} labels to {last.mean:.3f} at {last.n_labels:,.0f}"
    if all(p.mean <= floor + max(2 * p.sem, MIN_NOISE) for p in points):
        best = max(points, key=lambda p: p.mean)
        return (
            f"nothing learned: every budget is within noise of {what} ({span}; best {best.mean:.3f}): "
            "check the labels, the test split and the recipe before buying labels"
        )
    if len(points) >= 3:
        fit = linregress(np.log([p.n_labels for p in points]), [p.mean for p in points])
        one_sided = fit.pvalue / 2 if fit.slope > 0 else 1.0
        if one_sided >= SIGNIFICANCE:
            return (
                f"no trend: accuracy does not rise significantly with labels ({span}; one-sided p={one_sided:.2f}): "
                "more labels of this kind are not shown to help"
            )
    return None
