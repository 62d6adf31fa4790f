"""The two heads of a labeled run learn from their labels, and every arm of a seed trains on the
same labeled subset, so that arms differ only in their starting point."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import finetune.sweep as sweep
from cluster.config import DataConfig, FinetuneConfig
from finetune.heads import fine_tune, linear_probe, predict
from finetune.sweep import RunSpec, SweepInputs, make_start, run_one
from pretrain.backbones import build_backbone, embed_items, embed_items_with
from pretrain.data import load_data, plan_data
from pretrain.images import ImageSource
from pretrain.manifest import POOL, TEST


@pytest.fixture(scope="module")
def digits():
    return load_data(plan_data(DataConfig(classes=["0", "1", "2", "3"])))


def test_linear_probe_learns_from_its_labels():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 8)) * 4
    y = rng.integers(0, 3, 300)
    x = centers[y] + rng.normal(size=(300, 8))
    predictions = linear_probe(x[:60], y[:60], x[60:])
    assert (predictions == y[60:]).mean() > 0.95
    shuffled = linear_probe(x[:60], rng.permutation(y[:60]), x[60:])
    assert (shuffled == y[60:]).mean() < 0.7  # the labels, not the features alone, make it right


def test_fine_tune_trains_every_layer_and_is_reproducible(digits):
    images, _ = digits.source.read_many(digits.items(POOL))
    images = (images.float() / 255 - digits.mean[0]) / digits.std[0]
    labels = torch.tensor(digits.labels(POOL))
    test, _ = digits.source.read_many(digits.items(TEST))
    test = (test.float() / 255 - digits.mean[0]) / digits.std[0]

    def trained(seed: int):
        torch.manual_seed(0)
        backbone = build_backbone("small_cnn", 1, digits.image_size)
        before = {k: v.clone() for k, v in backbone.state_dict().items()}
        model = fine_tune(
            backbone, 4, images[:40], labels[:40], steps=60, batch_size=32, lr=3e-3, weight_decay=1e-4, seed=seed
        )
        return model, before

    model, before = trained(seed=0)
    accuracy = (predict(model, test) == digits.labels(TEST)).mean()
    assert accuracy > 0.8, accuracy  # 10 labels per class, 4 classes: chance is 0.25
    after = model[0].state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before if k.endswith("weight"))  # no layer frozen
    again, _ = trained(seed=0)
    assert np.array_equal(predict(again, test), predict(model, test))


def test_every_arm_of_a_seed_trains_on_the_same_subset(digits, monkeypatch):
    torch.manual_seed(0)
    state = build_backbone("small_cnn", 1, digits.image_size).state_dict()

    def embed(backbone):
        return tuple(
            embed_items(backbone, digits.source, digits.items(s), digits.mean, digits.std) for s in (POOL, TEST)
        )

    starts = {
        "ssl": make_start(digits, "small_cnn", {}, state, digits.mean, digits.std, embed),
        "scratch": make_start(digits, "small_cnn", {}, None, digits.mean, digits.std),
    }
    inputs = SweepInputs.of(digits, starts)
    seen: dict[str, list] = {}
    original = sweep.subset_indices

    def recording(labels, budget, seed):
        index = original(labels, budget, seed)
        seen.setdefault(f"{budget}/{seed}", []).append(sorted(index.tolist()))
        return index

    monkeypatch.setattr(sweep, "subset_indices", recording)
    settings = {**FinetuneConfig().model_dump(), "steps": 2}
    for seed in (0, 1):
        for arm in ("ssl-linear", "ssl-finetune", "scratch"):
            result = run_one(RunSpec(arm, 2, seed), inputs, settings)
            assert result.n_labels == 8 and 0 <= result.accuracy <= 1
    assert set(seen) == {"2/0", "2/1"}
    for runs in seen.values():
        assert len(runs) == 3 and runs[0] == runs[1] == runs[2]
    assert seen["2/0"][0] != seen["2/1"][0]  # another seed, another subset


def test_batched_embeddings_match_one_batch_and_report_progress(digits):
    torch.manual_seed(0)
    backbone = build_backbone("small_cnn", 1, digits.image_size)
    items = digits.items(POOL)[:300]
    heard: list[tuple[int, int]] = []
    batched = embed_items(
        backbone, digits.source, items, digits.mean, digits.std, 128, lambda n, t: heard.append((n, t))
    )
    whole = embed_items(backbone, digits.source, items, digits.mean, digits.std, 512)
    assert np.allclose(batched, whole, atol=1e-5)  # threads and batches change nothing
    assert heard == [(128, 300), (128, 300), (44, 300)]


def test_several_backbones_embed_in_one_pass_over_the_images(digits, monkeypatch):
    """The card's kNN and its random-init reference read the pool once, not once per backbone."""
    torch.manual_seed(0)
    first, second = (build_backbone("small_cnn", 1, digits.image_size) for _ in range(2))
    items = digits.items(POOL)[:300]
    alone = [embed_items(b, digits.source, items, digits.mean, digits.std, 128) for b in (first, second)]
    reads: list[int] = []
    read_many = ImageSource.read_many

    def counted(source, batch):
        reads.append(len(batch))
        return read_many(source, batch)

    monkeypatch.setattr(ImageSource, "read_many", counted)
    together = embed_items_with([first, second], digits.source, items, digits.mean, digits.std, 128)
    assert reads == [128, 128, 44]  # every item read once for both backbones
    assert all(np.allclose(a, t, atol=1e-5) for a, t in zip(alone, together, strict=True))
    assert not np.allclose(together[0], together[1])  # each backbone's own features
