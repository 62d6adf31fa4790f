"""The grid of a study as data: one :class:`RunSpec` per (arm, budget, seed), one :class:`RunResult` each.

Kept apart from the sweep that runs it (Ray, torch), so that reading results back, journaling them
and forecasting from them import neither.

Example::

    specs = grid(["ssl-linear", "scratch"], [1, 5, "all"], [0, 1])   # 12 runs
    specs[0].key                                                     # 'ssl-linear/1/0'
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from finetune.budgets import Budget


@dataclass(frozen=True)
class RunSpec:
    """One point of the grid."""

    arm: str
    budget: Budget
    seed: int

    @property
    def key(self) -> str:
        return f"{self.arm}/{self.budget}/{self.seed}"


@dataclass(frozen=True)
class RunResult:
    spec: RunSpec
    n_labels: int
    accuracy: float
    macro_f1: float
    train_seconds: float
    started_at: float = 0.0  # unix seconds: the MLflow run gets the real start and end of the work
    ended_at: float = 0.0


def grid(arms: list[str], budgets: list[Budget], seeds: list[int]) -> list[RunSpec]:
    """All runs, cheapest budgets first so that the curve fills in from the left."""
    return [RunSpec(a, b, s) for b, s, a in itertools.product(budgets, seeds, arms)]
