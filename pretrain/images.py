"""Decoding one image item to a uint8 ``C x H x W`` array at the study's size and channels.

An item is a string, so that a manifest of millions of them is a plain Parquet column and any
process (the driver, a Ray Data task, a fine-tuning task) decodes the same item the same way:

- a local path or a URI that pyarrow's filesystems read (``s3://``, ``gs://``, ``file://``);
- ``digits:<i>``: scikit-learn's 8x8 digits (shipped with the library);
- ``<dataset>:<split>:<i>``: an image of a torchvision dataset under ``ImageSource.root``.

Unreadable items decode to ``None`` (counted and skipped by the caller), never an exception.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

if TYPE_CHECKING:  # torch loads on the first decode: listing and planning data need none of it
    import torch

log = logging.getLogger(__name__)

#: what a broken, truncated, hostile or oversized file raises while it is opened or decoded
DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)

#: threads that read and decode files at once (:meth:`ImageSource.read_many`)
READ_THREADS = min(8, 2 * (os.cpu_count() or 1))

#: held while a process loads its one copy of digits or of a torchvision split: read threads would
#: each load their own (``functools.cache`` does not lock), 2.7 GB apiece for STL-10's unlabeled split
_LOADING = threading.Lock()

#: PIL modes whose samples are not 8 bits: scaled by the image's own range, not clipped at 255
WIDE_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}


@dataclass(frozen=True)
class ImageSource:
    """How the items of one study are decoded: the target size and channels, and for
    torchvision datasets the root they live under."""

    image_size: int
    channels: int
    root: str | None = None

    def read(self, item: str) -> np.ndarray | None:
        """``item`` as uint8 ``channels x image_size x image_size``; ``None`` if it cannot be decoded."""
        return self.decode(item)[0]

    def decode(self, item: str) -> tuple[np.ndarray | None, int]:
        """:meth:`read`'s array and the channels the image had (1: grayscale, 3: colour), so that
        a study can say how many images it converted to its channel count."""
        kind, _, rest = item.partition(":")
        if kind == "digits":
            with _LOADING:
                array = _digits()[int(rest)]
        elif kind in _TORCHVISION and not rest.startswith("//"):
            split, _, index = rest.partition(":")
            with _LOADING:
                array = _torchvision_split(kind, self.root, split)[int(index)]
            array = array.transpose(1, 2, 0) if array.shape[0] == 3 else array
        else:
            try:
                with _open(item) as handle:
                    array = decode_file(handle, self.image_size)
            except DECODE_ERRORS as error:
                log.warning("skipping unreadable image %s (%s)", item, error)
                return None, 0
        native = 1 if array.ndim == 2 else array.shape[2]
        return resize(_channels(array, self.channels), self.image_size), native

    def read_many(self, items: list[str]) -> tuple[torch.Tensor, np.ndarray]:
        """A uint8 ``N x C x H x W`` batch of the readable ``items``, and the mask of which were.

        Files are read by a few threads: PIL releases the GIL while it decodes, and a folder that
        is not in the page cache (a shared filesystem, a pool larger than memory) is bound by
        the latency of each read, not by the CPU."""
        import torch

        if len(items) > 1:
            with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
                arrays = list(pool.map(self.read, items, chunksize=16))
        else:
            arrays = [self.read(item) for item in items]
        ok = np.array([a is not None for a in arrays], dtype=bool)
        kept = [torch.from_numpy(a) for a in arrays if a is not None]
        shape = (0, self.channels, self.image_size, self.image_size)
        return (torch.stack(kept) if kept else torch.zeros(shape, dtype=torch.uint8)), ok


_TORCHVISION = {"cifar10": "CIFAR10", "cifar100": "CIFAR100", "stl10": "STL10"}


@cache
def _digits() -> np.ndarray:
    from sklearn.datasets import load_digits

    return (load_digits().images * (255.0 / 16.0)).astype(np.uint8)


@cache
def _torchvision_split(name: str, root: str, split: str) -> np.ndarray:
    """One split of a torchvision dataset as N x C x H x W (or N x H x W) uint8, once per process."""
    import torchvision.datasets

    kwargs = {"split": split} if name == "stl10" else {"train": split == "train"}
    return np.asarray(getattr(torchvision.datasets, _TORCHVISION[name])(root, download=False, **kwargs).data)


def _open(item: str):
    if "://" not in item:
        return open(item, "rb")
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(item)
    return io.BytesIO(filesystem.open_input_file(path).readall())


def decode_file(handle, size: int) -> np.ndarray:
    """An open image file as H x W (grayscale) or H x W x 3 uint8; raises one of DECODE_ERRORS."""
    with Image.open(handle) as image:
        image.draft("RGB" if image.mode == "RGB" else None, (size, size))  # JPEG: decode at reduced scale
        image.load()
        if image.mode in WIDE_MODES:
            return to_uint8(np.asarray(image))
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB").convert("RGB")
        return np.asarray(image)


def to_uint8(array: np.ndarray) -> np.ndarray:
    """16-bit, 32-bit and float samples scaled from the image's own min..max to 0..255.

    PIL's ``convert("L")`` clips such images at 255 (16-bit scans become white) or truncates
    floats to 0; medical and scientific images rarely use the full range of their type.
    """
    values = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)


def _channels(array: np.ndarray, channels: int) -> np.ndarray:
    """H x W or H x W x 3 -> C x H x W with the study's channel count."""
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    if array.shape[0] == channels:
        return array
    if channels == 1:  # ITU-R 601-2 luma, as PIL's convert("L")
        weights = np.array([0.299, 0.587, 0.114]).reshape(3, 1, 1)
        return np.round((array * weights).sum(0, keepdims=True)).astype(np.uint8)
    return np.repeat(array, 3, axis=0)


def resize(array: np.ndarray, size: int) -> np.ndarray:
    """Bilinear, antialiased resize of a uint8 ``C x H x W`` array to ``size x size``."""
    if array.shape[-2:] == (size, size):
        return np.ascontiguousarray(array)
    import torch
    import torch.nn.functional as F

    image = torch.from_numpy(np.ascontiguousarray(array))[None].float()
    resized = F.interpolate(image, size=(size, size), mode="bilinear", antialias=True)
    return resized[0].round().clamp(0, 255).to(torch.uint8).numpy()
