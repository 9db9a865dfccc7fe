"""`leukoscope predict`: images, folders or globs in; a table, CSV or JSON of predictions out.

A thin shell over leukoscope.inference.predictor (one batch stream), leukoscope.review.samples
(`--group-by folder`) and leukoscope.inference.archive (`--engine ray`: archives on Ray Data, Parquet out);
only the output formats and the progress bar live here (finding the files: leukoscope.cli.image_paths).
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from leukoscope.cli.common import DISCLAIMER, console, err_console, error, prepare_output_folder, progress_bar, warn
from leukoscope.cli.image_paths import collect_images
from leukoscope.data.fileio import write_text
from leukoscope.errors import ImageError, UsageError

SHOWN_ERRORS = 20  # --engine ray: error lines printed; the rest are rows of the output
MAX_THREADS = 1024  # --threads: each is a thread (and with ONNX Runtime a batch in memory) at once


class OutputFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


class Backend(str, Enum):
    auto = "auto"
    onnx = "onnx"
    torch = "torch"


class GroupBy(str, Enum):
    none = "none"
    folder = "folder"


class Engine(str, Enum):
    local = "local"
    ray = "ray"


def _resolve_format(fmt: OutputFormat | None, out: Path | None) -> str:
    if fmt is not None:
        if out is not None and fmt is OutputFormat.table:
            raise UsageError("--out writes csv or json; use --format csv or --format json")
        return fmt.value
    if out is None:
        return "table"
    suffix = out.suffix.lower().lstrip(".")
    if suffix not in ("csv", "json"):
        raise UsageError(f"cannot tell the format of --out {out}; name it .csv or .json, or pass --format")
    return suffix


def _render(rows: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2) + "\n"
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


def _gradcam_name(out_dir: Path, source: str, used: set[str]) -> Path:
    stem = Path(source).stem or "image"
    name, k = f"{stem}.gradcam.png", 1
    while name in used:
        k += 1
        name = f"{stem}-{k}.gradcam.png"
    used.add(name)
    return out_dir / name


def _print_table(rows: list[dict[str, Any]], classes: tuple[str, ...], grouped: bool) -> None:
    table = Table(show_lines=False)
    if grouped:
        for name, justify in (("folder", "left"), ("images", "right"), ("sample call", "left"),
                              ("confidence", "right"), ("summary", "left"), ("review", "left")):
            table.add_column(name, justify=justify, overflow="fold")
        for row in rows:
            review = f"[yellow]REVIEW[/]: {escape(row['review_reasons'])}" if row["review"] else "[green]ok[/]"
            call = f"[bold red]{escape(row['headline'])}[/]" if row["call"] == "leukemia" else escape(row["headline"])
            table.add_row(escape(row["folder"]), str(row["images"]), call, f"{row['confidence']:.3f}",
                          escape(row["summary"]), review)
        console.print(table)
        return
    table.add_column("path", overflow="fold")
    table.add_column("prediction")
    table.add_column("confidence", justify="right")
    for name in classes:
        table.add_column(name, justify="right")
    table.add_column("review", overflow="fold")
    for row in rows:
        review = f"[yellow]REVIEW[/]: {escape(row['review_reasons'])}" if row["review"] else "[green]ok[/]"
        if row["status"] == "error":
            review = f"[red]failed[/]: {escape(row['error'])}"
        elif row["status"] == "unusable":
            review = f"[red]unusable[/]: {escape(row['review_reasons'])}"
        probabilities = [f"{row[f'p_{c}']:.3f}" for c in classes] if row["status"] == "ok" else ["-"] * len(classes)
        confidence = f"{row['confidence']:.3f}" if row["status"] == "ok" else "-"
        table.add_row(escape(str(row["path"])), escape(row["label"] or "-"), confidence, *probabilities, review)
    console.print(table)


def predict(
    paths: list[str] = typer.Argument(..., help="Image files, folders (searched recursively) or globs."),
    model: str | None = typer.Option(None, "--model", "-m", help="Model package folder, run folder or "
                                     "checkpoint (default: the bundled package)."),
    fmt: OutputFormat | None = typer.Option(None, "--format", "-f", help="Output format (default: table, "
                                            "or from the --out suffix)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write csv/json results to this file."),
    gradcam: Path | None = typer.Option(None, "--gradcam", help="Write a Grad-CAM overlay PNG per image here."),
    tta: bool = typer.Option(False, "--tta", help="Average 8 flips/rotations (slower, slightly better)."),
    group_by: GroupBy = typer.Option(GroupBy.none, "--group-by", help="folder: one sample-level call per "
                                     "folder (one smear / patient): leukemia suspected when any usable image "
                                     "looks leukemic, Benign only when every one looks benign."),
    backend: Backend = typer.Option(Backend.auto, "--backend", help="auto: ONNX Runtime when the package "
                                    "has an ONNX model, else PyTorch."),
    review_threshold: float | None = typer.Option(None, "--review-threshold", help="Flag images whose "
                                                  "calibrated confidence is below this (default: the "
                                                  "package's, chosen on validation data)."),
    limit: int | None = typer.Option(None, "--limit", help="Process only the first N images found."),
    batch_size: int = typer.Option(32, "--batch-size", help="Images per inference batch."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads for inference (default: all). With "
                                       "ONNX Runtime that many batches run at once, one thread each."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
    engine: Engine = typer.Option(Engine.local, "--engine", help="local: this process. ray: archive scale on "
                                  "Ray Data (pip install 'leukoscope[ray]'): also takes manifests (CSV/Parquet "
                                  "with a path column), writes --out as a folder of Parquet parts and resumes."),
    address: str | None = typer.Option(None, "--address", help="--engine ray: the Ray cluster to join "
                                       "(host:port, ray://host:port or auto; default: a local Ray runtime)."),
    actors: int | None = typer.Option(None, "--actors", help="--engine ray: model actors (default: the "
                                      "cluster's CPUs / --threads, which is per actor there, default 1)."),
    cells: bool = typer.Option(False, "--cells", help="Find the white cells of each field and classify each one; "
                               "the field's and the sample's call come from their cells (leukemia as soon as one "
                               "cell looks leukemic), with counts per class. The sample is every image given, or "
                               "each folder with --group-by folder. Works with a field or a cell model package."),
) -> None:
    """Predict the class of blood smear images, with calibrated probabilities and a review flag.

    Images that show nothing to analyse (blank, noise, a gradient, a few pixels) get status `unusable`
    and no class. Exit code 0 when every image was read, 1 when any failed, 2 for bad arguments or no images.
    With --engine ray, unreadable files are error rows and the exit code is 0 when the job finished.
    """
    from leukoscope.inference.backends import cpu_count
    from leukoscope.inference.predictor import load_predictor
    from leukoscope.review.samples import group_by_folder

    if cells and (engine is Engine.ray or gradcam is not None):
        raise UsageError(f"--cells does not go with {'--engine ray' if engine is Engine.ray else '--gradcam'}")
    if engine is Engine.ray:
        given = {"--format": fmt is not None, "--gradcam": gradcam is not None,
                 "--group-by": group_by is not GroupBy.none}
        refused = [name for name, present in given.items() if present]
        if refused:
            raise UsageError(f"{refused[0]} does not go with --engine ray, which writes Parquet rows to --out "
                             "(group or explain the rows you review afterwards)")
        return _predict_ray(paths, model=model, out=out, tta=tta, backend=backend.value, limit=limit,
                            review_threshold=review_threshold, batch_size=batch_size, threads=threads, quiet=quiet,
                            address=address, actors=actors)
    if address is not None or actors is not None:
        raise UsageError("--address and --actors need --engine ray")

    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be at least 1, got {limit}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    if review_threshold is not None and not 0.0 <= review_threshold <= 1.0:
        raise UsageError(f"--review-threshold must be in [0, 1], got {review_threshold}")
    if gradcam is not None and gradcam.exists() and not gradcam.is_dir():
        raise UsageError(f"--gradcam {gradcam} is a file; give a folder")
    if out is not None and out.is_dir():
        raise UsageError(f"--out {out} is a folder; give a file name")
    if threads is not None and not 1 <= threads <= MAX_THREADS:
        raise UsageError(f"--threads must be between 1 and {MAX_THREADS}, got {threads}")
    output_format = _resolve_format(fmt, out)
    files, problems, empty = collect_images(paths)
    if not files:  # one line, naming what each argument lacked
        raise UsageError("no images found: " + "; ".join(problems + empty))
    if out is not None:  # both before any image is read
        prepare_output_folder("--out", out, out.parent)
    if gradcam is not None:
        prepare_output_folder("--gradcam", gradcam, gradcam)
    for message in empty:
        warn(message)
    for message in problems:
        error(message)
    files = files[:limit] if limit is not None else files
    # A folder of images: batches side by side on one thread each (Predictor._streamed); --cells scores
    # its crops batch by batch, so it keeps one batch on every thread.
    predictor = load_predictor(model, backend=backend.value, threads=threads, confidence_threshold=review_threshold,
                               streams=None if cells else (threads or cpu_count()))
    if cells:
        return _predict_cells(predictor, files, problems, tta=tta, batch_size=batch_size, out=out,
                              output_format=output_format, by_folder=group_by is GroupBy.folder, quiet=quiet)
    if predictor.info.get("unit") == "cells":
        raise UsageError("this is a cell model (it classifies single-cell crops): add --cells")
    if gradcam is not None:
        predictor.torch_model()  # fail once, up front, when the package cannot run Grad-CAM
    predictions, cams = _run(predictor, files, tta=tta, batch_size=batch_size, gradcam=gradcam, quiet=quiet)
    failed = sum(p.status == "error" for p in predictions) + sum(c is None for c in cams) + len(problems)
    nested = output_format == "json"
    if group_by is GroupBy.folder:
        rows = group_by_folder(predictions, predictor.classes, nested=nested)
    else:
        rows = [p.to_row(nested=nested) | ({"gradcam": cam or ""} if gradcam is not None else {})
                for p, cam in zip(predictions, cams, strict=True)]
    if out is not None:
        write_text(out, _render(rows, output_format))
    elif output_format != "table":
        sys.stdout.write(_render(rows, output_format))
    if output_format == "table" or (out is not None and not quiet):
        if out is None:
            _print_table(rows, predictor.classes, group_by is GroupBy.folder)
        flagged = sum(1 for p in predictions if p.review and p.status == "ok")
        unusable = sum(p.status == "unusable" for p in predictions)
        console.print(f"{len(predictions)} image(s): {flagged} flagged for review, {unusable} unusable (no "
                      f"class), {failed} failed"
                      + (f" -> {escape(str(out))}" if out is not None else ""), highlight=False)
        console.print(f"[bold]{DISCLAIMER}[/]")
    if failed:
        raise ImageError(f"{failed} input(s) failed (listed above); the others were processed")


def _predict_cells(predictor: Any, files: list[Path], problems: list[str], *, tta: bool, batch_size: int,
                   out: Path | None, output_format: str, by_folder: bool, quiet: bool) -> None:
    """`predict --cells`: rows per sample, field and cell (leukoscope.inference.cells, .cell_rows)."""
    from leukoscope.inference import cell_rows
    from leukoscope.inference.cells import predict_cells_paths
    from leukoscope.inference.package import unit_of

    results = []
    with progress_bar("cells", len(files), quiet=quiet or not err_console.is_terminal) as update:
        for done, result in enumerate(predict_cells_paths(predictor, files, tta=tta, batch_size=batch_size), 1):
            if result.status == "error":
                error(f"{result.source}: {result.reason}")
            results.append(result)
            update(done, len(files))
    benign = predictor.classes[predictor.benign_index] if predictor.benign_index is not None else "Benign"
    rows = cell_rows.flat_rows(results, predictor.classes, by_folder=by_folder, benign_class=benign)
    text = (cell_rows.render_json(cell_rows.nested_document(results, predictor.classes, by_folder=by_folder,
                                                            model_unit=unit_of(predictor.info), benign_class=benign))
            if output_format == "json" else cell_rows.render_csv(rows))
    if out is not None:
        write_text(out, text)
    elif output_format != "table":
        sys.stdout.write(text)
    if output_format == "table" or (out is not None and not quiet):
        if out is None:
            table = Table()
            for name in ("level", "path", "status", "cells", "call", *(f"n {c}" for c in predictor.classes), "review"):
                table.add_column(name, overflow="fold")
            for row in (r for r in rows if r["level"] != "cell"):
                review = f"[yellow]REVIEW[/]: {escape(row['review_codes'])}" if row["review"] else escape(row["reason"])
                table.add_row(row["level"], escape(row["path"]), escape(row["status"]), str(row["cells"]),
                              escape(row["headline"]), *(str(row[f"n_{c}"]) for c in predictor.classes), review)
            console.print(table)
        console.print(escape(cell_rows.summary_line(results) + (f" -> {out}" if out is not None else "")),
                      highlight=False)
        console.print(f"[bold]{DISCLAIMER}[/]")
    failed = sum(r.status == "error" for r in results) + len(problems)
    if failed:
        raise ImageError(f"{failed} input(s) failed (listed above); the others were processed")


def _run(predictor: Any, files: list[Path], *, tta: bool, batch_size: int, gradcam: Path | None,
         quiet: bool) -> tuple[list[Any], list[str | None]]:
    """Predictions in file order, one error line per failed file, and the Grad-CAM file of each
    ("" when not asked or not readable, None when writing it failed)."""
    from leukoscope.errors import LeukoscopeError
    from leukoscope.inference.explain import write_gradcam

    predictions: list[Any] = []
    cams: list[str | None] = []
    used: set[str] = set()
    # No bar when stderr is not a terminal (logs, pipes): it would only leave blank lines behind.
    with progress_bar("predicting", len(files), quiet=quiet or not err_console.is_terminal) as update:
        for done, prediction in enumerate(predictor.predict_paths(files, tta=tta, batch_size=batch_size), 1):
            cam: str | None = ""
            if prediction.error is not None:
                error(f"{prediction.source}: {prediction.error}")
            elif gradcam is not None and prediction.status == "ok":
                target = _gradcam_name(gradcam, prediction.source, used)
                try:
                    cam = str(write_gradcam(predictor, prediction.source, target, target=prediction.label))
                except (LeukoscopeError, OSError, ValueError) as exc:
                    error(f"{prediction.source}: Grad-CAM not written: {exc}")
                    cam = None
            predictions.append(prediction)
            cams.append(cam)
            update(done, len(files))
    return predictions, cams


def _archive_sources(args: list[str]) -> tuple[list[str], list[str]]:
    """Paths named by files, folders, globs, manifests (CSV/Parquet with a path column) and object-store URLs,
    in order without duplicates; the arguments that name nothing."""
    from leukoscope.inference import archive_sources

    found: list[str] = []
    problems: list[str] = []
    for arg in args:
        if archive_sources.is_url(arg):
            urls = archive_sources.url_paths(arg)
            found.extend(urls)
            problems.extend([] if urls else [f"{arg}: no images there"])
        elif archive_sources.is_manifest(arg):
            listed = archive_sources.manifest_paths(arg)
            found.extend(listed)
            problems.extend([] if listed else [f"{arg}: the manifest lists no paths"])
        else:
            files, missing, empty = collect_images([arg])
            found.extend(os.path.abspath(f) for f in files)  # symlinks kept: the path a user named
            problems.extend(missing + empty)
    return list(dict.fromkeys(found)), problems


def _predict_ray(paths: list[str], *, model: str | None, out: Path | None, tta: bool, backend: str,
                 limit: int | None, review_threshold: float | None, batch_size: int, threads: int | None,
                 quiet: bool, address: str | None, actors: int | None) -> None:
    """`predict --engine ray`: the images scored by Ray Data actors into a resumable folder of Parquet parts."""
    from leukoscope.inference import archive

    if out is None:
        raise UsageError("--engine ray writes Parquet: give --out OUT.parquet (a folder of part files)")
    for name, value in (("--limit", limit), ("--batch-size", batch_size), ("--threads", threads), ("--actors", actors)):
        if value is not None and value < 1:
            raise UsageError(f"{name} must be at least 1, got {value}")
    if threads is not None and threads > MAX_THREADS:
        raise UsageError(f"--threads must be between 1 and {MAX_THREADS}, got {threads}")
    if review_threshold is not None and not 0.0 <= review_threshold <= 1.0:
        raise UsageError(f"--review-threshold must be in [0, 1], got {review_threshold}")
    archive.require_ray()
    package = archive.package_id(model)  # a damaged package fails here, before any cluster starts
    files, problems = _archive_sources(paths)
    for message in problems:
        warn(message)
    if not files:
        raise UsageError("no images found in " + ", ".join(paths))
    files = files[:limit] if limit is not None else files
    errors = [0]

    def on_error(path: str, reason: str) -> None:
        errors[0] += 1
        if errors[0] <= SHOWN_ERRORS:
            error(f"{path}: {reason}")

    with archive.ray_runtime(address, progress=not quiet and err_console.is_terminal):
        summary = archive.score_archive(files, out, model=package.path, backend=backend, actors=actors,
                                        threads=threads or 1, batch_size=batch_size,
                                        review_threshold=review_threshold, tta=tta, on_error=on_error)
    if errors[0] > SHOWN_ERRORS:
        error(f"... and {errors[0] - SHOWN_ERRORS} more: the rows with status error in {out}")
    if not quiet:
        console.print(summary.line(), highlight=False, soft_wrap=True)
        console.print(f"[bold]{DISCLAIMER}[/]")


def register(app: typer.Typer) -> None:
    """Add `predict` to the leukoscope command line."""
    app.command("predict")(predict)
