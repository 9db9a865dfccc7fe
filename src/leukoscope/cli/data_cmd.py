"""`leukoscope data check|split|export-verified`: look at a dataset before training on it, or make one from the
web app's verified images."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from leukoscope.cli.common import console, path_argument, progress_bar, warn
from leukoscope.data.discover import check, discover
from leukoscope.data.fileio import write_json
from leukoscope.data.split import split
from leukoscope.errors import DataError, UsageError

data_app = typer.Typer(help="Inspect and split a folder-per-class image dataset.", no_args_is_help=True)


def scan(directory: Path, quiet: bool):
    """Discover a dataset with a progress bar; a missing DIRECTORY is a usage error (exit code 2)."""
    if not directory.exists():
        raise UsageError(f"data folder not found: {directory}")
    if not directory.is_dir():
        raise UsageError(f"not a folder: {directory} (give the folder that holds one subfolder per class)")
    with progress_bar("scanning images", total=1, quiet=quiet) as update:
        return discover(directory, progress=update)


@data_app.command("check")
def check_command(
    directory: str = typer.Argument(
        ..., help="Dataset root: one subfolder per class (any published layout)."
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the full report as JSON here."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar; print the summary only."),
) -> None:
    """Count images per class, list corrupt files, exact duplicates, label conflicts and odd sizes.

    Exit code 0 when the data is usable for training, 1 when something blocks training, 2 for bad arguments.
    """
    if json_out is not None and json_out.is_dir():
        raise UsageError(f"--json {json_out} is a folder; give a file name")
    report = check(scan(path_argument(directory, "the dataset root"), quiet))
    manifest = report.manifest
    info = report.as_dict()
    table = Table(title=escape(f"{manifest.root} — {len(manifest)} usable images"))
    for column in ("class", "images", "sizes", "modes"):
        table.add_column(column, justify="right" if column == "images" else "left")
    for name, row in info["per_class"].items():
        sizes = ", ".join(f"{k} ({v})" for k, v in list(row["sizes"].items())[:3])
        modes = ", ".join(f"{k} ({v})" for k, v in row["modes"].items())
        table.add_row(escape(name), str(row["count"]), escape(sizes), escape(modes))
    console.print(table)
    for note in manifest.notes:
        console.print(f"note: {escape(note)}", highlight=False)
    if manifest.problems:
        console.print(f"[yellow]{len(manifest.problems)} unreadable file(s), skipped:[/]")
        for problem in manifest.problems:
            console.print(escape(f"  {problem.path}: {problem.reason}"), highlight=False)
    if report.duplicate_groups_within:
        pairs = report.duplicate_groups_within
        console.print(
            f"{len(pairs)} group(s) of byte-identical images within one class (kept together by split):"
        )
        for group in pairs[:10]:
            console.print(escape("  " + " = ".join(group)), highlight=False)
        if len(pairs) > 10:
            console.print(f"  ... and {len(pairs) - 10} more (see --json)")
    if report.duplicate_groups_across:
        n_conflicts = len(report.duplicate_groups_across)
        console.print(f"[red]{n_conflicts} LABEL CONFLICT(S): identical images in different classes:[/]")
        for group in report.duplicate_groups_across:
            console.print(escape("  " + " = ".join(group)), highlight=False)
    if report.size_outliers:
        w, h = report.modal_size or (0, 0)
        console.print(f"{len(report.size_outliers)} image(s) differ from the usual size {w}x{h}:")
        for path, width, height in report.size_outliers[:10]:
            console.print(escape(f"  {path}: {width}x{height}"), highlight=False)
    if json_out is not None:
        _write(json_out, lambda: write_json(json_out, info))
    if report.blocking:
        for reason in report.blocking:
            warn(escape(f"blocks training: {reason}"))
        # An error, not typer.Exit(1): main() runs Typer with standalone_mode=False, where Exit codes are
        # returned instead of raised, so the exit code would be lost.
        raise DataError(f"{directory} is not usable for training: {len(report.blocking)} blocking problem(s)")
    console.print("[green]usable for training[/]")


@data_app.command("split")
def split_command(
    directory: str = typer.Argument(..., help="Dataset root: one subfolder per class."),
    out: Path = typer.Option(
        Path("split.csv"), "--out", "-o", help="CSV to write (path, sha256, label, part, ...)."
    ),
    test_size: float = typer.Option(0.3, help="Fraction of all images held out for testing."),
    val_size: float = typer.Option(0.0, help="Fraction of all images held out for validation."),
    seed: int = typer.Option(0, help="Random seed; the same seed always gives the same split."),
    near_duplicates: int = typer.Option(
        4,
        help="Also keep near-copies together: max Hamming distance of 64-bit difference hashes "
        "(-1: exact copies only).",
    ),
    folds: int = typer.Option(
        0, "--folds", help="K-fold cross-validation instead: K files OUT-fold1.csv ... OUT-foldK.csv, fold i the "
        "test part of file i (every image tested once; --test-size is not used)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Stratified, duplicate-aware train/val/test split written as CSV (or K cross-validation folds)."""
    if seed < 0:  # numpy's generators take only non-negative seeds
        raise UsageError(f"--seed must be 0 or more, got {seed}")
    if near_duplicates < -1 or near_duplicates > 32:
        raise UsageError(f"--near-duplicates must be between -1 and 32, got {near_duplicates}")
    for option, value in (("--test-size", test_size), ("--val-size", val_size)):
        if not 0.0 <= value < 1.0:
            raise UsageError(f"{option} must be a fraction in [0, 1), got {value}")
    if folds == 1 or folds < 0:
        raise UsageError(f"--folds must be at least 2 (0: one split), got {folds}")
    if folds == 0 and test_size + val_size >= 1.0:
        raise UsageError(
            f"--test-size + --val-size must be below 1 (nothing left to train on), "
            f"got {test_size + val_size:g}"
        )
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; give a file name")
    manifest = scan(path_argument(directory, "the dataset root"), quiet)
    distance = None if near_duplicates < 0 else near_duplicates
    if folds:
        _write_folds(manifest, out, folds=folds, val_size=val_size, seed=seed, distance=distance)
    else:
        result = split(manifest, test_size=test_size, val_size=val_size, seed=seed, near_duplicate_distance=distance)
        _write(out, lambda: result.write_csv(out))
        _print_parts(result, f"split of {len(result)} images (seed {seed}) -> {out}")
    if manifest.problems:
        n_problems = len(manifest.problems)
        warn(f"{n_problems} unreadable file(s) left out (run `leukoscope data check` for the list)")


