"""Label budgets: which images get labeled for a given per-class budget and seed.

Subsets are stratified (the same count from every class), nested (for one seed, the images of
budget 5 contain those of budget 2) and reproducible from the seed alone, so that differences
along a curve come from the number of labels, not from which images were drawn.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from pretrain.errors import LabelcurveError

Budget = int | Literal["all"]


class BudgetError(LabelcurveError, ValueError):
    """A budget the labeled pool cannot satisfy, phrased as one line for the user."""


def subset_indices(labels: np.ndarray, per_class: Budget, seed: int) -> np.ndarray:
    """Indices into ``labels`` of a stratified, nested subset with ``per_class`` labels per class.

    One permutation of the whole pool is drawn from ``seed``; each class contributes its first
    ``per_class`` images in that order. Example::

        small = subset_indices(labels, 2, seed=0)
        large = subset_indices(labels, 5, seed=0)  # contains every index of `small`
    """
    labels = np.asarray(labels)
    if per_class == "all":
        return np.arange(len(labels))
    order = np.random.default_rng(seed).permutation(len(labels))
    picked = [order[labels[order] == c][:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picked))


def check_budgets(budgets: list[Budget], class_counts: dict[str, int]) -> None:
    """Raise :class:`BudgetError` when a budget exceeds the smallest class of the labeled pool."""
    name, smallest = min(class_counts.items(), key=lambda kv: kv[1])
    too_large = [b for b in budgets if b != "all" and b > smallest]
    if too_large:
        raise BudgetError(
            f"budget {max(too_large)} labels per class is larger than class '{name}' "
            f"({smallest} images in the labeled pool): lower finetune.budgets to <= {smallest} or use 'all'"
        )


def labels_per_class(budget: Budget, n_labels: int, n_classes: int) -> float:
    """The x of a curve point: the budget itself, or the mean per class for ``all``."""
    return float(budget) if budget != "all" else n_labels / n_classes


def budget_label(budget: Budget | str, n_labels: int) -> str:
    """'5' for a budget of 5 labels per class; 'all (2,870)' for the whole labeled pool, by its
    total: a mean per class ('all (718)') reads as 718 of each where one class has 395."""
    return str(budget) if budget != "all" else f"all ({n_labels:,})"
