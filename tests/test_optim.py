"""Optimizers and schedules as in the reference recipes: what is decayed, what is trained at all,
and a warm-up that rises to the peak and never above it."""

from __future__ import annotations

import itertools

import pytest
import torch
from lightly.utils.lars import LARS

from pretrain.backbones import build_backbone
from pretrain.method_options import BYOLOptions, MAEOptions
from pretrain.methods import BYOL, MAE


def _byol(optimizer: str, **base) -> BYOL:
    torch.manual_seed(0)
    backbone = build_backbone("small_cnn", 1, 16)
    return BYOL(backbone, BYOLOptions(hidden_dim=32, projection_dim=16), optimizer=optimizer, lr=0.1, **base)


@pytest.mark.parametrize(("name", "kind"), [("sgd", torch.optim.SGD), ("lars", LARS), ("adamw", torch.optim.AdamW)])
def test_frozen_teachers_are_never_optimized_and_norms_and_biases_are_not_decayed(name, kind):
    method = _byol(name, weight_decay=1e-4)
    optimizer, _ = method.optimizer_and_schedule(100)
    assert isinstance(optimizer, kind)
    decayed, undecayed = ({id(p) for p in g["params"]} for g in optimizer.param_groups)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [1e-4, 0.0]
    teacher = {id(p) for p in [*method.backbone_momentum.parameters(), *method.projection_head_momentum.parameters()]}
    assert teacher and not teacher & (decayed | undecayed)
    trainable = {id(p) for p in method.parameters() if p.requires_grad}
    assert decayed | undecayed == trainable and not decayed & undecayed
    norms_and_biases = {
        id(p)
        for module in method.modules()
        if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d)
        for p in module.parameters(recurse=False)
    } | {id(p) for n, p in method.named_parameters() if n.endswith("bias")}
    assert norms_and_biases & trainable <= undecayed
    conv = method.backbone.features[0].weight
    assert id(conv) in decayed


def test_vit_position_embedding_and_tokens_are_not_decayed():
    backbone = build_backbone("vit_tiny", 1, 16, patch_size=4)
    method = MAE(backbone, MAEOptions(decoder_dim=16, decoder_layers=1, decoder_heads=2), weight_decay=0.05)
    optimizer, _ = method.optimizer_and_schedule(10)
    decayed, undecayed = ({id(p) for p in g["params"]} for g in optimizer.param_groups)
    named = dict(method.named_parameters())
    tokens = [n for n in named if n.rsplit(".", 1)[-1] in ("pos_embedding", "class_token", "mask_token")]
    learned = [n for n in tokens if named[n].requires_grad]
    assert {n.rsplit(".", 1)[-1] for n in learned} == {"class_token", "mask_token"}
    assert all(id(named[n]) in undecayed for n in learned)
    fixed = [n for n in tokens if not named[n].requires_grad]  # MAE's sin-cos position embeddings
    assert len(fixed) == 2 and not {id(named[n]) for n in fixed} & (decayed | undecayed)


@pytest.mark.parametrize(("warmup_epochs", "max_epochs", "steps"), [(2, 10, 100), (1, 4, 10), (0, 5, 50)])
def test_warmup_rises_to_the_peak_never_above_then_decays(warmup_epochs, max_epochs, steps):
    """1 of 4 epochs over 10 steps is 2.5 warm-up steps: the old hand-written schedule reached 1.2x
    the peak there; lightly's schedule on whole steps does not."""
    method = _byol("sgd", warmup_epochs=warmup_epochs, max_epochs=max_epochs)
    optimizer, schedule = method.optimizer_and_schedule(steps)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    peak = int(torch.tensor(rates).argmax())
    assert max(rates) == pytest.approx(0.1) and max(rates) <= 0.1 + 1e-12
    assert peak == max(round(steps * warmup_epochs / max_epochs) - 1, 0)
    assert all(a <= b for a, b in itertools.pairwise(rates[: peak + 1]))  # warm-up rises
    assert all(a >= b for a, b in itertools.pairwise(rates[peak:]))  # cosine falls
    assert rates[-1] < 0.01
