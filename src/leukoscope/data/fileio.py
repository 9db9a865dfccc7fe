"""Atomic file writing: a crash or Ctrl-C never leaves a half-written result behind.

Every file leukoscope produces is written to a temporary file in the same folder and then renamed over the
target, which POSIX makes atomic.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary file's path beside `path` for the block to write; synced to disk and renamed onto `path`
    only if the block ends without error, removed otherwise."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:  # name the file the caller asked for, not the temporary one
        raise OSError(exc.errno, exc.strerror, str(target)) from None
    os.close(fd)
    try:
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600; results are meant to be shared
        yield Path(tmp_name)
        with open(tmp_name, "rb") as written:
            os.fsync(written.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside `path`; rename it onto `path` only if the block ends without error."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as handle:
        yield handle
        handle.flush()


def write_text(path: str | Path, text: str) -> None:
    """UTF-8, except that file names which are not UTF-8 (surrogate-escaped by Python) are written back as
    their original bytes, so a CSV row still names the file on disk instead of failing the whole write."""
    with atomic_open(path, "w", encoding="utf-8", errors="surrogateescape") as handle:
        handle.write(text)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def save_torch(path: str | Path, obj: Any) -> None:
    """torch.save through a temporary file, so an interrupted save keeps the previous checkpoint. torch.save
    is given the file's path, not a Python file object: a Ctrl-C inside a Python write that PyTorch's C++
    writer called came out as RuntimeError ("unexpected pos"), an "unexpected error" instead of exit 130."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
