"""The fine-tuning itself: a few epochs of the training loop's own epoch (`training.steps.train_one_epoch`,
with its augmentation, optimiser, schedule and loss) over the lab's adaptation images, each epoch mixed with
a fresh seeded sample of the parent's training images (the replay), so the network learns the new lab
without forgetting the old one.

BatchNorm stays in inference mode (`training.network.Classifier` with `freeze_bn`): a few hundred images
of one lab must not rewrite the running statistics the parent learned from thousands.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from leukoscope.errors import ConfigError
from leukoscope.models.factory import ModelSpec, set_trainable
from leukoscope.models.preprocessing import Preprocess
from leukoscope.training.augment import RECIPES
from leukoscope.training.config import TrainConfig
from leukoscope.training.dataset import TensorSet
from leukoscope.training.distributed import DistContext
from leukoscope.training.network import Classifier
from leukoscope.training.optim import make_loss, make_optimizer, make_scheduler
from leukoscope.training.stages import Stage
from leukoscope.training.steps import train_one_epoch

Progress = Callable[[str, int, int], None]  # (label, done, total), as the fit loop reports
SHIFT_RULES_KEY = "benign_confidence_threshold"  # in model.json's review: exported with shift rules


BENIGN_RULES = ("export", "check", "joint")


@dataclass(frozen=True)
class AdaptOptions:
    """How to adapt. The defaults fine-tune a pretrained network gently: a low learning rate, few epochs,
    four replayed images and two simulated ones (the parent's, as the lab would show them) per lab image in
    every epoch, the replayed and simulated ones half taught by the parent's own probabilities."""

    epochs: int = 6
    # lr and replay_ratio: chosen by scripts/tune_adapt.py's rule, written before measuring, on the VAL part
    # only (a shifted tuning lab B', forgetting judged on its originals): lr {5e-5, 1e-4} x replay {2, 4};
    # every accepted candidate lost 1 of 181 lab-A' images (0.55 > 0.3 points), so its rule 3 chose: the
    # smallest lab-A' drop, then the highest lab-B' accuracy (97.2%; lr 5e-5 with replay 2 was refused).
    lr: float = 5e-5
    batch_size: int = 32
    seed: int = 0
    held_out: float = 0.3  # of the lab's images, never trained on: the refusal rule's test
    val: float = 0.15  # of the lab's images, for the temperature and review thresholds
    replay_ratio: float = 4.0  # replayed images per lab image, each epoch (scripts/tune_adapt.py, see lr)
    # simulated replay (adaptation.lab_shift): this many of the parent's training images per lab image, each
    # epoch, shown through the lab's estimated shift; 0 switches it off. scripts/tune_adapt.py revision 2 (val
    # part only, lab B' of 181 images; lab-A' 99.45% for all): off 97.24% / 28.7% flagged, 2 -> 97.79% / 26.5%,
    # 4 -> 97.24% / 24.9%; its rule chose 2 (one image more of 181: a small gain, within noise).
    simulate_ratio: float = 2.0
    # the simulated images also join the export's training part, so that the review statistics fitted there
    # (OOD class statistics, image-quality and cell-scale ranges) know the lab's look. Revision 3: same
    # accuracy, flagged 26.5% -> 19.9%, leukemia called Benign without a flag 0 -> 0; chosen. Revision 4 (after
    # the second-lab benchmark showed 2 such misses at N = 100): two more tuning labs; b2 refused (too mild),
    # b3 0 misses with and without it (flagged 33.7% vs 36.5%), so its rule kept it. benchmarks/RESULTS.md
    # has the test-part figures.
    simulate_review: bool = True
    # the replay's val part through the lab's estimated shift also joins the export's val part, so that the
    # temperature, the thresholds and the Benign rules fitted there see the lab's look in hundreds of images, not
    # only its few calibration images. scripts/tune_adapt.py revision 7 kept it off: 0 misses either way, but
    # flagged +15.5 points on b1 (19.9% -> 35.4%) and -6.6 on b3 (34.3% -> 27.6%), not the 2-point mean drop.
    simulate_val: bool = False
    # how the adapted network's Benign calls are reviewed (BENIGN_RULES): "export", the export's Benign
    # confidence threshold alone; "check", plus its own Benign view check (leukoscope.inference.benign_check_fit,
    # the bundled package's rule on both datasets' val parts and shifted copies; it only adds flags); "joint",
    # the check and the Benign threshold chosen together there (a check that catches the most confident misses
    # lets the threshold drop). scripts/tune_adapt.py revision 5 chose "check" over "export" (b1: no check
    # chosen, flagged +0.0 points; b3: x0.5 @ 0.5, +0.6 points; 0 misses both ways); revision 6 kept "check"
    # over "joint" (b1 the same; b3 flagged 34.3% -> 26.5% but 1 leukemia called Benign without a flag).
    benign_rules: str = "check"
    # distillation from the parent against forgetting: the replayed images' targets are (1 - distill) x their
    # label + distill x the parent's own probabilities for them, and each simulated image takes its unshifted
    # original's target (the parent's knowledge carried across the lab's shift); 0 switches it off (plain
    # labels). scripts/tune_adapt.py revision 9 (rule written first: no worse on any figure, better on one)
    # switched it on: b1 97.79% / 19.9% -> 97.79% / 19.3% flagged, b3 97.24% / 34.3% -> 97.79% / 35.4%,
    # 0 misses and lab-A' 99.45% either way (one image of 181: within noise; the replay gate's drop unchanged).
    distill: float = 0.5
    # weight-space ensembling with the parent (adaptation.interpolate, WiSE-FT): the package ships a mix of the
    # parent's and the fine-tuned weights, the share chosen on both datasets' val parts. scripts/tune_adapt.py
    # revision 10 kept it off: b1 chose the fine-tuned weights (the same package); b3 chose half the parent's,
    # lab-A' 99.45% -> 100% (the forgetting undone) but lab-B' 97.79% -> 93.92% and flagged 35.4% -> 37.0%.
    interpolate: bool = False
    trainable: str = "all"
    augment: str | None = None  # None: the parent's own recipe (model.json training.config), else "paper"
    label_smoothing: float = 0.05
    weight_decay: float = 1e-4
    device: str = "auto"
    int8: bool = False
    shift_rules: bool | None = None  # None: as the parent (export's review rules for other labs' images)
    name: str | None = None
    max_replay_drop: float = 0.005  # accuracy on the replay's test part may drop by at most this
    threads: int | None = None

    def check(self) -> None:
        """ConfigError (a usage error) for options that cannot work."""
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1, got {self.epochs}")
        if not 0 < self.held_out < 1 or not 0 <= self.val < 1 or self.held_out + self.val >= 1:
            raise ConfigError(f"--held-out must be in (0, 1) and --val in [0, 1), together below 1; got "
                              f"{self.held_out:g} and {self.val:g}")
        if not 0 < self.lr < math.inf or self.batch_size < 1:
            raise ConfigError(f"--lr must be above 0 and finite and --batch-size at least 1; got {self.lr:g} and "
                              f"{self.batch_size}")
        if not 0 <= self.replay_ratio < math.inf:  # NaN and inf passed "not below 0" and trained
            raise ConfigError(f"--replay-ratio must be a finite number, 0 or more, got {self.replay_ratio:g}")
        if not 0 <= self.simulate_ratio < math.inf:
            raise ConfigError(f"--simulate-ratio must be a finite number, 0 or more, got {self.simulate_ratio:g}")
        if self.seed < 0:  # numpy's generators (the lab's split) take only non-negative seeds
            raise ConfigError(f"--seed must be 0 or more, got {self.seed}")
        if self.augment is not None and self.augment not in RECIPES:
            raise ConfigError(f"--augment must be one of {', '.join(RECIPES)}; got {self.augment!r}")
        if self.benign_rules not in BENIGN_RULES:
            raise ConfigError(f"--benign-rules must be one of {', '.join(BENIGN_RULES)}; got {self.benign_rules!r}")
        if not 0 <= self.distill <= 1:  # NaN fails both comparisons
            raise ConfigError(f"--distill must be in [0, 1], got {self.distill:g}")
        if not 0 <= self.max_replay_drop < 1:
            raise ConfigError(f"the allowed replay drop must be in [0, 1), got {self.max_replay_drop:g}")

    def resolved(self, parent_info: dict[str, Any]) -> AdaptOptions:
        """These options with what was left to the parent decided: the augmentation asked for, else the
        parent's training recipe (a network keeps being shown the variation it learned to ignore), else
        "paper"; the shift review rules when asked for, else when the parent's export chose them."""
        config = (parent_info.get("training") or {}).get("config") or {}
        recipe = config.get("augment") if config.get("augment") in RECIPES else "paper"
        shift = SHIFT_RULES_KEY in (parent_info.get("review") or {})
        return replace(self, augment=self.augment or recipe,
                       shift_rules=shift if self.shift_rules is None else self.shift_rules)

    def train_config(self, data: str, spec: ModelSpec, preprocess: Preprocess, name: str) -> TrainConfig:
        """The TrainConfig of the fine-tuning (config.yaml of the work run; what the epochs read)."""
        return TrainConfig(
            data=data, name=name, protocol="custom", seed=self.seed, test_size=self.held_out, val_size=self.val,
            backbone=spec.backbone, weights="none", pad_type=spec.pad_type, drop_rate=spec.drop_rate,
            input_size=preprocess.input_size, warmup_epochs=0, epochs=self.epochs, trainable=self.trainable,
            freeze_bn=True, optimizer="adamw", lr=self.lr, weight_decay=self.weight_decay, schedule="cosine",
            label_smoothing=self.label_smoothing, class_balance="loss", augment=self.augment or "paper",
            batch_size=self.batch_size, select="last", patience=0, device=self.device, amp=False,
            channels_last=False, workers=2,
            extra={"replay_ratio": self.replay_ratio, "simulate_ratio": self.simulate_ratio,
                   "distill": self.distill},
        )


def replay_count(lab: int, replay: int, ratio: float) -> int:
    """Replayed images per epoch: `ratio` per lab image, at most all of them."""
    return min(replay, round(lab * ratio)) if replay else 0


def _sample(data: TensorSet, count: int, seed: int) -> TensorSet:
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(data), generator=generator)[:count].to(data.images.device)
    return TensorSet(data.images[chosen], data.labels[chosen],
                     None if data.targets is None else data.targets[chosen])


