"""The pretraining stream: every image exactly once per epoch across 2 Ray Train workers, with a
new order and new augmentations every epoch, reproducible from the seed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import ray
import ray.train
from ray.data import DataContext
from ray.train import ScalingConfig
from ray.train.torch import TorchTrainer

from cluster.config import DataConfig, PretrainConfig
from pretrain.data import load_data, plan_data
from pretrain.methods import METHODS
from pretrain.stream import ShardBatches, make_views, pretraining_dataset, rows_per_rank
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
    batches = ShardBatches(ray.train.get_dataset_shard("train"), BATCH, rows_per_rank(config["n"], world) // BATCH)
    epochs = []
    for _ in range(EPOCHS):
        views = [v[0].sum(dim=(1, 2, 3)) for v in batches]  # one number per image of view 0
        rows = np.concatenate(batches.rows).tolist()
        epochs.append({"rows": rows, "views": dict(zip(map(str, rows), np.concatenate(views).tolist(), strict=True))})
    Path(config["out"], f"rank{rank}.json").write_text(json.dumps(epochs))


@pytest.mark.slow
def test_two_workers_see_every_image_exactly_once_per_epoch(digits, tmp_path):
    data, transform = digits
    n = len(data.pretraining_items)
    here = {"env_vars": {"PYTHONPATH": str(Path(__file__).parent)}}  # the workers import this module
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=here)
    try:
        trainer = TorchTrainer(
            _record_rows,
            train_loop_config={"n": n, "out": str(tmp_path)},
            datasets={"train": pretraining_dataset(data.pretraining_items, data.source, transform, seed=0)},
            scaling_config=ScalingConfig(num_workers=WORKERS, resources_per_worker={"CPU": 0.5}),
            run_config=ray.train.RunConfig(storage_path=str(tmp_path), name="shards"),
        )
        assert trainer.fit().error is None
    finally:
        ray.shutdown()
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORKERS)]
    steps = rows_per_rank(n, WORKERS) // BATCH
    dropped = n - WORKERS * steps * BATCH  # the remainder of the split and each rank's last incomplete batch
    assert 0 <= dropped < WORKERS * (BATCH + 1)
    orders = []
    for epoch in range(EPOCHS):
        rows = [set(ranks[r][epoch]["rows"]) for r in range(WORKERS)]
        assert [len(ranks[r][epoch]["rows"]) for r in range(WORKERS)] == [steps * BATCH] * WORKERS
        assert not rows[0] & rows[1]  # no image on both ranks
        assert len(rows[0] | rows[1]) == n - dropped and rows[0] | rows[1] <= set(range(n))
        orders.append(ranks[0][epoch]["rows"])
    assert orders[0] != orders[1] != orders[2]  # a new file order every epoch
    common = set(ranks[0][0]["views"]) & set(ranks[0][1]["views"])
    assert common and all(ranks[0][0]["views"][k] != ranks[0][1]["views"][k] for k in common)  # new augmentations


def test_views_are_seeded_by_seed_epoch_and_row(digits):
    data, transform = digits
    batch = {"row": np.arange(4), "item": np.array(data.pretraining_items[:4], dtype=object)}
    context = DataContext.get_current()
    context._execution_idx = 0
    first = make_views(batch, data.source, transform, seed=0)
    again = make_views(batch, data.source, transform, seed=0)
    context._execution_idx = 1
    next_epoch = make_views(batch, data.source, transform, seed=0)
    context._execution_idx = 0
    assert first["ok"].all() and set(first) >= {"view0", "view1"}
    assert np.array_equal(first["view0"], again["view0"])  # reproducible
    assert not np.array_equal(first["view0"], next_epoch["view0"])  # fresh draws every epoch
    assert not np.array_equal(first["view0"][0], first["view1"][0])  # two different views


def test_unreadable_rows_are_flagged_not_fatal(digits, tmp_path):
    data, transform = digits
    (tmp_path / "broken.jpg").write_bytes(b"nope")
    batch = {"row": np.arange(2), "item": np.array([data.pretraining_items[0], str(tmp_path / "broken.jpg")], object)}
    out = make_views(batch, data.source, transform, seed=0)
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
