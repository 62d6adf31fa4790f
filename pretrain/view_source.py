"""The Ray Data datasource of pretraining views, in a module that imports neither torch nor lightly.

Ray Data's split coordinator, a fresh actor process on every run, unpickles the datasource before
the stream's first block: kept light, with the transform behind an object ref, that takes a
second or two instead of the five that importing torch, torchvision and lightly costs on a small
machine. The read tasks import :mod:`pretrain.stream` to make the views.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import ray
from ray.data import DataContext
from ray.data.block import BlockAccessor, BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from pretrain.images import ImageSource

ROWS_PER_TASK = 250  # images a read task decodes and augments: small, so the stream fills fast
MAX_TASKS_PER_EPOCH = 64  # read tasks: larger pools get larger tasks
MAX_TASKS = 4096  # in a whole run: Ray Data warns about plans of 5,000 read tasks and more
VIEW_BATCH = 32  # images a read task augments between yields
ROWS_PER_BLOCK = 256  # images per output block, whatever the pool size: a block is what a worker holds


class ViewStream(Datasource):
    """``epochs`` epochs of views, each epoch a new order of the items drawn from (seed, epoch).

    A read task draws its epoch's permutation itself, takes its slice, and decodes and augments
    it: no all-to-all shuffle, no second stage. The items live once in the object store as an
    Arrow array that every task maps without copying. The epochs are ``first_epoch`` onwards (a
    resumed run); a re-execution (a worker group restarted within one fit) continues with the
    orders of the epochs after them.
    """

    def __init__(
        self,
        items: list[str],
        source: ImageSource,
        transform: ray.ObjectRef,
        row_bytes: int,
        seed: int,
        epochs: int,
        first_epoch: int = 0,
    ) -> None:
        self.items, self.n = ray.put(pa.array(items, pa.string())), len(items)
        self.source, self.transform, self.seed, self.epochs = source, transform, seed, epochs
        self.first_epoch, self.row_bytes = first_epoch, row_bytes  # a row's views, for Ray Data's memory budget
        tasks = min(math.ceil(self.n / ROWS_PER_TASK), MAX_TASKS_PER_EPOCH, max(1, MAX_TASKS // epochs))
        self.num_tasks = tasks * epochs
        self.bounds = [self.n * i // tasks for i in range(tasks + 1)]

    def estimate_inmemory_data_size(self) -> int:
        return self.n * self.epochs * self.row_bytes

    def get_read_tasks(self, parallelism: int, **_) -> list[ReadTask]:
        spans = itertools.pairwise(self.bounds)
        return [self._task(k, lo, hi) for k, (lo, hi) in itertools.product(range(self.epochs), spans)]

    def _task(self, k: int, lo: int, hi: int) -> ReadTask:
        items, n, seed, epochs, first = self.items, self.n, self.seed, self.epochs, self.first_epoch
        source, transform = self.source, self.transform

        def read() -> Iterator[pa.Table]:
            from pretrain.stream import make_views

            augment = ray.get(transform)
            epoch = first + DataContext.get_current()._execution_idx * epochs + k
            rows = np.random.default_rng([seed, epoch]).permutation(n)[lo:hi]
            names = ray.get(items).take(rows).to_numpy(zero_copy_only=False)
            for i in range(0, len(rows), VIEW_BATCH):
                part = {"epoch": np.full(len(rows[i : i + VIEW_BATCH]), epoch), "row": rows[i : i + VIEW_BATCH]}
                part["item"] = names[i : i + VIEW_BATCH]
                yield BlockAccessor.batch_to_block(make_views(part, source, augment, seed))

        size = (hi - lo) * self.row_bytes
        return ReadTask(read, BlockMetadata(num_rows=hi - lo, size_bytes=size, exec_stats=None, input_files=None))
