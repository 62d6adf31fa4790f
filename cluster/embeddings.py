"""Frozen embeddings of the labeled pool and the test split, computed once per study run.

A linear probe, the card's kNN accuracy and its random-init reference all read the same features
of the same images. They are computed by batched inference over the manifest, kept in memory for
the invocation, and logged on the study run as ``embeddings/<key>.npz``; a resumed study reads
them back instead of decoding and embedding the pool again. The key hashes everything the
features depend on (the weights, the normalization, the items), so changed weights or data never
pick up stale features.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from cluster.tracking import StudyTracker
from pretrain.backbones import embed_items
from pretrain.data import StudyData
from pretrain.manifest import POOL, TEST

FOLDER = "embeddings"

Features = tuple[np.ndarray, np.ndarray]  # (labeled pool, test split), rows in manifest order
Progress = Callable[[str, int, int], None]  # (step, images done now, images in all)


def features_key(backbone: torch.nn.Module, mean, std, items: list[str]) -> str:
    """A digest of the weights, the normalization and the items that features are computed from."""
    h = hashlib.sha256(repr((tuple(mean), tuple(std))).encode())
    for name, tensor in sorted(backbone.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    h.update("\n".join(items).encode())
    return h.hexdigest()[:16]


class StudyEmbeddings:
    """Pool and test features per backbone, memoized and kept with the study run ``parent``."""

    def __init__(self, tracker: StudyTracker, parent: str, data: StudyData, progress: Progress | None = None) -> None:
        self.tracker, self.parent, self.data, self.progress = tracker, parent, data, progress
        self.memo: dict[str, Features] = {}
        self.reused = 0  # feature sets read back from the study run instead of computed

    def features(self, name: str, backbone: torch.nn.Module, mean, std) -> Features:
        """The features of ``backbone`` (``name`` only makes the artifact readable: ssl, transfer...)."""
        pool, test = self.data.items(POOL), self.data.items(TEST)
        key = f"{name}-{features_key(backbone, mean, std, pool + test)}"
        if key not in self.memo:
            self.memo[key] = self._recorded(key) or self._compute(key, name, backbone, mean, std, pool, test)
        return self.memo[key]

    def _recorded(self, key: str) -> Features | None:
        artifact = f"{FOLDER}/{key}.npz"
        if artifact not in {a.path for a in self.tracker.client.list_artifacts(self.parent, FOLDER)}:
            return None
        with (
            tempfile.TemporaryDirectory() as folder,
            np.load(self.tracker.download(self.parent, artifact, folder)) as f,
        ):
            self.reused += 1
            return f["pool"], f["test"]

    def _compute(self, key: str, name: str, backbone, mean, std, pool: list[str], test: list[str]) -> Features:
        source, say = self.data.source, self.progress

        def embedded(items: list[str], split: str) -> np.ndarray:
            heard = (lambda n, total: say(f"embedding {name} {split}", n, total)) if say else None
            return embed_items(backbone, source, items, mean, std, progress=heard)

        features = embedded(pool, "pool"), embedded(test, "test")
        buffer = io.BytesIO()
        np.savez(buffer, pool=features[0], test=features[1])
        with tempfile.TemporaryDirectory() as folder:
            Path(folder, f"{key}.npz").write_bytes(buffer.getvalue())
            self.tracker.client.log_artifacts(self.parent, folder, FOLDER)
        return features
