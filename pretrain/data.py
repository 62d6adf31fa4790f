"""The images of a study and its fixed splits, as a manifest: no process holds the pool.

Two steps, so that bad input fails before compute: :func:`plan_data` lists the files and draws
the split (raises :class:`DataError`); :func:`load_data` decodes the labeled pool and the test
split once to verify them (unreadable files skipped and counted, leakage between pool and test
removed) and estimates the normalization from a fixed-size sample. The pretraining pool is
never decoded here: it is streamed through Ray Data during pretraining (:mod:`pretrain.stream`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from pyarrow import fs

from pretrain.errors import LabelcurveError
from pretrain.images import READ_THREADS, ImageSource
from pretrain.manifest import (
    POOL,
    TEST,
    UNLABELED,
    ListingError,
    Location,
    digest,
    from_parquet,
    relative,
    to_parquet,
)

log = logging.getLogger(__name__)

#: torchvision datasets: name -> (folder inside data.path, display name)
TORCHVISION_DATASETS = {
    "cifar10": ("cifar-10-batches-py", "CIFAR-10"),
    "cifar100": ("cifar-100-python", "CIFAR-100"),
    "stl10": ("stl10_binary", "STL-10"),
}
STATS_SAMPLE = 10_000
SUMMARY_CLASSES = 10  # classes named with their counts in the summary; the rest are counted
#: fewest test images per class that measure it (data.min_test_per_class): below that, one image
#: moves a class's accuracy by more than 10 points, and a class without any is not measured at all
MIN_TEST_PER_CLASS = 10
#: split names as datasets publish them (case-insensitive) -> train, test or val
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "test": "test",
    "testing": "test",
    "val": "val",
    "valid": "val",
    "validation": "val",
}
SPLIT_TITLES = {POOL: "labeled pool", TEST: "test"}

Progress = Callable[[str, int, int | None], None]  # (step, advance, total)


class DataError(LabelcurveError, ValueError):
    """A data problem, phrased as one line for the user."""


@dataclass(frozen=True)
class SplitRule:
    """What :func:`load_data` does once the duplicate guard has thinned the test split: keep it or
    redraw it (``resplit``), and the fewest test images per class below which it refuses to go on."""

    resplit: bool = False
    minimum: int = MIN_TEST_PER_CLASS
    fraction: float = 0.3
    seed: int = 0


def _counted(counts: dict[str, int]) -> str:
    """'a 7, b 7, ..., 2 more': the first classes with their counts, the rest counted."""
    items = list(counts.items())
    named = ", ".join(f"{name} {n}" for name, n in items[:SUMMARY_CLASSES])
    return named + (f", {len(items) - SUMMARY_CLASSES} more" if len(items) > SUMMARY_CLASSES else "")


class _Images:
    """What a plan and its verified data share: the classes, the manifest and the decoder."""

    classes: tuple[str, ...]
    frame: pd.DataFrame
    source: ImageSource

    def class_counts(self, split: str = POOL) -> dict[str, int]:
        """Images per class in the labeled pool (or in ``split``)."""
        labels = self.frame.label[self.frame.split == split].to_numpy(np.int64)
        return dict(zip(self.classes, np.bincount(labels, minlength=len(self.classes)).tolist(), strict=True))

    def test_counts(self) -> dict[str, int]:
        """Images per class in the test split: what each class's accuracy is measured on."""
        return self.class_counts(TEST)

    @property
    def image_size(self) -> int:
        return self.source.image_size

    @property
    def channels(self) -> int:
        return self.source.channels


