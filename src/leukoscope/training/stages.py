"""The stages of a training run: an optional head warm-up with the backbone frozen, then the main stage.

A run's epochs are numbered globally across stages, so that a checkpoint records one number and a resumed
run knows which stage (and which learning rate and trainable part) that epoch belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass

from leukoscope.training.config import TrainConfig


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
