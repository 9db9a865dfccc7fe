"""`leukoscope segment IMAGES... --out DIR`: the white cells of each field as a label mask, crops and a CSV.

A thin shell over leukoscope.segmentation.batch.segment_paths: it refuses an existing --out without
--overwrite (one line, exit code 2), prints one line per file it could not read or found no cell in, and
exits 1 only when no file at all could be read.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from leukoscope.cli.common import console, path_argument, progress_bar, warn
from leukoscope.errors import DataError


def segment(
    images: list[str] = typer.Argument(..., help="Image files and/or folders (searched recursively)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: cells.csv, masks/, crops/ (must not exist "
                             "unless --overwrite)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace cells.csv, masks/ and crops/ of an "
                                   "existing output folder (nothing else in it is touched)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the result."),
) -> None:
    """Find the nucleated white cells (lymphocytes / lymphoblasts) of each blood-smear field, leaving out red
    cells, platelets and background. Classic image processing on the CPU, no model.

    Writes per image a 16-bit label mask (masks/NAME.png: 0 background, 1..n the cells) and one PNG per cell
    (crops/NAME/cell_NNN.png, 64x64 at the 224-px field scale), and one cells.csv (image, cell id, bounding
    box, area, nucleus fraction, status). Fields without a white cell, grayscale or overexposed fields get a
    row with their status; unreadable files a row with the reason. Research software, not a medical device.
    """
    from leukoscope.segmentation.batch import segment_paths

    paths = [path_argument(image, "an image argument") for image in images]
    messages: list[str] = []
    with progress_bar("segmenting", total=len(paths), quiet=quiet) as update:
        summary = segment_paths(paths, out, overwrite=overwrite, log=messages.append, progress=update)
    for message in messages:
        warn(message)
    if summary.readable == 0:
        raise DataError(f"none of the {summary.images} files could be read (reasons in {out / 'cells.csv'})")
    console.print(escape(summary.line(out)), highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add `segment` to the leukoscope command line."""
    app.command("segment")(segment)
