"""The answer of a study: a table of accuracy per budget and arm, a curve plot, a CSV."""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import NullLocator
from rich.table import Table

from finetune.budgets import budget_label, labels_per_class

if TYPE_CHECKING:  # torch and ray load with finetune.sweep: not needed to draw a report
    from finetune.grid import RunResult

COLUMNS = ["arm", "budget", "seed", "n_labels", "labels_per_class", "accuracy", "macro_f1", "train_seconds"]
# Okabe & Ito's palette stays distinguishable under the common colour-vision deficiencies; yellow
# comes last because it is faint on white. Markers and dashes tell the arms apart without colour.
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
MARKERS = ("o", "s", "^", "D", "v", "p", "h", ">")
DASHES = ((), (6.0, 3.0), (1.5, 2.5), (6.0, 2.0, 1.5, 2.0), (10.0, 3.0), (3.0, 2.0, 1.0, 2.0, 1.0, 2.0), (2.0, 5.0))
Format = Literal["png", "svg"]
SUMMARY_CLASSES = 10  # classes named with their test counts in a caption; the rest are counted


@dataclass(frozen=True)
class ArmStyle:
    """How one arm is drawn in every plot: colour, marker and dash each tell it apart on their own."""

    color: str
    marker: str
    dashes: tuple[float, ...]  # on/off lengths in points; () is a solid line


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
    """Accuracy over seeds per arm, keyed by labels per class (rounded for MLflow steps):
    ``accuracy/<arm>`` (the mean) and ``accuracy_std|min|max/<arm>``, to 4 decimals."""
    stats = frame.groupby(["arm", "labels_per_class"])["accuracy"].agg(["mean", "std", "min", "max"])
    points: dict[str, dict[int, float]] = {}
    for (arm, x), row in stats.fillna(0.0).iterrows():
        for stat, name in (
            ("mean", "accuracy"),
            ("std", "accuracy_std"),
            ("min", "accuracy_min"),
            ("max", "accuracy_max"),
        ):
            points.setdefault(f"{name}/{arm}", {})[round(x)] = round(float(row[stat]), 4)
    return points


def summary_table(frame: pd.DataFrame, arms: list[str]) -> pd.DataFrame:
    """Rows = budgets (labels per class), columns = arms, cells = 'mean ± std' over seeds."""
    stats = frame.groupby(["labels_per_class", "budget", "arm"]).agg(
        mean=("accuracy", "mean"), std=("accuracy", "std"), n_labels=("n_labels", "max")
    )
    table = {}
    for (_, budget, arm), row in stats.iterrows():
        label = budget_label(budget, int(row["n_labels"]))
        spread = 0.0 if pd.isna(row["std"]) else row["std"]
        table.setdefault(label, {})[arm] = f"{row['mean']:.3f} ± {spread:.3f}"
    return pd.DataFrame.from_dict(table, orient="index").reindex(columns=_ordered_arms(frame, arms))


def _ordered_arms(frame: pd.DataFrame, arms: list[str]) -> list[str]:
    present = set(frame.arm)
    return [a for a in arms if a in present] + sorted(present - set(arms))


def arm_styles(frame: pd.DataFrame, arms: list[str]) -> dict[str, ArmStyle]:
    """One style per arm present, in the configured order, so the PNG, SVG and HTML agree."""
    return {
        arm: ArmStyle(OKABE_ITO[i % len(OKABE_ITO)], MARKERS[i % len(MARKERS)], DASHES[i % len(DASHES)])
        for i, arm in enumerate(_ordered_arms(frame, arms))
    }


def budget_ticks(frame: pd.DataFrame) -> list[tuple[float, str]]:
    """The measured budgets as (x, label): a plot's x ticks sit where runs were made, not at powers of 10."""
    columns = ["labels_per_class", "budget", "n_labels"]
    pairs = frame[columns].drop_duplicates("labels_per_class").sort_values("labels_per_class")
    return [(float(x), budget_label(budget, n)) for x, budget, n in pairs.itertuples(index=False)]