def distilled(data: TensorSet, teacher: torch.Tensor, weight: float, num_classes: int) -> TensorSet:
    """`data` with soft targets: (1 - weight) x its one-hot labels + weight x `teacher` (N x C probabilities,
    the parent's for these images or for their unshifted originals)."""
    one_hot = nn.functional.one_hot(data.labels, num_classes).float()
    return TensorSet(data.images, data.labels, (1 - weight) * one_hot + weight * teacher.to(one_hot))


def _targets(part: TensorSet, num_classes: int) -> torch.Tensor:
    """A part's soft targets, or its one-hot labels where it has none (the lab's images)."""
    if part.targets is not None:
        return part.targets
    return nn.functional.one_hot(part.labels, num_classes).float()


def epoch_set(lab: TensorSet, replay: TensorSet | None, count: int, seed: int, epoch: int,
              simulated: TensorSet | None = None, simulated_count: int = 0, num_classes: int = 0) -> TensorSet:
    """This epoch's images: every lab image, a seeded sample of `count` replay images and one of
    `simulated_count` simulated ones (the parent's images through the lab's shift). Where a part has soft
    targets (distillation) the set has them for every image (`num_classes` wide; labels one-hot)."""
    parts = [lab]
    if replay is not None and count:
        parts.append(_sample(replay, count, seed * 65_537 + epoch))
    if simulated is not None and simulated_count:
        parts.append(_sample(simulated, simulated_count, seed * 65_537 + epoch + 7_919))
    if len(parts) == 1:
        return lab
    targets = None
    if any(p.targets is not None for p in parts):
        targets = torch.cat([_targets(p, num_classes) for p in parts])
    return TensorSet(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]), targets)


