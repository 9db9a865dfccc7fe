"""Segment many images into one output folder: a label mask and crops per image, one cells.csv for all.

Why a folder with a CSV: it is what a technologist opens in a spreadsheet and what the next step (a class
per cell) reads. A bad file is a row with its reason, never the end of the run; every file is written
atomically, so an interrupted run leaves no half-written PNG or CSV behind.

Layout of OUT:
    cells.csv                 one row per cell; one row per image without cells (status and reason)
    masks/<name>.png          16-bit label mask of the working image (224 px on its longer side; `scale`
                              in cells.csv = file pixels per mask pixel): 0 background, 1..n the cells
    crops/<name>/cell_NNN.png crop_size x crop_size crops centred on each cell, at the working scale
"""

from __future__ import annotations

import csv
import io
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from leukoscope.data.fileio import atomic_open, write_text
from leukoscope.data.imaging import is_image_path, load_rgb, original_size
from leukoscope.errors import ImageError, UsageError
from leukoscope.segmentation.field import OK, PARAMS, FieldSegmentation, SegmentationParams, segment_field

UNREADABLE = "unreadable"
DECODE_MAX_SIDE = 2048  # huge files are reduced while decoding; segmentation works at 224 px anyway
COLUMNS = ["image", "cell_id", "x0", "y0", "x1", "y1", "area", "nucleus_fraction", "status", "reason", "mask",
           "crop", "scale"]
OUTPUTS = ("cells.csv", "masks", "crops")


@dataclass
class BatchSummary:
    """What a run did: counts by status and the rows of cells.csv."""

    images: int = 0
    cells: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    rows: list[dict[str, object]] = field(default_factory=list)

    @property
    def readable(self) -> int:
        return self.images - self.by_status.get(UNREADABLE, 0)

    def line(self, out: Path) -> str:
        counts = ", ".join(f"{n} {status}" for status, n in sorted(self.by_status.items()))
        return (f"{self.images} images ({counts}), {self.cells} cells: wrote {out / 'cells.csv'}, masks/ and crops/ "
                "(research software, not a medical device)")


def collect_images(inputs: Iterable[Path]) -> list[tuple[Path, str]]:
    """(path, output name) for every image among `inputs`: files as given, folders searched recursively.
    Names are unique: the path under its folder with '/' as '__', the file's stem for a file."""
    found: list[tuple[Path, str]] = []
    for item in inputs:
        if item.is_dir():
            for path in sorted(p for p in item.rglob("*") if p.is_file() and is_image_path(p)):
                found.append((path, "__".join(path.relative_to(item).with_suffix("").parts)))
        else:
            found.append((item, item.stem))  # a missing or non-image file becomes an "unreadable" row
    names: dict[str, int] = {}
    unique = []
    for path, name in found:
        names[name] = names.get(name, 0) + 1
        unique.append((path, name if names[name] == 1 else f"{name}-{names[name]}"))
    return unique


def prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse an existing --out unless `overwrite`; then remove only what an earlier run wrote there."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out is a file, not a folder: {out}")
    if out.exists():
        if not overwrite:
            raise UsageError(f"output folder already exists: {out} (use --overwrite to replace it)")
        for name in OUTPUTS:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _write_png(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    with atomic_open(path, "wb") as handle:
        handle.write(buffer.getvalue())


def write_result(out: Path, name: str, image: str, result: FieldSegmentation) -> list[dict[str, object]]:
    """The mask and crops of one image under `out`; its rows of cells.csv."""
    mask = Path("masks") / f"{name}.png"
    _write_png(out / mask, result.labels.astype(np.uint16))  # mode I;16: up to 65,535 cells
    base = {"image": image, "status": result.status, "reason": result.reason, "mask": mask.as_posix(),
            "scale": round(result.scale, 4)}
    if not result.cells:
        return [{**base, "reason": result.reason or result.status}]
    rows = []
    for record, crop in zip(result.cells, result.crops, strict=True):
        crop_path = Path("crops") / name / f"cell_{record.cell_id:03d}.png"
        _write_png(out / crop_path, crop)
        x0, y0, x1, y1 = record.bbox
        rows.append({**base, "cell_id": record.cell_id, "x0": x0, "y0": y0, "x1": x1, "y1": y1, "area": record.area,
                     "nucleus_fraction": record.nucleus_fraction, "crop": crop_path.as_posix()})
    return rows


def segment_paths(inputs: Iterable[Path], out: Path, *, overwrite: bool = False,
                  params: SegmentationParams = PARAMS, log: Callable[[str], None] | None = None,
                  progress: Callable[[int, int], None] | None = None) -> BatchSummary:
    """Segment every image of `inputs` into `out`. Unreadable files are rows (and a `log` line each); the
    caller decides what "nothing could be read" means (the CLI: exit code 1)."""
    images = collect_images(inputs)
    if not images:
        raise UsageError("no images found in the given paths")
    prepare_out(out, overwrite)
    summary = BatchSummary()
    for done, (path, name) in enumerate(images, start=1):
        summary.images += 1
        try:
            image = load_rgb(path, max_side=DECODE_MAX_SIDE)
            reduced = max(original_size(image)) / max(image.size)  # > 1 when decoding already reduced it
            rgb = np.asarray(image)
        except ImageError as exc:
            rows: list[dict[str, object]] = [{"image": str(path), "status": UNREADABLE, "reason": str(exc)}]
            if log:
                log(f"skipped {path}: {exc}")
        else:
            result = segment_field(rgb, params)
            result.scale *= reduced  # file pixels per mask pixel
            rows = write_result(out, name, str(path), result)
            summary.cells += len(result.cells)
            if result.status != OK and log:
                log(f"{path}: {result.reason or result.status}")
        status = str(rows[0]["status"])
        summary.by_status[status] = summary.by_status.get(status, 0) + 1
        summary.rows.extend(rows)
        if progress:
            progress(done, len(images))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(summary.rows)
    write_text(out / "cells.csv", buffer.getvalue())
    return summary
