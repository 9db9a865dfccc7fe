"""The fit loop. Reads top to bottom: check and prepare (`_setup_run`, `_build`), write the run folder, run
the stages epoch by epoch (`_run_epochs`), score the best checkpoint (`summary.write_run_summary`).

Stages: an optional head warm-up with the backbone frozen, then the main stage (`trainable`: head, all or
the last blocks). The dataset is decoded once into uint8 tensors on the training device
(`training.dataset`); the epochs themselves live in `training.steps`. Each epoch reseeds from (seed, epoch),
so a run resumed from `last.pt` replays exactly what the uninterrupted run would have done. Progress goes
to a callback (the CLI draws it as a bar), so the library prints no more than its one line per epoch.
"""

from __future__ import annotations

import math
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from leukoscope.data.manifest import Manifest
from leukoscope.errors import DataError, LeukoscopeError, ModelError
from leukoscope.models.checkpoint import read_checkpoint, save_checkpoint
from leukoscope.models.factory import ModelSpec, check_backbone_name, create_model, preprocess_for, set_trainable
from leukoscope.models.preprocessing import Preprocess
from leukoscope.training import runs
from leukoscope.training.config import TrainConfig
from leukoscope.training.dataset import TensorSet, load_part, prepare_data
from leukoscope.training.devices import pick_device
from leukoscope.training.distributed import DistContext, check_same_run, init_from_env, shutdown
from leukoscope.training.network import Classifier
from leukoscope.training.optim import make_loss, make_optimizer, make_scheduler
from leukoscope.training.soft_targets import read_teacher_csv, split_sources, teacher_mean, training_targets, write_targets_csv
from leukoscope.training.stages import Stage, stage_at, stages_of
from leukoscope.training.steps import EvalSet, frozen_view_features, train_head_epoch, train_one_epoch
from leukoscope.training.summary import write_run_summary

SOFT_TARGETS_FILE = "soft_targets.csv"  # the training targets of a distillation run, next to its results

__all__ = ["EpochCallback", "ProgressCallback", "TrainingInterrupted", "fit", "run_dir_of"]

EpochCallback = Callable[[int, dict[str, Any]], None]
"""on_epoch_end(epoch, row): after each epoch is saved, with its 1-based number and its metrics.csv row."""

ProgressCallback = Callable[[str, int, int], None]
"""progress(label, done, total) for each epoch's training: done 0 when it starts, done < total after each
batch, and done == total once when its training ends (then the eval part is scored). `label` names the
epoch, e.g. "epoch 3/12 (main)"; `total` is the images one process trains on. An interrupted epoch never
reports done == total."""


class TrainingInterrupted(LeukoscopeError):
    """Ctrl-C during training: last.pt holds the last completed epoch."""

    exit_code = 130


def _improved(config: TrainConfig, row: dict[str, Any], best: tuple[float, float] | None) -> bool:
    if config.select == "last":
        return True
    key = (row["val_macro_f1"], -row["val_loss"])
    return best is None or key > best


def _should_stop(config: TrainConfig, stage: str, stale: int, eval_part: str) -> bool:
    """Early stopping: only in the main stage, only on a val part (never on the test part)."""
    return bool(config.patience) and stage == "main" and stale >= config.patience and eval_part == "val"