def finetune(model: nn.Module, lab: TensorSet, replay: TensorSet | None, config: TrainConfig, preprocess: Preprocess,
             *, replay_ratio: float, num_classes: int, progress: Progress | None = None,
             simulated: TensorSet | None = None, simulate_ratio: float = 0.0) -> list[dict[str, Any]]:
    """Fine-tune `model` in place (on the device its tensors are on); returns one row per epoch."""
    count = replay_count(len(lab), 0 if replay is None else len(replay), replay_ratio)
    simulated_count = replay_count(len(lab), 0 if simulated is None else len(simulated), simulate_ratio)
    per_epoch = len(lab) + count + simulated_count
    steps = max(1, math.ceil(per_epoch / config.batch_size))
    torch.manual_seed(config.seed)
    net = Classifier(model, freeze_bn=True)
    set_trainable(model, config.trainable, last_blocks=config.last_blocks)
    net.train()  # BatchNorm stays in inference mode, and its affine parameters stay as they are
    params = [p for p in model.parameters() if p.requires_grad]
    stage = Stage("main", config.epochs, config.trainable, config.lr)
    optimizer = make_optimizer(config, params, config.lr)
    scheduler = make_scheduler(config, stage, optimizer, steps)
    labels = lab.labels if replay is None else torch.cat([lab.labels, replay.labels])
    loss_fn = make_loss(config, labels, num_classes)
    history = []
    for epoch in range(config.epochs):
        data = epoch_set(lab, replay, count, config.seed, epoch, simulated, simulated_count, num_classes)
        label = f"adapting: epoch {epoch + 1}/{config.epochs}"
        done = 0

        def tick(n: int, label: str = label) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress(label, min(done, per_epoch - 1), per_epoch)

        if progress is not None:
            progress(label, 0, per_epoch)
        means = train_one_epoch(net, data, config, preprocess, epoch, optimizer, scheduler, loss_fn, DistContext(),
                                tick)
        if progress is not None:
            progress(label, per_epoch, per_epoch)
        history.append({"epoch": epoch + 1, "images": per_epoch, "lab_images": len(lab), "replay_images": count,
                        "simulated_images": simulated_count,
                        "train_loss": means.loss, "train_acc": means.accuracy,
                        "lr": float(optimizer.param_groups[0]["lr"])})
    net.eval()
    return history


def round_fp16(model: nn.Module) -> None:
    """Round the float weights through fp16 in place: the network exactly as its package will hold it
    (model.pt stores fp16 weights), so the refusal rules judge what will be shipped."""
    state = {k: v.half().float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    model.load_state_dict(state)
