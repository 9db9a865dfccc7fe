"""Each stage's optimiser, learning-rate schedule and loss, built from the config.

A stage (head warm-up, main) gets a fresh optimiser and schedule; both are saved in every checkpoint, so
a run resumed inside a stage continues with the same moments and the same place in the schedule.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from leukoscope.training.config import TrainConfig
from leukoscope.training.stages import Stage


def make_optimizer(config: TrainConfig, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (Nesterov momentum 0.9) over `params`, with the config's weight decay."""
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=config.weight_decay, nesterov=True)
    return torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)


def make_scheduler(config: TrainConfig, stage: Stage, optimizer: torch.optim.Optimizer,
                   steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The stage's schedule, stepped once per batch (`steps` batches an epoch): constant for the warm-up."""
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
    """Cross-entropy with the config's label smoothing, weighted by inverse class frequency when
    `class_balance` is "loss"."""
    weight = None
    if config.class_balance == "loss":
        counts = torch.bincount(labels.cpu(), minlength=num_classes).clamp(min=1).float()
        weight = (counts.sum() / (num_classes * counts)).to(labels.device)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)
