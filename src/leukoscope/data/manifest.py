"""The one data structure for "a set of labelled images": a Manifest of ImageRecords.

Discovery produces it, splitting annotates it with parts, training and evaluation consume it, and it is
saved with every run and every model package (as CSV that pandas reads), so a result always names exactly
which files, bytes and labels it came from.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from leukoscope.data.fileio import write_text
from leukoscope.errors import DataError

PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class ImageRecord:
    """One labelled image: its path relative to the dataset root, content hash, label and geometry."""

    path: str
    label: str
    sha256: str
    width: int = 0
    height: int = 0
    mode: str = ""
    bytes: int = 0
    dhash: str = ""
    part: str = ""


@dataclass(frozen=True)
class Problem:
    """A file that was found but cannot be used, with the reason (one line)."""

    path: str
    reason: str


@dataclass
class Manifest:
    """Images of one dataset, the class order a model uses for them, and the files that were skipped."""

    root: Path
    classes: tuple[str, ...]
    records: list[ImageRecord]
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> list[int]:
        """Label indices into `classes`, in record order."""
        index = {name: i for i, name in enumerate(self.classes)}
        return [index[r.label] for r in self.records]

    def paths(self) -> list[Path]:
        return [self.root / r.path for r in self.records]

    def class_counts(self) -> dict[str, int]:
        counts = Counter(r.label for r in self.records)
        return {name: counts.get(name, 0) for name in self.classes}

    def part(self, *names: str) -> Manifest:
        """The records of the given parts (e.g. "train"), keeping classes and root."""
        unknown = set(names) - set(PARTS)
        if unknown:
            raise DataError(f"unknown part {sorted(unknown)}; choose from {list(PARTS)}")
        chosen = [r for r in self.records if r.part in names]
        return Manifest(self.root, self.classes, chosen, [], list(self.notes))

    def with_records(self, records: Iterable[ImageRecord]) -> Manifest:
        return Manifest(self.root, self.classes, list(records), list(self.problems), list(self.notes))

    def digest(self) -> str:
        """sha256 over (path, sha256, label, part) of every record: names the exact data a result used."""
        lines = sorted(f"{r.path}\t{r.sha256}\t{r.label}\t{r.part}" for r in self.records)
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()

    def to_csv_text(self) -> str:
        buffer = io.StringIO()
        names = [f.name for f in fields(ImageRecord)]
        writer = csv.DictWriter(buffer, fieldnames=names, lineterminator="\n")
        writer.writeheader()
        for record in self.records:
            writer.writerow(asdict(record))
        return buffer.getvalue()

    def write_csv(self, path: str | Path) -> None:
        write_text(path, self.to_csv_text())


def read_manifest_csv(
    csv_path: str | Path, root: str | Path, classes: Sequence[str] | None = None
) -> Manifest:
    """Load a manifest or split CSV written by leukoscope; paths in it are relative to `root`."""
    csv_path = Path(csv_path)
    try:
        with open(csv_path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise DataError(f"cannot read {csv_path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{csv_path} is not a readable CSV file: {exc}") from None
    required = {"path", "label", "sha256"}
    if rows and not required <= set(rows[0]):
        raise DataError(f"{csv_path} is not a leukoscope manifest (needs columns {sorted(required)})")
    records = [_record_from_row(row, f"{csv_path}, line {i}") for i, row in enumerate(rows, start=2)]
    found = {r.label for r in records}
    if classes is None:
        from leukoscope.data.classes import CANONICAL_CLASSES

        classes = CANONICAL_CLASSES if found <= set(CANONICAL_CLASSES) else tuple(sorted(found))
    elif not found <= set(classes):
        extra = sorted(found - set(classes))
        raise DataError(f"{csv_path} has labels {extra} outside the classes {list(classes)}")
    return Manifest(Path(root), tuple(classes), records)


def _record_from_row(row: dict, where: str) -> ImageRecord:
    """One CSV row as an ImageRecord; a malformed row is a DataError naming its line."""
    known = {f.name for f in fields(ImageRecord)}
    values = {k: v for k, v in row.items() if k in known}
    if any(v is None for v in values.values()):
        raise DataError(f"{where}: too few columns")
    if not values["path"] or not values["label"]:
        raise DataError(f"{where}: empty path or label")
    for name in ("width", "height", "bytes"):
        try:
            values[name] = int(values.get(name) or 0)
        except ValueError:
            raise DataError(f"{where}: {name} must be a whole number, got {values[name]!r}") from None
    if values.get("part", "") not in ("", *PARTS):
        raise DataError(f"{where}: unknown part {values['part']!r}; expected one of {list(PARTS)} or empty")
    return ImageRecord(**values)


def assign_parts(manifest: Manifest, parts: dict[str, str]) -> Manifest:
    """A copy of `manifest` whose records carry the part named for their path in `parts`."""
    return manifest.with_records(replace(r, part=parts.get(r.path, "")) for r in manifest.records)
