"""The manifest: every image of a study listed once as (item, label, split, size, mtime).

Listing goes through pyarrow's filesystems, so a local folder and ``s3://``, ``gs://`` or
``file://`` URIs take the same code; sub-folders are listed in parallel threads with a progress
line. The manifest is kept with the study as Parquet (auditable split, same list on resume) and
its digest enters the study fingerprint, so changed files start a new study run.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs

from pretrain.errors import LabelcurveError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
POOL, TEST, UNLABELED = "pool", "test", "unlabeled"
COLUMNS = ("item", "label", "split", "size", "mtime")
METADATA = b"labelcurve"  # the Parquet schema metadata key of to_parquet's metadata


class ListingError(LabelcurveError, ValueError):
    """A location that cannot be listed, phrased as one line for the user."""


@dataclass(frozen=True)
class Location:
    """A folder on some filesystem: the filesystem, the path on it, and how items are spelled."""

    filesystem: fs.FileSystem
    path: str
    prefix: str  # "" for local paths, "s3://" etc. for URIs

    @classmethod
    def parse(cls, where: str, key: str = "data.path") -> Location:
        """``where`` as a local folder or a URI; one-line errors for unknown schemes and bad paths."""
        if "://" not in where:
            return cls(fs.LocalFileSystem(), os.path.abspath(os.path.expanduser(where)), "")
        scheme = where.split("://", 1)[0]
        try:
            filesystem, path = fs.FileSystem.from_uri(where)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as error:
            raise ListingError(
                f"{key} '{where}': the URI scheme '{scheme}' cannot be read ({str(error).splitlines()[0]}): "
                "use a local folder or a file://, s3://, gs:// or hdfs:// URI"
            ) from None
        return cls(filesystem, path.rstrip("/"), "" if scheme == "file" else f"{scheme}://")

    def item(self, path: str) -> str:
        return self.prefix + path

    def kind(self, path: str) -> fs.FileType:
        try:
            return self.filesystem.get_file_info(path).type
        except OSError as error:
            raise ListingError(f"'{self.item(path)}' cannot be reached ({error}): check the path and access") from None

    def folders(self, path: str) -> list[str]:
        """Names of the sub-folders of ``path``, sorted."""
        infos = self.filesystem.get_file_info(fs.FileSelector(path))
        return sorted(i.base_name for i in infos if i.type == fs.FileType.Directory)

    def images(
        self, path: str, progress: Callable[[int], None] | None = None, skip: Collection[str] = ()
    ) -> pd.DataFrame:
        """Every image file under ``path`` (recursive; sub-folders in parallel), sorted by item; the
        sub-folders of ``path`` named in ``skip`` are not listed (a stray copy of a whole dataset)."""
        top = self.filesystem.get_file_info(fs.FileSelector(path))
        folders = [i.path for i in top if i.type == fs.FileType.Directory and i.base_name not in skip]
        files = [i for i in top if i.type == fs.FileType.File]

        def walk(folder: str) -> list:
            found = self.filesystem.get_file_info(fs.FileSelector(folder, recursive=True))
            found = [i for i in found if i.type == fs.FileType.File]
            if progress:
                progress(len(found))
            return found

        with ThreadPoolExecutor(max_workers=min(16, max(len(folders), 1))) as pool:
            for found in pool.map(walk, folders):
                files += found
        images = [i for i in files if os.path.splitext(i.base_name)[1].lower() in IMAGE_SUFFIXES]
        frame = pd.DataFrame(
            {
                "item": pd.Series([self.item(i.path) for i in images], dtype=object),
                "size": np.array([i.size or 0 for i in images], dtype=np.int64),
                "mtime": np.array([i.mtime_ns or 0 for i in images], dtype=np.int64),
            }
        )
        return frame.sort_values("item", ignore_index=True)


def relative(items: pd.Series, root: Location) -> pd.Series:
    """Items relative to the root folder, '/'-separated: the class is the first component."""
    start = len(root.item(root.path)) + 1
    return items.str.slice(start)


def digest(frame: pd.DataFrame) -> str:
    """A short hash of the listing (items, labels, splits, sizes, modification times)."""
    h = hashlib.sha256()
    for column in COLUMNS:
        h.update(column.encode())
        h.update(pd.util.hash_pandas_object(frame[column], index=False).to_numpy().tobytes())
    return h.hexdigest()[:12]


def to_parquet(frame: pd.DataFrame, metadata: dict | None = None) -> bytes:
    """The manifest columns of ``frame`` as Parquet; ``metadata`` (JSON) rides in the schema."""
    table = pa.Table.from_pandas(frame[list(COLUMNS)], preserve_index=False)
    if metadata is not None:
        table = table.replace_schema_metadata({**table.schema.metadata, METADATA: json.dumps(metadata).encode()})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def from_parquet(path: str | os.PathLike) -> tuple[pd.DataFrame, dict]:
    """What :func:`to_parquet` wrote: the frame and its metadata (empty when there was none)."""
    table = pq.read_table(path)
    extra = (table.schema.metadata or {}).get(METADATA)
    return table.to_pandas(), json.loads(extra) if extra else {}
