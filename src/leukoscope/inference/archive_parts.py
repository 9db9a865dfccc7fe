"""The output of `predict --engine ray` (leukoscope.inference.archive): a folder of Parquet parts that one
run at a time appends to, and that a rerun reads back to skip what is done.

Parts, not one file: each is written to a hidden temporary file and renamed into place
(leukoscope.data.fileio), so a crash or Ctrl-C loses only the rows not yet in a part, never a half-written
file, and pandas, pyarrow or Ray read the folder as one table (they skip hidden files). Every row names the
package that scored it, by model.json's sha256, so resuming with another package is refused instead of
mixing two models' answers in one table.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from leukoscope.data.fileio import sha256_file, write_bytes
from leukoscope.errors import DataError, UsageError
from leukoscope.inference.package import MODEL_JSON, bundled_package_path, is_package, verify_package

PART_ROWS = 10_000  # rows per Parquet part ...
PART_SECONDS = 60.0  # ... or fewer, once a minute: a crash loses at most a minute of work


def first_line(exc: BaseException) -> str:
    """An exception as one line (Ray's and pyarrow's messages run over many)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ------------------------------------------------------------------------------------------- rows


def row_schema(classes: Sequence[str]) -> Any:
    """Parquet columns: `predict --format csv`'s (Prediction.to_row), the package's name and sha256, and when
    the row was made (UTC; a file that could not be read is tried again on a rerun: its newest row counts)."""
    import pyarrow as pa

    text, real = pa.string(), pa.float64()
    return pa.schema([("path", text), ("status", text), ("label", text), ("confidence", real),
                      ("review", pa.bool_()), ("review_codes", text), ("review_reasons", text),
                      *((f"p_{c}", real) for c in classes), ("ood_score", real), ("width", pa.int64()),
                      ("height", pa.int64()), ("sha256", text), ("error", text), ("model", text),
                      ("model_sha256", text), ("scored_at", pa.timestamp("ms", tz="UTC"))])


@dataclass(frozen=True)
class PackageId:
    """Which package scored a row: model.json's `name` and the sha256 of model.json, which lists the
    sha256 of every other file of the package."""

    path: Path
    name: str
    sha256: str
    classes: tuple[str, ...]


def package_id(model: str | Path | None) -> PackageId:
    """Check a model package (None: the bundled one) and name it; run folders must be exported first."""
    path = Path(model) if model is not None else bundled_package_path()
    path = path.parent if path.name == MODEL_JSON else path
    if model is not None and path.exists() and not is_package(path):
        raise UsageError(f"--engine ray runs model packages; {path} is not one (run `leukoscope export` first)")
    info = verify_package(path)
    return PackageId(path, str(info.get("name", path.name)), sha256_file(path / MODEL_JSON),
                     tuple(info["classes"]))


def package_files(package: PackageId) -> dict[str, bytes]:
    """The package's files as bytes, to ship to the actors through the object store."""
    info = verify_package(package.path)
    return {name: (package.path / name).read_bytes() for name in (MODEL_JSON, *info["files"])}


# ------------------------------------------------------------------------------------------- parts

@contextlib.contextmanager
def locked_output(out: Path) -> Iterator[None]:
    """OUT as a folder of parts, held by one run at a time (an advisory lock in OUT/.lock)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; --engine ray writes a folder of Parquet parts")
    if out.is_dir() and any(out.iterdir()) and not any(out.glob("part-*.parquet")) and not (out / ".lock").exists():
        raise UsageError(f"--out {out} is a folder without leukoscope parts; give a new name")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"another run is writing to --out {out}") from None
        except OSError:  # a file system without locks (some NFS mounts): one run at a time is up to the user
            pass
        yield


def done_hashes(out: Path, package: PackageId) -> np.ndarray:
    """Sorted sha256 (S64) of the images OUT already holds rows for; refuses rows of another package."""
    import pyarrow.parquet as pq

    found = [np.zeros(0, dtype="S64")]
    for part in sorted(out.glob("part-*.parquet")):
        try:
            table = pq.read_table(part, columns=["sha256", "model", "model_sha256"])
        except Exception as exc:
            raise DataError(f"{part} is not a readable part ({first_line(exc)}); move it away and rerun") from None
        models = dict(zip(table.column("model_sha256").to_pylist(), table.column("model").to_pylist(), strict=True))
        others = sorted({name for sha, name in models.items() if sha != package.sha256})
        if others:
            raise UsageError(f"--out {out} holds rows of another model package ({', '.join(others)}); "
                             f"give a new --out for {package.name}")
        found.append(np.asarray(table.column("sha256").to_pylist(), dtype="S64"))  # 64 bytes an image
    hashes = np.unique(np.concatenate(found))
    return hashes[hashes != b""]


class PartWriter:
    """Buffers rows and writes them as OUT/part-<run>-<n>.parquet, atomically, every `rows` rows or
    `seconds` seconds (and at close)."""

    def __init__(self, out: Path, schema: Any, *, rows: int = PART_ROWS, seconds: float = PART_SECONDS) -> None:
        self.out, self.schema, self.rows, self.seconds = out, schema, rows, seconds
        self.run = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
        self.buffer: list[Any] = []
        self.buffered = self.parts = 0
        self.last = time.monotonic()

    def add(self, table: Any) -> None:
        if table.num_rows:
            self.buffer.append(table.select(self.schema.names).cast(self.schema))
            self.buffered += table.num_rows
        if self.buffered >= self.rows or (self.buffered and time.monotonic() - self.last >= self.seconds):
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.last = time.monotonic()
        if not self.buffer:
            return
        sink = pa.BufferOutputStream()
        pq.write_table(pa.concat_tables(self.buffer), sink, compression="zstd")
        write_bytes(self.out / f"part-{self.run}-{self.parts:05d}.parquet", sink.getvalue().to_pybytes())
        self.buffer, self.buffered, self.parts = [], 0, self.parts + 1
