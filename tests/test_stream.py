"""The pretraining stream: every image exactly once per epoch across 2 Ray Train workers, with a
new order and new augmentations every epoch, reproducible from the seed."""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import ray
import ray.train
import torch
from ray.train import ScalingConfig
from ray.train.torch import TorchTrainer

from cluster.config import DataConfig, PretrainConfig
from pretrain.data import load_data, plan_data
from pretrain.methods import METHODS
from pretrain.stream import (
    LocalBatches,
    ShardBatches,
    make_views,
    pretraining_dataset,
    steps_per_epoch,
    warm_read_workers,
)
from pretrain.views import ViewSettings

BATCH, EPOCHS, WORKERS = 32, 3, 2


@pytest.fixture(scope="module")
def digits():
    data = load_data(plan_data(DataConfig(classes=["0", "1", "2"])))
    p = PretrainConfig()
    transform = METHODS["simclr"].transform(ViewSettings.from_config(p, data.image_size, data.mean, data.std))
    return data, transform


def _record_rows(config: dict) -> None:
    """A Train worker that consumes its shard like pretraining does and writes down what it saw."""
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    batches = ShardBatches(
        ray.train.get_dataset_shard("train"), BATCH, steps_per_epoch(config["n"], world, BATCH, EPOCHS)
    )
    epochs = []
    for _ in range(EPOCHS):
        views = [v[0].sum(dim=(1, 2, 3)) for v in batches]  # one number per image of view 0
        seen = np.concatenate(batches.seen).tolist()  # (data epoch, row) pairs
        keys = [f"{e}:{r}" for e, r in seen]
        epochs.append({"seen": seen, "views": dict(zip(keys, np.concatenate(views).tolist(), strict=True))})
    Path(config["out"], f"rank{rank}.json").write_text(json.dumps(epochs))


@pytest.mark.slow
def test_two_workers_see_every_image_exactly_once_per_epoch(digits, tmp_path):
    data, transform = digits
    n = len(data.pretraining_items)
    here = {"env_vars": {"PYTHONPATH": str(Path(__file__).parent)}}  # the workers import this module
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=here)
    try:
        stream = pretraining_dataset(data.pretraining_items, data.source, transform, seed=0, epochs=EPOCHS)
        trainer = TorchTrainer(
            _record_rows,
            train_loop_config={"n": n, "out": str(tmp_path)},
            datasets={"train": stream},
            scaling_config=ScalingConfig(num_workers=WORKERS, resources_per_worker={"CPU": 0.5}),
            run_config=ray.train.RunConfig(storage_path=str(tmp_path), name="shards"),
        )
        assert trainer.fit().error is None
    finally:
        ray.shutdown()
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORKERS)]
    _assert_each_image_once_per_epoch(
        [[e["seen"] for e in rank] for rank in ranks], n, steps_per_epoch(n, WORKERS, BATCH, EPOCHS)
    )
    views = {key: value for rank in ranks for epoch in rank for key, value in epoch["views"].items()}
    common = [r for r in range(n) if f"0:{r}" in views and f"1:{r}" in views]
    assert common and all(views[f"0:{r}"] != views[f"1:{r}"] for r in common)  # new augmentations


def _record_read_pids(config: dict) -> None:
    pids = [int(p) for batch in ray.train.get_dataset_shard("train").iter_batches() for p in batch["pid"]]
    Path(config["out"], f"pids{ray.train.get_context().get_world_rank()}.json").write_text(json.dumps(pids))


def _pid_of_reader(batch: dict) -> dict:
    import os

    return {"pid": np.full(len(batch["id"]), os.getpid())}


