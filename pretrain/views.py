"""Image views: lightly's SimCLR augmentations fitted to the data, and the plain eval view."""

from __future__ import annotations

import torch
from lightly.transforms import SimCLRTransform
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


class MultiViewDataset(Dataset):
    """Yields the list of views of one uint8 image tensor; labels are never read."""

    def __init__(self, images: torch.Tensor, transform) -> None:
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.transform(self.images[index])
