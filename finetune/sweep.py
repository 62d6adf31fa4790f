"""The study grid: (arm, budget, seed) runs, each a Ray task, yielded as they finish."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import ray
import torch
from sklearn.metrics import accuracy_score, f1_score

from finetune.arms import BY_NAME, LINEAR, start_key
from finetune.budgets import subset_indices
from finetune.grid import RunResult, RunSpec
from finetune.heads import fine_tune, linear_probe, predict, training_steps
from finetune.labeled import LabeledImages, decode
from pretrain.backbones import build_backbone
from pretrain.data import StudyData
from pretrain.images import ImageSource
from pretrain.manifest import POOL, TEST
from pretrain.views import normalize


@dataclass(frozen=True)
class Start:
    """One starting point: its backbone, weights (None = random init) and its normalization.

    Each start normalizes with the statistics its backbone was pretrained with; frozen-feature
    embeddings are computed once by batched inference and shared by every linear-probe run.
    """

    backbone: str
    in_channels: int
    image_size: int
    options: dict
    state: dict[str, torch.Tensor] | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pool_features: np.ndarray | None = None
    test_features: np.ndarray | None = None

    def build(self) -> torch.nn.Module:
        """The backbone at its start: pretrained weights, or a random init."""
        backbone = build_backbone(self.backbone, self.in_channels, self.image_size, **self.options)
        if self.state is not None:
            backbone.load_state_dict(self.state)
        return backbone


@dataclass(frozen=True)
class SweepInputs:
    """What every run reads: labels and item names (not images) of the pool and the test split."""

    pool_items: list[str]
    pool_y: np.ndarray
    test_items: list[str]
    test_y: np.ndarray
    n_classes: int
    starts: dict[str, Start]  # by start_key
    source: ImageSource
    repeats: int = 1  # pretrainings the SSL arms' seeds are paired with

    @classmethod
    def of(cls, data: StudyData, starts: dict[str, Start], repeats: int = 1) -> SweepInputs:
        return cls(
            data.items(POOL),
            data.labels(POOL),
            data.items(TEST),
            data.labels(TEST),
            len(data.classes),
            starts,
            data.source,
            repeats,
        )

    def images(self, items: list[str], start: Start) -> torch.Tensor:
        """The images of ``items`` decoded and normalized for ``start``."""
        return normalize(decode(self.source, items), start.mean, start.std)


def make_start(
    data: StudyData,
    backbone: str,
    options: dict,
    state: dict | None,
    mean,
    std,
    embed: Callable[[torch.nn.Module], tuple[np.ndarray, np.ndarray]] | None = None,
) -> Start:
    """A start normalized with the statistics its backbone was trained with; with ``embed`` (for a
    linear probe), the frozen features of the pool and the test split that ``embed`` returns."""
    start = Start(backbone, data.channels, data.image_size, options, state, tuple(mean), tuple(std))
    if embed is not None and state is not None:
        pool, test = embed(start.build())
        return replace(start, pool_features=pool, test_features=test)
    return start


def run_one(spec: RunSpec, inputs: SweepInputs, settings: dict) -> RunResult:
    """Train and evaluate one (arm, budget, seed) on the fixed test split."""
    arm = BY_NAME[spec.arm]
    start = inputs.starts[start_key(arm.start, spec.seed, inputs.repeats)]
    index = subset_indices(inputs.pool_y, spec.budget, spec.seed)
    started_at, started = time.time(), time.perf_counter()
    if arm.head == LINEAR:
        predictions = linear_probe(
            start.pool_features[index], inputs.pool_y[index], start.test_features, settings["linear_c"]
        )
    else:
        torch.manual_seed(spec.seed)
        model = fine_tune(
            start.build(),
            inputs.n_classes,
            LabeledImages([inputs.pool_items[i] for i in index], inputs.source, start.mean, start.std),
            torch.as_tensor(inputs.pool_y[index]),
            steps=training_steps(
                len(index),
                epochs=settings["epochs"],
                batch_size=settings["batch_size"],
                min_steps=settings["steps"],
                max_steps=settings["max_steps"],
            ),
            batch_size=settings["batch_size"],
            lr=settings["lr"],
            weight_decay=settings["weight_decay"],
            seed=spec.seed,
        )
        predictions = np.concatenate(
            [
                predict(model, inputs.images(inputs.test_items[i : i + 512], start))
                for i in range(0, len(inputs.test_y), 512)
            ]
        )
    seconds = time.perf_counter() - started
    return RunResult(
        spec,
        len(index),
        float(accuracy_score(inputs.test_y, predictions)),
        float(f1_score(inputs.test_y, predictions, average="macro")),
        seconds,
        started_at,
        time.time(),
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
