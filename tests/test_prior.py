"""The shape prior learned from curves: it pulls a short fit toward its corpus, and yields to runs that say much."""

import numpy as np

from finetune.curves import Fit, LearningCurve
from finetune.prior import ShapePrior

BUDGETS = [1, 2, 5, 10, 20, 50, 100, 200]


def corpus(draws: int, seed: int) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """Power-law curves of one family of shapes (slow: scale 30-60 per class, alpha 0.4-0.6)."""
    rng = np.random.default_rng(seed)
    curves = []
    for _ in range(draws):
        classes = 10
        truth = Fit("power", rng.uniform(0.93, 0.98), rng.uniform(30, 60) * classes, rng.uniform(0.4, 0.6))
        n = np.repeat(np.array(BUDGETS) * classes, 3).astype(float)
        acc = truth.predict(n, 1 / classes) + rng.normal(0, 0.005, len(n))
        curves.append((n, acc, classes))
    return curves


def test_the_prior_learns_the_corpus_shape_and_pulls_a_short_fit_toward_it(tmp_path):
    prior = ShapePrior.fit(corpus(12, seed=0), source="test corpus")
    assert prior.curves == 12 and set(prior.weights) == {"power", "arctan", "mmf", "broken"}
    prior.save(tmp_path / "prior.json")
    assert ShapePrior.load(tmp_path / "prior.json") == prior

    # a new curve of the same kind, seen at its first 3 budgets only: extrapolate to 200 per class
    n, acc, classes = corpus(1, seed=7)[0]
    first = n <= 5 * classes
    truth_at = acc[n == 200 * classes].mean()
    errors = {}
    for name, shape_prior in [("plain", None), ("prior", prior)]:
        curve = LearningCurve(classes, families=("power",), n_bootstrap=2, shape_prior=shape_prior)
        curve.fit(n[first], acc[first])
        errors[name] = abs(float(curve.predict(200 * classes)) - truth_at)
    assert errors["prior"] < errors["plain"]
    assert errors["prior"] < 0.05


def test_runs_that_say_much_outweigh_the_prior():
    """A prior learned on other shapes barely moves a curve measured at every budget."""
    prior = ShapePrior.fit(corpus(8, seed=0), source="slow curves")
    rng = np.random.default_rng(5)
    classes, truth = 10, Fit("power", 0.97, 3.0 * 10, 1.2)  # a fast curve: unlike the corpus
    n = np.repeat(np.array(BUDGETS) * classes, 3).astype(float)
    acc = truth.predict(n, 0.1) + rng.normal(0, 0.005, len(n))
    grid = np.array([10, 100, 1000]) * classes
    plain = LearningCurve(classes, n_bootstrap=2).fit(n, acc).predict(grid)
    pulled = LearningCurve(classes, n_bootstrap=2, shape_prior=prior).fit(n, acc).predict(grid)
    assert np.abs(plain - pulled).max() < 0.01
    assert np.abs(pulled - truth.predict(grid, 0.1)).max() < 0.02