def seed_stats(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean, min and max accuracy over seeds per (arm, labels per class): the line and its band."""
    return frame.groupby(["arm", "labels_per_class"])["accuracy"].agg(["mean", "min", "max"])


def band_caption(frame: pd.DataFrame) -> str:
    """What the shaded band is, in the words both the plot legend and the HTML report use."""
    counts = frame.groupby(["arm", "labels_per_class"])["seed"].nunique()
    low, high = int(counts.min()), int(counts.max())
    seeds = f"{high} seed{'s' if high != 1 else ''}" if low == high else f"{low}–{high} seeds"
    return f"band: min..max over {seeds}"


def study_subtitle(dataset: str = "", method: str = "", backbone: str = "") -> str:
    """'dataset cifar10 · method simclr · backbone resnet18': what a curve was measured on."""
    parts = [("dataset", dataset), ("method", method), ("backbone", backbone)]
    return " · ".join(f"{name} {value}" for name, value in parts if value)


def test_split_caption(test_counts: Mapping[str, int]) -> str:
    """'test split: 143 images (glioma 82, meningioma 9, notumor 0, pituitary 52)': what each class's
    accuracy is measured on, so that a thin or lopsided test split shows beside the numbers."""
    counts = list(test_counts.items())
    named = ", ".join(f"{name} {n:,}" for name, n in counts[:SUMMARY_CLASSES])
    if len(counts) > SUMMARY_CLASSES:
        named += f", {len(counts) - SUMMARY_CLASSES} more; fewest {min(test_counts.values()):,}"
    return f"test split: {sum(test_counts.values()):,} images ({named})"


def chance_level(test_counts: Mapping[str, int]) -> tuple[float, str] | None:
    """The accuracy of guessing, and its legend label: 1/classes, or always answering the test
    split's largest class where that scores higher; None for an empty test split."""
    total = sum(test_counts.values())
    if not total:
        return None
    name, largest = max(test_counts.items(), key=lambda kv: kv[1])
    if largest / total > 1 / len(test_counts) + 1e-9:
        return largest / total, f"chance {largest / total:.2f} (always '{name}', the test split's largest class)"
    return 1 / len(test_counts), f"chance {1 / len(test_counts):.2f} (1 of {len(test_counts)} classes)"


def console_table(table: pd.DataFrame, study: str, test_counts: Mapping[str, int] | None = None) -> Table:
    """:func:`summary_table` for the terminal, captioned with the test split it was measured on."""
    view = Table(
        title=f"{study}: test accuracy (mean ± std over seeds)",
        caption=test_split_caption(test_counts) if test_counts else None,
    )
    view.add_column("labels/class", justify="right")
    for arm in table.columns:
        view.add_column(arm, justify="right")
    for label, row in table.iterrows():
        view.add_row(str(label), *[str(v) for v in row.tolist()])
    return view


def _accuracy_axes(axis, title: str) -> None:
    """The axes every labelcurve plot shares: accuracy vs labels per class, log x."""
    axis.set_xscale("log")
    axis.set_xlabel("labels per class (log scale)")
    axis.set_ylabel("test accuracy")
    axis.set_title(title)
    axis.grid(True, which="both", alpha=0.3)


def _render(figure: Figure, fmt: Format = "png") -> bytes:
    """The figure as PNG or SVG bytes; SVG keeps text as <text>, so labels stay searchable and crisp."""
    buffer = io.BytesIO()
    figure.tight_layout()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        figure.savefig(buffer, format=fmt)
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
    return _render(figure)


def curve_figure(
    frame: pd.DataFrame,
    arms: list[str],
    title: str,
    *,
    dataset: str = "",
    method: str = "",
    backbone: str = "",
    test_counts: Mapping[str, int] | None = None,
) -> Figure:
    """Accuracy vs labels per class at the measured budgets: mean over seeds per arm, band = min..max;
    with ``test_counts`` (images per class of the test split), the chance level as a labelled line,
    so that a curve near it reads as not learning (or as a test split that cannot measure).

    1200x800 px at 150 dpi. Returned unrendered so tests can inspect the lines.
    """
    figure, axis = plt.subplots(figsize=(8, 16 / 3), dpi=150)
    stats = seed_stats(frame)
    for arm, style in arm_styles(frame, arms).items():
        part = stats.loc[arm]
        dashes = (0, style.dashes) if style.dashes else "-"
        axis.plot(part.index, part["mean"], color=style.color, marker=style.marker, linestyle=dashes, label=arm)
        axis.fill_between(part.index, part["min"], part["max"], color=style.color, alpha=0.15, linewidth=0)
    if test_counts and (chance := chance_level(test_counts)):
        axis.axhline(chance[0], color="0.4", linestyle="-.", linewidth=1, label=chance[1])
    _accuracy_axes(axis, study_subtitle(dataset, method, backbone))
    axis.set_ylabel("test accuracy (line: mean over seeds)")
    ticks = budget_ticks(frame)
    axis.set_xticks([x for x, _ in ticks], [label for _, label in ticks])
    axis.xaxis.set_minor_locator(NullLocator())
    handles, labels = axis.get_legend_handles_labels()
    band = Patch(facecolor="0.5", alpha=0.3)
    axis.legend([*handles, band], [*labels, band_caption(frame)], loc="best")
    figure.suptitle(title)
    return figure


def curve_png(
    frame: pd.DataFrame,
    arms: list[str],
    title: str,
    *,
    dataset: str = "",
    method: str = "",
    backbone: str = "",
    fmt: Format = "png",
    test_counts: Mapping[str, int] | None = None,
) -> bytes:
    """:func:`curve_figure` as PNG (default) or SVG bytes."""
    setup = {"dataset": dataset, "method": method, "backbone": backbone, "test_counts": test_counts}
    return _render(curve_figure(frame, arms, title, **setup), fmt)


def forecast_figure(frame: pd.DataFrame, curves: dict, target: float | None, title: str) -> Figure:
    """Measured runs, fitted curves with their intervals, the target, the labels it needs and the
    measured budget that first reached it, in two views: accuracy, and error (1 - accuracy) on a
    log axis, where a power law is a straight line and 0.99 against 0.997 is a visible gap."""
    figure, (axis, errors) = plt.subplots(1, 2, figsize=(12, 4.8), dpi=120)
    classes = next(iter(curves.values())).n_classes
    chance = 1 / classes
    top = frame.n_labels.max() * (10 if target else 3)
    grid = np.geomspace(max(frame.n_labels.min() / 2, 1), top, 200)
    for arm, curve in curves.items():
        part = frame[frame.arm == arm]
        predicted, (low, high) = curve.predict(grid), curve.predict_interval(grid)
        line = axis.plot(grid / classes, predicted, label=arm)[0]
        color = line.get_color()
        errors.plot(grid / classes, 1 - predicted, color=color, label=arm)
        for view, (lo, hi), points in (
            (axis, (low, high), part.accuracy),
            (errors, (1 - high, 1 - low), 1 - part.accuracy),
        ):
            view.fill_between(grid / classes, lo, hi, color=color, alpha=0.18)
            view.scatter(part.n_labels / classes, np.maximum(points, 1e-4), color=color, s=12, alpha=0.7)
        if target is None:
            continue
        needed = curve.labels_needed(target)
        if needed.reached_at is not None:
            for view, y in ((axis, target), (errors, 1 - target)):
                view.scatter([needed.reached_at / classes], [y], marker="*", s=120, color=color, zorder=5)
        if np.isfinite(needed.point) and needed.point <= top:
            axis.axvline(needed.point / classes, color=color, linestyle="--", linewidth=1)
            axis.annotate(
                f"{needed.point / classes:.0f}/class",
                (needed.point / classes, target),
                rotation=90,
                xytext=(3, -40),
                textcoords="offset points",
                color=color,
                fontsize=8,
            )
    for view, y in ((axis, chance), (errors, 1 - chance)):
        view.axhline(y, color="grey", linestyle="-.", linewidth=1, label=f"chance ({chance:.2f})")
    if target is not None:
        axis.axhline(target, color="black", linestyle=":", linewidth=1, label=f"target {target:g}")
        errors.axhline(1 - target, color="black", linestyle=":", linewidth=1, label=f"target {target:g}")
    _accuracy_axes(axis, title)
    axis.legend(loc="lower right", fontsize=8)
    errors.set_xscale("log")
    errors.set_yscale("log")
    errors.set_xlabel("labels per class (log scale)")
    errors.set_ylabel("test error, 1 - accuracy (log scale)")
    errors.set_title("error view (a star: the measured budget that first reached the target)", fontsize=9)
    errors.grid(True, which="both", alpha=0.3)
    return figure


def forecast_png(frame: pd.DataFrame, curves: dict, target: float | None, title: str) -> bytes:
    """:func:`forecast_figure` as PNG bytes."""
    return _render(forecast_figure(frame, curves, target, title))
