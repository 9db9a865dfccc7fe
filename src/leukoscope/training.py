"""The fit loop. Reads top to bottom: prepare data, build the model, run the stages, evaluate the best.

Stages: an optional head warm-up with the backbone frozen, then the main stage (`trainable`: head, all or
the last blocks). The dataset is decoded once into uint8 tensors on the training device; augmentation runs
on batches there. Each epoch reseeds from (seed, epoch), so a run resumed from `last.pt` replays exactly
what the uninterrupted run would have done.
"""

from __future__ import annotations

import math
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support
from torch import nn

from . import runs
from .checkpoint import read_checkpoint, save_checkpoint
from .data import discover, split
from .distributed import DistContext, init_from_env, shutdown
from .errors import DataError, LeukoscopeError
from .fileio import write_json, write_text
from .manifest import Manifest, read_manifest_csv
from .models import ModelSpec, Preprocess, create_model, freeze_batchnorm, preprocess_for, set_trainable
from .train_config import TrainConfig
from .transforms import augment, load_uint8_batch, normalize

EpochCallback = Callable[[int, dict[str, Any]], None]


class TrainingInterrupted(LeukoscopeError):
    """Ctrl-C during training: last.pt holds the last completed epoch."""

    exit_code = 130


@dataclass(frozen=True)
class Stage:
    name: str
    epochs: int
    trainable: str
    lr: float


def stages_of(config: TrainConfig) -> list[Stage]:
    stages = []
    if config.warmup_epochs > 0:
        stages.append(Stage("warmup", config.warmup_epochs, "head", config.warmup_lr))
    if config.epochs > 0:
        stages.append(Stage("main", config.epochs, config.trainable, config.lr))
    return stages


def stage_at(stages: list[Stage], epoch: int) -> tuple[Stage, int]:
    """The stage of a 0-based global epoch and the epoch's index inside it."""
    for stage in stages:
        if epoch < stage.epochs:
            return stage, epoch
        epoch -= stage.epochs
    raise IndexError(epoch)


def pick_device(name: str) -> torch.device:
    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError:
            raise DataError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise DataError("--device cuda asked for, but no CUDA GPU is available")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


# ---------------------------------------------------------------------------------------- the network


class Classifier(nn.Module):
    """Wraps the timm model so that a frozen backbone runs without autograd (much faster) and DDP sees
    one forward. BatchNorm stays in inference mode when `freeze_bn` is set, whatever .train() says."""

    def __init__(self, model: nn.Module, freeze_bn: bool) -> None:
        super().__init__()
        self.model, self.freeze_bn, self.head_only = model, freeze_bn, False

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if self.head_only:
            self.model.eval()
        if self.freeze_bn:
            freeze_batchnorm(self.model)
        return self

    def forward(self, x: torch.Tensor, pooled: bool = False) -> torch.Tensor:
        """Logits of images, or of already pooled backbone features when `pooled` is set."""
        if not self.head_only:
            return self.model(x)
        if pooled:
            pooled_features = x
        else:
            with torch.no_grad():
                pooled_features = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        pooled = F.dropout(pooled_features, p=self.model.drop_rate, training=self.training)
        return self.model.get_classifier()(pooled)


def _optimizer(config: TrainConfig, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=config.weight_decay, nesterov=True)
    return torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)


