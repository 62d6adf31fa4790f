"""Learning curves: fit accuracy against the number of labels, predict, and invert.

Single power laws extrapolated from a few points mis-estimate label counts badly (Mahmood et al.,
"How Much More Data Do I Need?", CVPR 2022); bounded forms and ensembles do better (Hestness et
al., 2017; Rosenfeld et al., ICLR 2020; Jain et al., CVPR 2023). :class:`LearningCurve`
therefore fits several bounded families, each rising from chance at zero labels to a fitted
ceiling of at most 1, averages them, and takes its uncertainty from a bootstrap over seeds
(each seed is one subset draw) pooled over the families, so that disagreement between families
widens the intervals instead of hiding in a point estimate.

What keeps a fit honest on data nobody tuned it on:

- every family rises monotonically and saturates (a plateau at the ceiling), and with five or
  more budgets a broken power law (Caballero et al., ICLR 2023) lets the slope change once;
- the ceiling is at least the best measured mean minus its measured standard error (the spread
  of its seeds, not the noise model's, which is fitted mostly to the small budgets and read
  0.03 at a budget whose seeds agreed to 0.001), so no fit claims that an accuracy already
  measured is out of reach, and a weak prior pulls it toward 1, so a few small budgets do not
  read a pause as a plateau;
- a label count never contradicts the runs: where the measured means cross the target between
  two budgets, the count and its interval lie between them (:mod:`finetune.measured`);
- the noise of a run shrinks with the labels, var(n) = v0 + v1 / n (Hoiem et al., ICML 2021),
  which scales the bootstrap's resampled residuals and the noise of new runs in an interval
  (weighting the fit by it extrapolated worse on real curves, so the fit weighs runs alike);
- runs that cannot differ (every seed of the linear probe on the whole pool) count once;
- label counts beyond ``limit`` (default 10x the largest budget) are not reported as
  numbers: nothing measured can tell them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import least_squares, nnls
from sklearn.base import BaseEstimator

from finetune.measured import Crossing, crossing, interpolate, measured_points
from pretrain.errors import LabelcurveError

if TYPE_CHECKING:
    from finetune.prior import ShapePrior


class CurveError(LabelcurveError, ValueError):
    """A curve that cannot be fitted or asked, phrased as one line for the user."""


# Each family maps labels n >= 0 to the fraction g in [0, 1) of the way from chance to the ceiling.
def _power(n, s, a):
    return 1 - (1 + n / s) ** -a


def _arctan(n, s, a):
    return (2 / math.pi) * np.arctan((n / s) ** a)


def _mmf(n, s, a):
    r = (n / s) ** a
    return r / (1 + r)


def _broken(n, s, a, r, t):
    # the gap to the ceiling follows one power law up to the break n = r * s, another after it
    return 1 - (1 + n / s) ** -a * (1 + n / (r * s)) ** (-a * t)


def _power_inv(p, s, a):
    return s * ((1 - p) ** (-1 / a) - 1)


def _arctan_inv(p, s, a):
    return s * np.tan(p * math.pi / 2) ** (1 / a)


def _mmf_inv(p, s, a):
    return s * (p / (1 - p)) ** (1 / a)


def _bisect_inv(g):
    """The inverse of a monotone ``g`` by bisection on log labels."""

    def inverse(p, *shape):
        lo, hi = -6.0, 40.0  # log labels
        if g(math.exp(hi), *shape) < p:
            return math.inf
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if g(math.exp(mid), *shape) < p else (lo, mid)
        return math.exp(hi)

    return inverse


FAMILIES = {
    "power": (_power, _power_inv),
    "arctan": (_arctan, _arctan_inv),
    "mmf": (_mmf, _mmf_inv),
    "broken": (_broken, _bisect_inv(_broken)),
}
# bounds of the shape parameters after the scale (log alpha; for the break: log r and t)
_SHAPE_BOUNDS = {"broken": ([math.log(0.05), 0.0, -0.9], [math.log(5.0), math.log(1e4), 5.0])}
_SHAPE_START = {"broken": [0.0, math.log(10.0), 0.0]}
MIN_BUDGETS = 3  # a ceiling, a scale and a slope
MIN_FAMILY_BUDGETS = {"broken": 5}  # five shape-and-ceiling parameters need more than three or four budgets


@dataclass(frozen=True)
class Fit:
    """One fitted family: accuracy = chance + (ceiling - chance) * g(n / scale; alpha, ...)."""

    family: str
    ceiling: float
    scale: float
    alpha: float
    shape: tuple[float, ...] = ()  # the broken power law's break (r) and slope change (t)

    def predict(self, n: np.ndarray, chance: float) -> np.ndarray:
        g = FAMILIES[self.family][0](np.asarray(n, dtype=float), self.scale, self.alpha, *self.shape)
        return chance + (self.ceiling - chance) * g

    def labels_for(self, target: float, chance: float) -> float:
        p = (target - chance) / (self.ceiling - chance)
        if p >= 1:
            return math.inf
        return 0.0 if p <= 0 else float(FAMILIES[self.family][1](p, self.scale, self.alpha, *self.shape))


@dataclass(frozen=True)
class Estimate:
    """A point estimate with an interval; label counts past ``limit`` are ``inf``: unknown, not huge.
    ``reached_at``: for a label count, the first measured budget whose mean reached the target."""

    point: float
    low: float
    high: float
    limit: float = math.inf
    reached_at: float | None = None

    @property
    def reachable(self) -> bool:
        return math.isfinite(self.point)


def _fit_family(
    family: str,
    n: np.ndarray,
    acc: np.ndarray,
    sd: np.ndarray,
    chance: float,
    floor: float,
    start: Fit | None,
    prior: float | None,
    expected: tuple[np.ndarray, np.ndarray] | None = None,
) -> Fit:
    """Least squares in units of ``sd``, ceiling in [floor, 1], pulled toward 1 by ``prior``, and
    (log scale, log alpha) toward ``expected``'s mean in units of its spread (a MAP fit)."""
    g = FAMILIES[family][0]
    shape_low, shape_high = _SHAPE_BOUNDS.get(family, ([math.log(0.05)], [math.log(5.0)]))
    lower = [floor, math.log(1e-2), *shape_low]
    upper = [1.0, math.log(1e7), *shape_high]
    if start is None:
        top = min(1.0, max(acc.max() + 0.05, floor + 0.02))
        x0 = [min(top, 0.999), math.log(float(np.median(n))), *_SHAPE_START.get(family, [0.0])]
    else:
        x0 = [start.ceiling, math.log(start.scale), math.log(start.alpha), *_shape_params(family, start.shape)]
    x0 = np.clip(x0, np.array(lower) + 1e-9, np.array(upper) - 1e-9)

    def residuals(theta):
        ceiling, log_s, log_a, *shape = theta
        fitted = chance + (ceiling - chance) * g(n, math.exp(log_s), math.exp(log_a), *_shape(family, shape))
        residual = (fitted - acc) / sd
        if expected is not None:
            residual = np.append(residual, (np.array([log_s, log_a]) - expected[0]) / expected[1])
        return residual if prior is None else np.append(residual, (1 - ceiling) / prior)

    theta = least_squares(residuals, x0, bounds=(lower, upper), method="trf").x
    return Fit(family, float(theta[0]), math.exp(theta[1]), math.exp(theta[2]), _shape(family, theta[3:]))


