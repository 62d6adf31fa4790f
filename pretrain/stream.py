"""Pretraining input through Ray Data: manifest rows -> decode + multi-view augment -> Train shards.

The driver builds one :class:`ray.data.Dataset` over the pretraining items; Ray Train splits it
across workers (``streaming_split(equal=True)``: every row goes to exactly one rank per epoch).
The dataset is re-executed every epoch, and both the file order and each image's augmentation
are drawn from the study seed and Ray Data's execution index (the epoch), so every epoch and
every rank gets new draws, reproducibly. Decoding and augmentation run in Ray Data tasks, on any
CPU of the cluster, never in the training process; no process holds the pool.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import ray
import torch
from ray.data import DataContext
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from pretrain.images import ImageSource
from pretrain.views import to_pil

ROWS_PER_TASK = 1000


def make_views(batch: dict[str, np.ndarray], source: ImageSource, transform, seed: int) -> dict[str, np.ndarray]:
    """Decode and augment a batch of rows; runs in Ray Data tasks.

    Each image's draws are seeded by (study seed, epoch, row), so they differ per epoch and
    rank yet repeat on a re-run. Unreadable items give ``ok=False`` rows with zero views, which
    the training side drops and counts.
    """
    epoch = DataContext.get_current()._execution_idx  # what Ray's own seeded shuffles use per epoch
    rows, items = batch["row"], batch["item"]
    views: list[list[torch.Tensor] | None] = []
    for row, item in zip(rows, items, strict=True):
        array = source.read(str(item))
        if array is None:
            views.append(None)
            continue
        draw = hash((seed, epoch, int(row))) % 2**32
        torch.default_generator.manual_seed(draw)  # the CPU generator only: torch.manual_seed also seeds CUDA
        random.seed(draw)
        np.random.seed(draw)
        views.append(transform(to_pil(array)))
    template = next((v for v in views if v is not None), None)
    if template is None:  # a batch of only unreadable files: the shapes come from a black image
        template = transform(to_pil(np.zeros((source.channels, source.image_size, source.image_size), np.uint8)))
    out = {"row": rows, "ok": np.array([v is not None for v in views]), "item": items}
    for i, like in enumerate(template):
        out[f"view{i}"] = np.stack([(v[i] if v is not None else torch.zeros_like(like)).numpy() for v in views])
    return out


class ShuffledItems(Datasource):
    """The pretraining items in a new random order every epoch, drawn from (seed, epoch).

    Each read task draws the epoch's permutation itself and emits its slice of it, so the shuffle
    needs no all-to-all exchange and fuses with decoding into one task. The items live once in
    the object store as an Arrow array that every task maps without copying.
    """

    def __init__(self, items: list[str], seed: int, rows_per_task: int = ROWS_PER_TASK) -> None:
        self.items, self.n, self.seed = ray.put(pa.array(items, pa.string())), len(items), seed
        self.rows_per_task = max(64, min(rows_per_task, math.ceil(self.n / 16)))

    def estimate_inmemory_data_size(self) -> int:
        return self.n * 64

    def get_read_tasks(self, parallelism: int, **_) -> list[ReadTask]:
        bounds = [*range(0, self.n, self.rows_per_task), self.n]
        return [self._task(lo, hi) for lo, hi in itertools.pairwise(bounds)]

    def _task(self, lo: int, hi: int) -> ReadTask:
        items, n, seed = self.items, self.n, self.seed

        def read() -> Iterator[pa.Table]:
            epoch = DataContext.get_current()._execution_idx
            rows = np.random.default_rng([seed, epoch]).permutation(n)[lo:hi]
            yield pa.table({"row": rows, "item": ray.get(items).take(rows)})

        return ReadTask(
            read, BlockMetadata(num_rows=hi - lo, size_bytes=(hi - lo) * 64, input_files=None, exec_stats=None)
        )


def pretraining_dataset(
    items: list[str], source: ImageSource, transform, seed: int, cpus_per_task: float = 0.5, batch_size: int = 32
) -> ray.data.Dataset:
    """The stream a pretraining run consumes: rows in a new order every epoch, decoded and
    augmented in Ray Data tasks."""
    return ray.data.read_datasource(
        ShuffledItems(items, seed), ray_remote_args={"num_cpus": cpus_per_task}
    ).map_batches(
        make_views,
        fn_kwargs={"source": source, "transform": transform, "seed": seed},
        batch_size=batch_size,
        num_cpus=cpus_per_task,
        batch_format="numpy",
    )


def rows_per_rank(n: int, world: int) -> int:
    """Rows each rank receives per epoch: ``streaming_split(equal=True)`` gives every rank the
    same count and leaves out the remainder (fewer than ``world`` rows)."""
    return n // world


class ShardBatches:
    """The iterable Lightning trains on: one pass over this rank's shard per epoch.

    Yields the list of view batches a method's ``loss`` takes; the last incomplete batch is
    dropped, so every rank takes the same number of steps. Rows that failed to decode are left
    out of their batch and counted in ``bad`` (with the first few items in ``bad_items``).
    """

    def __init__(self, shard, batch_size: int, steps: int) -> None:
        self.shard, self.batch_size, self.steps = shard, batch_size, steps
        self.rows: list[np.ndarray] = []  # rows of the current epoch, for audits and tests
        self.bad, self.bad_items = 0, []

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[torch.Tensor]]:
        self.rows = []
        batches = self.shard.iter_batches(
            batch_size=self.batch_size, drop_last=True, batch_format="numpy", prefetch_batches=4
        )
        for batch in batches:
            ok = batch["ok"]
            self.rows.append(batch["row"][ok])
            if not ok.all():
                self.bad += int((~ok).sum())
                self.bad_items += [str(i) for i in batch["item"][~ok]][: max(0, 5 - len(self.bad_items))]
            views = sorted(k for k in batch if k.startswith("view"))
            yield [torch.from_numpy(batch[k][ok]) for k in views]