@dataclass
class _Session:
    """What the epochs of one run share: the run folder, the data on the device and the network."""

    config: TrainConfig
    run_dir: Path
    device: torch.device
    ctx: DistContext
    quiet: bool
    progress: ProgressCallback | None
    full: Manifest
    parted: Manifest
    spec: ModelSpec
    model: nn.Module
    net: Classifier
    preprocess: Preprocess
    train: TensorSet
    evalset: EvalSet
    eval_part: str
    stages: list[Stage]
    loss_fn: nn.Module

    @property
    def total_epochs(self) -> int:
        return sum(s.epochs for s in self.stages)

    @property
    def steps(self) -> int:
        return max(1, math.ceil(len(self.train) // self.ctx.world_size / self.config.batch_size))


@dataclass
class _RunState:
    """The state a checkpoint carries from epoch to epoch (restored by --resume)."""

    completed: int = 0  # epochs finished and saved in last.pt
    history: list[dict[str, Any]] = field(default_factory=list)
    best: tuple[float, float] | None = None
    stale: int = 0

    @classmethod
    def of(cls, checkpoint: dict[str, Any] | None) -> _RunState:
        if not checkpoint:
            return cls()
        best = tuple(checkpoint["best_score"]) if checkpoint.get("best_score") else None
        return cls(int(checkpoint["epoch"]), list(checkpoint["history"]), best, int(checkpoint.get("stale", 0)))


def run_dir_of(config: TrainConfig) -> Path:
    return Path(config.out_dir) / (config.name or f"{config.protocol}-{config.backbone}-seed{config.seed}")


def fit(config: TrainConfig, *, resume: bool = False, quiet: bool = False,
        on_epoch_end: EpochCallback | None = None, command: str | None = None,
        progress: ProgressCallback | None = None) -> Path:
    """Train as `config` says into `out_dir/name`; returns the run folder. Resumable from last.pt.

    `command` is what config.yaml records as the command that made the run (default: this process's
    `leukoscope ...` arguments; pass the equivalent CLI call when fit is driven from Python).
    `progress` receives each epoch's progress (see ProgressCallback); `quiet` silences it and the one line
    per epoch printed to stderr. Under DDP only rank 0 reports.

    Everything that can be checked (run folder, backbone, weights, data, split) is checked before the run
    folder is written. Ctrl-C (KeyboardInterrupt) anywhere in fit raises TrainingInterrupted with a one-line
    message; last.pt then holds the last completed epoch and `fit(config, resume=True)` continues exactly
    where the run stopped.
    """
    device = pick_device(config.device)
    ctx = init_from_env(device.type)
    if ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    try:
        command = command or shlex.join(["leukoscope", *sys.argv[1:]])
        return _fit(config, device, ctx, resume, quiet or not ctx.is_main, on_epoch_end, command, progress)
    finally:
        shutdown(ctx)


def _fit(config: TrainConfig, device: torch.device, ctx: DistContext, resume: bool, quiet: bool,
         on_epoch_end: EpochCallback | None, command: str, progress: ProgressCallback | None) -> Path:
    try:  # under torchrun: a rank that fails here stops them all (ctx.together), and all train the same run
        with ctx.together():
            run_dir, checkpoint = _setup_run(config, resume, ctx.is_main)
            session = _build(config, run_dir, device, ctx, None if quiet else progress, quiet, checkpoint)
        check_same_run(ctx, config.to_dict(), session.parted.digest(), int(checkpoint["epoch"]) if checkpoint else 0)
        with ctx.together():
            if ctx.is_main and checkpoint is None:
                _write_run_files(session, command)
    except KeyboardInterrupt:
        raise TrainingInterrupted("interrupted before the first epoch started; no checkpoint was written") from None
    state = _RunState.of(checkpoint)
    started = time.perf_counter()
    try:
        with ctx.epoch_timeouts(lambda why: _interrupted_message(session, state, f"training stopped, {why}")):
            _run_epochs(session, state, checkpoint, on_epoch_end)
        with ctx.together():
            if ctx.is_main:
                write_run_summary(run_dir, session.parted, session.preprocess, device, config, state.history,
                                  time.perf_counter() - started)
    except KeyboardInterrupt:
        raise TrainingInterrupted(_interrupted_message(session, state)) from None
    return run_dir


def _interrupted_message(session: _Session, state: _RunState, what: str = "interrupted") -> str:
    done = (f"last.pt holds epoch {state.completed}/{session.total_epochs}" if state.completed
            else "no epoch was completed")
    again = "relaunch torchrun on every node with" if session.ctx.enabled else "continue with"
    return f"{what}: {done}; {again} `leukoscope train --resume {session.run_dir}`"


def _setup_run(config: TrainConfig, resume: bool, check: bool = True) -> tuple[Path, dict[str, Any] | None]:
    """The run folder (checked, not yet created, by the rank that writes it), the checkpoint to resume from,
    and the cheap checks."""
    run_dir = run_dir_of(config)
    if check:
        runs.check_run_dir(run_dir, resume=resume)
    check_backbone_name(config.backbone)
    if config.weights not in ("imagenet", "none", "") and not Path(config.weights).is_file():
        raise ModelError(f"weights file not found: {config.weights}")
    checkpoint = read_checkpoint(run_dir / "last.pt") if resume and (run_dir / "last.pt").exists() else None
    return run_dir, checkpoint


def _build(config: TrainConfig, run_dir: Path, device: torch.device, ctx: DistContext,
           progress: ProgressCallback | None, quiet: bool, checkpoint: dict[str, Any] | None) -> _Session:
    """Data, split, network and tensors: everything that may fail on bad input, before any file is written."""
    full, parted = prepare_data(config, run_dir / "split.csv" if checkpoint else None,
                                classes=tuple(checkpoint["classes"]) if checkpoint else None)
    spec = ModelSpec(config.backbone, len(full.classes), config.drop_rate, config.pad_type)
    torch.manual_seed(config.seed)
    model = create_model(spec, weights="none" if checkpoint else config.weights, weights_dir=config.weights_dir or None)
    preprocess = preprocess_for(model, config.input_size or None)
    if checkpoint:
        model.load_state_dict(checkpoint["model"])
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    eval_part = "val" if any(r.part == "val" for r in parted.records) else "test"
    train = load_part(parted, "train", preprocess, device, config.workers)
    if len(train) < max(2, ctx.world_size):
        raise DataError(f"too few training images ({len(train)}) after the split")
    evalset = EvalSet(load_part(parted, eval_part, preprocess, device, config.workers), preprocess, config)
    soft = _soft_targets(config, parted.part("train"), run_dir, resumed=checkpoint is not None)
    if soft is not None:
        train.targets = torch.as_tensor(soft, dtype=torch.float32, device=device)
    return _Session(config, run_dir, device, ctx, quiet, progress, full, parted, spec, model,
                    Classifier(model, config.freeze_bn), preprocess, train, evalset, eval_part,
                    stages_of(config), make_loss(config, train.labels, len(full.classes)))


def _soft_targets(config: TrainConfig, part: Manifest, run_dir: Path, *, resumed: bool) -> np.ndarray | None:
    """Distillation targets of the training images: from the teachers' CSVs for a new run, from the run's
    own soft_targets.csv when resuming (so a resumed run trains on exactly the same numbers)."""
    if not config.soft_targets:
        return None
    if resumed:
        table = read_teacher_csv(run_dir / SOFT_TARGETS_FILE, part.classes, normalise=False)
        return training_targets(part, table, 1.0)
    table = teacher_mean(split_sources(config.soft_targets), part.classes)
    return training_targets(part, table, config.soft_target_weight)


def _write_run_files(session: _Session, command: str) -> None:
    """config.yaml, manifest.csv, split.csv and env.json of a new run (each written atomically); a folder
    this call created is removed again when writing them fails."""
    run_dir, config = session.run_dir, session.config
    created = not run_dir.exists()
    runs.prepare_run_dir(run_dir, resume=True)
    try:
        resolved = {**config.to_dict(), "data": str(Path(config.data).resolve()), "eval_part": session.eval_part}
        runs.write_config(run_dir, resolved, command)
        runs.write_manifests(run_dir, session.full, session.parted)
        runs.write_env(run_dir, str(session.device), config.seed)
        if session.train.targets is not None:  # 6-decimal values: float32 keeps them to the last digit
            write_targets_csv(run_dir / SOFT_TARGETS_FILE, session.parted.part("train"),
                              session.train.targets.cpu().numpy())
    except BaseException:
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _run_epochs(session: _Session, state: _RunState, checkpoint: dict[str, Any] | None,
                on_epoch_end: EpochCallback | None) -> None:
    """The epochs from the last completed one to the end (or an early stop)."""
    config, start = session.config, state.completed
    if start and _should_stop(config, str(checkpoint.get("stage")), state.stale, session.eval_part):
        return  # the resumed run had already stopped early
    current = optimizer = scheduler = wrapped = views = None
    for epoch in range(start, session.total_epochs):
        stage, _ = stage_at(session.stages, epoch)
        if stage is not current:
            current, wrapped = stage, None  # drop the old DDP wrapper (and its gradient hooks) first
            optimizer, scheduler, wrapped = _start_stage(session, stage, checkpoint if epoch == start else None)
        if session.net.head_only and config.frozen_views > 0 and views is None:
            views = frozen_view_features(session.net, session.train, config, session.preprocess)
        row = _epoch(session, wrapped, stage, epoch, optimizer, scheduler, views)
        improved = _record(config, state, row)
        payload = _checkpoint_payload(session, state, stage, epoch, optimizer, scheduler)
        _save_epoch(session, state, row, payload, improved)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, row)
        if _should_stop(config, stage.name, state.stale, session.eval_part):
            if not session.quiet:
                print(f"early stop: no better {session.eval_part} macro-F1 for {state.stale} epochs", file=sys.stderr)
            break


def _start_stage(session: _Session, stage: Stage, checkpoint: dict[str, Any] | None):
    """Set what trains in `stage`, build its optimizer and schedule (restored from `checkpoint` when the run
    resumes inside this stage) and wrap the network for DDP."""
    config, net = session.config, session.net
    net.head_only = stage.trainable == "head"
    set_trainable(session.model, stage.trainable, last_blocks=config.last_blocks)
    net.train()  # re-applies freeze_bn, which also stops BatchNorm's affine parameters from training
    params = [p for p in session.model.parameters() if p.requires_grad]
    optimizer = make_optimizer(config, params, stage.lr)
    scheduler = make_scheduler(config, stage, optimizer, session.steps)
    if checkpoint and checkpoint.get("stage") == stage.name:
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
    wrapped = nn.parallel.DistributedDataParallel(net) if session.ctx.enabled else net
    return optimizer, scheduler, wrapped


def _epoch(session: _Session, wrapped: nn.Module, stage: Stage, epoch: int, optimizer, scheduler,
           views: torch.Tensor | None) -> dict[str, Any]:
    """Train one epoch and score the eval part; returns the metrics.csv row."""
    config, train, ctx = session.config, session.train, session.ctx
    started = time.perf_counter()
    tick = _epoch_ticker(session.progress, f"epoch {epoch + 1}/{session.total_epochs} ({stage.name})",
                         len(train) // ctx.world_size)
    if views is not None and session.net.head_only:
        means = train_head_epoch(wrapped, views, train.labels, config, epoch, optimizer, scheduler,
                                 session.loss_fn, ctx, tick)
    else:
        means = train_one_epoch(wrapped, train, config, session.preprocess, epoch, optimizer, scheduler,
                                session.loss_fn, ctx, tick)
    tick(None)
    scores = session.evalset.scores(session.net, len(session.full.classes))
    return {"epoch": epoch + 1, "stage": stage.name, "train_loss": means.loss, "train_acc": means.accuracy,
            "val_loss": scores.loss, "val_acc": scores.accuracy, "val_macro_f1": scores.macro_f1,
            "lr": float(optimizer.param_groups[0]["lr"]), "seconds": time.perf_counter() - started}


def _epoch_ticker(progress: ProgressCallback | None, label: str, total: int) -> Callable[[int | None], None]:
    """The per-batch tick of one epoch, reporting to `progress` as ProgressCallback says; tick(None) ends
    the epoch's training. Reports done 0 at once."""
    if progress is None:
        return lambda n: None
    done = 0
    progress(label, 0, total)

    def tick(n: int | None) -> None:
        nonlocal done
        if n is None:
            progress(label, total, total)
        else:
            done += n
            if done < total:
                progress(label, done, total)

    return tick


def _checkpoint_payload(session: _Session, state: _RunState, stage: Stage, epoch: int, optimizer,
                        scheduler) -> dict[str, Any]:
    """The checkpoint dict of a completed epoch (keys: docs/INTERFACES.md), after `state` took its row."""
    return {"model": session.model.state_dict(), "spec": session.spec.to_dict(), "classes": list(session.full.classes),
            "preprocess": session.preprocess.to_dict(), "epoch": epoch + 1, "stage": stage.name,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "best_score": state.best,
            "stale": state.stale, "history": list(state.history), "config": session.config.to_dict(),
            "manifest_digest": session.parted.digest()}


def _record(config: TrainConfig, state: _RunState, row: dict[str, Any]) -> bool:
    """Add an epoch's row to the history and update best/stale; returns whether it is the new best."""
    state.history.append(row)
    improved = _improved(config, row, state.best)
    if improved:
        state.best, state.stale = (row["val_macro_f1"], -row["val_loss"]), 0
    else:
        state.stale += 1
    return improved


def _save_epoch(session: _Session, state: _RunState, row: dict[str, Any], payload: dict[str, Any],
                improved: bool) -> None:
    """Rank 0 writes best.pt (when improved), then last.pt, then metrics.csv, each atomically."""
    if session.ctx.is_main:
        if improved:
            save_checkpoint(session.run_dir / "best.pt", payload)
        save_checkpoint(session.run_dir / "last.pt", payload)
    state.completed = row["epoch"]
    if not session.ctx.is_main:
        return
    runs.write_metrics_csv(session.run_dir, state.history)
    if not session.quiet:
        print(f"epoch {row['epoch']}/{session.total_epochs} {row['stage']}: loss {row['train_loss']:.4f} "
              f"acc {row['train_acc']:.4f} | {session.eval_part} loss {row['val_loss']:.4f} acc {row['val_acc']:.4f} "
              f"macro-F1 {row['val_macro_f1']:.4f} | {row['seconds']:.1f}s", file=sys.stderr)
