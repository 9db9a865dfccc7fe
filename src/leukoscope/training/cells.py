"""Training per cell (`leukoscope train --unit cells`): a classifier of single white-cell crops.

Each training field is segmented (leukoscope.segmentation, the crops `predict --cells` classifies) and each
of its cells takes the field's label. That label is wrong whenever a field mixes cell kinds: a normal
lymphocyte or a hematogone beside the blasts of a leukemic field, a reactive cell in a Benign one. The
dataset has no per-cell labels, so this is the best it allows; the cell model learns "cells of fields
like this" and its per-cell classes are noisy, most of all for the leukemia classes.

Why a head on a frozen backbone: a dataset of ~20,000 crops and a 2-core CPU. The backbone's pooled
features of every crop are computed once per view (view 0 as is, the others through `config.augment`,
as the paper protocol's cached views), and only the classifier trains on them: minutes per run instead
of hours. The run folder is that of `leukoscope train` (config.yaml, manifest.csv, split.csv, env.json,
metrics.csv, best.pt, last.pt) plus cells.csv, the crops each part trained or was scored on; the epoch is
chosen on the val part's crops (macro-F1), the test part is never read.
"""

from __future__ import annotations

import shlex
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from leukoscope.data.fileio import write_json, write_text
from leukoscope.data.manifest import Manifest
from leukoscope.errors import ConfigError, DataError, ModelError
from leukoscope.models.checkpoint import save_checkpoint
from leukoscope.models.factory import ModelSpec, check_backbone_name, create_model, preprocess_for, set_trainable
from leukoscope.models.preprocessing import Preprocess, resize_rgb
from leukoscope.segmentation.crops import CellCrops, field_crops
from leukoscope.training import runs
from leukoscope.training.config import TrainConfig
from leukoscope.training.dataset import TensorSet, prepare_data
from leukoscope.training.devices import pick_device
from leukoscope.training.distributed import DistContext
from leukoscope.training.loop import run_dir_of
from leukoscope.training.network import Classifier
from leukoscope.training.optim import make_loss, make_optimizer, make_scheduler
from leukoscope.training.stages import stage_at, stages_of
from leukoscope.training.steps import EvalSet, frozen_view_features, train_head_epoch

CELLS_FILE = "cells.csv"
Log = Callable[[str], None]


def crop_tensor(crops: np.ndarray, preprocess: Preprocess) -> torch.Tensor:
    """Crops resized to the model's input as an N x 3 x S x S uint8 tensor (as leukoscope.inference.cells
    resizes them for prediction: the same resize_rgb)."""
    size = preprocess.input_size
    if len(crops) == 0:
        return torch.empty((0, 3, size, size), dtype=torch.uint8)
    array = np.stack([resize_rgb(Image.fromarray(c), preprocess) for c in crops])
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def cells_csv(parts: dict[str, tuple[Manifest, CellCrops]]) -> str:
    """One line per crop a part used: part, the field's path and label, the cell's id in the field's mask."""
    lines = ["part,path,label,cell_id"]
    for part, (manifest, crops) in parts.items():
        for field, cell_id in zip(crops.fields, crops.cell_ids, strict=True):
            record = manifest.records[int(field)]
            path = record.path.replace('"', '""')
            lines.append(f'{part},"{path}",{record.label},{int(cell_id)}')
    return "\n".join(lines) + "\n"


def _check(config: TrainConfig, resume: bool) -> Path:
    if resume:
        raise ConfigError("unit cells runs take minutes and cannot be resumed: start a new run (another --name)")
    if config.unit != "cells":
        raise ConfigError(f"fit_cells trains cell runs: unit=cells is needed, got unit={config.unit}")
    if config.trainable != "head":
        raise ConfigError("unit cells trains a head on frozen-backbone features of the cell crops: it needs "
                          f"trainable=head; got trainable={config.trainable}")
    run_dir = run_dir_of(config)
    runs.check_run_dir(run_dir, resume=False)
    check_backbone_name(config.backbone)
    if config.weights not in ("imagenet", "none", "") and not Path(config.weights).is_file():
        raise ModelError(f"weights file not found: {config.weights}")
    return run_dir


