"""The pieces of the fit loop: the network wrapper, the dataset (discovered, split, decoded into tensors), a
training epoch over images or over cached frozen-backbone features, scoring, and each stage's optimiser,
schedule and loss. `leukoscope.training.loop` composes them into the fit loop (and re-exports the public ones).

Every epoch draws its order, augmentation and dropout from generators seeded by (seed, epoch), so an epoch
replayed after `--resume` is the epoch the uninterrupted run would have trained.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support
from torch import nn

from leukoscope.data.discover import discover
from leukoscope.data.manifest import Manifest, read_manifest_csv
from leukoscope.data.split import split
from leukoscope.errors import DataError
from leukoscope.models.factory import freeze_batchnorm
from leukoscope.models.inputs import augment, load_uint8_batch, normalize
from leukoscope.models.preprocessing import Preprocess
from leukoscope.training import runs
from leukoscope.training.config import TrainConfig
from leukoscope.training.distributed import DistContext

if TYPE_CHECKING:
    from leukoscope.training.stages import Stage

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


# ------------------------------------------------------------------------------------------ the data


@dataclass
class TensorSet:
    """Images of one part as uint8 tensors on the training device, and their labels."""

    images: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor | None = None  # N x C soft targets (distillation); None: train on the labels

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def load_part(manifest: Manifest, part: str, preprocess: Preprocess, device: torch.device, workers: int) -> TensorSet:
    subset = manifest.part(part)
    images = load_uint8_batch(subset.paths(), preprocess, workers=workers)
    labels = torch.tensor(subset.labels, dtype=torch.long)
    return TensorSet(images.to(device), labels.to(device))


def prepare_data(config: TrainConfig, saved_split: Path | None, *,
                 classes: tuple[str, ...] | None = None) -> tuple[Manifest, Manifest]:
    """Discover the dataset and split it (or reuse a saved split); returns (full manifest, split).

    `classes`: those of the run being resumed; data with other classes is refused before anything else.
    """
    full = discover(config.data, workers=max(2, config.workers))
    if not len(full):
        raise DataError(f"no usable images in {config.data}")
    if classes is not None:
        runs.check_same_classes(tuple(classes), full.classes)
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
        target = y if data.targets is None else data.targets[index]
        with _autocast(device, config.amp):
            logits = net(x)
            loss = loss_fn(logits.float(), target)
        _step(optimizer, scheduler, loss, logits, y, totals)
        tick(len(y))
    return _epoch_means(totals, ctx)


def _step(optimizer, scheduler, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, totals: torch.Tensor) -> None:
    """One optimisation step; adds (loss sum, correct, count) of the batch to `totals` without a sync."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    correct = (logits.argmax(1) == y).sum().float()
    totals += torch.stack([loss.detach() * len(y), correct, torch.tensor(float(len(y)), device=totals.device)])


def _epoch_means(totals: torch.Tensor, ctx: DistContext) -> dict[str, float]:
    """Mean training loss and accuracy of an epoch, summed over every DDP rank."""
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
        _step(optimizer, scheduler, loss_fn(logits.float(), y), logits, y, totals)
        tick(len(y))
    return _epoch_means(totals, ctx)


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


# ------------------------------------------------------------------------------- optimiser, schedule, loss


def make_optimizer(config: TrainConfig, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=config.weight_decay, nesterov=True)
    return torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)


def make_scheduler(config: TrainConfig, stage: Stage, optimizer: torch.optim.Optimizer, steps: int):
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


def make_loss(config: TrainConfig, labels: torch.Tensor, num_classes: int) -> nn.Module:
    weight = None
    if config.class_balance == "loss":
        counts = torch.bincount(labels.cpu(), minlength=num_classes).clamp(min=1).float()
        weight = (counts.sum() / (num_classes * counts)).to(labels.device)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)
