"""Which images an evaluation scores, and what can be said about them before scoring.

Resolves a folder, a split file and part, or a run's own test part into the images to score; checks their
classes against the model's, that the files exist, and whether any of them are in the run's training part
(leakage: the one such check, also used by the accuracy benchmark); summarises the data for the report and
the model card.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from leukoscope.data.manifest import Manifest, read_manifest_csv
from leukoscope.errors import DataError, UsageError
from leukoscope.evaluation.model_handle import ModelHandle


@dataclass
class EvalData:
    """The images to score, the whole manifest they were taken from, and where they came from."""

    part: Manifest
    full: Manifest
    part_name: str
    split_csv: Path | None
    notes: list[str] = field(default_factory=list)


def _has_parts(manifest: Manifest) -> bool:
    return any(r.part for r in manifest.records)


def _take_part(full: Manifest, part: str, source: Path) -> Manifest:
    chosen = full.part(part)
    if not len(chosen):
        present = sorted({r.part for r in full.records if r.part}) or ["none"]
        raise DataError(f"the {part!r} part of {source} is empty (parts present: {', '.join(present)})")
    return chosen


def _same_folder(a: str | Path | None, b: Path) -> bool:
    try:
        return a is not None and Path(a).resolve() == b.resolve()
    except OSError:
        return False


def resolve_data(handle: ModelHandle, data: str | Path | None, *, split_csv: str | Path | None = None,
                 part: str = "test", root: str | Path | None = None) -> EvalData:
    """Which images to score. DATA may be a dataset folder (all its images, or `part` of `split_csv`,
    or of the run's own split.csv when DATA is the run's data), a manifest/split CSV (paths relative to
    `root` or the run's data folder), or None for the run's own data and split."""
    run_split = handle.run_dir / "split.csv" if handle.run_dir else None
    run_root = handle.config.get("data")
    if data is None:
        if not run_root or run_split is None or not run_split.is_file():
            raise UsageError("give DATA: the model has no run folder with config.yaml (data) and split.csv")
        data, split_csv = Path(run_root), run_split
    data = Path(data)
    if not data.exists():
        raise UsageError(f"data not found: {data}")
    if data.is_file():
        if split_csv is not None:
            raise UsageError("DATA is already a CSV file; give either a CSV as DATA or --split, not both")
        base = root or run_root
        if not base:
            raise UsageError(f"{data} lists paths relative to a data folder; give it with --root")
        full = read_manifest_csv(data, Path(base))
        if not len(full):  # else the metrics fail on no samples, after the model was loaded
            raise DataError(f"{data} lists no images")
        return EvalData(_take_part(full, part, data) if _has_parts(full) else full, full,
                        part if _has_parts(full) else "all", data if _has_parts(full) else None)
    if split_csv is None and run_split is not None and run_split.is_file() and _same_folder(run_root, data):
        split_csv = run_split
    if split_csv is not None:
        full = read_manifest_csv(split_csv, data)
        return EvalData(_take_part(full, part, Path(split_csv)), full, part, Path(split_csv))
    from leukoscope.data.discover import discover

    full = discover(data)
    notes = [f"{len(full.problems)} unreadable file(s) skipped"] if full.problems else []
    return EvalData(full, full, "all", None, notes)


def check_classes(manifest: Manifest, classes: Sequence[str]) -> np.ndarray:
    """Label indices in the model's class order; DataError when the data has classes the model lacks."""
    labels = [r.label for r in manifest.records]
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        hint = ", e.g. Benign/ for normal lymphocytes" if "Benign" in classes else ""
        raise DataError(f"the model's classes {list(classes)} do not match the data's "
                        f"{sorted(set(labels) | set(manifest.classes))}: {unknown} unknown to the model (name each folder "
                        f"after one of the model's classes{hint})")
    index = {name: i for i, name in enumerate(classes)}
    return np.asarray([index[name] for name in labels], dtype=np.int64)


def check_files(manifest: Manifest) -> None:
    missing = [p for p in manifest.paths() if not p.is_file()]
    if missing:
        raise DataError(f"{len(missing)} of {len(manifest)} images are missing under {manifest.root}, e.g. "
                        f"{missing[0]} (wrong data folder? give the right one as DATA or with --root)")


@dataclass(frozen=True)
class Leakage:
    """Evaluated images that the model already saw: their bytes (sha256) are in the run's training part."""

    checked: bool  # False when the run has no readable split.csv
    train_overlap: int = 0
    examples: tuple[str, ...] = ()  # the first 5 overlapping paths
    train_images: int | None = None  # images in the parts checked against

    def to_dict(self) -> dict[str, Any]:
        """As metrics.json stores it ("train_images" only when checked)."""
        out: dict[str, Any] = {"checked": self.checked, "train_overlap": self.train_overlap,
                               "examples": list(self.examples)}
        if self.checked:
            out["train_images"] = self.train_images
        return out


def check_leakage(part: Manifest, run_dir: Path | None, *, parts: Sequence[str] = ("train",),
                  match_paths: bool = False) -> Leakage:
    """Count images of `part` whose bytes (sha256) are in `parts` of the run's split.csv.

    `match_paths`: a same relative path counts too (for data known to be the run's own dataset folder,
    where a path names the same file).
    """
    split_file = run_dir / "split.csv" if run_dir else None
    if split_file is None or not split_file.is_file():
        return Leakage(False)
    try:
        seen = read_manifest_csv(split_file, run_dir).part(*parts).records
    except DataError:
        return Leakage(False)
    hashes = {r.sha256 for r in seen}
    paths = {r.path for r in seen} if match_paths else set()
    overlap = [r.path for r in part.records if (r.sha256 and r.sha256 in hashes) or r.path in paths]
    return Leakage(True, len(overlap), tuple(overlap[:5]), len(hashes))


def data_summary(data: EvalData, leakage: Leakage) -> dict[str, Any]:
    """What the numbers are on: part, counts, split sizes, duplicates, unreadable files, leakage."""
    from leukoscope.data.discover import duplicate_groups

    groups = duplicate_groups(data.full.records)
    sizes = {p: sum(1 for r in data.full.records if r.part == p) for p in ("train", "val", "test")}
    return {
        "data_root": str(data.part.root), "split_csv": str(data.split_csv) if data.split_csv else None,
        "part": data.part_name, "n_images": len(data.part), "class_counts": data.part.class_counts(),
        "total_images": len(data.full), "split_sizes": sizes if _has_parts(data.full) else None,
        "duplicate_groups": len(groups), "duplicate_images": sum(len(g) for g in groups),
        "problems": len(data.full.problems), "leakage": leakage.to_dict(), "notes": list(data.notes),
    }
