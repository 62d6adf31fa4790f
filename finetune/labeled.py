"""The labeled subset of a fine-tuning run, decoded a batch at a time as training draws it.

One fine-tuning task runs per CPU: a task that decoded its whole subset into one float tensor
held 2.4 GB at budget ``all`` of a 196,000-image pool at 32 px. Here a task holds the items (names)
and decodes only the images of the batch it trains on, with the pretraining input's reader
(:meth:`ImageSource.read_many`), so its memory does not grow with the subset. A small subset keeps
what it decoded (a run passes over it many times), as the local pretraining input keeps a small pool.
"""

from __future__ import annotations

import numpy as np
import torch

from pretrain.images import ImageSource
from pretrain.views import normalize

#: a subset whose decoded (uint8) copy fits in this is kept once decoded: 21,000 images at 32 px RGB
KEEP_MAX_BYTES = 64 << 20


def decode(source: ImageSource, items: list[str]) -> torch.Tensor:
    """uint8 ``N x C x H x W`` images of ``items``; every one was decoded when the data was loaded,
    so one that fails now is an error, not a row to drop (it would shift the labels of the rest)."""
    images, ok = source.read_many(items)
    if not ok.all():
        raise OSError(f"image {items[int(np.argmin(ok))]} can no longer be decoded: restore it and re-run")
    return images


class LabeledImages:
    """``items`` as :func:`finetune.heads.fine_tune` indexes them: ``images[index]`` is the normalized
    float batch of those positions, decoded when it is drawn. The same draws from the same seed as
    a tensor of the whole subset, so a run trains on exactly what it did when it held one.

    ``keep`` (by default: whether the decoded subset fits in :data:`KEEP_MAX_BYTES`) keeps each
    image once decoded; without it a task holds one batch of images, whatever the subset's size.
    """

    def __init__(self, items: list[str], source: ImageSource, mean, std, keep: bool | None = None) -> None:
        self.items, self.source, self.mean, self.std = items, source, mean, std
        image_bytes = source.channels * source.image_size**2
        self.keep = len(items) * image_bytes <= KEEP_MAX_BYTES if keep is None else keep
        self.decoded: dict[int, torch.Tensor] = {}  # position -> uint8 image, with ``keep``

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        positions = index.tolist()
        missing = sorted(set(positions).difference(self.decoded))  # a repeated position is decoded once
        decoded = decode(self.source, [self.items[p] for p in missing]) if missing else []
        images = dict(zip(missing, decoded, strict=True))
        if self.keep:
            self.decoded.update(images)
            images = self.decoded
        return normalize(torch.stack([images[p] for p in positions]), self.mean, self.std)
