"""A fine-tuning run reads its labeled subset a batch at a time, so a task's memory does not grow
with the subset (one task runs per CPU), and it trains on the batches it drew when it held the
whole subset as one tensor."""

from __future__ import annotations

import pytest
import torch

from cluster.config import DataConfig, FinetuneConfig
from finetune.heads import fine_tune, predict
from finetune.labeled import LabeledImages
from finetune.sweep import RunSpec, SweepInputs, make_start, run_one
from pretrain.backbones import build_backbone
from pretrain.data import load_data, plan_data
from pretrain.images import ImageSource
from pretrain.manifest import POOL, TEST
from pretrain.views import normalize
from tests.conftest import write_image_folder

BATCH = 16


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = write_image_folder(tmp_path_factory.mktemp("pool"), {"a": 150, "b": 150, "c": 100}, size=12)
    return load_data(plan_data(DataConfig(name="folder", path=str(root), image_size=12)))


@pytest.fixture
def reads(monkeypatch) -> list[list[str]]:
    """Every call of the pretraining reader, with the items it decoded."""
    calls: list[list[str]] = []
    read_many = ImageSource.read_many

    def recorded(source, items):
        calls.append(list(items))
        return read_many(source, items)

    monkeypatch.setattr(ImageSource, "read_many", recorded)
    return calls


def _inputs(data) -> SweepInputs:
    return SweepInputs.of(data, {"scratch": make_start(data, "small_cnn", {}, None, data.mean, data.std)})


def _settings(steps: int) -> dict:
    return {**FinetuneConfig().model_dump(), "steps": steps, "max_steps": steps, "batch_size": BATCH}


def test_a_run_on_the_whole_pool_decodes_one_batch_at_a_time(folder, reads):
    result = run_one(RunSpec("scratch", "all", 0), _inputs(folder), _settings(steps=6))
    pool = set(folder.items(POOL))
    assert result.n_labels == len(pool) == 280
    training = [call for call in reads if set(call) <= pool]
    assert len(training) == 6  # one read per step, of the batch drawn
    assert max(map(len, training)) <= BATCH  # never the subset: 280 images in one read before
    assert sum(map(len, reads)) - len(folder.items(TEST)) <= 6 * BATCH


@pytest.mark.parametrize("keep", [False, True])
def test_labeled_images_hold_one_batch_or_a_bounded_cache(folder, reads, keep):
    items = folder.items(POOL)
    images = LabeledImages(items, folder.source, folder.mean, folder.std, keep=keep)
    generator = torch.Generator().manual_seed(0)
    for _ in range(40):
        batch = images[torch.randint(len(images), (BATCH,), generator=generator)]
        assert batch.shape == (BATCH, 3, 12, 12) and batch.dtype == torch.float32
    assert max(map(len, reads)) <= BATCH
    decoded = [item for call in reads for item in call]
    if keep:  # each image decoded once, at most the subset kept
        assert len(decoded) == len(set(decoded)) == len(images.decoded) <= len(items)
    else:  # decoded again when drawn again, nothing kept
        assert len(decoded) > len(set(decoded)) and images.decoded == {}


def test_the_small_default_keeps_and_a_large_subset_does_not(folder, monkeypatch):
    items = folder.items(POOL)
    assert LabeledImages(items, folder.source, folder.mean, folder.std).keep  # 280 x 432 bytes
    monkeypatch.setattr("finetune.labeled.KEEP_MAX_BYTES", len(items) * 3 * 12 * 12 - 1)
    assert not LabeledImages(items, folder.source, folder.mean, folder.std).keep


@pytest.mark.parametrize("keep", [False, True])
def test_batches_are_those_of_the_whole_subset_in_one_tensor(folder, keep):
    items, labels = folder.items(POOL)[:100], torch.tensor(folder.labels(POOL)[:100])
    whole = normalize(folder.source.read_many(items)[0], folder.mean, folder.std)
    test = normalize(folder.source.read_many(folder.items(TEST))[0], folder.mean, folder.std)

    def trained(images):
        torch.manual_seed(0)
        backbone = build_backbone("small_cnn", 3, 12)
        model = fine_tune(backbone, 3, images, labels, steps=8, batch_size=BATCH, lr=3e-3, weight_decay=1e-4, seed=3)
        return model.state_dict(), predict(model, test)

    held, streamed = trained(whole), trained(LabeledImages(items, folder.source, folder.mean, folder.std, keep=keep))
    assert all(torch.equal(held[0][k], streamed[0][k]) for k in held[0])  # the same batches, bit for bit
    assert (held[1] == streamed[1]).all()


def test_an_image_gone_since_loading_stops_the_run_with_its_name(tmp_path):
    root = write_image_folder(tmp_path, {"a": 20, "b": 20}, size=12)
    few = DataConfig(name="folder", path=str(root), image_size=12, min_test_per_class=0)  # 6 test images a class
    data = load_data(plan_data(few))
    gone = data.items(POOL)[3]
    open(gone, "wb").close()  # truncated: it decoded when the data was loaded, not any more
    with pytest.raises(OSError, match=f"image {gone} can no longer be decoded: restore it and re-run"):
        run_one(RunSpec("scratch", "all", 0), _inputs(data), _settings(steps=30))
