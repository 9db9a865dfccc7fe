"""`leukoscope export`: a trained run folder in, a self-contained model package out.

A thin shell over leukoscope.inference.export.export_run, which checks parity (fp32 ONNX vs PyTorch,
int8 vs fp32) before it writes anything; this module only reports its progress and the files written.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from leukoscope.cli.common import console, prepare_output_folder
from leukoscope.errors import UsageError


def export(
    run: Path = typer.Argument(..., help="Run folder (or a checkpoint in one) written by `leukoscope train`."),
    out: Path = typer.Option(..., "--out", "-o", help="Model package folder to write (replaced if it is one)."),
    int8: bool = typer.Option(False, "--int8", help="Also write a static int8 ONNX model and make it the "
                              "default (refused when it agrees with fp32 on < 99% of val images)."),
    int8_only: bool = typer.Option(False, "--int8-only", help="Like --int8, without the fp32 ONNX model "
                                   "(smaller package; model.pt still serves PyTorch and Grad-CAM)."),
    data: Path | None = typer.Option(None, "--data", help="Dataset root, when it moved since training "
                                     "(default: config.yaml's data)."),
    name: str | None = typer.Option(None, "--name", help="Model name stored in model.json (default: run name)."),
    shift_rules: bool = typer.Option(False, "--shift-rules", help="Also choose the review rules for other labs' "
                                     "images (a Benign-call confidence threshold and a cell-scale range) on seeded "
                                     "stain/optics-shifted copies of the val part (several minutes on a CPU)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the result."),
) -> None:
    """Export a trained run as a model package: ONNX + model.pt + model.json (calibration, review
    thresholds, out-of-distribution statistics, metrics, provenance, sha256 of every file).

    Parity is checked before anything is written: fp32 ONNX vs PyTorch, and int8 vs fp32.
    """
    from leukoscope.inference.export import export_run
    from leukoscope.inference.package import package_size, read_package_json

    if not run.exists():
        raise UsageError(f"run folder not found: {run}")
    prepare_output_folder("--out", out, out.parent)  # now, not after the parity checks

    def log(message: str) -> None:
        if not quiet:
            console.print(escape(message), highlight=False)

    from leukoscope.inference.package import UNIT_CELLS, unit_of_model

    if unit_of_model(run) == UNIT_CELLS:  # calibrated, flagged and OOD-fitted on crops, not on whole fields
        if int8 or int8_only or shift_rules:
            raise UsageError("--int8, --int8-only and --shift-rules are for field models; this is a cell run")
        from leukoscope.inference.cell_export import export_cell_run

        path = export_cell_run(run, out, data_root=data, name=name, log=log)
    else:
        path = export_run(run, out, int8=int8, int8_only=int8_only, data_root=data, name=name, log=log,
                          shift_rules=shift_rules)
    info = read_package_json(path)
    files = ", ".join(f"{n} ({(path / n).stat().st_size / 1e6:.1f} MB)" for n in info["files"])
    console.print(escape(f"wrote {path} ({package_size(path) / 1e6:.1f} MB): {files}"), highlight=False)


def register(app: typer.Typer) -> None:
    """Add `export` to the leukoscope command line."""
    app.command("export")(export)
