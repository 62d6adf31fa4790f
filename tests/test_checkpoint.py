"""Backbone folders: round trips, and checkpoints whose pickle would run code are refused."""

import os
import pickle

import pytest
import torch

from pretrain.backbones import build_backbone
from pretrain.checkpoint import (
    BackboneCard,
    BackboneError,
    UnsafeCheckpointError,
    load_backbone,
    save_backbone,
)

CARD = BackboneCard("small_cnn", in_channels=1, image_size=16, mean=[0.3], std=[0.3], feature_dim=128)


def test_saved_folder_loads_the_same_features(tmp_path):
    torch.manual_seed(0)
    original = build_backbone("small_cnn", 1).eval()
    save_backbone(tmp_path, original.state_dict(), CARD)
    loaded, transform = load_backbone(str(tmp_path))
    images = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    x = transform(images)
    assert x.shape == (4, 1, 16, 16)
    assert torch.equal(loaded(x), original(x))


def test_plain_state_dict_file_beside_a_card_loads(tmp_path):
    save_backbone(tmp_path, build_backbone("small_cnn", 1).state_dict(), CARD)
    (tmp_path / "model.safetensors").unlink()
    torch.save(build_backbone("small_cnn", 1).state_dict(), tmp_path / "weights.pt")
    backbone, _ = load_backbone(str(tmp_path / "weights.pt"))
    assert backbone.feature_dim == 128


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("name", ["weights.pt", "checkpoint.ckpt"])
def test_checkpoint_whose_pickle_runs_code_is_refused_and_not_run(tmp_path, name):
    marker = tmp_path / "pwned"
    save_backbone(tmp_path, build_backbone("small_cnn", 1).state_dict(), CARD)
    (tmp_path / "model.safetensors").unlink()
    with open(tmp_path / name, "wb") as handle:
        pickle.dump({"state_dict": _Exploit(marker)}, handle)
    with pytest.raises(UnsafeCheckpointError, match=r"refusing to load .* its pickle would run code"):
        load_backbone(str(tmp_path / name))
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError):  # also when found in the folder
        load_backbone(str(tmp_path))
    assert not marker.exists()


def test_missing_sources_and_cards_are_named(tmp_path):
    with pytest.raises(BackboneError, match="not found"):
        load_backbone(str(tmp_path / "nowhere"))
    with pytest.raises(BackboneError, match=r"no card\.json"):
        load_backbone(str(tmp_path))


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"surprise": 1}, "'surprise': Unexpected keyword argument"),
        ({"image_size": "big"}, "'image_size'"),
        ({"in_channels": 10**12}, "'in_channels'"),
        ({"feature_dim": 10**12}, "'feature_dim'"),
        ({"std": [0]}, "'std.0'"),
        ({"mean": [float("nan")]}, "'mean.0'"),
        ({"backbone": "resnet9000"}, "unknown backbone 'resnet9000'"),
        ({"mean": [0.1, 0.2, 0.3]}, "mean and std need 1 values"),
    ],
)
def test_hostile_cards_are_refused_before_anything_is_built(tmp_path, change, fragment):
    import json
    from dataclasses import asdict

    save_backbone(tmp_path, build_backbone("small_cnn", 1).state_dict(), CARD)
    (tmp_path / "card.json").write_text(json.dumps({**asdict(CARD), **change}))
    with pytest.raises(BackboneError, match=fragment.replace("(", r"\(").replace("[", r"\[")) as refused:
        load_backbone(str(tmp_path))
    assert "\n" not in str(refused.value)


def test_deeply_nested_card_is_refused(tmp_path):
    save_backbone(tmp_path, build_backbone("small_cnn", 1).state_dict(), CARD)
    (tmp_path / "card.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(BackboneError, match="is not a valid model card"):
        load_backbone(str(tmp_path))
