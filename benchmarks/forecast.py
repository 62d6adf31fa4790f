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

Today's estimator is loaded from a git revision (``--baseline``) and scored on the same curves
in the same run.

    python benchmarks/forecast.py                      # digits, plus CIFAR-10 where ../shared has it
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
from finetune.curves import LearningCurve  # noqa: E402
from finetune.heads import linear_probe  # noqa: E402

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


def held_out(curve: Curve, make: Callable[[int], object], k: int) -> list[dict]:
    """Fit on the first ``k`` budgets; score the later ones up to 10x the largest fitted one
    (the new estimator's extrapolation limit: both are scored on the same points)."""
    fitted = curve.budgets[:k]
    n, acc = curve.frame(fitted)
    model = make(curve.n_classes).fit(n, acc)
    rows = []
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
                "covered": bool(low[0] <= measured <= high[0]),
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
        needed = model.labels_needed(target - 1e-9).point if target > model.chance_ else math.inf
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
    """The curves, measured once and kept in ``path`` (the measurement is the slow part)."""
    if path.exists():
        raw = json.loads(path.read_text())
        return [Curve(c["name"], c["n_classes"], {int(b): v for b, v in c["scores"].items()}) for c in raw]
    tasks = digits_tasks() + (cifar_tasks() if CIFAR.exists() else [])
    print(f"measuring {len(tasks)} curves (3 seeds per budget)", flush=True)
    curves = []
    for task in tasks:
        curves.append(task.measure())
        print(f"  {task.name}: {len(curves[-1].budgets)} budgets", flush=True)
    path.write_text(json.dumps([vars(c) for c in curves]))
    return curves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="f9ab718", help="git revision of today's estimator")
    parser.add_argument("--first", type=int, nargs="+", default=[4, 5], help="budgets fitted on (k)")
    parser.add_argument("--bootstrap", type=int, default=50)
    parser.add_argument(
        "--curves",
        type=Path,
        default=Path(tempfile.gettempdir()) / "labelcurve-forecast-curves.json",
        help="measured curves: read if present, else measured and written",
    )
    args = parser.parse_args()
    baseline = load_baseline(args.baseline)
    estimators = {
        "today": lambda c: baseline(c, n_bootstrap=args.bootstrap),
        "new": lambda c: LearningCurve(c, n_bootstrap=args.bootstrap),
    }
    curves = measured_curves(args.curves)
    rows = []
    for curve in curves:
        for name, make in estimators.items():
            for k in args.first:
                for row in held_out(curve, make, k):
                    rows.append({"estimator": name, "k": k, "curve": curve.name, "kind": "held-out", **row})
                for r, ratio in enumerate(rounds(curve, make, k), start=1):
                    rows.append({"estimator": name, "k": k, "curve": curve.name, "kind": f"round {r}", "ratio": ratio})
    frame = pd.DataFrame(rows)
    frame.to_csv(Path(tempfile.gettempdir()) / "labelcurve-forecast-benchmark.csv", index=False)
    print(f"\n{len(curves)} curves; label ratios folded (1.0 = exact, 2.0 = off by 2x either way)")
    print(
        f"{'estimator':<9} {'k':>2} {'held-out median':>15} {'p90':>6} {'no answer':>9} {'|acc err|':>9} "
        f"{'80% cover':>9} {'round 1':>8} {'round 2':>8} {'round 2 p90':>11}"
    )
    for (name, k), part in frame.groupby(["estimator", "k"], sort=False):
        held = part[part.kind == "held-out"]
        r1, r2 = (part[part.kind == f"round {r}"].ratio.to_numpy() for r in (1, 2))
        print(
            f"{name:<9} {k:>2} {_q(held.ratio, 0.5):>15.2f} {_q(held.ratio, 0.9):>6.2f} "
            f"{np.isinf(held.ratio).mean():>9.0%} {held.error.mean():>9.3f} {held.covered.mean():>9.0%} "
            f"{_q(r1, 0.5):>8.2f} {_q(r2, 0.5):>8.2f} {_q(r2, 0.9):>11.2f}"
        )
    print("no answer: unreachable or beyond the limit, counted as inf in the medians")


def _q(values, q: float) -> float:
    """A quantile where ``inf`` (no answer) is a value like any other, not a nan."""
    return float(np.quantile(np.asarray(values, dtype=float), q, method="inverted_cdf"))


if __name__ == "__main__":
    main()