def _write_folds(manifest, out: Path, *, folds: int, val_size: float, seed: int, distance: int | None) -> None:
    """OUT-fold<i>.csv for every fold, and one table per fold."""
    from leukoscope.data.folds import split_folds

    for number, fold in enumerate(split_folds(manifest, folds=folds, val_size=val_size, seed=seed,
                                              near_duplicate_distance=distance), start=1):
        path = out.with_name(f"{out.stem}-fold{number}{out.suffix or '.csv'}")
        _write(path, lambda fold=fold, path=path: fold.write_csv(path))
        _print_parts(fold, f"fold {number} of {folds}, {len(fold)} images (seed {seed}) -> {path}")


def _print_parts(result, title: str) -> None:
    table = Table(title=escape(title))
    table.add_column("class")
    parts = [p for p in ("train", "val", "test") if any(r.part == p for r in result.records)]
    for part in parts:
        table.add_column(part, justify="right")
    for name in result.classes:
        counts = [sum(1 for r in result.records if r.label == name and r.part == p) for p in parts]
        table.add_row(escape(name), *map(str, counts))
    console.print(table)


def _write(path: Path, writer) -> None:
    """Run `writer`; a path that cannot be written is a usage error with a one-line reason."""
    try:
        writer()
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None


@data_app.command("export-verified")
def export_verified_command(
    db: str = typer.Option(..., "--db", help="The web app's database (leukoscope serve --db: a SQLite file or a "
                           "postgresql:// URL); read only."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write: one subfolder per class, manifest.csv."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier export at --out."),
    clinic: str | None = typer.Option(None, "--clinic", help="Export this clinic's verified images (default: the "
                                      "implicit clinic of a single-workstation server)."),
) -> None:
    """The technologists' verified images as a folder-per-class dataset, with manifest.csv (sha256, verifier,
    time, the model's call). The latest verification of a prediction wins; an image is exported once;
    images verified unusable are left out; images purged by the retention period are listed in missing.csv.
    """
    from leukoscope.serve.verified_export import export_verified

    summary = export_verified(db, out, overwrite=overwrite, clinic=clinic)
    console.print(escape(summary.line()), highlight=False, soft_wrap=True)