@pytest.mark.slow
def test_ray_data_tasks_under_ray_train_run_in_the_warmed_workers(digits, tmp_path):
    """warm_read_workers pays the read side's imports while Ray Train starts: that only helps if Ray
    Data's tasks, launched from Ray Train's controller, are handed those very processes."""
    data, transform = digits
    here = {"env_vars": {"PYTHONPATH": str(Path(__file__).parent)}}  # the workers import this module
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=here)
    try:
        warmed = set(ray.get(warm_read_workers(data.source, transform, cpus_per_task=0.5, reserved_cpus=1.0)))
        assert len(warmed) == 2  # the two half-CPU slots the two training workers leave
        readers = ray.data.range(64, override_num_blocks=8).map_batches(_pid_of_reader, num_cpus=0.5)
        TorchTrainer(
            _record_read_pids,
            train_loop_config={"out": str(tmp_path)},
            datasets={"train": readers},
            scaling_config=ScalingConfig(num_workers=WORKERS, resources_per_worker={"CPU": 0.5}),
            run_config=ray.train.RunConfig(storage_path=str(tmp_path), name="warm"),
        ).fit()
    finally:
        ray.shutdown()
    pids = {p for r in range(WORKERS) for p in json.loads((tmp_path / f"pids{r}.json").read_text())}
    assert pids and pids <= warmed


def _assert_each_image_once_per_epoch(ranks: list[list[list]], n: int, steps: list[int]) -> None:
    """``ranks[r][k]``: the (data epoch, row) pairs rank ``r`` trained on in training epoch ``k``."""
    for rank in ranks:  # every rank takes the planned steps of every epoch: DDP never waits forever
        assert [len(seen) for seen in rank] == [s * BATCH for s in steps]
    dropped = 0
    for epoch in range(EPOCHS):
        parts = [[r for seen in rank for d, r in seen if d == epoch] for rank in ranks]
        rows = [set(part) for part in parts]
        assert sum(map(len, rows)) == sum(map(len, parts))  # no image twice on one rank
        assert not rows[0] & rows[1]  # no image on both ranks
        assert rows[0] | rows[1] <= set(range(n))
        dropped += n - len(rows[0] | rows[1])
    # left out of the whole run: the split's remainder and each rank's last incomplete batch
    assert 0 <= dropped < WORKERS * (BATCH + 1)
    orders = [[r for seen in ranks[0] for d, r in seen if d == e] for e in range(EPOCHS)]
    assert orders[0] != orders[1] != orders[2]  # a new file order every epoch


