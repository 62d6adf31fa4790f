"""Image sources and the fixed splits of a study.

Loading happens in two steps so that bad input fails before compute: :func:`plan_data` only
lists files and draws the split (cheap, raises :class:`DataError`), :func:`load_data` decodes.
Images are kept in memory as uint8 ``N x C x H x W`` tensors: the sizes this platform runs on a
CPU fit easily, and Ray ships them to workers once through the object store.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from sklearn.model_selection import train_test_split

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


#: torchvision datasets: name -> (class name, folder inside data.path, display name)
TORCHVISION_DATASETS = {
    "cifar10": ("CIFAR10", "cifar-10-batches-py", "CIFAR-10"),
    "cifar100": ("CIFAR100", "cifar-100-python", "CIFAR-100"),
    "stl10": ("STL10", "stl10_binary", "STL-10"),
}


class DataError(ValueError):
    """A data problem, phrased as one line for the user."""


@dataclass(frozen=True)
class ImageSet:
    """Decoded images (uint8, N x C x H x W) with labels (-1 where unknown)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class StudyData:
    """The three sets of a study: labeled pool, held-out test split, pretraining pool."""

    classes: tuple[str, ...]
    pool: ImageSet
    test: ImageSet
    unlabeled: ImageSet
    mean: tuple[float, ...]
    std: tuple[float, ...]
    skipped: int = 0

    @property
    def channels(self) -> int:
        return self.pool.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.pool.images.shape[-1]


class _Reader(Protocol):
    def read(self, item: object) -> np.ndarray | None: ...


@dataclass
class DataPlan:
    """What a study will load: items per split and their labels, not yet decoded."""

    classes: tuple[str, ...]
    pool: list[object]
    pool_labels: np.ndarray
    test: list[object]
    test_labels: np.ndarray
    extra_unlabeled: list[object]
    reader: _Reader
    image_size: int
    channels: int
    source: str = field(default="")

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.pool_labels, minlength=len(self.classes))
        return dict(zip(self.classes, counts.tolist(), strict=True))


class _DigitsReader:
    """scikit-learn's 8x8 digits (values 0..16), shipped with the library: no download."""

    def __init__(self) -> None:
        from sklearn.datasets import load_digits

        self.images = load_digits().images

    def read(self, item: object) -> np.ndarray:
        return (self.images[int(item)] * (255.0 / 16.0)).astype(np.uint8)[None]


class _FileReader:
    """Decodes one image file with PIL; unreadable files give ``None`` (counted, skipped)."""

    def __init__(self, channels: int) -> None:
        self.mode = "L" if channels == 1 else "RGB"

    def read(self, item: object) -> np.ndarray | None:
        try:
            with Image.open(item) as image:
                array = np.asarray(image.convert(self.mode))
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
            log.warning("skipping unreadable image %s (%s)", item, error)
            return None
        return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


class _ArrayReader:
    """Images of a torchvision dataset held as arrays; an item is ``(split, index)``."""

    def __init__(self, arrays: dict[str, np.ndarray], channels: int) -> None:
        self.arrays, self.channels, self.files = arrays, channels, _FileReader(channels)

    def read(self, item: object) -> np.ndarray | None:
        if isinstance(item, Path):  # data.unlabeled_path beside a torchvision dataset
            return self.files.read(item)
        split, index = item
        image = np.array(self.arrays[split][index])  # C x H x W uint8, a writable copy
        if self.channels == 1 and image.shape[0] == 3:
            return np.asarray(Image.fromarray(image.transpose(1, 2, 0)).convert("L"))[None]
        return image


