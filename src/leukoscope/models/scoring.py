"""Scoring a network on images: the one way every part of leukoscope asks "how good is this model here?".

The end-of-training summary, `evaluate`, export's check of the checkpoint and the accuracy benchmark all
score a PyTorch network the same way: uint8 images (decoded a batch at a time, so memory stays bounded),
normalised with the model's Preprocess, fixed-size batches in eval mode without gradients, float32 logits
on the CPU. One implementation keeps their numbers comparable: the same batches, memory format and
autocast rule give the same logits. It lives here, below training, evaluation and inference, so that all
of them may import it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support
from torch import nn

from leukoscope.models.inputs import load_uint8_batch, normalize
from leukoscope.models.preprocessing import Preprocess

Progress = Callable[[int, int], None]  # (images scored so far, images in all)


@dataclass(frozen=True)
class ClassificationScores:
    """Accuracy, macro/weighted precision, recall and F1 (scikit-learn) and the cross-entropy of logits.

    Field order is the order of the keys in summary.json and metrics.csv.
    """

    loss: float
    accuracy: float
    macro_f1: float
    precision_macro: float
    recall_macro: float
    f1_macro: float
    precision_weighted: float
    recall_weighted: float
    f1_weighted: float

    @classmethod
    def of(cls, labels: np.ndarray, logits: torch.Tensor, num_classes: int) -> ClassificationScores:
        """Scores of `logits` (N x C) against class indices `labels`, over all `num_classes` classes."""

        predicted = logits.argmax(1).numpy()
        every = list(range(num_classes))
        values = {"loss": float(F.cross_entropy(logits, torch.as_tensor(labels)).item()),
                  "accuracy": float(accuracy_score(labels, predicted)),
                  "macro_f1": float(f1_score(labels, predicted, labels=every, average="macro", zero_division=0))}
        for average in ("macro", "weighted"):
            p, r, f, _ = precision_recall_fscore_support(labels, predicted, labels=every, average=average,
                                                         zero_division=0)
            values.update({f"precision_{average}": float(p), f"recall_{average}": float(r),
                           f"f1_{average}": float(f)})
        return cls(**values)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def classification_scores(labels: np.ndarray, logits: torch.Tensor, num_classes: int) -> dict[str, float]:
    """`ClassificationScores.of(...)` as a dict (the per-epoch rows of the fit loop)."""
    return ClassificationScores.of(labels, logits, num_classes).to_dict()


@dataclass(frozen=True)
class ModelScores:
    """What a network said about a set of images: float32 logits on the CPU, in input order, and the
    images' class indices when they were given."""

    logits: torch.Tensor  # N x C float32
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.logits.shape[0])

    def mean_nll(self) -> float:
        """Mean negative log-likelihood of the labels, in float64 (no temperature: the network as it stands);
        ValueError without labels. What adaptation compares views and weight mixes by."""
        if self.labels is None:
            raise ValueError("these scores have no labels to be compared with")
        log_p = torch.log_softmax(self.logits.double(), dim=1)
        labels = torch.as_tensor(np.asarray(self.labels), dtype=torch.long)
        return float(-log_p[torch.arange(len(labels)), labels].mean())

    def classification(self, num_classes: int | None = None) -> ClassificationScores:
        """Accuracy, F1, ... against the labels (ValueError without them)."""
        if self.labels is None:
            raise ValueError("these scores have no labels to be compared with")
        return ClassificationScores.of(self.labels, self.logits,
                                       int(self.logits.shape[1]) if num_classes is None else num_classes)


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """bfloat16 autocast on a CUDA device when `enabled`; full precision everywhere else."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def _forward(model: nn.Module, x: torch.Tensor, amp: bool, channels_last: bool) -> torch.Tensor:
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = x.contiguous(memory_format=memory_format)
    with autocast(x.device, amp):
        return model(x).float().cpu()


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, preprocess: Preprocess, batch_size: int,
                   amp: bool = True, channels_last: bool = True) -> torch.Tensor:
    """Logits of a uint8 image tensor, in eval mode, in batches (float32 result on the CPU)."""
    model.eval()
    outputs = [_forward(model, normalize(images[start:start + batch_size], preprocess), amp, channels_last)
               for start in range(0, images.shape[0], batch_size)]
    return torch.cat(outputs) if outputs else torch.empty(0, 0)


@torch.no_grad()
def score_model(model: nn.Module, images: Sequence[str | Path] | torch.Tensor, preprocess: Preprocess, *,
                labels: Sequence[int] | np.ndarray | None = None, batch_size: int = 64,
                device: torch.device | str | None = None, amp: bool = False, channels_last: bool = False,
                workers: int = 2, progress: Progress | None = None) -> ModelScores:
    """Score `model` on `images` in eval mode, `batch_size` images at a time.

    `images`: image paths (decoded with `workers` threads, one batch at a time), an N x 3 x S x S uint8
    tensor, or a float32 tensor already normalised with `preprocess` (what ONNX Runtime is given). Each
    batch is moved to `device` (default: where it is) and normalised there. `amp`: bfloat16 autocast on
    CUDA; `channels_last`: the memory format of the batches. `progress(done, total)` after each batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    target = torch.device(device) if device is not None else None
    model.eval()
    total = int(images.shape[0]) if isinstance(images, torch.Tensor) else len(images)
    outputs = []
    for start in range(0, total, batch_size):
        if isinstance(images, torch.Tensor):
            batch = images[start:start + batch_size]
        else:
            batch = load_uint8_batch(images[start:start + batch_size], preprocess, workers=workers)
        if target is not None:
            batch = batch.to(target)
        x = batch if batch.is_floating_point() else normalize(batch, preprocess)
        outputs.append(_forward(model, x, amp, channels_last))
        if progress is not None:
            progress(min(start + batch_size, total), total)
    logits = torch.cat(outputs) if outputs else torch.empty(0, 0)
    return ModelScores(logits, None if labels is None else np.asarray(labels))
