"""The heads of a labeled run: a linear probe on frozen features, and full fine-tuning.

Both are trained with a fixed recipe (no early stopping, no tuning on the test split), so that
every arm and seed at a budget gets the same schedule and only the starting point differs.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn

from finetune.labeled import LabeledImages


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, c: float = 1.0) -> np.ndarray:
    """Multinomial logistic regression on standardized embeddings; returns test predictions."""
    scaler = StandardScaler().fit(train_x)
    model = LogisticRegression(C=c, max_iter=2000).fit(scaler.transform(train_x), train_y)
    return model.predict(scaler.transform(test_x))


def _jitter(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shifts (up to 1/8 of the side) and rotations (up to 10 degrees), per image."""
    n = len(x)
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(10)
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * 0.25
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def training_steps(n_labels: int, *, epochs: float, batch_size: int, min_steps: int, max_steps: int) -> int:
    """Optimizer steps for a subset of ``n_labels``: ``epochs`` passes, within [min_steps, max_steps].

    Non-decreasing in ``n_labels``, so a larger budget never trains less: with one fixed step
    count, the whole pool saw each image a few times and could score below a tenth of it.
    """
    return int(min(max(min_steps, math.ceil(epochs * n_labels / batch_size)), max_steps))


def fine_tune(
    backbone: nn.Module,
    n_classes: int,
    images: torch.Tensor | LabeledImages,
    labels: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
) -> nn.Module:
    """Train ``backbone`` + a linear head on normalized ``images`` for ``steps`` optimizer steps
    (:func:`training_steps` sizes them to the subset). ``images`` is a tensor or a
    :class:`LabeledImages`, which decodes each batch as it is drawn: the same batches either way."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(backbone, nn.Linear(backbone.feature_dim, n_classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    batch = min(batch_size, len(images))
    model.train()
    for _ in range(steps):
        index = torch.randint(len(images), (batch,), generator=generator)
        loss = F.cross_entropy(model(_jitter(images[index], generator)), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    return torch.cat([model(chunk).argmax(1) for chunk in images.split(batch_size)]).numpy()
