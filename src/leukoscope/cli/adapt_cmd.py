"""`leukoscope adapt MODEL LAB_DATA --out NEW`: teach a package a second lab's verified images.

A thin shell over leukoscope.adaptation.adapt: it draws the epochs as progress bars, prints the steps and
the one-line result. A refusal (not better on the lab's held-out images, or forgetting the replay data) is
one line and exit code 1, with nothing written at --out.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from leukoscope.cli.common import console, labelled_progress
from leukoscope.errors import UsageError


def adapt(
    model: Path = typer.Argument(..., help="The model package to adapt (the parent; left as it is)."),
    lab_data: Path = typer.Argument(..., help="The lab's labelled images, one subfolder per class (e.g. from "
                                    "`leukoscope data export-verified`)."),
    out: Path = typer.Option(..., "--out", "-o", help="New package folder to write (must be new or empty)."),
    replay: Path | None = typer.Option(None, "--replay", help="The parent's own dataset: its training images are "
                                       "replayed so the model does not forget, its test images checked."),
    split: Path | None = typer.Option(None, "--split", help="Which rows of --replay are train/val/test (the "
                                      "parent run's split.csv); default: the parent's split, recomputed."),
    epochs: int = typer.Option(6, "--epochs", help="Fine-tuning epochs."),
    lr: float = typer.Option(5e-5, "--lr", help="Learning rate (AdamW, cosine schedule; default chosen on "
                             "validation data by scripts/tune_adapt.py)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Images per step."),
    seed: int = typer.Option(0, "--seed", help="Seed of the lab's split, the replay samples and the training."),
    held_out: float = typer.Option(0.3, "--held-out", help="Share of the lab's images held out to judge the "
                                   "adapted model (never trained or calibrated on)."),
    val: float = typer.Option(0.15, "--val", help="Share of the lab's images for the temperature and review "
                              "thresholds."),
    replay_ratio: float = typer.Option(4.0, "--replay-ratio", help="Replayed images per lab image, each epoch "
                                       "(more: less forgetting, slower; default chosen as --lr's)."),
    simulate_ratio: float = typer.Option(2.0, "--simulate-ratio", help="Images of --replay's train part "
                                                "per lab image, each epoch, shown through the lab's estimated "
                                                "magnification, hue and colour (0: none; default chosen as --lr's)."),
    simulate_review: bool = typer.Option(True, "--simulate-review/--no-simulate-review", help="Also fit "
                                                "the review statistics (OOD, image quality, cell scale) on the "
                                                "simulated images (default chosen as --lr's)."),
    simulate_val: bool = typer.Option(False, "--simulate-val/--no-simulate-val", help="Also calibrate on the "
                                      "replay's val part shown through the lab's estimated shift (temperature, "
                                      "thresholds, Benign rules; default chosen as --lr's)."),
    benign_rules: str = typer.Option("check", "--benign-rules", help="How Benign calls are reviewed: export (the "
                                     "export's Benign threshold), check (plus a Benign view check chosen for the new "
                                     "network on both datasets' val parts), joint (check and threshold chosen "
                                     "together); default chosen as --lr's."),
    distill: float = typer.Option(0.5, "--distill", help="Share of the parent's own probabilities in the replayed "
                                  "images' targets (simulated ones take their original's), against forgetting; "
                                  "0: labels only (default chosen as --lr's)."),
    interpolate: bool = typer.Option(False, "--interpolate/--no-interpolate", help="Ship a mix of the parent's and "
                                     "the fine-tuned weights (WiSE-FT), the share chosen on both datasets' val "
                                     "parts, against forgetting (default chosen as --lr's)."),
    augment: str | None = typer.Option(None, "--augment", help="none, paper, strong or robust (default: the parent's "
                                       "training recipe)."),
    int8: bool = typer.Option(False, "--int8", help="Also write a static int8 ONNX model (as `leukoscope export`)."),
    shift_rules: bool | None = typer.Option(None, "--shift-rules/--no-shift-rules", help="Choose the review rules "
                                            "for other labs' images at export (default: as the parent)."),
    name: str | None = typer.Option(None, "--name", help="Name in model.json (default: <parent>-adapted)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the result."),
) -> None:
    """Fine-tune a package on a lab's labelled images and write a new package whose model.json and
    MODEL_CARD.md name the parent, both datasets and the before/after figures.

    Refused (exit code 1, nothing written) when the lab's held-out accuracy is not better than the parent's,
    or when accuracy on --replay's test part drops by more than 0.5 points.
    """
    from leukoscope.adaptation.adapt import adapt as run_adaptation
    from leukoscope.adaptation.finetune import AdaptOptions

    for path, what in ((model, "model package"), (lab_data, "lab data folder")):
        if not path.exists():
            raise UsageError(f"{what} not found: {path}")
    options = AdaptOptions(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, held_out=held_out, val=val,
                           replay_ratio=replay_ratio, augment=augment, int8=int8, shift_rules=shift_rules, name=name,
                           device=device, simulate_ratio=simulate_ratio, simulate_review=simulate_review,
                           simulate_val=simulate_val, benign_rules=benign_rules, distill=distill, interpolate=interpolate)

    def log(message: str) -> None:
        if not quiet:
            console.print(escape(message), highlight=False, soft_wrap=True)

    with labelled_progress(quiet=quiet) as progress:
        result = run_adaptation(model, lab_data, out, replay=replay, split_csv=split, options=options, log=log,
                                progress=progress)
    console.print(escape(result.line()), highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add `adapt` to the leukoscope command line."""
    app.command("adapt")(adapt)
