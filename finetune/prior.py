"""A prior over a learning curve's shape, learned from many measured curves.

A fit to a study's first few budgets cannot tell a curve that pauses from one that plateaus, and
extrapolates that guess by orders of magnitude. Curves that were measured further tell what
usually came next: Jain et al. ("A Meta-Learning Approach to Predicting Performance and Data
Requirements", CVPR 2023) predict a piecewise power law's parameters from the first budgets with
a model trained on many curves, and cut over-estimation of the data needed by 76%.
:class:`ShapePrior` does the same for each family of :mod:`finetune.curves`: a linear model
predicts the family's shape (log scale per class, log slope) from where the measured budgets
stand (the share of the way from chance to 1 at the smallest and the largest budget, and their
sizes per class), trained on curves fitted on all their budgets from features of their first
3, 4, 5 or all budgets; its residual spread is the prior's width. A study's fit adds the prior
as Gaussian residuals (a MAP fit), so its own runs win where they say much and the prior where
they say little.

Example::

    prior = ShapePrior.fit(corpus)                     # [(n_labels, accuracy, n_classes), ...]
    curve = LearningCurve(10, shape_prior=prior).fit(n_labels, accuracy)
    ShapePrior.default()                               # the one learned from benchmarks/forecast.py's corpus
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from finetune.measured import measured_points

DEFAULT_PATH = Path(__file__).with_name("curve_prior.json")
MIN_SPREAD = 0.3  # a prior never narrower than this (log units): a corpus of tens of curves is not the world
FIRST = (3, 4, 5)  # the first budgets the features are read from in training (and all of them)


def _logit(share: float) -> float:
    share = min(max(share, 0.01), 0.99)
    return math.log(share / (1 - share))


def features(n_labels, accuracy, n_classes: int) -> np.ndarray:
    """Where the measured budgets stand: bias, logit of the share from chance to 1 at the smallest
    and the largest budget, and log labels per class of both."""
    points = measured_points(n_labels, accuracy)
    chance = 1 / n_classes
    first, last = points[0], points[-1]
    share = [(p.mean - chance) / (1 - chance) for p in (first, last)]
    sizes = [math.log(p.n_labels / n_classes) for p in (first, last)]
    return np.array([1.0, _logit(share[0]), _logit(share[1]), *sizes])


@dataclass(frozen=True)
class ShapePrior:
    """Per family: ``weights`` (2 x features) predict (log scale per class, log alpha); ``spread``
    is the residual standard deviation of each; ``curves`` and ``source`` say what it learned from."""

    weights: dict[str, list[list[float]]]
    spread: dict[str, list[float]]
    curves: int
    source: str

    def mean_and_spread(self, family: str, n_labels, accuracy, n_classes: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(log scale, log alpha) expected for ``family`` given these runs, and the prior's widths;
        ``None`` for a family the prior does not know."""
        if family not in self.weights:
            return None
        mean = np.asarray(self.weights[family]) @ features(n_labels, accuracy, n_classes)
        mean[0] += math.log(n_classes)  # the scale is learned per class
        return mean, np.asarray(self.spread[family])

    @classmethod
    def fit(
        cls, corpus: Sequence[tuple[np.ndarray, np.ndarray, int]], source: str = "", ridge: float = 1.0
    ) -> ShapePrior:
        """Fit every curve of ``corpus`` on all its budgets, then regress each family's shape on the
        features of its first budgets (ridge-regularized least squares)."""
        from finetune.curves import LearningCurve  # the estimator fits the corpus; it imports this module

        rows: dict[str, tuple[list, list]] = {}
        for n, acc, n_classes in corpus:
            n, acc = np.asarray(n, dtype=float), np.asarray(acc, dtype=float)
            budgets = np.unique(n)
            if len(budgets) < 3:
                continue
            curve = LearningCurve(n_classes, n_bootstrap=0).fit(n, acc)
            for fit in curve.fits_:
                target = [math.log(fit.scale / n_classes), math.log(fit.alpha)]
                for k in [*FIRST, len(budgets)]:
                    seen = np.isin(n, budgets[:k])
                    if k <= len(budgets):
                        x, y = rows.setdefault(fit.family, ([], []))
                        x.append(features(n[seen], acc[seen], n_classes))
                        y.append(target)
        weights, spread = {}, {}
        for family, (x, y) in rows.items():
            x, y = np.asarray(x), np.asarray(y)
            penalty = ridge * np.eye(x.shape[1])
            penalty[0, 0] = 0.0  # the bias is not shrunk
            w = np.linalg.solve(x.T @ x + penalty, x.T @ y).T
            residual = y - x @ w.T
            weights[family] = w.tolist()
            spread[family] = np.maximum(residual.std(axis=0), MIN_SPREAD).tolist()
        return cls(weights, spread, len(corpus), source)

    def save(self, path: Path = DEFAULT_PATH) -> None:
        path.write_text(json.dumps(vars(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path = DEFAULT_PATH) -> ShapePrior:
        return cls(**json.loads(path.read_text()))

    @classmethod
    def default(cls) -> ShapePrior | None:
        """The prior shipped with labelcurve (``finetune/curve_prior.json``), if present."""
        return cls.load() if DEFAULT_PATH.exists() else None
