"""Backbones: feature extractors that map images to a flat feature vector (``feature_dim``).

Every backbone is built from its name, the input channels and image size, and a few resolved
options (the CIFAR stem of a ResNet, the patch size of a ViT).
:func:`pretrain.backbone_specs.backbone_options` resolves
and checks those options against the image size before any compute starts, and the resolved
options travel in the model card, so that a pulled backbone is rebuilt exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from lightly.models.modules import MaskedVisionTransformerTorchvision
from torch import nn
from torchvision.models import resnet18, resnet34, resnet50
from torchvision.models.vision_transformer import VisionTransformer

from pretrain.backbone_specs import VIT_DIMS, backbone_options


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


def resnet(depth: int, in_channels: int = 3, cifar_stem: bool = False) -> nn.Module:
    """A torchvision ResNet without its classifier (He et al., CVPR 2016).

    ``cifar_stem`` swaps the 7x7 stride-2 convolution and max-pool for one 3x3 stride-1
    convolution, as for CIFAR in the SimCLR paper (appendix B.9): a 32 px image then keeps a
    4x4 map before pooling instead of 1x1. Example::

        backbone = resnet(18, cifar_stem=True)
        features = backbone(torch.rand(8, 3, 32, 32))  # (8, 512)
    """
    net = {18: resnet18, 34: resnet34, 50: resnet50}[depth](weights=None)
    if cifar_stem:
        net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    net.feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net


class ViT(nn.Module):
    """A Vision Transformer (Dosovitskiy et al., ICLR 2021) whose feature is the class token.

    Built on torchvision's ``VisionTransformer`` through lightly's masked wrapper, so that MAE
    can encode only the visible patches (``encode(images, idx_keep=...)``). Example::

        backbone = ViT(image_size=32, patch_size=4, hidden_dim=192, num_layers=12, num_heads=3)
        features = backbone(torch.rand(8, 3, 32, 32))  # (8, 192)
    """

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        hidden_dim: int,
        num_layers: int,
        num_heads: int,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        vit = VisionTransformer(image_size, patch_size, num_layers, num_heads, hidden_dim, hidden_dim * 4)
        vit.conv_proj = nn.Conv2d(in_channels, hidden_dim, patch_size, patch_size)
        vit.heads = nn.Identity()  # no classifier: DDP requires every parameter to reach the loss
        self.encoder = MaskedVisionTransformerTorchvision(vit=vit)
        self.encoder.mask_token = None  # MAE keeps its own mask token in the decoder's width
        self.patch_size, self.feature_dim = patch_size, hidden_dim

    @property
    def sequence_length(self) -> int:
        return self.encoder.sequence_length

    def encode(self, images: torch.Tensor, idx_keep: torch.Tensor | None = None) -> torch.Tensor:
        return self.encoder.encode(images, idx_keep=idx_keep)

    def forward(self, x):
        return self.encoder(x)


#: how to build each backbone from its resolved options (:func:`backbone_options`)
BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": lambda in_channels, image_size: SmallCNN(in_channels),
    **{
        f"resnet{d}": lambda in_channels, image_size, cifar_stem, d=d: resnet(d, in_channels, cifar_stem)
        for d in (18, 34, 50)
    },
    **{
        name: lambda in_channels, image_size, patch_size, dims=dims: ViT(image_size, patch_size, *dims, in_channels)
        for name, dims in VIT_DIMS.items()
    },
}


def build_backbone(name: str, in_channels: int, image_size: int = 32, **options) -> nn.Module:
    """The backbone called ``name``; every backbone exposes ``feature_dim``.

    ``options`` are those :func:`backbone_options` resolved (missing ones take their default).
    """
    resolved = backbone_options(name, image_size, **options)
    return BUILDERS[name](in_channels=in_channels, image_size=image_size, **resolved)


@torch.no_grad()
def embed(backbone: nn.Module, images: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """Features of normalized ``images`` from a backbone in eval mode, on the backbone's device."""
    backbone.eval()
    device = next(backbone.parameters()).device
    return torch.cat([backbone(chunk.to(device)).float().cpu() for chunk in images.split(batch_size)]).numpy()


def embed_items(
    backbone: nn.Module,
    source,
    items: list[str],
    mean,
    std,
    batch_size: int = 512,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Features of image ``items`` by batched inference: decoded, normalized and embedded one
    batch at a time, so memory holds one batch of images, never the set. ``progress(n, total)``
    hears of every batch (minutes on a large pool)."""
    return embed_items_with([backbone], source, items, mean, std, batch_size, progress)[0]


def embed_items_with(
    backbones: list[nn.Module],
    source,
    items: list[str],
    mean,
    std,
    batch_size: int = 512,
    progress: Callable[[int, int], None] | None = None,
) -> list[np.ndarray]:
    """:func:`embed_items` for several backbones of the same input in one pass: each batch is
    read and decoded once. On a large pool the reads, not the forward passes, take the time."""
    from pretrain.views import normalize

    features: list[list[np.ndarray]] = [[] for _ in backbones]
    for start in range(0, len(items), batch_size):
        images, ok = source.read_many(items[start : start + batch_size])
        if not ok.all():
            raise OSError(f"image {items[start + int(np.argmin(ok))]} can no longer be decoded: restore it and re-run")
        normalized = normalize(images, mean, std)
        for backbone, done in zip(backbones, features, strict=True):
            done.append(embed(backbone, normalized, batch_size))
        if progress:
            progress(len(ok), len(items))
    return [
        np.concatenate(done) if done else np.zeros((0, backbone.feature_dim), np.float32)
        for backbone, done in zip(backbones, features, strict=True)
    ]
