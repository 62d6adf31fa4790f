"""Backbones: feature extractors that map images to a flat feature vector."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class SmallCNN(nn.Module):
    """A four-block CNN for small images (8-64 px) that trains in minutes on a CPU.

    Conv-BN-ReLU blocks, stride 2 after the first, global average pooling; the feature size is
    ``width * 4``. Example::

        backbone = SmallCNN(in_channels=1, width=32)
        features = backbone(torch.rand(8, 1, 16, 16))  # (8, 128)
    """

    def __init__(self, in_channels: int = 3, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *block(in_channels, width, 1),
            *block(width, width * 2, 2),
            *block(width * 2, width * 4, 2),
            *block(width * 4, width * 4, 1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.feature_dim = width * 4

    def forward(self, x):
        return self.features(x)


BACKBONES = {"small_cnn": SmallCNN}


def build_backbone(name: str, in_channels: int) -> nn.Module:
    """The backbone called ``name``; every backbone exposes ``feature_dim``."""
    return BACKBONES[name](in_channels=in_channels)


@torch.no_grad()
def embed(backbone: nn.Module, images: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """Features of normalized ``images`` from a backbone in eval mode."""
    backbone.eval()
    return torch.cat([backbone(chunk) for chunk in images.split(batch_size)]).numpy()