def fit_cells(config: TrainConfig, *, resume: bool = False, quiet: bool = False, command: str | None = None,
              log: Log | None = None) -> Path:
    """Train a cell classifier as `config` says (unit cells) into `out_dir/name`; returns the run folder.

    Everything that can be checked (run folder, backbone, weights, data, split, crops) is checked before
    the run folder is written. Seeds: the split, the head's initialisation, the views and the order.
    """
    say = log or ((lambda m: None) if quiet else (lambda m: print(m, file=sys.stderr)))
    run_dir = _check(config, resume)
    command = command or shlex.join(["leukoscope", *sys.argv[1:]])
    started = time.perf_counter()
    device = pick_device(config.device)
    full, parted = prepare_data(config, None)
    eval_part = "val" if any(r.part == "val" for r in parted.records) else "test"
    spec = ModelSpec(config.backbone, len(full.classes), config.drop_rate, config.pad_type)
    torch.manual_seed(config.seed)
    model = create_model(spec, weights=config.weights, weights_dir=config.weights_dir or None)
    preprocess = preprocess_for(model, config.input_size or None)
    parts: dict[str, tuple[Manifest, CellCrops]] = {}
    for part, per_field in (("train", config.cells_per_field), (eval_part, 0)):
        manifest = parted.part(part)
        crops = field_crops(manifest.paths(), manifest.labels, per_field=per_field, seed=config.seed)
        parts[part] = (manifest, crops)
        say(f"{part}: {len(manifest)} fields -> {len(crops)} cell crops")
    train_crops, eval_crops = parts["train"][1], parts[eval_part][1]
    if len(train_crops) < 2 or len(eval_crops) < 1:
        raise DataError(f"too few cell crops ({len(train_crops)} train, {len(eval_crops)} {eval_part}): are these "
                        "stained blood smear fields?")
    train = TensorSet(crop_tensor(train_crops.crops, preprocess).to(device),
                      torch.as_tensor(train_crops.labels, device=device))
    evalset = EvalSet(TensorSet(crop_tensor(eval_crops.crops, preprocess).to(device),
                                torch.as_tensor(eval_crops.labels, device=device)), preprocess, config)
    _write_run_files(run_dir, config, full, parted, parts, eval_part, command, str(device))
    net = Classifier(model.to(device), config.freeze_bn)
    set_trainable(model, "head")
    net.head_only = True
    net.train()
    views = frozen_view_features(net, train, config.model_copy(update={"frozen_views": max(1, config.frozen_views)}),
                                 preprocess)
    say(f"cached {views.shape[0]} view(s) of {len(train)} crops in {time.perf_counter() - started:.0f} s")
    history = _epochs(config, run_dir, net, model, spec, full, parted, preprocess, train, views, evalset, say)
    best = max(history, key=lambda r: (r["val_macro_f1"], -r["val_loss"]))
    write_json(run_dir / "summary.json", {
        "run": str(run_dir), "unit": "cells", "protocol": config.protocol, "backbone": config.backbone,
        "device": str(device), "best_epoch": best["epoch"], "epochs_run": len(history),
        "seconds_total": time.perf_counter() - started, "train_fields": len(parts["train"][0]),
        "train_crops": len(train_crops), f"{eval_part}_crops": len(eval_crops),
        eval_part: {"unit": "cell crops", "accuracy": best["val_acc"], "macro_f1": best["val_macro_f1"]},
        "test": "not scored here: benchmarks/cell_model.py compares the cell model with the field model"})
    return run_dir


def _write_run_files(run_dir: Path, config: TrainConfig, full: Manifest, parted: Manifest,
                     parts: dict[str, tuple[Manifest, CellCrops]], eval_part: str, command: str, device: str) -> None:
    created = not run_dir.exists()
    runs.prepare_run_dir(run_dir, resume=True)
    try:
        resolved = {**config.to_dict(), "data": str(Path(config.data).resolve()), "eval_part": eval_part}
        runs.write_config(run_dir, resolved, command)
        runs.write_manifests(run_dir, full, parted)
        runs.write_env(run_dir, device, config.seed)
        write_text(run_dir / CELLS_FILE, cells_csv(parts))
    except BaseException:
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _epochs(config: TrainConfig, run_dir: Path, net: Classifier, model: torch.nn.Module, spec: ModelSpec,
            full: Manifest, parted: Manifest, preprocess: Preprocess, train: TensorSet, views: torch.Tensor,
            evalset: EvalSet, say: Log) -> list[dict[str, Any]]:
    """The head's epochs over the cached views; best.pt by val macro-F1, last.pt every epoch."""
    stages = stages_of(config)
    loss_fn = make_loss(config, train.labels, len(full.classes))
    ctx = DistContext()
    steps = max(1, -(-len(train) // config.batch_size))
    history: list[dict[str, Any]] = []
    best: tuple[float, float] | None = None
    current = optimizer = scheduler = None
    for epoch in range(sum(s.epochs for s in stages)):
        stage, _ = stage_at(stages, epoch)
        if stage is not current:
            current = stage
            optimizer = make_optimizer(config, [p for p in model.parameters() if p.requires_grad], stage.lr)
            scheduler = make_scheduler(config, stage, optimizer, steps)
        started = time.perf_counter()
        means = train_head_epoch(net, views, train.labels, config, epoch, optimizer, scheduler, loss_fn, ctx,
                                 lambda n: None)
        scores = evalset.scores(net, len(full.classes))
        row = {"epoch": epoch + 1, "stage": stage.name, "train_loss": means.loss, "train_acc": means.accuracy,
               "val_loss": scores.loss, "val_acc": scores.accuracy, "val_macro_f1": scores.macro_f1,
               "lr": float(optimizer.param_groups[0]["lr"]), "seconds": time.perf_counter() - started}
        history.append(row)
        key = (row["val_macro_f1"], -row["val_loss"])
        payload = {"model": model.state_dict(), "spec": spec.to_dict(), "classes": list(full.classes),
                   "preprocess": preprocess.to_dict(), "epoch": epoch + 1, "stage": stage.name,
                   "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                   "best_score": best if best is not None and key <= best else key, "stale": 0,
                   "history": list(history), "config": config.to_dict(), "manifest_digest": parted.digest(),
                   "unit": "cells"}
        if best is None or key > best:
            best = key
            save_checkpoint(run_dir / "best.pt", payload)
        save_checkpoint(run_dir / "last.pt", payload)
        runs.write_metrics_csv(run_dir, history)
        say(f"epoch {epoch + 1} {stage.name}: loss {means.loss:.4f} acc {means.accuracy:.4f} | cells "
            f"{row['val_loss']:.4f} acc {row['val_acc']:.4f} macro-F1 {row['val_macro_f1']:.4f} | {row['seconds']:.1f}s")
    return history
