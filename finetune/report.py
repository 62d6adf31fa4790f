"""The answer of a study: a table of accuracy per budget and arm, a curve plot, a CSV."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from finetune.budgets import labels_per_class
from finetune.sweep import RunResult

COLUMNS = ["arm", "budget", "seed", "n_labels", "labels_per_class", "accuracy", "macro_f1", "train_seconds"]


def results_frame(results: list[RunResult], n_classes: int) -> pd.DataFrame:
    rows = [
        {
            "arm": r.spec.arm,
            "budget": str(r.spec.budget),
            "seed": r.spec.seed,
            "n_labels": r.n_labels,
            "labels_per_class": labels_per_class(r.spec.budget, r.n_labels, n_classes),
            "accuracy": r.accuracy,
            "macro_f1": r.macro_f1,
            "train_seconds": r.train_seconds,
        }
        for r in results
    ]
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.sort_values(["labels_per_class", "arm", "seed"], ignore_index=True)


def curve_points(frame: pd.DataFrame) -> dict[str, dict[int, float]]:
    """Mean accuracy over seeds per arm, keyed by labels per class (rounded for MLflow steps)."""
    means = frame.groupby(["arm", "labels_per_class"])["accuracy"].mean()
    points: dict[str, dict[int, float]] = {}
    for (arm, x), value in means.items():
        points.setdefault(arm, {})[round(x)] = float(value)
    return points


def summary_table(frame: pd.DataFrame, arms: list[str]) -> pd.DataFrame:
    """Rows = budgets (labels per class), columns = arms, cells = 'mean ± std' over seeds."""
    stats = frame.groupby(["labels_per_class", "budget", "arm"])["accuracy"].agg(["mean", "std", "count"])
    table = {}
    for (x, budget, arm), row in stats.iterrows():
        label = budget if budget != "all" else f"all ({x:.0f})"
        spread = 0.0 if pd.isna(row["std"]) else row["std"]
        table.setdefault(label, {})[arm] = f"{row['mean']:.3f} ± {spread:.3f}"
    return pd.DataFrame.from_dict(table, orient="index").reindex(columns=_ordered_arms(frame, arms))


def _ordered_arms(frame: pd.DataFrame, arms: list[str]) -> list[str]:
    present = set(frame.arm)
    return [a for a in arms if a in present] + sorted(present - set(arms))


def _accuracy_png(figure, axis, title: str, legend: str) -> bytes:
    """The axes every labelcurve plot shares (accuracy vs labels per class, log x), as PNG bytes."""
    axis.set_xscale("log")
    axis.set_xlabel("labels per class")
    axis.set_ylabel("test accuracy")
    axis.set_title(title)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(loc=legend)
    return _png(figure)


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def pretraining_png(losses: list[float], knn: list[float], title: str) -> bytes:
    """Loss per epoch and, beside it, the online kNN accuracy (epoch 0 = random init)."""
    figure, (loss_axis, knn_axis) = plt.subplots(1, 2, figsize=(9, 3.5), dpi=120)
    loss_axis.plot(range(1, len(losses) + 1), losses, marker=".")
    loss_axis.set(xlabel="epoch", ylabel="training loss", title=title)
    knn_axis.plot(range(len(knn)), knn, marker=".", color="tab:green")
    knn_axis.set(xlabel="epoch", ylabel="online kNN accuracy", title="representation quality")
    for axis in (loss_axis, knn_axis):
        axis.grid(True, alpha=0.3)
    return _png(figure)


def curve_png(frame: pd.DataFrame, arms: list[str], title: str) -> bytes:
    """Accuracy vs labels per class (log x): mean over seeds per arm, band = min..max."""
    figure, axis = plt.subplots(figsize=(7, 4.5), dpi=120)
    for arm in _ordered_arms(frame, arms):
        part = frame[frame.arm == arm]
        stats = part.groupby("labels_per_class")["accuracy"].agg(["mean", "min", "max"])
        axis.plot(stats.index, stats["mean"], marker="o", label=arm)
        axis.fill_between(stats.index, stats["min"], stats["max"], alpha=0.2)
    return _accuracy_png(figure, axis, title, legend="best")


def forecast_png(frame: pd.DataFrame, curves: dict, target: float | None, title: str) -> bytes:
    """Measured runs, fitted curves with their intervals, the target and the labels it needs."""
    figure, axis = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    classes = next(iter(curves.values())).n_classes
    top = frame.n_labels.max() * (10 if target else 3)
    grid = np.geomspace(max(frame.n_labels.min() / 2, 1), top, 200)
    for arm, curve in curves.items():
        part = frame[frame.arm == arm]
        line = axis.plot(grid / classes, curve.predict(grid), label=arm)[0]
        low, high = curve.predict_interval(grid)
        axis.fill_between(grid / classes, low, high, color=line.get_color(), alpha=0.18)
        axis.scatter(part.n_labels / classes, part.accuracy, color=line.get_color(), s=12, alpha=0.7)
        if target is not None:
            needed = curve.labels_needed(target).point
            if np.isfinite(needed) and needed <= top:
                axis.axvline(needed / classes, color=line.get_color(), linestyle="--", linewidth=1)
                axis.annotate(
                    f"{needed / classes:.0f}/class",
                    (needed / classes, target),
                    rotation=90,
                    xytext=(3, -40),
                    textcoords="offset points",
                    color=line.get_color(),
                    fontsize=8,
                )
    if target is not None:
        axis.axhline(target, color="black", linestyle=":", linewidth=1, label=f"target {target:g}")
    return _accuracy_png(figure, axis, title, legend="lower right")