def _torchvision_dataset(cfg) -> tuple[tuple[str, ...], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Classes, images (C x H x W) and labels per split of a torchvision dataset in ``data.path``.

    Offline, the files must already be there (torchvision checks their MD5 sums); with
    ``data.download=true`` torchvision fetches what is missing.
    """
    import torchvision.datasets

    class_name, folder, title = TORCHVISION_DATASETS[cfg.name]
    root = Path(cfg.path).expanduser()
    dataset = getattr(torchvision.datasets, class_name)
    splits = {"train": {"split": "train"}, "test": {"split": "test"}, "unlabeled": {"split": "unlabeled"}}
    if cfg.name != "stl10":
        splits = {"train": {"train": True}, "test": {"train": False}}
    arrays, labels, classes = {}, {}, ()
    for split, kwargs in splits.items():
        try:
            data = dataset(str(root), download=cfg.download, **kwargs)
        except RuntimeError as error:
            if "not found or corrupted" not in str(error):
                raise
            raise DataError(
                f"data.path '{root}' has no complete {title} ({root / folder}/ with the official files): "
                "set data.download=true on a machine that is online, or copy the files there"
            ) from None
        except OSError as error:
            raise DataError(
                f"downloading {title} into '{root}' failed ({error}): copy the files there and set data.download=false"
            ) from None
        images = np.asarray(data.data)
        arrays[split] = images.transpose(0, 3, 1, 2) if images.shape[-1] == 3 else images
        labels[split] = np.asarray(data.targets if hasattr(data, "targets") else data.labels, dtype=np.int64)
        classes = classes or tuple(data.classes)
    return classes, arrays, labels


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _class_folders(root: Path) -> dict[str, list[Path]]:
    classes = {d.name: _image_files(d) for d in sorted(root.iterdir()) if d.is_dir()}
    return {name: files for name, files in classes.items() if files}


def _scan_folder(path: str) -> tuple[tuple[str, ...], list[Path], np.ndarray, list[Path], np.ndarray]:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"data.path '{path}' does not exist: point it at an ImageFolder root")
    train_root = root / "train" if (root / "train").is_dir() else root
    by_class = _class_folders(train_root)
    if not by_class:
        raise DataError(
            f"no images found under '{train_root}': expected {train_root}/<class>/<image> files "
            f"({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    classes = tuple(by_class)
    files = [f for name in classes for f in by_class[name]]
    labels = np.array([i for i, name in enumerate(classes) for _ in by_class[name]], dtype=np.int64)
    test_files: list[Path] = []
    test_labels = np.zeros(0, dtype=np.int64)
    if (root / "test").is_dir() and train_root != root:
        test_by_class = _class_folders(root / "test")
        unknown = set(test_by_class) - set(classes)
        if unknown:
            raise DataError(f"test classes {sorted(unknown)} have no train folder: add or remove them")
        test_files = [f for name in classes for f in test_by_class.get(name, [])]
        test_labels = np.array(
            [i for i, name in enumerate(classes) for _ in test_by_class.get(name, [])], dtype=np.int64
        )
    return classes, files, labels, test_files, test_labels


def _per_class_cap(items: list, labels: np.ndarray, cap: int | None, seed: int) -> tuple[list, np.ndarray]:
    """Keep at most ``cap`` items per class, chosen reproducibly from ``seed``."""
    if cap is None:
        return items, labels
    order = np.random.default_rng(seed).permutation(len(items))
    keep = sorted(i for c in np.unique(labels) for i in order[labels[order] == c][:cap])
    return [items[i] for i in keep], labels[keep]


def _keep_classes(wanted, classes, items, labels, test_items, test_labels):
    """Only the ``wanted`` classes, relabeled 0..k-1 in the order given."""
    unknown = [c for c in wanted if c not in classes]
    if unknown:
        raise DataError(f"data.classes {unknown} not in the data: its classes are {', '.join(classes)}")
    old = [classes.index(c) for c in wanted]
    relabel = {o: i for i, o in enumerate(old)}

    def keep(xs, ys):
        kept = [i for i, y in enumerate(ys) if int(y) in relabel]
        return [xs[i] for i in kept], np.array([relabel[int(ys[i])] for i in kept], dtype=np.int64)

    items, labels = keep(items, labels)
    test_items, test_labels = keep(test_items, test_labels)
    return tuple(wanted), items, labels, test_items, test_labels


def plan_data(cfg) -> DataPlan:
    """List items and draw the fixed stratified test split; no image is decoded here.

    ``cfg`` is a :class:`cluster.config.DataConfig` (any object with the same fields).
    """
    if cfg.name == "digits":
        reader: _Reader = _DigitsReader()
        from sklearn.datasets import load_digits

        labels = load_digits().target.astype(np.int64)
        classes = tuple(str(c) for c in range(10))
        items: list[object] = list(range(len(labels)))
        test_items: list[object] = []
        test_labels = np.zeros(0, dtype=np.int64)
        size, channels, source = cfg.image_size or 16, 1, "sklearn digits"
    elif cfg.name in TORCHVISION_DATASETS:
        classes, arrays, split_labels = _torchvision_dataset(cfg)
        items, labels = [("train", i) for i in range(len(split_labels["train"]))], split_labels["train"]
        test_items, test_labels = [("test", i) for i in range(len(split_labels["test"]))], split_labels["test"]
        channels = cfg.channels or 3
        size, reader = cfg.image_size or arrays["train"].shape[-1], _ArrayReader(arrays, channels)
        source = f"{TORCHVISION_DATASETS[cfg.name][2]} in {Path(cfg.path).expanduser().resolve()}"
    else:
        classes, items, labels, test_items, test_labels = _scan_folder(cfg.path)
        size, channels = cfg.image_size or 32, cfg.channels or 3
        reader, source = _FileReader(channels), str(Path(cfg.path).expanduser().resolve())
    if cfg.classes:
        classes, items, labels, test_items, test_labels = _keep_classes(
            cfg.classes, classes, list(items), np.asarray(labels), list(test_items), np.asarray(test_labels)
        )
    if not test_items:
        if np.bincount(labels).min() < 2:
            raise DataError("a class has fewer than 2 images: a stratified test split needs at least 2")
        items, test_items, labels, test_labels = train_test_split(
            items, labels, test_size=cfg.test_fraction, stratify=labels, random_state=cfg.split_seed
        )
    items, labels = _per_class_cap(list(items), np.asarray(labels), cfg.max_per_class, cfg.split_seed)
    test_items, test_labels = _per_class_cap(
        list(test_items), np.asarray(test_labels), cfg.max_test_per_class, cfg.split_seed
    )
    extra: list[object] = []
    if cfg.name == "stl10" and not cfg.unlabeled_path:  # STL-10's 100,000 unlabeled images
        extra = [("unlabeled", i) for i in range(len(reader.arrays["unlabeled"]))]
    if cfg.unlabeled_path:
        folder = Path(cfg.unlabeled_path).expanduser()
        if not folder.is_dir():
            raise DataError(f"data.unlabeled_path '{cfg.unlabeled_path}' does not exist: fix or remove it")
        extra = _image_files(folder)
        if not extra:
            raise DataError(f"no images found under data.unlabeled_path '{folder}': add images or remove it")
    if cfg.max_unlabeled is not None and len(extra) > cfg.max_unlabeled:
        keep = np.random.default_rng(cfg.split_seed).choice(len(extra), cfg.max_unlabeled, replace=False)
        extra = [extra[i] for i in sorted(keep)]
    return DataPlan(
        classes=classes,
        pool=list(items),
        pool_labels=np.asarray(labels),
        test=list(test_items),
        test_labels=np.asarray(test_labels),
        extra_unlabeled=extra,
        reader=reader,
        image_size=size,
        channels=channels,
        source=source,
    )


def _decode(plan: DataPlan, items: list[object], labels: np.ndarray) -> tuple[ImageSet, int]:
    arrays, kept = [], []
    for i, item in enumerate(items):
        array = plan.reader.read(item)
        if array is not None:
            arrays.append(_resize(array, plan.image_size))
            kept.append(i)
    if not arrays:
        shape = (0, plan.channels, plan.image_size, plan.image_size)
        return ImageSet(torch.zeros(shape, dtype=torch.uint8), torch.zeros(0, dtype=torch.long)), len(items)
    images = torch.stack(arrays)
    return ImageSet(images, torch.as_tensor(labels[kept], dtype=torch.long)), len(items) - len(kept)


def _resize(array: np.ndarray, size: int) -> torch.Tensor:
    image = torch.from_numpy(np.ascontiguousarray(array))
    if image.shape[-2:] == (size, size):
        return image
    resized = F.interpolate(image[None].float(), size=(size, size), mode="bilinear", antialias=True)
    return resized[0].round().clamp(0, 255).to(torch.uint8)


def load_data(plan: DataPlan) -> StudyData:
    """Decode every planned image; unreadable files are skipped and counted, never fatal."""
    pool, bad_pool = _decode(plan, plan.pool, plan.pool_labels)
    test, bad_test = _decode(plan, plan.test, plan.test_labels)
    extra, bad_extra = _decode(plan, plan.extra_unlabeled, -np.ones(len(plan.extra_unlabeled), dtype=np.int64))
    if len(pool) == 0 or len(test) == 0:
        raise DataError(f"no readable images in {plan.source}: every file failed to decode")
    skipped = bad_pool + bad_test + bad_extra
    if skipped:
        log.warning("skipped %d unreadable images of %s", skipped, plan.source)
    unlabeled = ImageSet(
        torch.cat([pool.images, extra.images]),
        torch.cat([torch.full((len(pool),), -1, dtype=torch.long), extra.labels]),
    )
    pixels = unlabeled.images.float().div_(255).transpose(0, 1).flatten(1)
    mean = tuple(pixels.mean(1).tolist())
    std = tuple(pixels.std(1).clamp_min(1e-3).tolist())
    return StudyData(plan.classes, pool, test, unlabeled, mean, std, skipped)
