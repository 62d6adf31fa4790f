"""Image views: the augmentation knobs every method's lightly transform reads, and the plain eval view."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from lightly.transforms import SimCLRTransform
from PIL import Image


@dataclass(frozen=True)
class ViewSettings:
    """The augmentation knobs of a study, shared by every method's views."""

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    min_scale: float = 0.08
    horizontal_flip: float = 0.5
    rotation_degrees: float = 0.0
    color_jitter: float = 0.8
    color_jitter_strength: float | None = None

    @classmethod
    def from_config(cls, cfg, image_size: int, mean, std) -> ViewSettings:
        """From a ``pretrain`` section (any object with the same fields)."""
        knobs = ("min_scale", "horizontal_flip", "rotation_degrees", "color_jitter", "color_jitter_strength")
        return cls(image_size, tuple(mean), tuple(std), **{k: getattr(cfg, k) for k in knobs})

    @property
    def colour(self) -> bool:
        return len(self.mean) == 3

    @property
    def blur(self) -> float:
        """Gaussian blur probability: blur erases small images, so it is off below 64 px."""
        return 0.5 if self.image_size >= 64 else 0.0

    @property
    def solarize(self) -> float:
        return 0.2 if self.colour else 0.0

    def common(self) -> dict:
        """Keyword arguments that every lightly multi-view transform takes.

        Flips are off unless configured (a mirrored digit is another symbol); grayscale
        conversion and hue/saturation jitter only make sense for colour images.
        """
        strength = {} if self.color_jitter_strength is None else {"cj_strength": self.color_jitter_strength}
        return {
            **strength,
            "hf_prob": self.horizontal_flip,
            "rr_prob": 0.5 if self.rotation_degrees else 0.0,
            "rr_degrees": self.rotation_degrees or None,
            "cj_prob": self.color_jitter,
            "cj_sat": 0.8 if self.colour else 0.0,
            "cj_hue": 0.2 if self.colour else 0.0,
            "random_gray_scale": 0.2 if self.colour else 0.0,
            "normalize": {"mean": list(self.mean), "std": list(self.std)},
        }


def simclr_views(views: ViewSettings) -> SimCLRTransform:
    """Two random views per image (Chen et al., 2020): the views of most two-view methods."""
    return SimCLRTransform(
        input_size=views.image_size, min_scale=views.min_scale, gaussian_blur=views.blur, **views.common()
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


def to_pil(image) -> Image.Image:
    """A uint8 ``C x H x W`` array or tensor as a PIL image, the input every lightly transform takes."""
    array = np.asarray(image)
    return Image.fromarray(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0))
