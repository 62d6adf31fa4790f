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
from pretrain.backbones import embed_items_with
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
        self.memo: dict[str, Features] = {}  # by features_key: the same weights under two names embed once
        self.reused = 0  # feature sets read back from the study run instead of computed

    def features(self, name: str, backbone: torch.nn.Module, mean, std) -> Features:
        """The features of ``backbone`` (``name`` only makes the artifact readable: ssl, transfer...)."""
        return self.compute({name: backbone}, mean, std)[name]

    def compute(self, backbones: dict[str, torch.nn.Module], mean, std) -> dict[str, Features]:
        """The features of several backbones that share a normalization, by name. Those neither
        memoized nor kept with the study run are computed in one pass over the images: on a large
        pool reading the files is what takes the time."""
        pool, test = self.data.items(POOL), self.data.items(TEST)
        keys = {name: features_key(backbone, mean, std, pool + test) for name, backbone in backbones.items()}
        wanted = {key: name for name, key in keys.items() if key not in self.memo}
        if wanted:
            kept = self._kept()
            for key in [key for key in wanted if key in kept]:
                self.memo[key] = self._read(kept[key])
                self.reused += 1
                del wanted[key]
        if wanted:
            self.memo.update(self._compute(wanted, backbones, mean, std, pool, test))
        return {name: self.memo[key] for name, key in keys.items()}

    def _kept(self) -> dict[str, str]:
        """The feature sets logged on the study run: features_key -> artifact path."""
        artifacts = self.tracker.client.list_artifacts(self.parent, FOLDER)
        return {Path(a.path).stem.rsplit("-", 1)[-1]: a.path for a in artifacts if a.path.endswith(".npz")}

    def _read(self, artifact: str) -> Features:
        with (
            tempfile.TemporaryDirectory() as folder,
            np.load(self.tracker.download(self.parent, artifact, folder)) as f,
        ):
            return f["pool"], f["test"]

    def _compute(
        self, wanted: dict[str, str], backbones: dict, mean, std, pool: list[str], test: list[str]
    ) -> dict[str, Features]:
        """Features of the backbones named in ``wanted`` (features_key -> name), logged on the run."""
        models = [backbones[name] for name in wanted.values()]
        source, say, title = self.data.source, self.progress, ", ".join(wanted.values())

        def embedded(items: list[str], split: str) -> list[np.ndarray]:
            heard = (lambda n, total: say(f"embedding {title} {split}", n, total)) if say else None
            return embed_items_with(models, source, items, mean, std, progress=heard)

        computed = dict(zip(wanted, zip(embedded(pool, "pool"), embedded(test, "test"), strict=True), strict=True))
        with tempfile.TemporaryDirectory() as folder:
            for key, (pool_features, test_features) in computed.items():
                buffer = io.BytesIO()
                np.savez(buffer, pool=pool_features, test=test_features)
                Path(folder, f"{wanted[key]}-{key}.npz").write_bytes(buffer.getvalue())
            self.tracker.client.log_artifacts(self.parent, folder, FOLDER)
        return computed
