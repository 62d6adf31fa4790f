"""Every SSL method trains under Ray Train with 2 workers: the loss falls and the checkpoint reloads."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
import torch
from safetensors.torch import load_file

from cluster.config import DataConfig, PretrainConfig
from pretrain.backbones import backbone_options, build_backbone
from pretrain.data import load_data, plan_data
from pretrain.methods import METHODS, build_method
from pretrain.train import BACKBONE_FILE, LIGHTNING_CKPT, pretrain

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


def test_every_method_has_a_test():
    assert set(OPTIONS) == set(METHODS)


@pytest.mark.parametrize("method", list(METHODS))
def test_method_trains_on_two_workers_and_its_checkpoint_reloads(method, digits, tmp_path):
    backbone = "vit_tiny" if method == "mae" else "small_cnn"
    settings = PretrainConfig(
        method=method,
        options=OPTIONS[method],
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
    folder = Path(result.checkpoint_path)
    weights = load_file(str(folder / BACKBONE_FILE))
    assert weights.keys() == result.backbone_state.keys()
    assert all(torch.equal(weights[k], v) for k, v in result.backbone_state.items())
    # the full Lightning checkpoint (heads, teachers, optimizer) loads without pickled code
    checkpoint = torch.load(folder / LIGHTNING_CKPT, map_location="cpu", weights_only=True)
    model = build_method(method, build_backbone(backbone, 1, digits.image_size, **options), OPTIONS[method])
    model.load_state_dict(checkpoint["state_dict"])
    assert checkpoint["epoch"] == EPOCHS.get(method, 4) - 1
    assert torch.equal(model.backbone.state_dict()[next(iter(weights))], next(iter(weights.values())))
