"""The image files a `predict` command line names: files, folders (searched recursively) and globs.

Its own module so `predict` (local and --engine ray) finds files one way, and says per argument what it lacked.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from leukoscope.data.imaging import is_image_path


def collect_images(args: list[str]) -> tuple[list[Path], list[str], list[str]]:
    """Image files named by files, folders (recursive) and globs, in order, without duplicates; the
    arguments that name nothing (errors), and the folders without images (warnings)."""
    found: list[Path] = []
    problems: list[str] = []
    empty: list[str] = []
    for arg in args:
        path = Path(arg)
        if not arg.strip():  # Path("") is ".": an unset shell variable must not predict the whole current folder
            problems.append(f"{arg!r}: empty path")
        elif path.is_dir():
            files = _folder_images(path)
            if not files:
                empty.append(f"{arg}: folder has no images")
            found.extend(files)
        elif path.is_file():
            found.append(path)  # named explicitly: decoding decides whether it is an image
        elif glob.has_magic(arg):
            matches = [Path(m) for m in sorted(glob.glob(arg, recursive=True))]
            files = [m for m in matches if m.is_file() and is_image_path(m)]
            for folder in (m for m in matches if m.is_dir()):
                files.extend(_folder_images(folder))
            if not files:
                problems.append(f"{arg}: no images match")
            found.extend(files)
        else:
            problems.append(f"{arg}: no such file or folder")
    return list(dict.fromkeys(found)), problems, empty


def _folder_images(folder: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(Path(dirpath) / n for n in sorted(filenames)
                     if not n.startswith(".") and is_image_path(Path(n)))
    return files
