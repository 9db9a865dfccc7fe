"""Dataset discovery, validation and duplicate detection.

`discover` walks a folder-per-class dataset, decodes every image once (to catch truncated or fake files),
hashes its bytes (exact duplicates) and its downscaled pixels (near-copies), and returns a Manifest.
`check` reports what would bias training or scores; `group_ids` ties copies and near-copies together so
that `leukoscope.data.split` never lets them straddle two parts.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from leukoscope.data.classes import canonical_class, resolve_classes
from leukoscope.data.fileio import sha256_bytes
from leukoscope.data.imaging import IMAGE_SUFFIXES, load_rgb, read_info
from leukoscope.data.manifest import ImageRecord, Manifest, Problem
from leukoscope.errors import DataError, ImageError

_WRAPPER_PREFERENCE = ("original", "originals", "images")


def _image_files(folder: Path) -> tuple[list[Path], list[str]]:
    """Image files under `folder` (recursive, symlinked folders not followed, so loops cannot hang us)."""
    found: list[Path] = []
    notes: list[str] = []

    def unreadable(exc: OSError) -> None:
        notes.append(f"{exc.filename}: cannot read folder: {exc.strerror or exc}")

    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False, onerror=unreadable):
        base = Path(dirpath)
        for name in list(dirnames):
            if (base / name).is_symlink():
                notes.append(f"{(base / name)}: symbolic link to a folder, not followed")
        for name in filenames:
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.append(base / name)
    found.sort()
    return found, notes


def _is_link_loop(path: Path) -> bool:
    """True for a symbolic link to the folder it sits in or to a folder above it: walking it would loop."""
    if not path.is_symlink():
        return False
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return True
    parent = path.parent.resolve()
    return target == parent or target in parent.parents


def _subfolders(folder: Path, notes: list[str]) -> list[Path]:
    """Visible subfolders of `folder`, sorted; symbolic-link loops are skipped with a note."""
    found = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_dir():
            continue
        if _is_link_loop(path):
            notes.append(f"{path}: symbolic link to a folder above it (a loop), skipped")
            continue
        found.append(path)
    return found


def _holds_images(folder: Path) -> bool:
    """True when image files sit directly in `folder` (a class folder, not a wrapper of class folders)."""
    try:
        return any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir())
    except OSError:
        return False


def _class_root(root: Path) -> tuple[Path, list[str]]:
    """Find the folder whose subfolders are the classes, descending through wrapper folders.

    Handles `Blood cell Cancer [ALL]/` (one wrapper) and the Kaggle `Original/` + `Segmented/` pair (the
    original images are used; segmented ones are a derived product that users never have at prediction).
    """
    notes: list[str] = []
    current = root
    for _ in range(3):
        subdirs = _subfolders(current, notes)
        if _holds_images(current) or not subdirs:
            break
        if len(subdirs) == 1 and canonical_class(subdirs[0].name) is None and not _holds_images(subdirs[0]):
            # one folder of folders is a wrapper; one folder of images (a lab's own normal lymphocytes in
            # Benign/ or lymphocyte/) is a one-class dataset, whose class the model may or may not know
            current = subdirs[0]
            continue
        if resolve_classes(d.name for d in subdirs).is_canonical:
            break
        wrapper = next((d for d in subdirs if d.name.lower() in _WRAPPER_PREFERENCE), None)
        if wrapper is None:
            break
        others = [d.name for d in subdirs if d != wrapper]
        notes.append(f"using {wrapper.name}/ (other folders here: {others})")
        current = wrapper
    return current, notes


def dhash(image: Image.Image) -> str:
    """64-bit difference hash of the downscaled grayscale image: equal or near for near-copies."""
    small = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.BILINEAR), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


@dataclass(frozen=True)
class _Scanned:
    record: ImageRecord | None
    problem: Problem | None


def _scan_one(path: Path, rel: str, label: str) -> _Scanned:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return _Scanned(None, Problem(rel, f"cannot read file: {exc.strerror or exc}"))
    try:
        mode = read_info(data).mode
        image = load_rgb(data)
    except ImageError as exc:
        return _Scanned(None, Problem(rel, str(exc)))
    except Exception as exc:  # any decoder failure of one file must not stop a scan of thousands
        return _Scanned(None, Problem(rel, f"corrupt image: {exc}"))
    record = ImageRecord(
        path=rel, label=label, sha256=sha256_bytes(data), width=image.width, height=image.height,
        mode=mode, bytes=len(data), dhash=dhash(image),
    )
    return _Scanned(record, None)


def discover(
    root: str | Path,
    *,
    workers: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> Manifest:
    """Scan a folder-per-class dataset into a Manifest; unreadable files are listed in `problems`.

    Raises DataError when the folder is missing, empty or has no class folders.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"not a folder: {root}")
    try:
        class_root, notes = _class_root(root)
        class_dirs = _subfolders(class_root, notes)
    except PermissionError:
        raise DataError(f"permission denied: {root}") from None
    if not class_dirs:
        raise DataError(f"no class folders in {class_root} (expected one subfolder per class)")
    mapping = resolve_classes(d.name for d in class_dirs)
    jobs: list[tuple[Path, str, str]] = []
    for class_dir in class_dirs:
        files, walk_notes = _image_files(class_dir)
        notes.extend(walk_notes)
        if not files:
            notes.append(f"class folder {class_dir.name}/ has no images")
        label = mapping.folder_to_class[class_dir.name]
        jobs.extend((f, f.relative_to(root).as_posix(), label) for f in files)
    if not jobs:
        raise DataError(f"no images found under {root}")
    results: list[_Scanned] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for i, scanned in enumerate(pool.map(lambda job: _scan_one(*job), jobs), start=1):
            results.append(scanned)
            if progress is not None:
                progress(i, len(jobs))
    records = [s.record for s in results if s.record is not None]
    problems = [s.problem for s in results if s.problem is not None]
    return Manifest(root, mapping.classes, records, problems, list(dict.fromkeys(notes)))


