"""`leukoscope train`: the paper's protocol or the recommended fine-tune, with one command."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from leukoscope.cli.common import console, labelled_progress
from leukoscope.errors import ConfigError


def train(
    data: Path | None = typer.Argument(None, help="Dataset root (one subfolder per class). Not needed with --resume."),
    protocol: str | None = typer.Option(None, "--protocol", "-p",
        help="paper (the published recipe), finetune (recommended, the default) or custom."),
    config: Path | None = typer.Option(None, "--config", "-c",
        help="YAML file of options (any TrainConfig key); CLI options win."),
    name: str | None = typer.Option(None, help="Run folder name under --out-dir (default: protocol-backbone-seedN)."),
    out_dir: str | None = typer.Option(None, "--out-dir", help="Where run folders go (default: runs)."),
    resume: Path | None = typer.Option(None, "--resume", help="Continue the interrupted run in this folder from its last.pt."),
    backbone: str | None = typer.Option(None,
        help="Any timm model name, e.g. mobilenetv2_100, efficientnet_b0, tf_efficientnet_lite0."),
    weights: str | None = typer.Option(None,
        help="imagenet (hub, or a local file via --weights-dir), none, or PATH to a state_dict."),
    weights_dir: str | None = typer.Option(None, "--weights-dir",
        help="Folder with <backbone>.<tag>.pth ImageNet files (env LEUKOSCOPE_WEIGHTS_DIR)."),
    epochs: int | None = typer.Option(None, help="Epochs of the main stage."),
    warmup_epochs: int | None = typer.Option(None, "--warmup-epochs", help="Head-only epochs before the main stage."),
    lr: float | None = typer.Option(None, help="Learning rate of the main stage."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Images per step (per process under torchrun)."),
    seed: int | None = typer.Option(None, help="Seed for the split, initialisation, order and augmentation."),
    split_csv: str | None = typer.Option(None, "--split",
        help="Use this split CSV (from `leukoscope data split`) instead of splitting."),
    device: str | None = typer.Option(None, help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps."),
    unit: str | None = typer.Option(None, "--unit", help="fields (default: whole images) or cells: classify the "
        "segmented white-cell crops, each labelled with its field's label (a head on frozen-backbone features)."),
    set_values: list[str] = typer.Option([], "--set", help="Override any other option: --set label_smoothing=0.1 (repeatable)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output (for scripts and CI)."),
) -> None:
    """Train a model; writes runs/<name>/ with config, data manifest, split, env, metrics and checkpoints.

    Options resolve as: the protocol's preset, then --config FILE, then the options given here (which win).
    Ctrl-C stops cleanly (last.pt keeps the last completed epoch) and --resume RUN continues from there.
    Under torchrun the same command trains with DistributedDataParallel (NCCL on GPUs, gloo on CPUs).
    """
    from leukoscope.training.config import load_yaml, parse_set_options, resolve_config
    from leukoscope.training.loop import fit

    yaml_values = load_yaml(config) if config else {}
    if resume is not None:
        run_config = resume / "config.yaml"
        if not run_config.is_file():
            raise ConfigError(f"--resume {resume}: no config.yaml there (not a leukoscope run folder)")
        from leukoscope.training.runs import read_config

        yaml_values = {**read_config(resume), **yaml_values}
        out_dir, name = str(resume.parent), resume.name
    overrides = {
        "data": str(data) if data else None, "name": name, "out_dir": out_dir, "backbone": backbone, "weights": weights,
        "weights_dir": weights_dir, "epochs": epochs, "warmup_epochs": warmup_epochs, "lr": lr, "batch_size": batch_size,
        "seed": seed, "split_csv": split_csv, "device": device,
        "protocol": protocol,  # None (not given): the --config file's, the resumed run's, or finetune
        **parse_set_options(set_values),
    }
    if (unit or yaml_values.get("unit")) == "cells":  # the cell recipe trains the head only, unless told otherwise
        cell_defaults = {k: v for k, v in (("trainable", "head"), ("warmup_epochs", 0)) if k not in yaml_values}
        overrides = {**cell_defaults, **{k: v for k, v in overrides.items() if v is not None}}
    overrides["unit"] = unit
    resolved = resolve_config("finetune", yaml_values, overrides)
    if resolved.unit == "cells":
        from leukoscope.training.cells import fit_cells

        run_dir = fit_cells(resolved, resume=resume is not None, quiet=quiet)
        console.print(f"run folder: {run_dir} (cell model; its val scores in summary.json)")
        return
    with labelled_progress(quiet=quiet) as progress:  # one bar per epoch, as fit reports them
        run_dir = fit(resolved, resume=resume is not None, quiet=quiet, progress=progress)
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun only rank 0 reports
    summary_file = run_dir / "summary.json"
    if summary_file.is_file():
        summary = json.loads(summary_file.read_text())
        test = summary.get("test", {})
        if test:
            console.print(
                f"[bold]{run_dir}[/]: test accuracy {test['accuracy']:.4f}, macro-F1 {test['macro_f1']:.4f}, "
                f"weighted P/R/F1 {test['precision_weighted']:.4f}/{test['recall_weighted']:.4f}/{test['f1_weighted']:.4f} "
                f"on {test['n']} images; {summary['seconds_total']:.0f} s", highlight=False)
    else:
        console.print(f"run folder: {run_dir}")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