def _shape(family: str, params) -> tuple[float, ...]:
    return (1 + math.exp(params[0]), float(params[1])) if family == "broken" else ()


def _shape_params(family: str, shape: tuple[float, ...]) -> list[float]:
    return [math.log(shape[0] - 1), shape[1]] if family == "broken" else []


def _noise_model(n: np.ndarray, acc: np.ndarray) -> tuple[float, float]:
    """(v0, v1) of var(n) = v0 + v1 / n, non-negative, from the spread of the seeds at each budget."""
    budgets, variances = [], []
    for budget in np.unique(n):
        runs = acc[n == budget]
        if len(runs) > 1:
            budgets.append(budget)
            variances.append(float(np.var(runs, ddof=1)))
    if len(budgets) < 2:  # one spread or none: a constant noise, at least one point of accuracy
        return max(float(np.mean(variances)) if variances else 0.0, 1e-4), 0.0
    design = np.column_stack([np.ones(len(budgets)), 1 / np.asarray(budgets)])
    (v0, v1), _ = nnls(design, np.asarray(variances))
    return float(v0), float(v1)


def distinct_runs(n: np.ndarray, acc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The runs with budgets where every seed scored the same counted once: they could not differ."""
    keep = np.ones(len(n), dtype=bool)
    for budget in np.unique(n):
        at = np.flatnonzero(n == budget)
        if len(at) > 1 and np.ptp(acc[at]) == 0:
            keep[at[1:]] = False
    return n[keep], acc[keep]


class LearningCurve(BaseEstimator):
    """Accuracy as a function of the number of labels, with intervals, in scikit-learn style.

    Example::

        curve = LearningCurve(n_classes=10, limit=5000).fit(n_labels, accuracy)
        curve.predict([1000])                    # expected accuracy with 1000 labels
        curve.labels_needed(0.9)                 # Estimate(point, low, high) in labels

    ``n_labels`` are total label counts, one entry per run (several seeds per budget);
    ``interval`` is the central probability of every interval (0.8 = 10th to 90th percentile);
    ``limit`` is the most labels an answer may name (default: 10x the largest budget);
    ``ceiling_prior`` is the spread (in units of a run's noise) of a weak pull of the ceiling
    toward 1: a few small budgets cannot tell a plateau from a curve that keeps rising (0.2
    scored best of 0.05-0.2 in ``benchmarks/forecast.py``; ``None``: plain least squares);
    ``shape_prior`` pulls each family's shape toward what curves like this one did
    (:class:`finetune.prior.ShapePrior`; ``None``: none).
    """

    def __init__(
        self,
        n_classes: int,
        families: tuple[str, ...] = ("power", "arctan", "mmf", "broken"),
        n_bootstrap: int = 200,
        interval: float = 0.8,
        random_state: int = 0,
        limit: float | None = None,
        ceiling_prior: float | None = 0.2,
        shape_prior: ShapePrior | None = None,
    ) -> None:
        self.n_classes = n_classes
        self.families = families
        self.n_bootstrap = n_bootstrap
        self.interval = interval
        self.random_state = random_state
        self.limit = limit
        self.ceiling_prior = ceiling_prior
        self.shape_prior = shape_prior

    @property
    def chance_(self) -> float:
        return 1.0 / self.n_classes

    def noise_sd(self, n_labels) -> np.ndarray:
        """The standard deviation of one run's accuracy at ``n_labels`` (the fitted noise model)."""
        v0, v1 = self.noise_
        return np.sqrt(np.maximum(v0 + v1 / np.maximum(np.asarray(n_labels, dtype=float), 1.0), 1e-6))

    def fit(self, n_labels, accuracy) -> LearningCurve:
        self.points_ = measured_points(n_labels, accuracy)
        n, acc = distinct_runs(np.asarray(n_labels, dtype=float).ravel(), np.asarray(accuracy, dtype=float).ravel())
        budgets = np.unique(n)
        if len(budgets) < MIN_BUDGETS:
            raise CurveError(f"a curve needs at least {MIN_BUDGETS} budgets with finished runs, got {len(budgets)}")
        self.noise_ = _noise_model(n, acc)
        sd = self.noise_sd(n)
        # the fits weigh every run alike: weights of 1/var(n) fitted the large budgets at the cost of
        # the small ones and extrapolated worse on the curves of benchmarks/forecast.py
        flat = np.full_like(sd, float(np.median(sd)))
        # the ceiling may not sit below a measured mean by more than that mean's measured standard error
        best = max(p.mean - p.sem for p in self.points_)
        floor = min(max(self.chance_ + 1e-3, float(best)), 1 - 1e-6)
        families = [f for f in self.families if len(budgets) >= MIN_FAMILY_BUDGETS.get(f, MIN_BUDGETS)]
        shapes = {f: self._shape_prior(f, n, acc) for f in families}
        self.fits_ = [
            _fit_family(f, n, acc, flat, self.chance_, floor, None, self.ceiling_prior, shapes[f]) for f in families
        ]
        # Residual bootstrap: each run's deviation from the fit, in units of its noise, is one
        # seed's subset-and-init draw; resampling them (inflated for the fitted parameters) and
        # refitting each family gives intervals that covered the truth at about their nominal
        # rate in simulation, where resampling the 3 seeds per budget directly gave 63% for 80%.
        rng = np.random.default_rng(self.random_state)
        inflation = math.sqrt(len(n) / max(len(n) - 3, 1))
        self.bootstrap_fits_ = []
        for _ in range(self.n_bootstrap):
            for f in self.fits_:
                fitted = f.predict(n, self.chance_)
                noise = rng.choice((acc - fitted) / sd * inflation, size=len(n), replace=True) * sd
                refit = _fit_family(
                    f.family, n, fitted + noise, flat, self.chance_, floor, f, self.ceiling_prior, shapes[f.family]
                )
                self.bootstrap_fits_.append(refit)
        self.budgets_ = budgets
        self.limit_ = float(self.limit) if self.limit is not None else 10 * float(budgets.max())
        return self

    def _shape_prior(self, family: str, n: np.ndarray, acc: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        if self.shape_prior is None:
            return None
        return self.shape_prior.mean_and_spread(family, n, acc, self.n_classes)

    def _quantiles(self, values: np.ndarray) -> tuple[float, float]:
        tail = (1 - self.interval) / 2
        # inverted_cdf: no interpolation, so an open (inf) bound stays inf instead of nan
        low, high = np.quantile(values, [tail, 1 - tail], axis=0, method="inverted_cdf")
        return low, high

    def predict(self, n_labels) -> np.ndarray:
        """The ensemble's expected accuracy: the mean of the families fitted to all points."""
        n = np.asarray(n_labels, dtype=float)
        return np.mean([f.predict(n, self.chance_) for f in self.fits_], axis=0)

    def predict_interval(self, n_labels, runs: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Bounds of the expected accuracy at ``n_labels``; with ``runs``, of the mean of that many
        new runs (the curve's uncertainty plus their own noise): what a measurement is checked against."""
        n = np.asarray(n_labels, dtype=float)
        draws = np.array([f.predict(n, self.chance_) for f in self.bootstrap_fits_])
        if runs:
            rng = np.random.default_rng(self.random_state)
            draws = draws + rng.normal(size=draws.shape) * self.noise_sd(n) / math.sqrt(runs)
        return self._quantiles(draws)

    def ceiling(self) -> Estimate:
        """The accuracy the curve approaches with unlimited labels."""
        low, high = self._quantiles(np.array([f.ceiling for f in self.bootstrap_fits_]))
        return Estimate(float(np.mean([f.ceiling for f in self.fits_])), float(low), float(high))

    def bounds(self, target: float) -> Crossing:
        """Where the measured means put the labels for ``target`` (:func:`finetune.measured.crossing`)."""
        return crossing(self.points_, target)

    def bound(self, counts, target: float) -> np.ndarray:
        """Label counts for ``target`` moved inside what the runs measured; past :attr:`limit_` ``inf``."""
        bounds = self.bounds(target)
        counts = bounds.clip(np.asarray(counts, dtype=float))
        return counts if bounds.reached else np.where(counts > self.limit_, math.inf, counts)

    def bootstrap_labels(self, target: float) -> np.ndarray:
        """Labels for ``target`` under every bootstrap fit, inside the measured bounds; past
        :attr:`limit_` counts as ``inf``."""
        return self.bound([f.labels_for(target, self.chance_) for f in self.bootstrap_fits_], target)

    def labels_needed(self, target: float) -> Estimate:
        """Labels (total) for an expected accuracy of ``target``; ``inf`` where it is out of reach
        or past :attr:`limit_` (no measurement here can tell).

        The point inverts :meth:`predict`; the interval comes from inverting every bootstrap fit,
        so a target near the ceiling gets an open (``inf``) upper bound. Both stay inside what the
        runs measured: where the means cross the target between budgets ``a`` and ``b``, the count
        lies in ``(a, b]`` (the straight line between them on log labels when the fit's inversion
        falls outside), and ``reached_at`` names ``b``.
        """
        if target <= self.chance_:
            raise CurveError(f"target {target} is at or below chance (1/{self.n_classes}): ask for more")
        if target >= 1:
            raise CurveError(f"target {target} is not below 1: no finite number of labels reaches it")
        low, high = self._quantiles(self.bootstrap_labels(target))
        bounds = self.bounds(target)
        point = self._invert(target)
        if bounds.reached and not bounds.above < point <= bounds.within:
            point = interpolate(self.points_, bounds, target)
        point = float(self.bound(point, target))
        low, high = min(float(low), point), max(float(high), point)
        return Estimate(point, low, high, self.limit_, bounds.within if bounds.reached else None)

    def _invert(self, target: float) -> float:
        if target >= self.ceiling().point:
            return math.inf
        return _bisect_inv(self.predict)(target)
