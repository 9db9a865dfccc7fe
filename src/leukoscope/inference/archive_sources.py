"""Where an archive's images are named, for `predict --engine ray` (leukoscope.inference.archive).

Besides files, folders and globs (the CLI's own listing), an archive is often named by a manifest that a
lab's database exported: a CSV or Parquet file with a `path` column, relative to the manifest's folder or
absolute. Object-store URLs (s3://, gs://, hdfs://, file://) are listed and read through pyarrow's file
systems, the ones Ray reads too; leukoscope adds no client of its own.
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path
from typing import Any

from leukoscope.data.imaging import is_image_path
from leukoscope.errors import UsageError

MANIFEST_SUFFIXES = (".csv", ".parquet", ".pq")
PATH_COLUMN = "path"


def is_url(arg: str) -> bool:
    return "://" in arg


def is_manifest(arg: str) -> bool:
    """A local CSV or Parquet file (a manifest of paths, not an image)."""
    path = Path(arg)
    return not is_url(arg) and path.suffix.lower() in MANIFEST_SUFFIXES and path.is_file()


def manifest_paths(manifest: str | Path) -> list[str]:
    """The `path` column of a CSV or Parquet manifest: URLs and absolute paths as written, relative paths
    resolved against the manifest's folder; blank cells are skipped."""
    manifest = Path(manifest)
    try:
        if manifest.suffix.lower() == ".csv":
            with open(manifest, newline="", encoding="utf-8-sig") as handle:
                reader = csv.DictReader(handle)
                columns = list(reader.fieldnames or [])
                values = [row.get(PATH_COLUMN) for row in reader] if PATH_COLUMN in columns else None
        else:
            import pyarrow.parquet as pq

            columns = list(pq.read_schema(manifest).names)
            values = (pq.read_table(manifest, columns=[PATH_COLUMN]).column(PATH_COLUMN).to_pylist()
                      if PATH_COLUMN in columns else None)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UsageError(f"cannot read manifest {manifest}: {exc}") from None
    except Exception as exc:  # pyarrow's errors for a file that is not Parquet
        raise UsageError(f"cannot read manifest {manifest}: {str(exc).splitlines()[0]}") from None
    if values is None:
        raise UsageError(f"manifest {manifest} has no {PATH_COLUMN!r} column (columns: {', '.join(columns) or 'none'})")
    paths = []
    for value in values:
        text = str(value).strip() if value is not None else ""
        if text:
            paths.append(text if is_url(text) or Path(text).is_absolute() else str(manifest.parent / text))
    return paths


@functools.lru_cache(maxsize=16)
def _filesystem(root: str) -> Any:
    """One pyarrow file system per scheme and bucket (creating an S3 or GCS client costs a round trip)."""
    from pyarrow import fs

    return fs.FileSystem.from_uri(root)[0]


def _split_url(url: str) -> tuple[Any, str]:
    scheme, rest = url.split("://", 1)
    if scheme == "file":
        return _filesystem("file:///"), rest
    bucket = rest.split("/", 1)[0]
    return _filesystem(f"{scheme}://{bucket}"), rest


def url_paths(url: str) -> list[str]:
    """The image files under an object-store folder URL (recursive), or the URL itself when it is a file;
    [] when nothing is there."""
    from pyarrow import fs

    filesystem, path = _split_url(url)
    info = filesystem.get_file_info(path)
    if info.type == fs.FileType.File:
        return [url]
    if info.type != fs.FileType.Directory:
        return []
    scheme = url.split("://", 1)[0]
    found = filesystem.get_file_info(fs.FileSelector(path, recursive=True))
    return sorted(f"{scheme}://{f.path}" for f in found
                  if f.type == fs.FileType.File and is_image_path(Path(f.path))
                  and not any(part.startswith(".") for part in f.path[len(path):].split("/")))


def read_url(url: str) -> bytes:
    """The bytes of one object-store file."""
    filesystem, path = _split_url(url)
    with filesystem.open_input_stream(path) as stream:
        return stream.read()
