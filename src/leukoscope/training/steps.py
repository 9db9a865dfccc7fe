"""One epoch of training, over images or over cached frozen-backbone features, and the scoring of a part.

Every epoch draws its order, augmentation and dropout from generators seeded by (seed, epoch), so an epoch
replayed after `--resume` is the epoch the uninterrupted run would have trained. The fit loop
(`leukoscope.training.loop`) calls these once per epoch; the network, the data and the optimisers they
take come from `training.network`, `training.dataset` and `training.optim`. Logits and scores come from
`leukoscope.models.scoring` (`predict_logits`, `classification_scores`; still importable from here), so an
epoch's val scores are computed as the run's summary and `evaluate` compute theirs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from leukoscope.models.inputs import normalize
from leukoscope.models.preprocessing import Preprocess
from leukoscope.models.scoring import ClassificationScores, autocast, classification_scores, predict_logits
from leukoscope.training.augment import augment
from leukoscope.training.config import TrainConfig
from leukoscope.training.dataset import TensorSet
from leukoscope.training.distributed import DistContext
from leukoscope.training.frozen_body import frozen_body
from leukoscope.training.network import Classifier

__all__ = [  # predict_logits and classification_scores: from models.scoring, importable here as before
    "EpochMeans", "EvalSet", "Tick", "classification_scores", "epoch_order", "frozen_view_features", "predict_logits",
    "train_head_epoch", "train_one_epoch",
]

Tick = Callable[[int], None]  # called after each batch with the number of images it trained on


@dataclass(frozen=True)
class EpochMeans:
    """Mean training loss and accuracy of one epoch, over every DDP rank."""

    loss: float
    accuracy: float


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
                    optimizer: torch.optim.Optimizer, scheduler, loss_fn: nn.Module, ctx: DistContext,
                    tick: Tick) -> EpochMeans:
    """One epoch over the (augmented) training images."""
    device = data.images.device
    order = epoch_order(len(data), config, epoch, data.labels, ctx).to(device)
    # Each rank draws its own augmentation and dropout (rank 0 as a single process does): with one seed
    # for all, images at the same batch position on every rank would get the same transform and mask.
    salt = ctx.rank * 1_000_000_007
    generator = torch.Generator().manual_seed(config.seed * 7919 + epoch + salt)
    torch.manual_seed(config.seed * 1_000_003 + epoch + salt)  # dropout
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
        with autocast(device, config.amp):
            logits = net(x)
            loss = loss_fn(logits.float(), target)
        _step(optimizer, scheduler, loss, logits, y, totals)
        tick(len(y))
    return _epoch_means(totals, ctx)


def _step(optimizer: torch.optim.Optimizer, scheduler, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor,
          totals: torch.Tensor) -> None:
    """One optimisation step; adds (loss sum, correct, count) of the batch to `totals` without a sync."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    correct = (logits.argmax(1) == y).sum().float()
    totals += torch.stack([loss.detach() * len(y), correct, torch.tensor(float(len(y)), device=totals.device)])


def _epoch_means(totals: torch.Tensor, ctx: DistContext) -> EpochMeans:
    """Mean training loss and accuracy of an epoch, summed over every DDP rank."""
    totals = ctx.all_reduce_sum(totals)
    count = max(1.0, float(totals[2]))
    return EpochMeans(loss=float(totals[0]) / count, accuracy=float(totals[1]) / count)


def frozen_view_features(net: Classifier, data: TensorSet, config: TrainConfig, preprocess: Preprocess) -> torch.Tensor:
    """Pooled features of `config.frozen_views` views of every training image (view 0 un-augmented, the
    others augmented once), computed once. With a frozen backbone this trains the head on augmented data
    for a fraction of the cost of running the backbone on every augmented batch of every epoch."""
    generator = torch.Generator().manual_seed(config.seed * 31 + 17)
    body = frozen_body(net.model, config, data.images.device, preprocess.input_size,
                       len(data) * config.frozen_views)
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
                     optimizer: torch.optim.Optimizer, scheduler, loss_fn: nn.Module, ctx: DistContext,
                     tick: Tick) -> EpochMeans:
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


# ------------------------------------------------------------------------------------- the eval part


class EvalSet:
    """The part scored after every epoch. While the backbone is frozen its pooled features do not change,
    so they are computed once and only the head runs each epoch."""

    def __init__(self, data: TensorSet, preprocess: Preprocess, config: TrainConfig) -> None:
        self.data, self.preprocess, self.config = data, preprocess, config
        self._features: torch.Tensor | None = None

    def logits(self, net: Classifier) -> torch.Tensor:
        """Logits of every image of the part under the network as it is now."""
        if not net.head_only:
            self._features = None
            return predict_logits(net.model, self.data.images, self.preprocess, self.config.eval_batch_size,
                                  self.config.amp, self.config.channels_last)
        net.eval()
        if self._features is None:
            body = frozen_body(net.model, self.config, self.data.images.device, self.preprocess.input_size,
                               len(self.data))
            self._features = predict_logits(body, self.data.images, self.preprocess, self.config.eval_batch_size,
                                            self.config.amp, self.config.channels_last)
        head = net.model.get_classifier()
        with torch.no_grad():
            return head(self._features.to(self.data.images.device)).float().cpu()

    def scores(self, net: Classifier, num_classes: int) -> ClassificationScores:
        """Accuracy, F1, loss, ... of the part under the network as it is now."""
        return ClassificationScores.of(self.data.labels.cpu().numpy(), self.logits(net), num_classes)