def _scheduler(config: TrainConfig, stage: Stage, optimizer: torch.optim.Optimizer, steps: int):
    total = max(1, stage.epochs * steps)
    if stage.name == "warmup" or config.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=stage.lr, total_steps=total, pct_start=0.15)
    warm = min(steps, total // 10)

    def cosine(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total - warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)


# ------------------------------------------------------------------------------------------ the data


@dataclass
class TensorSet:
    """Images of one part as uint8 tensors on the training device, and their labels."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def load_part(manifest: Manifest, part: str, preprocess: Preprocess, device: torch.device, workers: int) -> TensorSet:
    subset = manifest.part(part)
    images = load_uint8_batch(subset.paths(), preprocess, workers=workers)
    labels = torch.tensor(subset.labels, dtype=torch.long)
    return TensorSet(images.to(device), labels.to(device))


def prepare_data(config: TrainConfig, saved_split: Path | None) -> tuple[Manifest, Manifest]:
    """Discover the dataset and split it (or reuse a saved split); returns (full manifest, split)."""
    full = discover(config.data, workers=max(2, config.workers))
    if not len(full):
        raise DataError(f"no usable images in {config.data}")
    source = saved_split or (Path(config.split_csv) if config.split_csv else None)
    if source is not None:
        parted = read_manifest_csv(source, config.data, classes=full.classes)
        known = {r.path for r in full.records}
        missing = [r.path for r in parted.records if r.path not in known]
        if missing:
            raise DataError(f"{len(missing)} image(s) of the split are missing or unreadable in {config.data}, e.g. {missing[0]}")
        return full, parted
    parted = split(full, test_size=config.test_size, val_size=config.val_size, seed=config.seed,
                   near_duplicate_distance=None if config.near_duplicate_distance < 0 else config.near_duplicate_distance)
    return full, parted


# ------------------------------------------------------------------------------------ one epoch each


def _autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def epoch_order(n: int, config: TrainConfig, epoch: int, labels: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """This rank's sample order for an epoch: a seeded permutation (or class-balanced draw), sharded."""
    generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
    if config.class_balance == "sampler":
        counts = torch.bincount(labels.cpu(), minlength=int(labels.max()) + 1).clamp(min=1).float()
        weights = (1.0 / counts)[labels.cpu()]
        order = torch.multinomial(weights, n, replacement=True, generator=generator)
    else:
        order = torch.randperm(n, generator=generator)
    usable = (n // ctx.world_size) * ctx.world_size
    return order[:usable][ctx.rank :: ctx.world_size]


def train_one_epoch(net: nn.Module, data: TensorSet, config: TrainConfig, preprocess: Preprocess, epoch: int,
                    optimizer, scheduler, loss_fn: nn.Module, ctx: DistContext, tick: Callable[[int], None]) -> dict[str, float]:
    device = data.images.device
    order = epoch_order(len(data), config, epoch, data.labels, ctx).to(device)
    generator = torch.Generator().manual_seed(config.seed * 7919 + epoch)
    torch.manual_seed(config.seed * 1_000_003 + epoch)  # dropout
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    net.train()
    totals = torch.zeros(3, device=device)  # loss sum, correct, count
    for start in range(0, len(order), config.batch_size):
        index = order[start : start + config.batch_size]
        if index.numel() < 2 and len(order) > 1:
            continue  # a 1-image tail batch gives noisy steps
        x = normalize(augment(data.images[index], config.augment, generator), preprocess)
        x = x.contiguous(memory_format=memory_format)
        y = data.labels[index]
        with _autocast(device, config.amp):
            logits = net(x)
            loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        correct = (logits.argmax(1) == y).sum().float()
        totals += torch.stack([loss.detach() * len(y), correct, torch.tensor(float(len(y)), device=device)])
        tick(len(y))
    totals = ctx.all_reduce_sum(totals)
    count = max(1.0, float(totals[2]))
    return {"train_loss": float(totals[0]) / count, "train_acc": float(totals[1]) / count}


def frozen_view_features(net: Classifier, data: TensorSet, config: TrainConfig, preprocess: Preprocess) -> torch.Tensor:
    """Pooled features of `config.frozen_views` views of every training image (view 0 un-augmented, the
    others augmented once), computed once. With a frozen backbone this trains the head on augmented data
    for a fraction of the cost of running the backbone on every augmented batch of every epoch."""
    generator = torch.Generator().manual_seed(config.seed * 31 + 17)
    body = _PooledFeatures(net.model)
    views = []
    for view in range(config.frozen_views):
        batches = []
        for start in range(0, len(data), config.eval_batch_size):
            chunk = data.images[start : start + config.eval_batch_size]
            x = augment(chunk, "none" if view == 0 else config.augment, generator)
            batches.append(predict_logits(body, (x * 255).round().to(torch.uint8), preprocess, len(chunk),
                                          config.amp, config.channels_last))
        views.append(torch.cat(batches).to(data.images.device))
    return torch.stack(views)


def train_head_epoch(net: nn.Module, views: torch.Tensor, labels: torch.Tensor, config: TrainConfig, epoch: int,
                     optimizer, scheduler, loss_fn: nn.Module, ctx: DistContext, tick: Callable[[int], None]) -> dict[str, float]:
    """One epoch of the head over cached frozen-backbone features, each image seen in a random view."""
    device = views.device
    order = epoch_order(labels.shape[0], config, epoch, labels, ctx).to(device)
    generator = torch.Generator().manual_seed(config.seed * 7919 + epoch)
    torch.manual_seed(config.seed * 1_000_003 + epoch)
    chosen = torch.randint(0, views.shape[0], (labels.shape[0],), generator=generator).to(device)
    net.train()
    totals = torch.zeros(3, device=device)
    for start in range(0, len(order), config.batch_size):
        index = order[start : start + config.batch_size]
        y = labels[index]
        logits = net(views[chosen[index], index], pooled=True)
        loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        correct = (logits.argmax(1) == y).sum().float()
        totals += torch.stack([loss.detach() * len(y), correct, torch.tensor(float(len(y)), device=device)])
        tick(len(y))
    totals = ctx.all_reduce_sum(totals)
    count = max(1.0, float(totals[2]))
    return {"train_loss": float(totals[0]) / count, "train_acc": float(totals[1]) / count}


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, preprocess: Preprocess, batch_size: int,
                   amp: bool = True, channels_last: bool = True) -> torch.Tensor:
    """Logits of a uint8 image tensor, in eval mode, in batches (float32 result on the CPU)."""
    model.eval()
    outputs = []
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for start in range(0, images.shape[0], batch_size):
        x = normalize(images[start : start + batch_size], preprocess).contiguous(memory_format=memory_format)
        with _autocast(x.device, amp):
            outputs.append(model(x).float().cpu())
    if not outputs:
        return torch.empty(0, 0)
    return torch.cat(outputs)


def classification_scores(labels: np.ndarray, logits: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Accuracy, macro/weighted precision, recall and F1 (scikit-learn) plus the cross-entropy."""
    predicted = logits.argmax(1).numpy()
    every = list(range(num_classes))
    scores = {"loss": float(F.cross_entropy(logits, torch.as_tensor(labels)).item()),
              "accuracy": float(accuracy_score(labels, predicted)),
              "macro_f1": float(f1_score(labels, predicted, labels=every, average="macro", zero_division=0))}
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(labels, predicted, labels=every, average=average, zero_division=0)
        scores.update({f"precision_{average}": float(p), f"recall_{average}": float(r), f"f1_{average}": float(f)})
    return scores


class EvalSet:
    """The part scored after every epoch. While the backbone is frozen its pooled features do not change,
    so they are computed once and only the head runs each epoch."""

    def __init__(self, data: TensorSet, preprocess: Preprocess, config: TrainConfig) -> None:
        self.data, self.preprocess, self.config = data, preprocess, config
        self._features: torch.Tensor | None = None

    def logits(self, net: Classifier) -> torch.Tensor:
        if not net.head_only:
            self._features = None
            return predict_logits(net.model, self.data.images, self.preprocess, self.config.eval_batch_size,
                                  self.config.amp, self.config.channels_last)
        net.eval()
        if self._features is None:
            body = _PooledFeatures(net.model)
            self._features = predict_logits(body, self.data.images, self.preprocess, self.config.eval_batch_size,
                                            self.config.amp, self.config.channels_last)
        head = net.model.get_classifier()
        with torch.no_grad():
            return head(self._features.to(self.data.images.device)).float().cpu()


class _PooledFeatures(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def _loss_fn(config: TrainConfig, labels: torch.Tensor, num_classes: int) -> nn.Module:
    weight = None
    if config.class_balance == "loss":
        counts = torch.bincount(labels.cpu(), minlength=num_classes).clamp(min=1).float()
        weight = (counts.sum() / (num_classes * counts)).to(labels.device)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)


def _improved(config: TrainConfig, row: dict[str, Any], best: tuple[float, float] | None) -> bool:
    if config.select == "last":
        return True
    key = (row["val_macro_f1"], -row["val_loss"])
    return best is None or key > best


def fit(config: TrainConfig, *, resume: bool = False, quiet: bool = False,
        on_epoch_end: EpochCallback | None = None) -> Path:
    """Train as `config` says into `out_dir/name`; returns the run folder. Resumable from last.pt."""
    device = pick_device(config.device)
    ctx = init_from_env(device.type)
    if ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    try:
        return _fit(config, device, ctx, resume, quiet or not ctx.is_main, on_epoch_end)
    finally:
        shutdown(ctx)


def _fit(config: TrainConfig, device: torch.device, ctx: DistContext, resume: bool, quiet: bool,
         on_epoch_end: EpochCallback | None) -> Path:
    from .cli.common import progress_bar

    run_dir = Path(config.out_dir) / (config.name or f"{config.protocol}-{config.backbone}-seed{config.seed}")
    if ctx.is_main:
        runs.prepare_run_dir(run_dir, resume=resume)
    ctx.barrier()
    checkpoint = read_checkpoint(run_dir / "last.pt") if resume and (run_dir / "last.pt").exists() else None
    full, parted = prepare_data(config, run_dir / "split.csv" if checkpoint else None)
    if checkpoint:
        runs.check_same_classes(tuple(checkpoint["classes"]), full.classes)
    elif ctx.is_main:
        has_val = any(r.part == "val" for r in parted.records)
        resolved = {**config.to_dict(), "data": str(Path(config.data).resolve()), "eval_part": "val" if has_val else "test"}
        runs.write_config(run_dir, resolved, shlex.join(["leukoscope", *sys.argv[1:]]))
        runs.write_manifests(run_dir, full, parted)
        runs.write_env(run_dir, str(device), config.seed)
    spec = ModelSpec(config.backbone, len(full.classes), config.drop_rate, config.pad_type)
    torch.manual_seed(config.seed)
    model = create_model(spec, weights="none" if checkpoint else config.weights, weights_dir=config.weights_dir or None)
    preprocess = preprocess_for(model, config.input_size or None)
    if checkpoint:
        model.load_state_dict(checkpoint["model"])
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    net = Classifier(model, config.freeze_bn)
    eval_part = "val" if any(r.part == "val" for r in parted.records) else "test"
    train = load_part(parted, "train", preprocess, device, config.workers)
    if len(train) < 2:
        raise DataError(f"too few training images ({len(train)}) after the split")
    evalset = EvalSet(load_part(parted, eval_part, preprocess, device, config.workers), preprocess, config)
    stages, loss_fn = stages_of(config), _loss_fn(config, train.labels, len(full.classes))
    total_epochs = sum(s.epochs for s in stages)
    history: list[dict[str, Any]] = list(checkpoint["history"]) if checkpoint else []
    start_epoch = int(checkpoint["epoch"]) if checkpoint else 0
    best = tuple(checkpoint["best_score"]) if checkpoint and checkpoint.get("best_score") else None
    stale = int(checkpoint.get("stale", 0)) if checkpoint else 0
    steps = max(1, math.ceil(len(train) // ctx.world_size / config.batch_size))
    optimizer = scheduler = current = views = None
    started = time.perf_counter()
    for epoch in range(start_epoch, total_epochs):
        stage, _ = stage_at(stages, epoch)
        if stage is not current:
            current, net.head_only = stage, stage.trainable == "head"
            set_trainable(model, stage.trainable, last_blocks=config.last_blocks)
            net.train()
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = _optimizer(config, params, stage.lr)
            scheduler = _scheduler(config, stage, optimizer, steps)
            if checkpoint and checkpoint.get("stage") == stage.name and epoch == start_epoch:
                optimizer.load_state_dict(checkpoint["optimizer"])
                scheduler.load_state_dict(checkpoint["scheduler"])
            wrapped = nn.parallel.DistributedDataParallel(net) if ctx.enabled else net
        tick_start = time.perf_counter()
        label = f"epoch {epoch + 1}/{total_epochs} ({stage.name})"
        with progress_bar(label, total=len(train) // ctx.world_size, quiet=quiet) as update:
            done = [0]

            def tick(n: int, done: list[int] = done, update=update) -> None:
                done[0] += n
                update(done[0], len(train) // ctx.world_size)

            if net.head_only and config.frozen_views > 0:
                if views is None:
                    views = frozen_view_features(net, train, config, preprocess)
                row = train_head_epoch(wrapped, views, train.labels, config, epoch, optimizer, scheduler, loss_fn, ctx, tick)
            else:
                row = train_one_epoch(wrapped, train, config, preprocess, epoch, optimizer, scheduler, loss_fn, ctx, tick)
        scores = classification_scores(evalset.data.labels.cpu().numpy(), evalset.logits(net), len(full.classes))
        row = {"epoch": epoch + 1, "stage": stage.name, **row, "val_loss": scores["loss"], "val_acc": scores["accuracy"],
               "val_macro_f1": scores["macro_f1"], "lr": float(optimizer.param_groups[0]["lr"]),
               "seconds": time.perf_counter() - tick_start}
        history.append(row)
        improved = _improved(config, row, best)
        if improved:
            best, stale = ((row["val_macro_f1"], -row["val_loss"]), 0)
        else:
            stale += 1
        payload = {"model": model.state_dict(), "spec": spec.to_dict(), "classes": list(full.classes),
                   "preprocess": preprocess.to_dict(), "epoch": epoch + 1, "stage": stage.name,
                   "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "best_score": best,
                   "stale": stale, "history": history, "config": config.to_dict(), "manifest_digest": parted.digest()}
        if ctx.is_main:
            if improved:
                save_checkpoint(run_dir / "best.pt", payload)
            save_checkpoint(run_dir / "last.pt", payload)
            runs.write_metrics_csv(run_dir, history)
            if not quiet:
                print(f"epoch {epoch + 1}/{total_epochs} {stage.name}: loss {row['train_loss']:.4f} acc {row['train_acc']:.4f} | "
                      f"{eval_part} loss {row['val_loss']:.4f} acc {row['val_acc']:.4f} macro-F1 {row['val_macro_f1']:.4f} | "
                      f"{row['seconds']:.1f}s", file=sys.stderr)
        try:
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, row)
        except KeyboardInterrupt:
            message = f"interrupted after epoch {epoch + 1}; continue with `leukoscope train --resume {run_dir}`"
            raise TrainingInterrupted(message) from None
        if config.patience and stage.name == "main" and stale >= config.patience and eval_part == "val":
            if not quiet:
                print(f"early stop: no better {eval_part} macro-F1 for {stale} epochs", file=sys.stderr)
            break
    if ctx.is_main:
        _finish(run_dir, parted, preprocess, device, config, history, time.perf_counter() - started)
    ctx.barrier()
    return run_dir


def _finish(run_dir: Path, parted: Manifest, preprocess: Preprocess, device: torch.device, config: TrainConfig,
            history: list[dict[str, Any]], seconds: float) -> None:
    """Score the best checkpoint on the test part; write summary.json and per-image test predictions."""
    best = read_checkpoint(run_dir / "best.pt")
    model = create_model(ModelSpec.from_dict(best["spec"]), weights="none").to(device)
    model.load_state_dict(best["model"])
    test = parted.part("test")
    summary: dict[str, Any] = {"run": str(run_dir), "protocol": config.protocol, "backbone": config.backbone,
                               "device": str(device), "best_epoch": best["epoch"], "epochs_run": len(history),
                               "seconds_total": seconds,
                               "seconds_per_epoch": float(np.mean([h["seconds"] for h in history])) if history else None,
                               "train_images": sum(1 for r in parted.records if r.part == "train")}
    if len(test):
        images = load_uint8_batch(test.paths(), preprocess, workers=config.workers).to(device)
        logits = predict_logits(model, images, preprocess, config.eval_batch_size, config.amp, config.channels_last)
        labels = np.asarray(test.labels)
        summary["test"] = {"n": len(test), **classification_scores(labels, logits, len(parted.classes))}
        probs = torch.softmax(logits, 1).numpy()
        lines = ["path,sha256,label,predicted," + ",".join(f"prob_{c}" for c in parted.classes)]
        for record, p in zip(test.records, probs, strict=True):
            lines.append(",".join([f'"{record.path}"', record.sha256, f'"{record.label}"',
                                   f'"{parted.classes[int(p.argmax())]}"', *(f"{v:.6f}" for v in p)]))
        write_text(run_dir / "predictions_test.csv", "\n".join(lines) + "\n")
    write_json(run_dir / "summary.json", summary)