# ----------------------------------------------------------------------------------------------- checks


@dataclass
class DatasetReport:
    """What `leukoscope data check` reports; `blocking` lists what makes training impossible."""

    manifest: Manifest
    duplicate_groups_within: list[list[str]]
    duplicate_groups_across: list[list[str]]
    size_outliers: list[tuple[str, int, int]]
    modal_size: tuple[int, int] | None
    blocking: list[str]

    @property
    def usable(self) -> bool:
        return not self.blocking

    def as_dict(self) -> dict:
        m = self.manifest
        per_class = {}
        for name in m.classes:
            recs = [r for r in m.records if r.label == name]
            per_class[name] = {
                "count": len(recs),
                "sizes": dict(Counter(f"{r.width}x{r.height}" for r in recs).most_common()),
                "modes": dict(Counter(r.mode for r in recs).most_common()),
            }
        return {
            "root": str(m.root),
            "classes": list(m.classes),
            "images": len(m),
            "per_class": per_class,
            "problems": [{"path": p.path, "reason": p.reason} for p in m.problems],
            "duplicates_within_class": self.duplicate_groups_within,
            "duplicates_across_classes": self.duplicate_groups_across,
            "modal_size": list(self.modal_size) if self.modal_size else None,
            "size_outliers": [{"path": p, "width": w, "height": h} for p, w, h in self.size_outliers],
            "notes": list(m.notes),
            "blocking": list(self.blocking),
            "usable": self.usable,
        }


def duplicate_groups(records: Iterable[ImageRecord]) -> list[list[ImageRecord]]:
    """Groups (size >= 2) of records with identical bytes."""
    by_hash: dict[str, list[ImageRecord]] = defaultdict(list)
    for record in records:
        by_hash[record.sha256].append(record)
    return [group for group in by_hash.values() if len(group) > 1]


def check(manifest: Manifest) -> DatasetReport:
    """Validate a discovered dataset: duplicates, label conflicts, odd sizes, empty classes."""
    within, across = [], []
    for group in duplicate_groups(manifest.records):
        paths = sorted(r.path for r in group)
        (within if len({r.label for r in group}) == 1 else across).append(paths)
    sizes = Counter((r.width, r.height) for r in manifest.records)
    modal = sizes.most_common(1)[0][0] if sizes else None
    outliers = [(r.path, r.width, r.height) for r in manifest.records if (r.width, r.height) != modal]
    blocking = []
    counts = manifest.class_counts()
    if len(manifest.classes) < 2:
        blocking.append(f"only {len(manifest.classes)} class folder(s); classification needs at least 2")
    for name, count in counts.items():
        if count == 0:
            blocking.append(f"class {name!r} has no usable images")
    for paths in across:
        blocking.append(f"label conflict: identical image in several classes: {', '.join(paths)}")
    return DatasetReport(manifest, within, across, outliers, modal, blocking)


# ------------------------------------------------------------------------------------- duplicate groups


def _near_duplicate_pairs(hashes: list[str], max_distance: int) -> list[tuple[int, int]]:
    values = np.array([int(h, 16) if h else 0 for h in hashes], dtype=np.uint64)
    pairs = []
    for i in range(len(values) - 1):
        xor = np.bitwise_xor(values[i + 1 :], values[i])
        distance = np.unpackbits(xor.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)
        for j in np.nonzero(distance <= max_distance)[0]:
            pairs.append((i, i + 1 + int(j)))
    return pairs


def group_ids(manifest: Manifest, *, near_duplicate_distance: int | None = 4) -> list[int]:
    """One group id per record: exact copies share a group, and so do near-copies (dhash within the
    given Hamming distance) unless `near_duplicate_distance` is None."""
    parent = list(range(len(manifest)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(a: int, b: int) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    first_by_hash: dict[str, int] = {}
    for i, record in enumerate(manifest.records):
        union(i, first_by_hash.setdefault(record.sha256, i))
    if near_duplicate_distance is not None and all(r.dhash for r in manifest.records):
        for a, b in _near_duplicate_pairs([r.dhash for r in manifest.records], near_duplicate_distance):
            union(a, b)
    return [find(i) for i in range(len(manifest))]
