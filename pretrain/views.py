"""Image views: lightly's SimCLR augmentations fitted to the data, and the plain eval view."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from lightly.transforms import SimCLRTransform
from PIL import Image
from torch.utils.data import Dataset


def simclr_transform(cfg, image_size: int, mean, std) -> SimCLRTransform:
    """Two random views per image (Chen et al., 2020), without what the images cannot take.

    Flips are off unless configured (a mirrored digit is another symbol); grayscale conversion
    and hue/saturation jitter only make sense for colour images; blur is off at small sizes.
    """
    colour = len(mean) == 3
    return SimCLRTransform(
        input_size=image_size,
        min_scale=cfg.min_scale,
        hf_prob=cfg.horizontal_flip,
        rr_prob=0.5 if cfg.rotation_degrees else 0.0,
        rr_degrees=cfg.rotation_degrees or None,
        cj_prob=cfg.color_jitter,
        cj_sat=0.8 if colour else 0.0,
        cj_hue=0.2 if colour else 0.0,
        random_gray_scale=0.2 if colour else 0.0,
        gaussian_blur=0.5 if image_size >= 64 else 0.0,
        normalize={"mean": list(mean), "std": list(std)},
    )


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 N x C x H x W -> float, normalized as in pretraining: the eval view."""
    mean_t = torch.tensor(mean).view(1, -1, 1, 1)
    std_t = torch.tensor(std).view(1, -1, 1, 1)
    return (images.float() / 255 - mean_t) / std_t


class EvalTransform:
    """The input a pretrained backbone expects: resized, channel-matched, normalized as in pretraining.

    Takes a PIL image, a uint8 ``C x H x W`` tensor or a uint8 ``N x C x H x W`` batch. Example::

        transform = EvalTransform(image_size=16, channels=1, mean=[0.3], std=[0.3])
        features = backbone(transform(Image.open("digit.png")))
    """

    def __init__(self, image_size: int, channels: int, mean, std) -> None:
        self.image_size, self.channels, self.mean, self.std = image_size, channels, list(mean), list(std)

    def __call__(self, image) -> torch.Tensor:
        if isinstance(image, Image.Image):
            image = torch.from_numpy(np.asarray(image.convert("L" if self.channels == 1 else "RGB")).copy())
            image = image[None] if image.ndim == 2 else image.permute(2, 0, 1)
        batch = image if image.ndim == 4 else image[None]
        if batch.shape[1] != self.channels:
            batch = batch.float().mean(1, keepdim=True) if self.channels == 1 else batch.expand(-1, 3, -1, -1)
        if batch.shape[-2:] != (self.image_size, self.image_size):
            batch = F.interpolate(
                batch.float(), size=(self.image_size, self.image_size), mode="bilinear", antialias=True
            )
        return normalize(batch, self.mean, self.std)

    def __repr__(self) -> str:
        return (
            f"EvalTransform(image_size={self.image_size}, channels={self.channels}, mean={self.mean}, std={self.std})"
        )


class MultiViewDataset(Dataset):
    """Yields the list of views of one uint8 image tensor; labels are never read."""

    def __init__(self, images: torch.Tensor, transform) -> None:
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.transform(self.images[index])
