import numpy as np
import pytest

from finetune.budgets import BudgetError, budget_label, check_budgets, labels_per_class, subset_indices

LABELS = np.repeat(np.arange(5), [30, 25, 40, 22, 33])


@pytest.mark.parametrize("budget", [1, 2, 5, 20])
def test_subset_is_stratified(budget):
    picked = subset_indices(LABELS, budget, seed=3)
    assert np.bincount(LABELS[picked]).tolist() == [budget] * 5
    assert len(set(picked.tolist())) == len(picked)


def test_subsets_are_nested_across_budgets():
    for seed in range(5):
        previous: set[int] = set()
        for budget in [1, 2, 5, 10, 22, "all"]:
            current = set(subset_indices(LABELS, budget, seed).tolist())
            assert previous <= current
            previous = current


def test_subsets_are_reproducible_and_depend_on_the_seed():
    assert np.array_equal(subset_indices(LABELS, 5, seed=7), subset_indices(LABELS, 5, seed=7))
    draws = {tuple(subset_indices(LABELS, 5, seed=s)) for s in range(5)}
    assert len(draws) == 5


def test_all_takes_the_whole_pool():
    assert subset_indices(LABELS, "all", seed=0).tolist() == list(range(len(LABELS)))


def test_budget_larger_than_smallest_class_names_class_and_fix():
    counts = {"cat": 30, "dog": 22}
    check_budgets([1, 22, "all"], counts)
    with pytest.raises(BudgetError, match=r"budget 50 .* class 'dog' \(22 images.*<= 22"):
        check_budgets([1, 50], counts)


def test_labels_per_class_for_all_is_the_mean():
    assert labels_per_class(5, 50, 10) == 5.0
    assert labels_per_class("all", 1257, 10) == pytest.approx(125.7)


def test_all_is_labelled_by_its_total_not_a_mean_per_class():
    """A mean per class hides imbalance: 'all (718)' read as 718 per class where one class had 395."""
    assert budget_label("all", 2870) == "all (2,870)"
    assert budget_label("5", 50) == budget_label(5, 50) == "5"
