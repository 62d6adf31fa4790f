"""Both pretraining inputs through the real worker loop: small pools read locally, large ones
streamed, and too many files that fail mid-epoch stop the run with their names."""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace

import pytest
import ray

from cluster.config import DataConfig, PretrainConfig
from pretrain.data import load_data, plan_data
from pretrain.train import (
    LOCAL_MAX_IMAGES,
    PROGRESS_EVERY_S,
    TooManyBadImages,
    _EpochReport,
    effective_batch_size,
    input_mode,
    keeps_decoded,
    pace,
    pretrain,
    scaled_lr,
    spare_cpus,
)
from tests.conftest import write_image_folder


def test_a_long_epoch_prints_a_progress_line_a_minute_on_rank_0(caplog):
    batches = SimpleNamespace(images=640, planned=1280)  # this rank: half of its epoch done
    report = _EpochReport(1, None, None, batches, 0.01)
    report.started, report.last_line = time.perf_counter() - 128, time.perf_counter() - PROGRESS_EVERY_S - 1
    trainer = SimpleNamespace(global_rank=0, world_size=2, current_epoch=0, max_epochs=3)
    with caplog.at_level(logging.INFO, logger="labelcurve.pretrain"):
        report.on_train_batch_end(trainer, None, None, None, 0)
        report.on_train_batch_end(trainer, None, None, None, 1)  # a moment later: no second line
        report.last_line -= PROGRESS_EVERY_S
        report.on_train_batch_end(SimpleNamespace(**{**vars(trainer), "global_rank": 1}), None, None, None, 2)
    assert [r.getMessage() for r in caplog.records] == ["pretrain epoch 1/3  1280/2560 images (50%)  10 img/s"]


def test_auto_makes_views_where_the_cpus_are():
    settings = PretrainConfig().model_dump()  # 2 CPU workers
    small, large = 3 * 32 * 32, 3 * 224 * 224
    # workers that take the cluster's CPUs make their own views, whatever the pool
    assert input_mode(settings, LOCAL_MAX_IMAGES, small, spare_cpus=0) == "local"
    assert input_mode(settings, 10**6, large, spare_cpus=1) == "local"
    # spare CPUs, one per worker or more, decode and augment a large pool in Ray Data tasks
    assert input_mode(settings, LOCAL_MAX_IMAGES + 1, small, spare_cpus=2) == "stream"
    assert input_mode(settings, 10_000, large, spare_cpus=2) == "stream"  # 1.5 GB decoded: not small
    assert input_mode(settings, LOCAL_MAX_IMAGES, small, spare_cpus=30) == "local"  # the stream's start costs more
    assert input_mode({**settings, "use_gpu": True}, 100, small) == "stream"  # GPUs wait for no one
    assert input_mode({**settings, "input": "stream"}, 10) == "stream"
    assert input_mode({**settings, "input": "local"}, 10**6) == "local"


def test_spare_cpus_are_what_the_training_workers_leave():
    settings = PretrainConfig(num_workers=2).model_dump()
    assert spare_cpus(settings, 8) == 6  # a local CPU worker takes one CPU
    assert spare_cpus({**settings, "resources_per_worker": {"CPU": 4}}, 8) == 0  # they take them all
    assert input_mode(settings, 10**6, 3 * 32 * 32, spare_cpus(settings, 2)) == "local"  # this 2-core machine


def test_a_local_worker_keeps_only_a_pool_whose_decoded_copy_fits():
    assert keeps_decoded(LOCAL_MAX_IMAGES, 3 * 32 * 32)
    assert not keeps_decoded(LOCAL_MAX_IMAGES + 1, 3 * 32 * 32)  # read again every epoch: memory has a bound
    assert not keeps_decoded(10_000, 3 * 224 * 224)  # 1.5 GB decoded > LOCAL_MAX_BYTES


def test_learning_rate_follows_the_global_batch_that_training_sees():
    assert scaled_lr(0.004, 32, 2) == pytest.approx(0.001)  # 64 images per step: a quarter of 256
    batch = effective_batch_size(128, 2, 100)  # 100 images cannot fill 2 x 128: 50 per worker
    assert batch == 50
    assert scaled_lr(0.004, batch, 2) == pytest.approx(0.004 * 100 / 256)


def test_the_first_epoch_says_how_long_the_run_will_take():
    assert pace(90, 2000) == "pretrain: epoch 1 took 90 s; 2000 epochs at this pace take about 2.1 d"
    assert pace(12, 60) == "pretrain: epoch 1 took 12 s; 60 epochs at this pace take about 12.0 min"
    assert pace(0.5, 10).endswith("take about 5.0 s")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["local", "local-rereading", "stream"])
def test_files_that_break_after_listing_stop_pretraining_with_their_names(mode, tmp_path, monkeypatch, caplog):
    if mode == "local-rereading":  # a pool too large to keep: every epoch reads the files again
        monkeypatch.setattr("pretrain.train.LOCAL_MAX_BYTES", 0)
    write_image_folder(tmp_path / "labeled", {"a": 40, "b": 40})
    write_image_folder(tmp_path / "extra", {"x": 80}, seed=1)
    data = load_data(
        plan_data(DataConfig(name="folder", path=str(tmp_path / "labeled"), unlabeled_path=str(tmp_path / "extra")))
    )
    broken = sorted((tmp_path / "extra" / "x").iterdir())[:10]  # 10 of 136 pretraining images
    for path in broken:
        path.write_bytes(b"no longer an image")
    settings = PretrainConfig(
        epochs=3,
        batch_size=16,
        warmup_epochs=0,
        online_knn=0,
        input=mode.split("-")[0],
        storage_path=str(tmp_path / "runs"),
    ).model_dump()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with (
            pytest.raises(TooManyBadImages, match=r"pretraining images failed to decode") as error,
            caplog.at_level(logging.INFO, logger="labelcurve.pretrain"),
        ):
            pretrain(settings, data, name=f"bad-{mode}", max_bad_fraction=0.01)
        assert any(str(path) in str(error.value) for path in broken)
        result = pretrain(settings, data, name=f"tolerant-{mode}", max_bad_fraction=0.5)
    finally:
        ray.shutdown()
    assert 3 <= result.bad_images <= 30 and len(result.losses) == 3  # skipped, counted, trained on the rest
    said = {"local": "keeping the decoded pool", "local-rereading": "reading the files again every epoch"}
    assert f"pretraining: views made {'in Ray Data tasks' if mode == 'stream' else 'by each worker'}" in caplog.text
    assert said.get(mode, "streamed to the workers") in caplog.text
