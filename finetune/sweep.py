"""The study grid: (arm, budget, seed) runs, each a Ray task, yielded as they finish.

Frozen-feature embeddings are computed once per checkpoint by :func:`prepare_inputs` and shared
by every ``ssl-linear`` run through the object store.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import ray
import torch
from sklearn.metrics import accuracy_score, f1_score

from finetune.arms import SCRATCH, SSL_FINETUNE, SSL_LINEAR
from finetune.budgets import Budget, subset_indices
from finetune.heads import embed, fine_tune, linear_probe, predict
from pretrain.backbones import build_backbone
from pretrain.data import StudyData
from pretrain.views import normalize


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


@dataclass(frozen=True)
class SweepInputs:
    """Everything a run needs, normalized once on the driver."""

    pool_x: torch.Tensor
    pool_y: np.ndarray
    test_x: torch.Tensor
    test_y: np.ndarray
    n_classes: int
    backbone: str
    backbone_state: dict[str, torch.Tensor] | None
    pool_features: np.ndarray | None
    test_features: np.ndarray | None


def grid(arms: list[str], budgets: list[Budget], seeds: list[int]) -> list[RunSpec]:
    """All runs, cheapest budgets first so that the curve fills in from the left."""
    return [RunSpec(a, b, s) for b, s, a in itertools.product(budgets, seeds, arms)]


def prepare_inputs(data: StudyData, backbone: str, backbone_state: dict | None) -> SweepInputs:
    pool_x = normalize(data.pool.images, data.mean, data.std)
    test_x = normalize(data.test.images, data.mean, data.std)
    pool_f = test_f = None
    if backbone_state is not None:
        frozen = build_backbone(backbone, data.channels)
        frozen.load_state_dict(backbone_state)
        pool_f, test_f = embed(frozen, pool_x), embed(frozen, test_x)
    return SweepInputs(
        pool_x,
        data.pool.labels.numpy(),
        test_x,
        data.test.labels.numpy(),
        len(data.classes),
        backbone,
        backbone_state,
        pool_f,
        test_f,
    )


def run_one(spec: RunSpec, inputs: SweepInputs, settings: dict) -> RunResult:
    """Train and evaluate one (arm, budget, seed) on the fixed test split."""
    index = subset_indices(inputs.pool_y, spec.budget, spec.seed)
    started = time.perf_counter()
    if spec.arm == SSL_LINEAR:
        predictions = linear_probe(
            inputs.pool_features[index], inputs.pool_y[index], inputs.test_features, settings["linear_c"]
        )
    else:
        torch.manual_seed(spec.seed)
        backbone = build_backbone(inputs.backbone, inputs.pool_x.shape[1])
        if spec.arm == SSL_FINETUNE:
            backbone.load_state_dict(inputs.backbone_state)
        elif spec.arm != SCRATCH:
            raise ValueError(f"unknown arm {spec.arm}")
        model = fine_tune(
            backbone,
            inputs.n_classes,
            inputs.pool_x[index],
            torch.as_tensor(inputs.pool_y[index]),
            steps=settings["steps"],
            batch_size=settings["batch_size"],
            lr=settings["lr"],
            weight_decay=settings["weight_decay"],
            seed=spec.seed,
        )
        predictions = predict(model, inputs.test_x)
    seconds = time.perf_counter() - started
    return RunResult(
        spec,
        len(index),
        float(accuracy_score(inputs.test_y, predictions)),
        float(f1_score(inputs.test_y, predictions, average="macro")),
        seconds,
    )


@ray.remote(num_cpus=1)
def _run_task(spec: RunSpec, inputs: SweepInputs, settings: dict) -> RunResult:
    torch.set_num_threads(1)
    return run_one(spec, inputs, settings)


def run_sweep(specs: list[RunSpec], inputs: SweepInputs, settings: dict) -> Iterator[RunResult]:
    """Fan ``specs`` out as Ray tasks; yield each result as soon as it is done."""
    inputs_ref = ray.put(inputs)
    pending = [_run_task.remote(spec, inputs_ref, settings) for spec in specs]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        yield ray.get(done[0])
