"""What each backbone is and which images it can take, without building it.

The config and the CLI check a backbone against the image size with this module alone, before
torch is imported; :mod:`pretrain.backbones` builds the networks from the options resolved here.
"""

from __future__ import annotations

from pretrain.errors import LabelcurveError

#: hidden size, layers, heads of the named ViTs
VIT_DIMS: dict[str, tuple[int, int, int]] = {"vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6)}
#: "cnn", "resnet" or "vit": what the build options and the MAE method refer to
BACKBONE_FAMILIES: dict[str, str] = {
    "small_cnn": "cnn",
    **{f"resnet{d}": "resnet" for d in (18, 34, 50)},
    **dict.fromkeys(VIT_DIMS, "vit"),
}


class BackboneError(LabelcurveError, ValueError):
    """A backbone that cannot be built for this data, phrased as one line for the user."""


def default_patch_size(image_size: int) -> int:
    """The largest of 16, 8, 4, 2 that divides the image into at least 8 x 8 patches."""
    return next((p for p in (16, 8, 4, 2) if image_size % p == 0 and image_size // p >= 8), 1)


def backbone_options(name: str, image_size: int, cifar_stem: bool | None = None, patch_size: int | None = None) -> dict:
    """The resolved build options of backbone ``name`` for ``image_size`` px images.

    Raises :class:`BackboneError` naming the setting to change when the backbone cannot take
    the images.
    """
    if name not in BACKBONE_FAMILIES:
        raise BackboneError(f"unknown backbone '{name}': choose from {', '.join(BACKBONE_FAMILIES)}")
    family = BACKBONE_FAMILIES[name]
    if family == "resnet":
        stem = image_size <= 64 if cifar_stem is None else cifar_stem
        if not stem and image_size < 32:
            raise BackboneError(
                f"{name} with the ImageNet stem reduces {image_size} px images to nothing (32x downsampling): "
                "set pretrain.cifar_stem=true or data.image_size=32 or more"
            )
        if image_size < 8:
            raise BackboneError(f"{name} needs images of at least 8 px: set data.image_size=8 or more")
        return {"cifar_stem": stem}
    if family == "vit":
        patch = patch_size or default_patch_size(image_size)
        if image_size % patch or image_size // patch < 2:
            raise BackboneError(
                f"{name} with patch size {patch} cannot tile {image_size} px images: set data.image_size to a "
                f"multiple of {patch} (at least {2 * patch}) or pretrain.patch_size to a divisor of {image_size}"
            )
        return {"patch_size": patch}
    if image_size < 4:
        raise BackboneError(f"{name} needs images of at least 4 px: set data.image_size=4 or more")
    return {}
