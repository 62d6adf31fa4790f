"""Every SSL method trains under Ray Train with 2 workers: the weights move, the embeddings do not
collapse, EMA teachers follow, and the checkpoint reloads without pickled code."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import ray
import torch
from safetensors.torch import load_file

from cluster.config import DataConfig, PretrainConfig
from pretrain.backbone_specs import backbone_options
from pretrain.backbones import build_backbone, embed
from pretrain.data import load_data, plan_data
from pretrain.knn import knn_accuracy
from pretrain.manifest import POOL, TEST
from pretrain.method_options import METHOD_OPTIONS
from pretrain.methods import METHODS, build_method
from pretrain.train import BACKBONE_FILE, LIGHTNING_CKPT, pretrain
from pretrain.views import normalize

pytestmark = pytest.mark.slow

# Small heads and short schedules so that each method trains in seconds on 2 CPU workers.
OPTIONS = {
    "simclr": {"projection_dim": 32},
    # MoCo v2: a bank of one global batch and a faster teacher, or the bank's warm-up (random keys
    # replaced by real, harder ones) outlasts these few steps.
    "moco_v2": {"projection_dim": 32, "memory_bank_size": 64, "momentum": 0.9},
    "moco_v3": {"hidden_dim": 128, "projection_dim": 32},
    "byol": {"hidden_dim": 128, "projection_dim": 32},
    "simsiam": {"projection_dim": 128, "prediction_dim": 32},
    "barlow_twins": {"hidden_dim": 128, "projection_dim": 128},
    "vicreg": {"hidden_dim": 128, "projection_dim": 128},
    "dino": {"hidden_dim": 128, "bottleneck_dim": 32, "output_dim": 256, "n_local_views": 2},
    "swav": {"projection_dim": 32, "n_prototypes": 32, "n_local_views": 2, "freeze_prototypes_steps": 2},
    "mae": {"decoder_dim": 32, "decoder_layers": 1, "decoder_heads": 2},
}

EPOCHS = {"moco_v2": 8}


@pytest.fixture(scope="module")
def digits():
    data = load_data(plan_data(DataConfig(classes=["0", "1", "2", "3"])))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield data
    ray.shutdown()


def test_every_method_has_a_test_and_its_options_model():
    assert set(OPTIONS) == set(METHODS)
    assert {name: cls.Options for name, cls in METHODS.items()} == METHOD_OPTIONS


def _knn(backbone, data) -> float:
    """kNN accuracy of the frozen backbone: a collapsed embedding votes by class frequency."""
    features = {
        split: embed(backbone, normalize(data.source.read_many(data.items(split))[0], data.mean, data.std))
        for split in (POOL, TEST)
    }
    return knn_accuracy(features[POOL], data.labels(POOL), features[TEST], data.labels(TEST))


@pytest.mark.parametrize("method", list(METHODS))
def test_method_trains_on_two_workers_and_its_checkpoint_reloads(method, digits, tmp_path):
    backbone = "vit_tiny" if method == "mae" else "small_cnn"
    settings = PretrainConfig(
        method=method,
        options={method: OPTIONS[method]},
        backbone=backbone,
        patch_size=4,
        epochs=EPOCHS.get(method, 4),
        batch_size=32,
        lr=0.01,
        warmup_epochs=0,
        num_workers=2,
        online_knn=0,
        checkpoint_every=EPOCHS.get(method, 4),
        storage_path=str(tmp_path),
    )
    result = pretrain(settings.model_dump(), digits, name=method, seed=0)

    assert len(result.losses) == EPOCHS.get(method, 4)
    assert result.losses[-1] < result.losses[0], result.losses
    options = backbone_options(backbone, digits.image_size, patch_size=4)

    def fresh():  # the model as every worker builds it before the first step
        pl.seed_everything(0, verbose=False)
        net = build_backbone(backbone, 1, digits.image_size, **options)
        return build_method(method, net, METHOD_OPTIONS[method](**OPTIONS[method]), max_epochs=EPOCHS.get(method, 4))

    folder = Path(result.checkpoint_path)
    weights = load_file(str(folder / BACKBONE_FILE))
    # the full Lightning checkpoint (heads, teachers, optimizer) loads without pickled code
    checkpoint = torch.load(folder / LIGHTNING_CKPT, map_location="cpu", weights_only=True)
    model, init = fresh(), fresh()
    model.load_state_dict(checkpoint["state_dict"])
    assert checkpoint["epoch"] == EPOCHS.get(method, 4) - 1
    trained = model.backbone.state_dict()
    assert weights.keys() == trained.keys()
    assert all(torch.equal(weights[k], trained[k]) for k in weights)  # two writers, one network
    moved = [
        k for k, v in init.backbone.state_dict().items() if v.is_floating_point() and not torch.equal(v, trained[k])
    ]
    assert len(moved) > len(trained) // 2, "training left most backbone weights at their init"
    for (student, teacher), (_, teacher_init) in zip(model._teachers, init._teachers, strict=True):
        teacher_now, teacher_then = teacher.parameters(), teacher_init.parameters()
        assert any(not torch.equal(t, t0) for t, t0 in zip(teacher_now, teacher_then, strict=True)), "teacher frozen"
        assert any(not torch.equal(t, s) for t, s in zip(teacher.parameters(), student.parameters(), strict=True))
    # 4 balanced classes: a collapsed embedding votes by class frequency (about 0.25); MAE, whose
    # class token is weak for kNN after 4 epochs, scored 0.52 here
    assert _knn(model.backbone, digits) > 0.4
