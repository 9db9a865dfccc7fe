"""`leukoscope data check|split`: look at a dataset before training on it."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..data import check, discover, split
from ..errors import UsageError
from ..fileio import write_json
from .common import console, progress_bar, warn

data_app = typer.Typer(help="Inspect and split a folder-per-class image dataset.", no_args_is_help=True)


def scan(directory: Path, quiet: bool):
    with progress_bar("scanning images", total=1, quiet=quiet) as update:
        return discover(directory, progress=update)


@data_app.command("check")
def check_command(
    directory: Path = typer.Argument(..., help="Dataset root: one subfolder per class (any published layout)."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the full report as JSON here."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar; print the summary only."),
) -> None:
    """Count images per class, list corrupt files, exact duplicates, label conflicts and odd sizes.

    Exit code 0 when the data is usable for training, 1 when something blocks training, 2 for bad arguments.
    """
    report = check(scan(directory, quiet))
    manifest = report.manifest
    info = report.as_dict()
    table = Table(title=f"{manifest.root} — {len(manifest)} usable images")
    for column in ("class", "images", "sizes", "modes"):
        table.add_column(column, justify="right" if column == "images" else "left")
    for name, row in info["per_class"].items():
        sizes = ", ".join(f"{k} ({v})" for k, v in list(row["sizes"].items())[:3])
        modes = ", ".join(f"{k} ({v})" for k, v in row["modes"].items())
        table.add_row(name, str(row["count"]), sizes, modes)
    console.print(table)
    for note in manifest.notes:
        console.print(f"note: {note}", highlight=False)
    if manifest.problems:
        console.print(f"[yellow]{len(manifest.problems)} unreadable file(s), skipped:[/]")
        for problem in manifest.problems:
            console.print(f"  {problem.path}: {problem.reason}", highlight=False)
    if report.duplicate_groups_within:
        pairs = report.duplicate_groups_within
        console.print(f"{len(pairs)} group(s) of byte-identical images within one class (kept together by split):")
        for group in pairs[:10]:
            console.print("  " + " = ".join(group), highlight=False)
        if len(pairs) > 10:
            console.print(f"  ... and {len(pairs) - 10} more (see --json)")
    if report.duplicate_groups_across:
        console.print(f"[red]{len(report.duplicate_groups_across)} LABEL CONFLICT(S): identical images in different classes:[/]")
        for group in report.duplicate_groups_across:
            console.print("  " + " = ".join(group), highlight=False)
    if report.size_outliers:
        w, h = report.modal_size or (0, 0)
        console.print(f"{len(report.size_outliers)} image(s) differ from the usual size {w}x{h}:")
        for path, width, height in report.size_outliers[:10]:
            console.print(f"  {path}: {width}x{height}", highlight=False)
    if json_out is not None:
        write_json(json_out, info)
    if report.blocking:
        for reason in report.blocking:
            warn(f"blocks training: {reason}")
        raise typer.Exit(1)
    console.print("[green]usable for training[/]")


@data_app.command("split")
def split_command(
    directory: Path = typer.Argument(..., help="Dataset root: one subfolder per class."),
    out: Path = typer.Option(Path("split.csv"), "--out", "-o", help="CSV to write (path, sha256, label, part, ...)."),
    test_size: float = typer.Option(0.3, help="Fraction of all images held out for testing."),
    val_size: float = typer.Option(0.0, help="Fraction of all images held out for validation."),
    seed: int = typer.Option(0, help="Random seed; the same seed always gives the same split."),
    near_duplicates: int = typer.Option(
        4, help="Also keep near-copies together: max Hamming distance of 64-bit difference hashes (-1: exact copies only)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Stratified, duplicate-aware train/val/test split written as CSV."""
    if near_duplicates < -1 or near_duplicates > 32:
        raise UsageError(f"--near-duplicates must be between -1 and 32, got {near_duplicates}")
    manifest = scan(directory, quiet)
    result = split(
        manifest, test_size=test_size, val_size=val_size, seed=seed,
        near_duplicate_distance=None if near_duplicates < 0 else near_duplicates,
    )
    result.write_csv(out)
    table = Table(title=f"split of {len(result)} images (seed {seed}) -> {out}")
    table.add_column("class")
    parts = [p for p in ("train", "val", "test") if any(r.part == p for r in result.records)]
    for part in parts:
        table.add_column(part, justify="right")
    for name in result.classes:
        table.add_row(name, *[str(sum(1 for r in result.records if r.label == name and r.part == p)) for p in parts])
    console.print(table)
    if manifest.problems:
        warn(f"{len(manifest.problems)} unreadable file(s) left out (run `leukoscope data check` for the list)")
