"""How good are the forecasts? Many real learning curves, fitted on their first budgets, scored later.

Curves are made cheaply: linear probes (the ``ssl-linear`` head) on cached features of the digits
set and of the shared CIFAR-10 copy, with several feature extractors and class subsets, each
measured at budgets up to its pool with 3 seeds. For each curve and each estimator:

- **held-out**: fit on the first ``k`` budgets, then at every later budget the accuracy error,
  the label ratio (labels the fit said reach the measured accuracy over the labels that did,
  folded so that 2.0 means a factor of 2 either way; "beyond" counts as a miss) and whether the
  80% interval covered the measured mean;
- **rounds** (Mahmood et al., CVPR 2022; Jain et al., CVPR 2023): the target is the accuracy
  measured at the curve's largest budget; fit on the first ``k`` budgets, label the predicted
  count (measured with the same seeds), refit, and predict again; the label ratio after each round
  is the predicted count over the largest budget, folded.

Three estimators on the same curves in one run: the estimator of a git revision (``--baseline``),
this tree's (bounded by the measured means), and this tree's with the shape prior of
:mod:`finetune.prior`, learned leave-one-dataset-out: the prior that scores a curve of digits
never saw a curve of digits. Curves that learned nothing (made here, flat at chance) are scored
apart: an estimator should refuse them. An answer **contradicts a measurement** when the runs it
was fitted on crossed the target between two budgets and the label count or its interval lies
outside them (or a finite count sits below a budget that measured less than the target).

    python benchmarks/forecast.py                      # digits, plus CIFAR-10 where ../shared has it
    python benchmarks/forecast.py --write-prior        # and ship the prior learned on every curve
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from finetune.budgets import subset_indices  # noqa: E402
from finetune.curves import Fit, LearningCurve  # noqa: E402
from finetune.forecast import UNINFORMATIVE  # noqa: E402
from finetune.heads import linear_probe  # noqa: E402
from finetune.measured import crossing, measured_points, nothing_learned  # noqa: E402
from finetune.prior import ShapePrior  # noqa: E402

SEEDS = (0, 1, 2)
CIFAR = ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"


class Task:
    """One labeled pool with features, to measure a curve on."""

    def __init__(self, name: str, pool_x, pool_y, test_x, test_y, budgets: list[int]) -> None:
        self.name, self.budgets = name, budgets
        self.pool_x, self.pool_y, self.test_x, self.test_y = pool_x, pool_y, test_x, test_y

    def measure(self) -> Curve:
        """Accuracy of the linear probe at every budget (per class, capped at the pool), per seed."""
        scores = {}
        for per_class in sorted({min(b, int(np.bincount(self.pool_y).min())) for b in self.budgets}):
            scores[per_class] = []
            for seed in SEEDS:
                index = subset_indices(self.pool_y, per_class, seed)
                predicted = linear_probe(self.pool_x[index], self.pool_y[index], self.test_x)
                scores[per_class].append(float(np.mean(predicted == self.test_y)))
        return Curve(self.name, len(np.unique(self.pool_y)), scores)


@dataclass(frozen=True)
class Curve:
    """A measured learning curve: accuracy per seed at each per-class budget."""

    name: str
    n_classes: int
    scores: dict[int, list[float]]

    @property
    def budgets(self) -> list[int]:
        return sorted(self.scores)

    def frame(self, budgets: list[int]) -> tuple[np.ndarray, np.ndarray]:
        n = np.repeat([b * self.n_classes for b in budgets], len(SEEDS)).astype(float)
        return n, np.concatenate([self.scores[b] for b in budgets])

    def mean(self, budget: int) -> float:
        return float(np.mean(self.scores[budget]))


def _subset(x, y, classes):
    keep = np.isin(y, classes)
    return x[keep], np.searchsorted(np.asarray(classes), y[keep])


def _random_relu(x: np.ndarray, width: int, seed: int) -> np.ndarray:
    w = np.random.default_rng(seed).normal(size=(x.shape[1], width)) / math.sqrt(x.shape[1])
    return np.maximum(x @ w, 0)


def digits_tasks() -> list[Task]:
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    pool_x, test_x, pool_y, test_y = train_test_split(x, y, test_size=0.3, stratify=y, random_state=0)
    pca = PCA(12, random_state=0).fit(pool_x)
    features = {
        "pixels": (pool_x, test_x),
        "pca12": (pca.transform(pool_x), pca.transform(test_x)),
        "relu512": (_random_relu(pool_x, 512, 0), _random_relu(test_x, 512, 0)),
    }
    tasks = []
    for feature, (fp, ft) in features.items():
        for classes in (list(range(10)), [0, 1, 2, 3, 4], [3, 5, 8, 9]):
            (px, py), (tx, ty) = _subset(fp, pool_y, classes), _subset(ft, test_y, classes)
            name = f"digits/{feature}/{len(classes)}cls"
            tasks.append(Task(name, px, py, tx, ty, [1, 2, 3, 5, 8, 13, 20, 35, 60, 120]))
    return tasks


def cifar_tasks(per_class: int = 1000, test_per_class: int = 300) -> list[Task]:
    import torch
    from PIL import Image

    from pretrain.backbones import SmallCNN, embed

    folder = Path(tempfile.gettempdir()) / "cifar10"
    if not (folder / "train").exists():
        with tarfile.open(CIFAR) as archive:
            archive.extractall(folder.parent, filter="data")
    classes = sorted(p.name for p in (folder / "train").iterdir())

    def load(split: str, cap: int) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for label, name in enumerate(classes):
            for path in sorted((folder / split / name).iterdir())[:cap]:
                images.append(np.asarray(Image.open(path).convert("RGB")))
                labels.append(label)
        return np.stack(images), np.array(labels)

    pool_images, pool_y = load("train", per_class)
    test_images, test_y = load("test", test_per_class)

    def to_tensor(images: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255
        return (x - 0.47) / 0.25

    features = {}
    for width in (16, 32):  # random-init CNNs of two widths: two backbones that were never trained
        torch.manual_seed(0)
        features[f"cnn{width}"] = tuple(embed(SmallCNN(3, width), to_tensor(i)) for i in (pool_images, test_images))
    small = [i[:, ::4, ::4].reshape(len(i), -1).astype(float) / 255 for i in (pool_images, test_images)]
    features["pixels8"] = tuple(small)
    tasks = []
    for feature, (fp, ft) in features.items():
        for subset in (list(range(10)), [2, 3, 4, 5, 6, 7], [0, 1, 8, 9]):
            (px, py), (tx, ty) = _subset(fp, pool_y, subset), _subset(ft, test_y, subset)
            name = f"cifar10/{feature}/{len(subset)}cls"
            tasks.append(Task(name, px, py, tx, ty, [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]))
    return tasks


def synthetic_curves(seed: int = 0) -> list[Curve]:
    """Shapes the measured curves lack: plateaus at 0.99+, curves still rising at the largest
    budget, and curves flat at chance; seed noise shrinks with the labels (var = v0 + v1 / n)."""
    rng = np.random.default_rng(seed)
    budgets = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
    curves = []
    shapes = {
        "plateau": lambda: Fit("power", rng.uniform(0.992, 0.999), rng.uniform(2, 20), rng.uniform(0.8, 1.5)),
        "rising": lambda: Fit("power", rng.uniform(0.9, 0.99), rng.uniform(50, 400), rng.uniform(0.3, 0.6)),
        "flat": lambda: None,
    }
    for shape, draw in shapes.items():
        for i in range(4):
            classes = int(rng.choice([4, 6, 10]))
            truth, chance = draw(), 1 / classes
            scores = {}
            for b in budgets:
                n = b * classes
                mean = chance if truth is None else float(truth.predict(np.array(n), chance))
                sd = math.sqrt(1e-5 + 0.05 / n)
                scores[b] = [float(np.clip(mean + rng.normal(0, sd), 0, 1)) for _ in SEEDS]
            curves.append(Curve(f"synthetic/{shape}/{i}", classes, scores))
    return curves


def load_baseline(revision: str) -> type:
    """``LearningCurve`` as it was at ``revision`` (today's estimator, for the side-by-side)."""
    source = subprocess.run(
        ["git", "show", f"{revision}:finetune/curves.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "baseline_curves.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("baseline_curves", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module.LearningCurve


def _fold(predicted: float, actual: float) -> float:
    if not math.isfinite(predicted) or predicted <= 0:
        return math.inf
    return max(predicted / actual, actual / predicted)


def contradicts(model, n: np.ndarray, acc: np.ndarray, target: float) -> bool:
    """Whether the label count for ``target`` (or its interval) lies outside what the fitted runs
    measured: between the budgets whose means crossed the target, or above one that fell short."""
    if not model.chance_ < target < 1:
        return False
    estimate = model.labels_needed(target)
    bounds = crossing(measured_points(n, acc), target)
    if bounds.reached:
        inside = bounds.above <= estimate.point <= bounds.within
        return not inside or estimate.high < bounds.above or estimate.low > bounds.within
    return math.isfinite(estimate.point) and estimate.point < bounds.above


def uninformative(model, low: float, high: float) -> bool:
    """An interval this wide covers nothing, as in `labelcurve backtest`."""
    return high - low >= UNINFORMATIVE * (1 - model.chance_)


def held_out(curve: Curve, make: Callable[[int], object], k: int) -> list[dict]:
    """Fit on the first ``k`` budgets; score the later ones up to 10x the largest fitted one
    (the new estimator's extrapolation limit: both are scored on the same points)."""
    fitted = curve.budgets[:k]
    n, acc = curve.frame(fitted)
    model = make(curve.n_classes).fit(n, acc)
    targets = [curve.mean(b) for b in curve.budgets[:k]]
    wrong = sum(contradicts(model, n, acc, t) for t in targets)
    rows = [{"contradictions": wrong, "answers": len(targets)}]
    for budget in [b for b in curve.budgets[k:] if b <= 10 * fitted[-1]]:
        measured, labels = curve.mean(budget), budget * curve.n_classes
        predicted = float(model.predict(labels))
        try:
            low, high = model.predict_interval([labels], runs=len(SEEDS))
        except TypeError:  # today's estimator: an interval of the expected accuracy only
            low, high = model.predict_interval([labels])
        needed = model.labels_needed(measured).point if model.chance_ < measured < 1 else math.inf
        rows.append(
            {
                "error": abs(predicted - measured),
                "ratio": _fold(needed, labels),
                "covered": bool(low[0] <= measured <= high[0] and not uninformative(model, low[0], high[0])),
            }
        )
    return rows


def rounds(curve: Curve, make: Callable[[int], object], k: int, n_rounds: int = 2) -> list[float]:
    """Folded label ratio after each round of: fit, label the predicted count (the next measured
    budget at or above it, at most 10x today's), refit. The target is the mean measured at the
    largest budget within 10x of the first fit's."""
    budgets = curve.budgets[:k]
    goal = max(b for b in curve.budgets if b <= 10 * budgets[-1])
    target = curve.mean(goal)
    # the fewest labels that reached the target: later budgets of a noisy curve may dip below it
    reached = min(b for b in curve.budgets if curve.mean(b) >= target)
    ratios = []
    for _ in range(n_rounds):
        n, acc = curve.frame(budgets)
        model = make(curve.n_classes).fit(n, acc)
        needed = model.labels_needed(target - 1e-9).point if target - 1e-9 > model.chance_ else math.inf
        ratios.append(_fold(needed, reached * curve.n_classes))
        per_class = needed / curve.n_classes if math.isfinite(needed) else math.inf
        cap = 10 * budgets[-1]
        later = [b for b in curve.budgets if b > budgets[-1] and b <= cap]
        if not later:
            break
        step = next((b for b in later if b >= per_class), later[-1])
        budgets = sorted({*budgets, step})
    return ratios


def measured_curves(path: Path) -> list[Curve]:
    """The curves, measured once and kept in ``path`` (the measurement is the slow part); a
    measurement that was stopped goes on from the curves it kept."""
    kept = json.loads(path.read_text()) if path.exists() else []
    curves = [Curve(c["name"], c["n_classes"], {int(b): v for b, v in c["scores"].items()}) for c in kept]
    done = {c.name for c in curves}
    tasks = digits_tasks() + (cifar_tasks() if CIFAR.exists() else [])
    todo = [task for task in tasks if task.name not in done]
    if todo:
        print(f"measuring {len(todo)} curves (3 seeds per budget)", flush=True)
    for task in todo:
        curves.append(task.measure())
        path.write_text(json.dumps([vars(c) for c in curves]))
        print(f"  {task.name}: {len(curves[-1].budgets)} budgets", flush=True)
    return curves


def dataset(curve: Curve) -> str:
    return curve.name.split("/")[0]


def learned(curve: Curve) -> bool:
    n, acc = curve.frame(curve.budgets)
    return nothing_learned(measured_points(n, acc), 1 / curve.n_classes) is None


def loo_priors(curves: list[Curve]) -> dict[str, ShapePrior]:
    """Per dataset, the shape prior learned from the curves of every other dataset."""
    priors = {}
    for name in sorted({dataset(c) for c in curves}):
        corpus = [(*c.frame(c.budgets), c.n_classes) for c in curves if dataset(c) != name and learned(c)]
        priors[name] = ShapePrior.fit(corpus, source=f"every curve but {name}'s")
    return priors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="1d437aa", help="git revision of today's estimator")
    parser.add_argument("--first", type=int, nargs="+", default=[3, 4, 5], help="budgets fitted on (k)")
    parser.add_argument("--bootstrap", type=int, default=30)
    parser.add_argument(
        "--curves",
        type=Path,
        default=Path(tempfile.gettempdir()) / "labelcurve-forecast-curves.json",
        help="measured curves: read if present, else measured and written",
    )
    parser.add_argument("--write-prior", action="store_true", help="write finetune/curve_prior.json from every curve")
    args = parser.parse_args()
    baseline = load_baseline(args.baseline)
    curves = measured_curves(args.curves) + synthetic_curves()
    priors = loo_priors(curves)
    rows = []
    for curve in curves:
        prior = priors[dataset(curve)]
        estimators = {
            args.baseline: lambda c: baseline(c, n_bootstrap=args.bootstrap),
            "bounded": lambda c: LearningCurve(c, n_bootstrap=args.bootstrap),
            "bounded+prior": lambda c, prior=prior: LearningCurve(c, n_bootstrap=args.bootstrap, shape_prior=prior),
        }
        flat = not learned(curve)
        for name, make in estimators.items():
            for k in args.first:
                base = {"estimator": name, "k": k, "curve": curve.name, "flat": flat}
                if flat and name != args.baseline:  # this tree refuses a curve that learned nothing
                    rows.append({**base, "kind": "refused"})
                    continue
                answers = held_out(curve, make, k)
                rows.append({**base, "kind": "contradictions", **answers[0]})
                rows.extend({**base, "kind": "held-out", **row} for row in answers[1:])
                for r, ratio in enumerate(rounds(curve, make, k), start=1):
                    rows.append({**base, "kind": f"round {r}", "ratio": ratio})
        print(f"  scored {curve.name}", flush=True)
    frame = pd.DataFrame(rows)
    frame.to_csv(Path(tempfile.gettempdir()) / "labelcurve-forecast-benchmark.csv", index=False)
    flat_curves = frame[frame.flat].curve.nunique()
    print(
        f"\n{len(curves)} curves ({flat_curves} flat at chance, scored apart); label ratios folded "
        "(1.0 = exact, 2.0 = off by 2x either way); the prior is learned leave-one-dataset-out"
    )
    print(
        f"{'estimator':<13} {'k':>2} {'held-out median':>15} {'p90':>6} {'80% cover':>9} "
        f"{'round 1':>8} {'round 2':>8} {'round 2 p90':>11} {'contradictions':>14} {'flat answered':>13}"
    )
    for (name, k), part in frame.groupby(["estimator", "k"], sort=False):
        learning = part[~part.flat]
        held = learning[learning.kind == "held-out"]
        r1, r2 = (learning[learning.kind == f"round {r}"].ratio.to_numpy() for r in (1, 2))
        said = part[part.kind == "contradictions"]
        wrong = f"{int(said.contradictions.sum())}/{int(said.answers.sum())}"
        flat_answered = part[part.flat & (part.kind == "contradictions")].curve.nunique()
        print(
            f"{name:<13} {k:>2} {_q(held.ratio, 0.5):>15.2f} {_q(held.ratio, 0.9):>6.2f} {held.covered.mean():>9.0%} "
            f"{_q(r1, 0.5):>8.2f} {_q(r2, 0.5):>8.2f} {_q(r2, 0.9):>11.2f} {wrong:>14} {flat_answered:>6}/{flat_curves}"
        )
    print("no answer (unreachable or beyond the limit) counts as inf in the medians and percentiles")
    if args.write_prior:
        corpus = [(*c.frame(c.budgets), c.n_classes) for c in curves if learned(c)]
        ShapePrior.fit(corpus, source=f"benchmarks/forecast.py: {len(corpus)} curves").save()
        print(f"wrote finetune/curve_prior.json from {len(corpus)} curves")


def _q(values, q: float) -> float:
    """A quantile where ``inf`` (no answer) is a value like any other, not a nan."""
    return float(np.quantile(np.asarray(values, dtype=float), q, method="inverted_cdf"))


if __name__ == "__main__":
    main()
