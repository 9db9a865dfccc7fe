"""`leukoscope evaluate` and `leukoscope compare`: thin shells over leukoscope.evaluation.evaluate and
leukoscope.evaluation.compare that print a summary table and say where the files went."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from leukoscope.cli.common import DISCLAIMER, console, err_console, warn
from leukoscope.data.manifest import PARTS
from leukoscope.errors import UsageError

MAX_BOOTSTRAP = 100_000


@contextmanager
def phase_progress(quiet: bool) -> Iterator:
    """A rich progress display with one bar per phase ("calibrating on val", "predicting");
    yields a callback(phase, done, total). Silent when quiet."""
    if quiet:
        yield lambda phase, done, total: None
        return
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=True) as progress:
        tasks: dict[str, Any] = {}

        def update(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = progress.add_task(phase, total=total)
            progress.update(tasks[phase], completed=done, total=total)

        yield update


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _default_out(model: Path) -> Path:
    """The run folder for a run or a run's checkpoint (where DESIGN puts report.html); ./eval-<name> for
    a model package or a loose checkpoint."""
    if model.is_dir() and not (model / "model.json").is_file():
        return model
    if model.is_file() and (model.parent / "config.yaml").is_file():
        return model.parent
    return Path(f"eval-{model.name if model.is_dir() else model.stem}")


def _print_result(result: dict[str, Any], out: Path) -> None:
    from leukoscope.evaluation.report import intervals_text, method_name, rate

    summary = result["data_summary"]
    where = "all images" if summary["part"] == "all" else f"the {summary['part']} part"
    table = Table(title=escape(f"{result['model'].get('name', 'model')} on {where} ({summary['n_images']} images)"))
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column(f"{round(100 * result['bootstrap']['level'])}% interval", justify="right")
    table.add_column("interval method")
    for entry in result["headline"].values():
        ci = "n/a" if entry["low"] is None else f"{entry['low']:.3f} – {entry['high']:.3f}"
        table.add_row(escape(entry["label"]), _fmt(entry["value"]), ci, method_name(entry))
    table.add_row("Log loss", _fmt(result["log_loss"]), "", "")
    cal = result["calibration"]
    table.add_row("ECE before → after calibration", f"{_fmt(cal['ece_before'])} → {_fmt(cal['ece_after'])}", "", "")
    console.print(table)
    console.print(escape(intervals_text(result)), highlight=False)
    leuk = result.get("leukemia_vs_benign")
    if leuk:
        rates = leuk["rates"]
        console.print(f"leukemia images called benign: [bold]{rate(rates['leukemia_called_benign'])}[/]; benign "
                      f"called leukemia: {rate(rates['benign_called_leukemia'])}", highlight=False)
    review = result.get("review")
    if review:
        rates = review["rates"]
        line = (f"review flag: {rate(rates['flagged'])} flagged; wrong and not flagged: "
                f"[bold]{rate(rates['wrong_not_flagged'])}[/]")
        if review["n_benign"] is not None:
            line += (f"; benign called leukemia without a flag: "
                     f"[bold]{rate(rates['benign_called_leukemia_not_flagged'])}[/]")
        console.print(line, highlight=False)
    where = result.get("localisation")
    if where:
        for line in where["findings"]:
            console.print(escape("where the model looks: " + line.replace("**", "")), highlight=False)
    if cal.get("source") == "fitted":
        console.print(f"temperature {cal['temperature']:.3f} fitted on {cal['n_fit']} val images, saved to "
                      "the run's calibration.json", highlight=False)
    for message in result["warnings"]:
        if message.startswith("LEAKAGE"):  # the one warning that invalidates the numbers: bold red
            err_console.print(f"[bold red]warning: {escape(message)}[/]", highlight=False, soft_wrap=True)
        else:
            warn(message)
    extra = ", localisation.csv" if where else ""
    console.print(escape(f"wrote {out}/: metrics.json, predictions.csv{extra}, report.html, MODEL_CARD.md, figures/"),
                  highlight=False)
    console.print(f"[bold]{DISCLAIMER}[/]")


def evaluate_command(
    model: Path = typer.Argument(
        ..., help="A run folder (runs/<name>), one of its checkpoints (.pt) or a model package folder (model.json)."),
    data: Path | None = typer.Argument(
        None, help="Dataset folder (one subfolder per class) or a manifest/split CSV. Default: the run's own "
        "data and split.csv."),
    split: Path | None = typer.Option(
        None, "--split", help="Split CSV whose --part is evaluated (paths relative to DATA). Default when DATA is "
        "the run's own data folder: the run's split.csv; otherwise every image of DATA is evaluated."),
    part: str = typer.Option("test", "--part", help="Part of the split to evaluate: train, val or test."),
    root: Path | None = typer.Option(
        None, "--root", help="Folder the paths of a CSV given as DATA are relative to (default: the run's data)."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Output folder (default: the run folder; ./eval-<name> for a package)."),
    bootstrap: int = typer.Option(
        1000, "--bootstrap", help="Bootstrap resamples of the images for the 95% intervals of F1, kappa, MCC, "
        "AUC and balanced accuracy (0: none). Proportions (accuracy, sensitivity, specificity, per-class "
        "precision and recall) always get exact Clopper-Pearson intervals."),
    seed: int = typer.Option(0, help="Seed of the bootstrap and of the example images shown; fixed for reproducibility."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per inference batch (lower it if memory is short)."),
    calibrate: bool = typer.Option(
        True, "--calibrate/--no-calibrate", help="Fit a temperature on the run's val part (when it has one) and "
        "save it to <run>/calibration.json, so predicted probabilities are calibrated."),
    localisation: bool = typer.Option(
        False, "--localisation", help="Also measure where the model looks: the Grad-CAM of each image's call "
        "against its segmented white cells (energy on the cells, is the peak on a cell?), per class, in "
        "metrics.json, report.html, MODEL_CARD.md and localisation.csv. Needs the PyTorch weights; about a "
        "second or more per image on a CPU."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars; print the summary only."),
) -> None:
    """Score a model on a dataset part: metrics with intervals, figures, an HTML report, a model card.

    Writes metrics.json (with exact intervals for proportions, bootstrap ones otherwise), predictions.csv,
    figures/*.png, a self-contained report.html and MODEL_CARD.md. Warns loudly when evaluated images also
    occur in the run's training part (leakage).
    """
    from leukoscope.evaluation.evaluate import LeakageWarning, evaluate

    if part not in PARTS:
        raise UsageError(f"--part must be one of {', '.join(PARTS)}, got {part!r}")
    if not 0 <= bootstrap <= MAX_BOOTSTRAP:  # more resamples change no interval, they only never finish
        raise UsageError(f"--bootstrap must be >= 0 and at most {MAX_BOOTSTRAP}, got {bootstrap}")
    if seed < 0:  # numpy's generators take only non-negative seeds
        raise UsageError(f"--seed must be 0 or more, got {seed}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    from leukoscope.inference.package import UNIT_CELLS, unit_of_model

    if unit_of_model(model) == UNIT_CELLS:
        raise UsageError(f"{model} is a cell model (it classifies cell crops, not whole fields): score it with "
                         "`python -m benchmarks.cell_model --cell-model PACKAGE` or read fields with `predict --cells`")
    out = out or _default_out(model)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder")
    with warnings.catch_warnings(), phase_progress(quiet) as progress:
        warnings.simplefilter("ignore", LeakageWarning)  # printed below from result["warnings"]
        result = evaluate(model, data, out_dir=out, split_csv=split, part=part, root=root, n_bootstrap=bootstrap,
                          seed=seed, batch_size=batch_size, calibrate_on_val=calibrate, localisation=localisation,
                          progress=progress)
    _print_result(result, out)


def compare_command(
    runs: list[Path] = typer.Argument(
        ..., help="Two or more run or evaluation folders, each with the metrics.json and predictions.csv "
        "that `leukoscope evaluate` wrote."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Also write the comparison here: .html (self-contained page) or .md (Markdown)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only where the file went."),
) -> None:
    """Compare evaluated runs side by side, with a paired test of their accuracy difference.

    Headline metrics with intervals and wall times, and an exact McNemar test of every pair of runs on
    the test images they share (is the accuracy difference real?)."""
    from leukoscope.evaluation.compare import compare
    from leukoscope.evaluation.report import comparison_rows, write_comparison

    if out is not None and out.suffix.lower() not in (".html", ".htm", ".md", ".markdown"):
        raise UsageError(f"--out must end in .html or .md, got {out.name!r}")
    result = compare(runs)
    if out is not None:
        try:
            write_comparison(out, result)
        except OSError as exc:
            raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from None
    if not quiet:
        table = Table(title="Headline metrics (value [95% interval])")
        table.add_column("metric")
        for run in result["runs"]:
            table.add_column(escape(run["name"]), justify="right")
        for row in comparison_rows(result):
            table.add_row(*map(escape, row))
        console.print(table)
        for test in result["tests"]:
            console.print(escape(
                f"McNemar {test['a']} vs {test['b']}: {test['n']} shared images, {test['a_only']} right only by "
                f"{test['a']}, {test['b_only']} right only by {test['b']}, exact p = {test['p_value']:.4g}"),
                highlight=False)
        for note in result["notes"]:
            console.print(f"note: {escape(note)}", highlight=False)
    if out is not None:
        console.print(escape(f"wrote {out}"), highlight=False)


def register(app: typer.Typer) -> None:
    """Add `evaluate` and `compare` to the leukoscope app."""
    app.command("evaluate")(evaluate_command)
    app.command("compare")(compare_command)