@pytest.mark.parametrize("keep", [True, False])
def test_local_shards_see_every_image_exactly_once_per_epoch(digits, keep):
    data, transform = digits
    items = data.pretraining_items
    ranks = []
    for rank in range(WORKERS):
        batches = LocalBatches(items, data.source, transform, 0, rank, WORKERS, BATCH, EPOCHS, keep=keep)
        epochs = []
        for _ in range(EPOCHS):
            views = [v for v in batches]
            assert all(len(v) == 2 and v[0].shape[0] == BATCH for v in views)
            epochs.append(np.concatenate(batches.seen).tolist())
        ranks.append(epochs)
    steps = steps_per_epoch(len(items) // WORKERS * WORKERS, WORKERS, BATCH, EPOCHS)
    _assert_each_image_once_per_epoch(ranks, len(items), steps)
    first, again = (LocalBatches(items, data.source, transform, 0, 0, WORKERS, BATCH, EPOCHS) for _ in range(2))
    assert np.array_equal(next(iter(first))[0], next(iter(again))[0])  # reproducible from the seed


@pytest.mark.parametrize("keep", [True, False])
def test_a_resumed_local_shard_trains_on_what_an_uninterrupted_run_would(digits, keep):
    data, transform = digits
    items = data.pretraining_items
    whole = LocalBatches(items, data.source, transform, 0, 1, WORKERS, BATCH, EPOCHS, keep=keep)
    uninterrupted = []
    for _ in range(EPOCHS):
        views = [v[0] for v in whole]
        uninterrupted.append((np.concatenate(whole.seen), torch.cat(views)))
    resumed = LocalBatches(items, data.source, transform, 0, 1, WORKERS, BATCH, EPOCHS, first_epoch=1, keep=keep)
    for epoch in range(1, EPOCHS):
        views = [v[0] for v in resumed]
        assert np.array_equal(np.concatenate(resumed.seen), uninterrupted[epoch][0])  # same rows, same order
        assert torch.equal(torch.cat(views), uninterrupted[epoch][1])  # same draws
    assert resumed.epoch == EPOCHS


@pytest.mark.slow
def test_a_resumed_stream_holds_the_remaining_epochs_with_their_own_orders_and_draws(digits, tmp_path):
    from pretrain.train import epochs_checkpointed

    data, transform = digits
    items, n = data.pretraining_items, len(data.pretraining_items)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        stream = pretraining_dataset(items, data.source, transform, seed=0, epochs=EPOCHS, first_epoch=1)
        rows = list(stream.iter_rows())
        assert epochs_checkpointed(str(tmp_path), "never-ran") == 0

        def two_epochs(config: dict) -> None:
            with tempfile.TemporaryDirectory() as folder:
                for epoch in (1, 2):
                    ray.train.report({"epoch": epoch}, checkpoint=ray.train.Checkpoint.from_directory(folder))

        run = ray.train.RunConfig(storage_path=str(tmp_path), name="ran")
        TorchTrainer(two_epochs, scaling_config=ScalingConfig(num_workers=1), run_config=run).fit()
        assert epochs_checkpointed(str(tmp_path), "ran") == 2
    finally:
        ray.shutdown()
    by_epoch = {e: sorted(r["row"] for r in rows if r["epoch"] == e) for e in range(EPOCHS)}
    assert by_epoch == {0: [], 1: list(range(n)), 2: list(range(n))}  # the remaining epochs, every image once
    picked = [r for r in rows if r["epoch"] == 2][:4]
    again = make_views(
        {
            "epoch": np.full(4, 2),
            "row": np.array([r["row"] for r in picked]),
            "item": np.array([items[r["row"]] for r in picked], dtype=object),
        },
        data.source,
        transform,
        seed=0,
    )
    assert all(np.array_equal(r["view0"], v) for r, v in zip(picked, again["view0"], strict=True))


def test_blocks_keep_their_size_when_a_pool_outgrows_the_read_tasks(digits, monkeypatch):
    """The number of read tasks is capped, so a larger pool means larger tasks; what a task yields
    must still reach the workers in blocks of about ROWS_PER_BLOCK images, not one block per task."""
    import pretrain.view_source as view_source

    data, transform = digits
    monkeypatch.setattr(view_source, "MAX_TASKS_PER_EPOCH", 1)  # one task holds the whole pool
    items = data.pretraining_items * 2  # a pool of three blocks or so
    n = len(items)
    assert n > 2 * view_source.ROWS_PER_BLOCK
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        stream = pretraining_dataset(items, data.source, transform, seed=0, epochs=1)
        blocks = [len(block["row"]) for block in stream.iter_batches(batch_size=None)]
    finally:
        ray.shutdown()
    assert sum(blocks) == n and len(blocks) >= n // (2 * view_source.ROWS_PER_BLOCK)
    assert max(blocks) <= view_source.ROWS_PER_BLOCK + view_source.VIEW_BATCH  # one yield past the target


class CountingSource:
    """An image source that counts its decodes (per item) and how many run at once."""

    def __init__(self, source) -> None:
        self.source, self.image_size, self.channels = source, source.image_size, source.channels
        self.reads: Counter[str] = Counter()
        self.running = self.most_at_once = 0
        self.lock = threading.Lock()

    def read(self, item: str):
        with self.lock:
            self.reads[item] += 1
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        time.sleep(0.002)  # a file on a shared filesystem: the read waits, the CPU does not
        try:
            return self.source.read(item)
        finally:
            with self.lock:
                self.running -= 1


def test_a_local_shard_that_keeps_nothing_rereads_its_files_every_epoch_with_the_same_draws(digits):
    """A pool too large to keep is read again every epoch (the rank's memory does not grow with
    the pool), a batch's files by several threads at once, and training sees the very views a
    rank that keeps its images would."""
    data, transform = digits
    items = data.pretraining_items[:300]
    kept, reread = CountingSource(data.source), CountingSource(data.source)
    keeping = LocalBatches(items, kept, transform, 0, 0, WORKERS, BATCH, EPOCHS, keep=True)
    rereading = LocalBatches(items, reread, transform, 0, 0, WORKERS, BATCH, EPOCHS, keep=False)
    for _ in range(EPOCHS):
        same = [torch.equal(a, b) for x, y in zip(keeping, rereading, strict=True) for a, b in zip(x, y, strict=True)]
        assert same and all(same)
        assert np.array_equal(np.concatenate(keeping.seen), np.concatenate(rereading.seen))
    assert max(kept.reads.values()) == 1  # decoded once, then kept
    assert sum(reread.reads.values()) >= EPOCHS * len(items) // WORKERS - 2 * BATCH  # every epoch again
    assert max(reread.reads.values()) >= EPOCHS - 1
    assert reread.most_at_once > 1 and kept.most_at_once == 1  # the batch's reads overlap


def _wait_for(condition, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_a_rereading_local_shard_reads_the_next_batch_while_this_one_trains_and_stops_its_threads(digits):
    data, transform = digits
    earlier = set(threading.enumerate())  # other tests' shards stop theirs when they are collected
    source = CountingSource(data.source)
    batches = LocalBatches(data.pretraining_items[:300], source, transform, 0, 0, WORKERS, BATCH, EPOCHS, keep=False)
    first = iter(batches)
    next(first)  # the first batch is in training: the second one's files are being read
    assert _wait_for(lambda: sum(source.reads.values()) == 2 * BATCH)
    readers = lambda: [t for t in set(threading.enumerate()) - earlier if t.name.startswith("labelcurve-read")]  # noqa: E731
    assert readers()
    batches.close()  # training is done with the shard
    assert _wait_for(lambda: not readers())
    assert sum(source.reads.values()) == 2 * BATCH  # nothing read after


def test_local_ranks_share_an_odd_pool_evenly_over_a_long_run(digits):
    data, _ = digits
    items = data.pretraining_items[:7]  # 7 images on 2 ranks: one rank would get 3 per epoch

    def one_view(image):
        return [torch.zeros(1, 2, 2)]

    for rank in range(2):
        batches = LocalBatches(items, data.source, one_view, 0, rank, 2, 2, 40)
        steps, last = 0, 0
        for _ in range(40):
            steps += len(list(batches))
            last = max(last, int(np.concatenate(batches.seen)[:, 0].max()))
        assert steps == 40 * 7 // 2 // 2
        assert last == 39  # both ranks end in the run's last data epoch: neither runs ahead


def _rows(items: list[str], epoch: int) -> dict[str, np.ndarray]:
    return {"epoch": np.full(len(items), epoch), "row": np.arange(len(items)), "item": np.array(items, dtype=object)}


def test_views_are_seeded_by_seed_epoch_and_row(digits):
    data, transform = digits
    items = data.pretraining_items[:4]
    first = make_views(_rows(items, 0), data.source, transform, seed=0)
    again = make_views(_rows(items, 0), data.source, transform, seed=0)
    next_epoch = make_views(_rows(items, 1), data.source, transform, seed=0)
    assert first["ok"].all() and set(first) >= {"view0", "view1"}
    assert np.array_equal(first["view0"], again["view0"])  # reproducible
    assert not np.array_equal(first["view0"], next_epoch["view0"])  # fresh draws every epoch
    assert not np.array_equal(first["view0"][0], first["view1"][0])  # two different views


def test_steps_cover_the_stream_in_full_batches():
    steps = steps_per_epoch(n=1000, world=2, batch_size=32, epochs=3)
    assert steps == [15, 15, 16] and sum(steps) * 32 * 2 > 3 * 1000 - 2 * 33
    assert steps_per_epoch(n=100, world=3, batch_size=32, epochs=1) == [1]


def test_unreadable_rows_are_flagged_not_fatal(digits, tmp_path):
    data, transform = digits
    (tmp_path / "broken.jpg").write_bytes(b"nope")
    out = make_views(_rows([data.pretraining_items[0], str(tmp_path / "broken.jpg")], 0), data.source, transform, 0)
    assert out["ok"].tolist() == [True, False]
    assert out["view0"].shape[0] == 2 and not out["view0"][1].any()


def test_workers_the_cluster_cannot_hold_are_refused_before_training():
    from pretrain.errors import ResourceError
    from pretrain.train import check_resources

    settings = PretrainConfig(num_workers=1000).model_dump()
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    try:
        with pytest.raises(ResourceError, match=r"asks for 500 CPU \(1000 workers x 0.5\) and the Ray cluster has 2"):
            check_resources(settings)
        with pytest.raises(ResourceError, match=r"set pretrain\.use_gpu=false or add GPU nodes"):
            check_resources({**settings, "num_workers": 2, "use_gpu": True})
        check_resources({**settings, "num_workers": 2})
    finally:
        ray.shutdown()