@dataclass
class DataPlan(_Images):
    """What a study will use, listed but not decoded: the manifest and how to decode its items."""

    classes: tuple[str, ...]
    frame: pd.DataFrame  # item, label (-1: none), split (pool/test/unlabeled), size, mtime
    source: ImageSource
    description: str = ""
    duplicates: int = 0  # files listed twice through symlinks, dropped
    layout: str = ""  # how data.path was read, e.g. which folder became which split
    rule: SplitRule = field(default_factory=SplitRule)

    def split(self, name: str) -> pd.DataFrame:
        return self.frame[self.frame.split == name]

    def summary(self) -> str:
        """Two lines on what was understood, to print before compute: a misread layout shows here."""
        counts = self.frame.split.value_counts()
        return (
            f"data: {self.description} read as {self.layout}\n"
            f"data: {len(self.classes)} classes ({_counted(self.class_counts())}); labeled pool {counts.get(POOL, 0)}, "
            f"test {counts.get(TEST, 0)}, unlabeled {counts.get(UNLABELED, 0)}"
        )

    @property
    def digest(self) -> str:
        return digest(self.frame)


@dataclass(frozen=True)
class StudyData(_Images):
    """A verified plan: readable items only, normalization statistics, what was dropped and why."""

    classes: tuple[str, ...]
    frame: pd.DataFrame
    source: ImageSource
    mean: tuple[float, ...]
    std: tuple[float, ...]
    description: str = ""
    digest: str = ""
    skipped: int = 0  # unreadable labeled or test images
    leaked: int = 0  # test images also in the pool (same file or same pixels), left out of the test split
    skipped_files: list[str] = field(default_factory=list)
    converted: int = 0  # labeled and test images decoded with other channels than the study's
    resplit: bool = False  # the test split was redrawn from the de-duplicated images (data.test_split=resplit)

    def items(self, split: str) -> list[str]:
        return self.frame.item[self.frame.split == split].tolist()

    def labels(self, split: str) -> np.ndarray:
        return self.frame.label[self.frame.split == split].to_numpy(np.int64)

    def summary(self) -> list[str]:
        """What the decoding found that the listing could not: the test split each class is measured
        on after the duplicate guard, and how many images changed their channel count."""
        counts = self.test_counts()
        how = "redrawn from the de-duplicated images" if self.resplit else "after the duplicate guard"
        lines = [f"data: test split {how}: {_counted(counts)} ({sum(counts.values())} images)"]
        if self.converted and self.channels == 3:
            lines.append(f"data: {self.converted} grayscale images converted to 3 channels (data.channels=1 keeps one)")
        elif self.converted:
            lines.append(f"data: {self.converted} colour images converted to 1 channel (data.channels=3 keeps colour)")
        return lines

    @property
    def pretraining_items(self) -> list[str]:
        """The pretraining pool: the labeled pool (its labels unused) and any extra unlabeled images."""
        return self.frame.item[self.frame.split != TEST].tolist()


def _location(where: str, key: str, kind: fs.FileType = fs.FileType.Directory) -> Location:
    try:
        location = Location.parse(where, key)
        found = location.kind(location.path)
    except ListingError as error:
        raise DataError(str(error)) from None
    if found != kind:
        what = "a CSV of path,label" if kind == fs.FileType.File else "an ImageFolder root"
        raise DataError(f"{key} '{where}' does not exist: point it at {what}")
    return location


