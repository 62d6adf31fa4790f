"""Pretraining input through Ray Data: manifest rows -> decode + multi-view augment -> Train shards.

The driver builds one :class:`ray.data.Dataset` that holds every epoch of a run, each a new
permutation of the pretraining items drawn from (study seed, epoch); Ray Train splits it across
workers (``streaming_split(equal=True)``: every row goes to exactly one rank). One execution
covers all epochs, so the pipeline stays full across epoch boundaries instead of draining and
starting again every epoch (on a small pool that restart cost more than the augmentations).
Each image's augmentation is drawn from (seed, epoch, row): new draws every epoch and on every
rank, reproducibly. A run resumed from a checkpoint streams only its remaining epochs, with the
orders and draws an uninterrupted run would have had. Decoding and augmentation run in Ray Data
read tasks, on any CPU of the cluster, never in the training process; no process holds the pool.

:class:`LocalBatches` is the other input: the same epochs and draws, made by each training worker
for its own shard (CPU workers that take the cluster's CPUs have none to spare for Ray Data).
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import ray
import torch
from ray.data import DataContext

from pretrain.images import READ_THREADS, ImageSource
from pretrain.seeds import view_seed
from pretrain.view_source import ROWS_PER_BLOCK, ViewStream
from pretrain.views import to_pil


def make_views(batch: dict[str, np.ndarray], source: ImageSource, transform, seed: int) -> dict[str, np.ndarray]:
    """Decode and augment a batch of (epoch, row, item) rows.

    Each image's draws are seeded by (study seed, epoch, row), so they differ per epoch and
    rank yet repeat on a re-run; the caller's random streams are left as they were. Unreadable
    items give ``ok=False`` rows with zero views, which the training side drops and counts.
    """
    views: list[list[torch.Tensor] | None] = []
    states = random.getstate(), np.random.get_state()  # the caller's streams go on unchanged
    try:
        with torch.random.fork_rng(devices=[]):
            for epoch, row, item in zip(batch["epoch"], batch["row"], batch["item"], strict=True):
                array = source.read(str(item))
                if array is None:
                    views.append(None)
                    continue
                draw = view_seed(seed, epoch, row)
                torch.default_generator.manual_seed(draw)  # the CPU generator only: manual_seed also seeds CUDA
                random.seed(draw)
                np.random.seed(draw)
                views.append(transform(to_pil(array)))
            template = next((v for v in views if v is not None), None) or blank_views(source, transform)
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
    out = {**batch, "ok": np.array([v is not None for v in views])}
    for i, like in enumerate(template):
        out[f"view{i}"] = np.stack([(v[i] if v is not None else torch.zeros_like(like)).numpy() for v in views])
    return out


def blank_views(source: ImageSource, transform) -> list[torch.Tensor]:
    """The views of a black image: their shapes, for batches without a readable image."""
    return transform(to_pil(np.zeros((source.channels, source.image_size, source.image_size), np.uint8)))


def pretraining_dataset(
    items: list[str],
    source: ImageSource,
    transform,
    seed: int,
    epochs: int,
    cpus_per_task: float = 0.5,
    first_epoch: int = 0,
) -> ray.data.Dataset:
    """The stream a pretraining run consumes: its epochs from ``first_epoch`` to ``epochs``, decoded
    and augmented in Ray Data tasks of ``cpus_per_task`` CPUs each. Ray Data's own progress bars
    stay off: the training side prints a line per epoch."""
    DataContext.get_current().enable_progress_bars = False
    with torch.random.fork_rng(devices=[]):
        row_bytes = sum(v.numel() * v.element_size() for v in blank_views(source, transform)) + 64
    stream = ViewStream(items, source, ray.put(transform), row_bytes, seed, max(1, epochs - first_epoch), first_epoch)
    # as many blocks as read tasks: to reach its default of 200 blocks Ray Data would cut every
    # block a task yields into pieces of a row or two, and pay its per-block cost on each
    dataset = ray.data.read_datasource(stream, num_cpus=cpus_per_task, override_num_blocks=stream.num_tasks)
    # Ray Data joins what a read task yields into blocks of up to 128 MB: tasks grow with the pool
    # (their number is capped), and so would the blocks every read and training worker holds
    dataset.context.target_max_block_size = ROWS_PER_BLOCK * row_bytes
    return dataset


@ray.remote
def _import_read_side(source_and_transform: tuple) -> int:
    """Receiving an image source and a transform imports what a read task needs; returns the pid."""
    return os.getpid()


def warm_read_workers(
    source: ImageSource, transform, cpus_per_task: float, reserved_cpus: float
) -> list[ray.ObjectRef]:
    """Start the worker processes Ray Data's read tasks will run in, while Ray Train starts its workers.

    A read task's first run in a fresh process imports torch, torchvision and lightly and unpickles
    the transform: about 5 s of CPU each, which the stream's first batch otherwise waits for. Ray
    hands a task an idle worker process of the same runtime env, and Ray Data's tasks have the env
    Ray Train gives its controller: tasks of that env started now are ready when the stream starts.
    One per slot the training workers leave free (``reserved_cpus``), at most 8. Nobody needs to
    wait for them (Ray runs a task whose result is never read); the refs give the workers' pids.
    """
    free = ray.available_resources().get("CPU", 0.0) - reserved_cpus
    args, env = ray.put((source, transform)), _train_controller_env()
    warm = _import_read_side.options(num_cpus=cpus_per_task, runtime_env=env)
    return [warm.remote(args) for _ in range(max(0, min(int(free // cpus_per_task), 8)))]


def _train_controller_env() -> dict:
    """The runtime env Ray Train (2.60) starts its controller with (``TorchTrainer.fit``); without
    that function (another Ray), warming still runs and merely is not reused."""
    try:
        from ray.train.v2._internal.constants import get_env_vars_to_propagate
    except ImportError:
        return {}
    env = get_env_vars_to_propagate()
    env.setdefault("RAY_WARN_BLOCKING_GET_INSIDE_ASYNC", "0")
    return {"env_vars": env}


def steps_per_epoch(n: int, world: int, batch_size: int, epochs: int) -> list[int]:
    """The steps of each epoch on every rank: one stream of ``epochs`` epochs gives each rank
    ``epochs * n // world`` rows (``streaming_split(equal=True)`` leaves out a remainder of fewer
    than ``world`` rows), in full batches spread evenly over the epochs. So the only images left
    out of a run are that remainder and each rank's last incomplete batch."""
    total = epochs * n // world // batch_size
    return [(k + 1) * total // epochs - k * total // epochs for k in range(epochs)]


class ShardBatches:
    """The iterable Lightning trains on: this rank's shard, ``steps[k]`` batches in training epoch
    ``first_epoch + k`` (a resumed run starts at a later epoch; set :attr:`epoch` to it).

    One iterator over the shard lives across epochs, so the next epoch's views are already on
    their way while this one ends. Yields the list of view
    batches a method's ``loss`` takes. Rows that failed to decode are counted in ``bad`` (with the
    first few items in ``bad_items``) and replaced by readable rows of their batch.
    """

    def __init__(self, shard, batch_size: int, steps: list[int], first_epoch: int = 0) -> None:
        self.shard, self.batch_size, self.steps, self.first_epoch = shard, batch_size, steps, first_epoch
        self.epoch = first_epoch  # the training epoch the next iteration is
        self.seen: list[np.ndarray] = []  # (epoch, row) pairs of the current epoch, for audits and tests
        self.images = 0  # rows of the current epoch, readable or not
        self.planned = 0
        self.bad, self.bad_items = 0, []
        self._batches: Iterator[dict[str, np.ndarray]] | None = None

    def __len__(self) -> int:
        return max(self.steps)

    def _stream(self) -> Iterator[dict[str, np.ndarray]]:
        return iter(
            self.shard.iter_batches(
                batch_size=self.batch_size, drop_last=True, batch_format="numpy", prefetch_batches=4
            )
        )

    def _next(self) -> dict[str, np.ndarray] | None:
        if self._batches is None:
            self._batches = self._stream()
        return next(self._batches, None)

    def close(self) -> None:
        """Stop what reads ahead (a local rank's read threads) once training is done with the shard."""
        if hasattr(self._batches, "close"):
            self._batches.close()

    def __iter__(self) -> Iterator[list[torch.Tensor]]:
        self.seen, self.images = [], 0
        steps = self.steps[min(self.epoch - self.first_epoch, len(self.steps) - 1)]
        self.planned = steps * self.batch_size  # rows of this epoch, for progress lines
        self.epoch += 1
        for _ in range(steps):
            batch = self._next()
            if batch is None:  # ranks would then disagree on their steps: DDP would wait forever
                raise RuntimeError(f"the pretraining stream ended before epoch {self.epoch}'s {steps} steps")
            ok = batch["ok"]
            self.seen.append(np.stack([batch["epoch"][ok], batch["row"][ok]], axis=1))
            if not ok.all():
                self.bad += int((~ok).sum())
                self.bad_items += [str(i) for i in batch["item"][~ok]][: max(0, 5 - len(self.bad_items))]
            # readable rows stand in for unreadable ones: every rank's batch keeps its size, which
            # the losses that gather embeddings across workers need
            fill = np.resize(np.flatnonzero(ok), len(ok)) if ok.any() else np.arange(len(ok))
            views = sorted(k for k in batch if k.startswith("view"))
            self.images += len(ok)
            yield [torch.from_numpy(batch[k][fill]) for k in views]


class CachedSource:
    """An :class:`ImageSource` that keeps what it decoded: for pools small enough to hold."""

    def __init__(self, source: ImageSource) -> None:
        self.source, self.image_size, self.channels = source, source.image_size, source.channels
        self.decoded: dict[str, np.ndarray | None] = {}

    def read(self, item: str) -> np.ndarray | None:
        if item not in self.decoded:
            self.decoded[item] = self.source.read(item)
        return self.decoded[item]


class BatchImages:
    """One batch's decoded images, as the image source :func:`make_views` reads them from."""

    def __init__(self, source: ImageSource, items: np.ndarray, arrays: list[np.ndarray | None]) -> None:
        self.image_size, self.channels = source.image_size, source.channels
        self.decoded = dict(zip(items, arrays, strict=True))

    def read(self, item: str) -> np.ndarray | None:
        return self.decoded[item]


class LocalBatches(ShardBatches):
    """This rank decodes and augments its own shard in the training process.

    The same epochs as :class:`ViewStream` (a permutation per (seed, epoch), each image's draws
    from (seed, epoch, row)); rank ``r`` of ``w`` takes every ``w``-th position of the run's
    sequence of permutations, starting at ``r``, so each image goes to exactly one rank per epoch
    without a split coordinator, and every rank has the steps of :func:`steps_per_epoch`. A run
    resumed after ``first_epoch`` epochs skips the rows of those epochs' steps without decoding
    them, so it trains on what an uninterrupted run would have. With ``keep`` what it decodes is
    kept (the rank sees the whole pool over a few epochs: for pools whose decoded copy fits in
    memory); without, every batch's files are read again by a few threads, the next batch's while
    this one trains, and the rank's memory does not depend on the pool. On CPU workers this is the
    cheapest input: a Ray Data execution and its coordinating actors cost CPU the augmentations
    would otherwise have.
    """

    def __init__(
        self,
        items: list[str],
        source: ImageSource,
        transform,
        seed: int,
        rank: int,
        world: int,
        batch_size: int,
        epochs: int,
        first_epoch: int = 0,
        keep: bool = True,
    ) -> None:
        self.items, self.transform, self.keep = np.array(items, dtype=object), transform, keep
        self.source = CachedSource(source) if keep else source
        self.seed, self.rank, self.world = seed, rank, world
        super().__init__(None, batch_size, steps_per_epoch(len(items), world, batch_size, epochs))
        self.epoch = first_epoch
        self.skip = sum(self.steps[:first_epoch])  # batches of the epochs a resumed run has trained

    def _parts(self) -> Iterator[dict[str, np.ndarray]]:
        """This rank's batches of (epoch, row, item), before decoding."""
        n, skip = len(self.items), self.skip
        pending = {"epoch": np.zeros(0, np.int64), "row": np.zeros(0, np.int64)}
        for epoch in itertools.count():
            # the run is one sequence of permutations; this rank takes every world-th position of it
            rows = np.random.default_rng([self.seed, epoch]).permutation(n)[
                (self.rank - epoch * n) % self.world :: self.world
            ]
            pending = {
                "epoch": np.concatenate([pending["epoch"], np.full(len(rows), epoch)]),
                "row": np.concatenate([pending["row"], rows]),
            }
            while len(pending["row"]) >= self.batch_size:
                part = {k: v[: self.batch_size] for k, v in pending.items()}
                pending = {k: v[self.batch_size :] for k, v in pending.items()}
                if skip:
                    skip -= 1
                    continue
                part["item"] = self.items[part["row"]]
                yield part

    def _stream(self) -> Iterator[dict[str, np.ndarray]]:
        if self.keep:
            return (make_views(part, self.source, self.transform, self.seed) for part in self._parts())
        return self._read_ahead()

    def _read_ahead(self) -> Iterator[dict[str, np.ndarray]]:
        """Every batch's files are read by a few threads (PIL releases the GIL while it decodes), the
        next batch's while this one is augmented and trains: a folder outside the page cache, a
        shared filesystem or an object store is bound by the latency of each read."""
        threads = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="labelcurve-read")
        try:
            parts = self._parts()
            part = next(parts)
            reads = [threads.submit(self.source.read, item) for item in part["item"]]
            for following in parts:
                ahead = [threads.submit(self.source.read, item) for item in following["item"]]
                images = BatchImages(self.source, part["item"], [read.result() for read in reads])
                yield make_views(part, images, self.transform, self.seed)
                part, reads = following, ahead
        finally:  # without waiting: the generator may be collected on any thread, a reader's too
            threads.shutdown(wait=False, cancel_futures=True)