def _without_symlink_duplicates(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Local files reached twice (a class folder linked to an ancestor) count once: the copy
    whose listed path is its real path wins, so it keeps its true class."""
    local = ~frame.item.str.contains("://", regex=False)
    if not local.any():
        return frame, 0
    real = frame.item.where(~local, frame.item[local].map(os.path.realpath))
    canonical = (real == frame.item).astype(int)
    order = frame.assign(_real=real, _canonical=canonical).sort_values(["_real", "_canonical"], ascending=[True, False])
    kept = order.drop_duplicates("_real").drop(columns=["_real", "_canonical"]).sort_index()
    return kept, len(frame) - len(kept)


class _Listing(NamedTuple):
    """The labeled items read from data.path and how data.path was read (for the summary)."""

    classes: tuple[str, ...]
    frame: pd.DataFrame
    layout: str
    duplicates: int = 0


def _split_of(name: str) -> str | None:
    """``train``, ``test`` or ``val`` for a folder or CSV value named like a split, else None."""
    return SPLIT_NAMES.get(name.strip().lower())


def _destinations(validation: str | None) -> dict[str, str]:
    """Where each split goes: validation data is labeled data, so the pool unless asked otherwise."""
    return {"train": POOL, "test": TEST, "val": TEST if validation == TEST else POOL}


def _labeled(frame: pd.DataFrame, empty: str) -> tuple[tuple[str, ...], pd.DataFrame]:
    """The classes of the labeled pool, and the items with a ``label`` in place of ``_class``;
    ``empty`` is the error for a labeled pool without images."""
    classes = tuple(sorted(frame._class[frame.split == POOL].unique()))
    if not classes:
        raise DataError(empty)
    unknown = set(frame._class[frame.split == TEST]) - set(classes)
    if unknown:
        raise DataError(f"test classes {sorted(unknown)} are not in the labeled pool: add or remove them")
    frame = frame.assign(label=frame._class.map({c: i for i, c in enumerate(classes)}).astype(np.int64))
    return classes, frame.drop(columns="_class").reset_index(drop=True)


def _split_folders(where: str, folders: list[str], validation: str | None) -> dict[str, str]:
    """Each split folder of the root -> its split; a root that would be misread is an error."""
    kinds = {f: _split_of(f) for f in folders}
    others = [f for f in folders if kinds[f] is None]
    if others:
        found = ", ".join(f for f in folders if kinds[f])
        listed = ", ".join(others)
        raise DataError(
            f"data.path '{where}' mixes split folders ({found}) with other folders ({listed}): skip them with "
            f"data.ignore=[{listed}] or point data.path at a folder without them; if they are classes, move them "
            "into the split folders (or rename a class that is named like a split)"
        )
    for kind in sorted(set(kinds.values())):
        same = [f for f in folders if kinds[f] == kind]
        if len(same) > 1:
            raise DataError(f"data.path '{where}' has {len(same)} {kind} folders ({', '.join(same)}): keep one")
    if "train" not in kinds.values():
        raise DataError(
            f"data.path '{where}' has {', '.join(folders)} but no train folder: "
            f"add {where}/train/<class>/<image> for the labeled pool"
        )
    destinations = _destinations(validation)
    return {f: destinations[kind] for f, kind in kinds.items()}


def _check_class_names(where: str, parts: pd.Series) -> None:
    """A class folder named like a split inside a split folder is a doubly nested download."""
    named_like_split = parts.str[1].map(_split_of).notna()
    nested = sorted((parts.str[0] + "/" + parts.str[1])[named_like_split].unique())
    if nested:
        raise DataError(
            f"data.path '{where}' has class folders named like splits ({', '.join(nested[:3])}): "
            "lay the data out as <split>/<class>/<image>"
        )


def _check_not_wrapped(where: str, parts: pd.Series) -> None:
    """One folder holding several folders is the folder of a download, not a one-class study."""
    top = parts.str[0].unique()
    inner = parts[parts.str.len() >= 3].str[1].unique()
    if len(top) == 1 and len(inner) >= 2:
        kind = "split" if all(_split_of(name) for name in inner) else "class"
        raise DataError(
            f"data.path '{where}' holds one folder '{top[0]}' of {kind} folders: point data.path at {where}/{top[0]}"
        )


def _folder_frame(
    root: Location, validation: str | None, progress: Progress | None, ignore: list[str] | None = None
) -> _Listing:
    """An ImageFolder root: ``<class>/<image>``, or split folders such as ``train/<class>/<image>``
    (+ ``test/``, ``val/``; named in any case, ``Training/``, ``valid/``...); the folders named in
    ``ignore`` (data.ignore) are not listed."""
    where = root.item(root.path)
    ignore = ignore or []
    if ignore:
        present = root.folders(root.path)
        unknown = [name for name in ignore if name not in present]
        if unknown:
            raise DataError(
                f"data.ignore names '{unknown[0]}', not a folder of data.path '{where}': its folders are "
                f"{', '.join(present)}"
            )
    step = (lambda n: progress("listing", n, None)) if progress else None
    frame, duplicates = _without_symlink_duplicates(root.images(root.path, step, skip=ignore))
    parts = relative(frame.item, root).str.split("/")
    in_folder = parts.str.len() >= 2  # images at the root itself have no class
    frame, parts = frame[in_folder], parts[in_folder]
    folders = sorted(parts.str[0].unique())
    expected = where
    if any(_split_of(f) for f in folders):
        splits = _split_folders(where, folders, validation)
        expected += "/" + next(f for f in folders if _split_of(f) == "train")
        in_class = parts.str.len() >= 3
        frame, parts = frame[in_class], parts[in_class]
        _check_class_names(where, parts)
        frame = frame.assign(split=parts.str[0].map(splits), _class=parts.str[1])
        layout = "split folders " + ", ".join(f"{f}/ -> {SPLIT_TITLES[s]}" for f, s in splits.items())
    else:
        _check_not_wrapped(where, parts)
        frame = frame.assign(split=POOL, _class=parts.str[0])
        layout = "class folders <class>/<image>"
    classes, frame = _labeled(frame, f"no images found under '{expected}': expected {expected}/<class>/<image> files")
    if ignore:
        layout += f"; {', '.join(f'{name}/' for name in ignore)} ignored"
    return _Listing(classes, frame, layout, duplicates)


def _read_csv(csv: Location) -> pd.DataFrame:
    """The CSV's rows as text, column names lower-cased; a file that is no CSV is an error."""
    where = csv.item(csv.path)
    try:
        with csv.filesystem.open_input_stream(csv.path) as handle:
            table = pd.read_csv(handle, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        reason = str(error).strip().splitlines()[0]
        raise DataError(f"data.path '{where}' cannot be read as a CSV ({reason}): write path,label rows") from None
    table.columns = table.columns.str.strip().str.lower()
    if not {"path", "label"} <= set(table.columns):
        raise DataError(f"data.path '{where}' needs the columns path,label: it has {','.join(table.columns)}")
    return table.map(str.strip)


def _csv_splits(where: str, table: pd.DataFrame, validation: str | None) -> pd.Series:
    """Each row's split from the optional ``split`` column (train when there is none)."""
    if "split" not in table:
        return pd.Series(POOL, index=table.index)
    kinds = table.split.map(_split_of)
    if kinds.isna().any():
        bad = sorted(table.split[kinds.isna()].unique())
        raise DataError(f"data.path '{where}' has split values {bad[:3]}: use train, test or val")
    return kinds.map(_destinations(validation))


def _csv_frame(csv: Location, validation: str | None) -> _Listing:
    """A CSV of ``path,label[,split]``; paths relative to the CSV's folder or absolute."""
    where = csv.item(csv.path)
    table = _read_csv(csv)
    if (table.label == "").any():
        raise DataError(f"data.path '{where}' has {(table.label == '').sum()} rows without a label: label or drop them")
    folder = posixpath.dirname(csv.path)
    paths = [posixpath.normpath(posixpath.join(folder, p)) for p in table.path]
    infos = csv.filesystem.get_file_info(paths)
    missing = [csv.item(i.path) for i in infos if i.type != fs.FileType.File]
    if missing:
        raise DataError(
            f"data.path '{where}' lists {len(missing)} files that do not exist ({', '.join(missing[:3])}): "
            "fix the paths (relative to the CSV's folder, or absolute)"
        )
    frame = pd.DataFrame(
        {
            "item": pd.Series([csv.item(p) for p in paths], dtype=object),
            "size": np.array([i.size or 0 for i in infos], dtype=np.int64),
            "mtime": np.array([i.mtime_ns or 0 for i in infos], dtype=np.int64),
            "split": _csv_splits(where, table, validation).to_numpy(),
            "_class": table.label.to_numpy(),
        }
    )
    classes, frame = _labeled(frame, f"data.path '{where}' has no train rows: the labeled pool comes from split=train")
    columns = ",".join(c for c in ("path", "label", "split") if c in table)
    return _Listing(classes, frame, f"a CSV of {columns}")


def _torchvision_frame(cfg) -> tuple[tuple[str, ...], pd.DataFrame]:
    """Items and labels of a torchvision dataset in ``data.path``; offline, the files must be there."""
    import torchvision.datasets

    from pretrain.images import _TORCHVISION

    folder, title = TORCHVISION_DATASETS[cfg.name]
    root = Path(cfg.path).expanduser()
    dataset = getattr(torchvision.datasets, _TORCHVISION[cfg.name])
    splits = {POOL: "train", TEST: "test"}
    rows, classes = [], ()
    for split, name in splits.items():
        kwargs = {"split": name} if cfg.name == "stl10" else {"train": name == "train"}
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
        labels = np.asarray(data.targets if hasattr(data, "targets") else data.labels, dtype=np.int64)
        rows.append(pd.DataFrame({"item": [f"{cfg.name}:{name}:{i}" for i in range(len(labels))], "label": labels}))
        rows[-1]["split"] = split
        classes = classes or tuple(data.classes)
    if cfg.name == "stl10" and not cfg.unlabeled_path:  # STL-10's 100,000 unlabeled images
        n = (root / folder / "unlabeled_X.bin").stat().st_size // (3 * 96 * 96)
        rows.append(pd.DataFrame({"item": [f"stl10:unlabeled:{i}" for i in range(n)], "label": -1, "split": UNLABELED}))
    return classes, pd.concat(rows, ignore_index=True)


def _per_class_cap(frame: pd.DataFrame, split: str, cap: int | None, seed: int) -> pd.DataFrame:
    """At most ``cap`` items per class of ``split``, chosen reproducibly from ``seed``."""
    part = frame[frame.split == split]
    if cap is None or part.empty:
        return frame
    shuffled = part.sample(frac=1.0, random_state=seed)
    keep = shuffled.groupby("label", sort=False).head(cap).index
    return frame.drop(part.index.difference(keep))


def _keep_classes(wanted: list[str], classes: tuple[str, ...], frame: pd.DataFrame) -> pd.DataFrame:
    unknown = [c for c in wanted if c not in classes]
    if unknown:
        raise DataError(f"data.classes {unknown} not in the data: its classes are {', '.join(classes)}")
    relabel = {classes.index(c): i for i, c in enumerate(wanted)}
    labeled = frame[frame.label.isin(list(relabel))]
    return labeled.assign(label=labeled.label.map(relabel).astype(np.int64))


def _listing(cfg, progress: Progress | None) -> tuple[_Listing, ImageSource, str]:
    """The labeled items of ``data.name`` / ``data.path``, how to decode them, and a title."""
    if cfg.name == "digits":
        from sklearn.datasets import load_digits

        labels = load_digits().target.astype(np.int64)
        frame = pd.DataFrame({"item": [f"digits:{i}" for i in range(len(labels))], "label": labels, "split": POOL})
        listing = _Listing(tuple(str(c) for c in range(10)), frame, "one labeled set")
        return listing, ImageSource(cfg.image_size or 16, 1), "sklearn digits"
    if cfg.name in TORCHVISION_DATASETS:
        listing = _Listing(*_torchvision_frame(cfg), "torchvision's own splits")
        native = 96 if cfg.name == "stl10" else 32
        root = str(Path(cfg.path).expanduser().resolve())
        source = ImageSource(cfg.image_size or native, cfg.channels or 3, root)
        return listing, source, f"{TORCHVISION_DATASETS[cfg.name][1]} in {root}"
    if cfg.path.lower().endswith(".csv"):
        if cfg.ignore:
            raise DataError(f"data.ignore skips folders, and data.path '{cfg.path}' is a CSV: drop its rows instead")
        where = _location(cfg.path, "data.path", fs.FileType.File)
        listing = _csv_frame(where, cfg.validation)
    else:
        where = _location(cfg.path, "data.path")
        listing = _folder_frame(where, cfg.validation, progress, cfg.ignore)
    return listing, ImageSource(cfg.image_size or 32, cfg.channels or 3), where.item(where.path)


def plan_data(cfg, progress: Progress | None = None) -> DataPlan:
    """List items and draw the fixed stratified test split; no image is decoded here.

    ``cfg`` is a :class:`cluster.config.DataConfig` (any object with the same fields).
    """
    (classes, frame, layout, duplicates), source, description = _listing(cfg, progress)
    frame = frame.reindex(columns=["item", "label", "split", "size", "mtime"]).fillna({"size": 0, "mtime": 0})
    frame = frame.astype({"size": np.int64, "mtime": np.int64, "label": np.int64})
    if cfg.classes:
        labeled = _keep_classes(cfg.classes, classes, frame[frame.split != UNLABELED])
        frame = pd.concat([labeled, frame[frame.split == UNLABELED]], ignore_index=True)
        classes = tuple(cfg.classes)
    if len(classes) < 2:
        raise DataError(f"the data has one class ({classes[0]}): a classification study needs at least 2 class folders")
    if not (frame.split == TEST).any():
        pool = frame[frame.split == POOL]
        test_index = _stratified_test(pool, cfg.test_fraction, cfg.split_seed, "")
        frame.loc[test_index, "split"] = TEST
        layout += f"; no test split given: {cfg.test_fraction:.0%} of each class drawn as the test split"
    frame = _per_class_cap(frame, POOL, cfg.max_per_class, cfg.split_seed)
    frame = _per_class_cap(frame, TEST, cfg.max_test_per_class, cfg.split_seed)
    if cfg.unlabeled_path:
        extra_root = _location(cfg.unlabeled_path, "data.unlabeled_path")
        step = (lambda n: progress("listing", n, None)) if progress else None
        extra = extra_root.images(extra_root.path, step).assign(label=-1, split=UNLABELED)
        if extra.empty:
            raise DataError(
                f"no images found under data.unlabeled_path '{cfg.unlabeled_path}': add images or remove it"
            )
        frame = pd.concat([frame[frame.split != UNLABELED], extra[frame.columns]], ignore_index=True)
    extra = frame[frame.split == UNLABELED]
    if cfg.max_unlabeled is not None and len(extra) > cfg.max_unlabeled:
        keep = np.random.default_rng(cfg.split_seed).choice(len(extra), cfg.max_unlabeled, replace=False)
        frame = frame.drop(extra.index.delete(keep))
    minimum = MIN_TEST_PER_CLASS if cfg.min_test_per_class is None else cfg.min_test_per_class
    rule = SplitRule(cfg.test_split == "resplit", minimum, cfg.test_fraction, cfg.split_seed)
    return DataPlan(classes, _in_order(frame), source, description, duplicates, layout, rule)


def _in_order(frame: pd.DataFrame) -> pd.DataFrame:
    """The manifest's order: pool, test, unlabeled, each by item."""
    order = frame.split.map({POOL: 0, TEST: 1, UNLABELED: 2})
    return frame.assign(_order=order).sort_values(["_order", "item"]).drop(columns="_order").reset_index(drop=True)


def _read_all(source: ImageSource, items: list[str], progress: Progress | None, step: str, hashes: bool = True):
    """Decode ``items`` in threads (PIL releases the GIL); per item: readable?, pixel hash, sums,
    the channels the file had."""

    def one(item: str):
        array, channels = source.decode(item)
        if array is None:
            return False, "", None, 0
        pixels = array.reshape(array.shape[0], -1).astype(np.float64) / 255.0
        stats = (pixels.sum(1), (pixels**2).sum(1), pixels.shape[1])
        return True, hashlib.blake2b(array.tobytes(), digest_size=16).hexdigest() if hashes else "", stats, channels

    results = []
    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        for i, result in enumerate(pool.map(one, items, chunksize=64)):
            results.append(result)
            if progress and (i + 1) % 256 == 0:
                progress(step, 256, len(items))
    if progress:
        progress(step, len(items) % 256, len(items))
    return results


def _moments(results) -> tuple[tuple[float, ...], tuple[float, ...]]:
    stats = [r[2] for r in results if r[2] is not None]
    total = sum(s[0] for s in stats)
    squares = sum(s[1] for s in stats)
    n = sum(s[2] for s in stats)
    mean = total / n
    variance = (squares - n * mean**2) / max(n - 1, 1)
    return tuple(mean.tolist()), tuple(np.sqrt(np.maximum(variance, 0)).clip(min=1e-3).tolist())


def _stratified_test(images: pd.DataFrame, fraction: float, seed: int, context: str) -> pd.Index:
    """The index of a stratified test split of ``fraction`` of each class of ``images``, drawn
    with ``seed``; ``context`` starts the error lines."""
    from sklearn.model_selection import train_test_split  # scipy: 2 s to import, only needed here

    if np.bincount(images.label).min() < 2:
        raise DataError(f"{context}a class has fewer than 2 images: a stratified test split needs at least 2")
    try:
        _, test_index = train_test_split(images.index, test_size=fraction, stratify=images.label, random_state=seed)
    except ValueError:  # fewer images left on one side than there are classes
        raise DataError(
            f"{context}data.test_fraction={fraction} leaves a class no image in the labeled pool or the test "
            "split: change data.test_fraction or add images"
        ) from None
    return test_index


def _resplit(frame: pd.DataFrame, hashes: pd.Series, rule: SplitRule) -> pd.DataFrame:
    """The labeled pool and the test split pooled and split again, stratified, with ``rule``'s
    fraction and seed. Images with the same pixels form one unit and land on one side together,
    so the new test split shares no image with the pool."""
    labeled = frame[frame.split != UNLABELED]
    groups = hashes[labeled.index]
    distinct = labeled[~groups.duplicated().to_numpy()]
    test_index = _stratified_test(distinct, rule.fraction, rule.seed, "data.test_split=resplit: ")
    frame = frame.copy()
    frame.loc[labeled.index, "split"] = np.where(groups.isin(set(groups[test_index])), TEST, POOL)
    return frame


def _check_test_split(data: StudyData, rule: SplitRule) -> None:
    """Refuse a test split that cannot measure every class (one image moves a class of 5 by 20 points;
    a class without any is not measured), saying how to redraw it or to go on as it is."""
    counts = data.test_counts()
    short = {name: n for name, n in counts.items() if n < rule.minimum}
    if not short:
        return
    shown = f"test split: {_counted(counts)}" if len(counts) <= SUMMARY_CLASSES else f"short: {_counted(short)}"
    problem = f"{len(short)} of {len(counts)} classes have fewer than {rule.minimum} test images"
    go_on = "data.min_test_per_class=0 to go on as is"
    if data.resplit:
        raise DataError(
            f"the test split cannot measure every class: {problem} in the test split redrawn with "
            f"data.test_fraction={rule.fraction:g} ({shown}): raise data.test_fraction or add images, or set {go_on}"
        )
    images = f"{data.leaked} test image{'s' if data.leaked != 1 else ''}"
    guard = f" after the duplicate guard left out {images} also in the pool" if data.leaked else ""
    raise DataError(
        f"the test split cannot measure every class: {problem}{guard} ({shown}): set data.test_split=resplit to "
        f"draw a stratified test split (data.test_fraction={rule.fraction:g}) from the de-duplicated images, "
        f"or {go_on}"
    )


def load_data(
    plan: DataPlan, progress: Progress | None = None, stats_sample: int = STATS_SAMPLE, seed: int = 0
) -> StudyData:
    """Verify the labeled pool and the test split, and estimate the normalization statistics.

    Unreadable images are skipped and counted; a test image whose file or pixels also appear in
    the pool (or the pretraining pool) is leakage and leaves the test split. With
    ``data.test_split=resplit`` the test split is then drawn again from the de-duplicated images;
    a test split that leaves a class under ``data.min_test_per_class`` images is refused (raises
    :class:`DataError`) before any compute. Mean and std come from a fixed random sample of at
    most ``stats_sample`` pretraining images.
    """
    frame = plan.frame
    labeled = frame[frame.split != UNLABELED]
    checked = _read_all(plan.source, labeled.item.tolist(), progress, "verifying")
    ok = pd.Series([r[0] for r in checked], index=labeled.index)
    hashes = pd.Series([r[1] for r in checked], index=labeled.index)
    converted = sum(1 for r in checked if r[0] and r[3] != plan.channels)
    bad = ok.index[~ok]
    skipped_files = frame.item[bad].tolist()
    if skipped_files:
        log.warning("skipped %d unreadable images of %s", len(skipped_files), plan.description)
    frame = frame.drop(bad)
    unlabeled = set(frame.item[frame.split == UNLABELED])

    def leaks(frame: pd.DataFrame) -> pd.Index:
        pool_hashes = set(hashes[frame.index[frame.split == POOL]])
        test = frame[frame.split == TEST]
        return test.index[hashes[test.index].isin(pool_hashes) | test.item.isin(unlabeled)]

    leaked = leaks(frame)
    frame = frame.drop(leaked)
    if plan.rule.resplit and (frame.split == POOL).any():
        frame = _resplit(frame, hashes, plan.rule)
        more = leaks(frame)  # only a file listed both as labeled and in data.unlabeled_path can be left
        frame, leaked = frame.drop(more), leaked.append(more)
    frame = _in_order(frame) if plan.rule.resplit else frame.reset_index(drop=True)
    if not (frame.split == POOL).any() or not (frame.split == TEST).any():
        raise DataError(f"no readable images in {plan.description}: every file failed to decode")
    pretraining = frame.item[frame.split != TEST].to_numpy()
    sample = np.sort(np.random.default_rng(seed).permutation(len(pretraining))[:stats_sample])
    verified = dict(zip(labeled.item, checked, strict=True))  # the labeled pool is decoded already
    sampled = [verified.get(item) for item in pretraining[sample]]
    missing = [item for item, r in zip(pretraining[sample], sampled, strict=True) if r is None]
    results = [r for r in sampled if r is not None] + _read_all(plan.source, missing, progress, "statistics", False)
    if not any(r[0] for r in results):
        raise DataError(f"no readable images in the pretraining pool of {plan.description}")
    mean, std = _moments(results)
    data = StudyData(
        plan.classes,
        frame,
        plan.source,
        mean,
        std,
        plan.description,
        digest(plan.frame),
        len(skipped_files),
        len(leaked),
        skipped_files,
        converted,
        plan.rule.resplit,
    )
    _check_test_split(data, plan.rule)
    return data


def verification_record(data: StudyData) -> bytes:
    """What :func:`load_data` found, as Parquet (the kept rows; statistics and counts as metadata):
    kept with the study run, so that a resumed study does not decode every labeled image again."""
    found = {
        "digest": data.digest,
        "mean": list(data.mean),
        "std": list(data.std),
        "skipped": data.skipped,
        "leaked": data.leaked,
        "skipped_files": data.skipped_files,
        "converted": data.converted,
        "resplit": data.resplit,
    }
    return to_parquet(data.frame, found)


def recorded_data(plan: DataPlan, path: str | os.PathLike) -> StudyData:
    """The :class:`StudyData` of ``plan`` from its :func:`verification_record` at ``path``; its test
    split is checked again (a record of an earlier release was never checked)."""
    frame, found = from_parquet(path)
    frame = frame.astype({"item": object})  # as listed: Parquet reads strings back as pandas' str dtype
    if found.get("digest") != plan.digest:
        raise DataError(f"the verification record at {path} is of manifest {found.get('digest')}, not {plan.digest}")
    data = StudyData(
        plan.classes,
        frame,
        plan.source,
        tuple(found["mean"]),
        tuple(found["std"]),
        plan.description,
        plan.digest,
        found["skipped"],
        found["leaked"],
        found["skipped_files"],
        found.get("converted", 0),
        found.get("resplit", False),
    )
    _check_test_split(data, plan.rule)
    return data
