"""Before and after: the parent's and the adapted network's figures on the lab's held-out part and on the
replay data's test part, and the rules that refuse an adaptation that does not help or that forgets.

Accuracy is scored with `leukoscope.models.scoring.score_model` on the PyTorch networks as their packages
hold them (fp16 weights), the same way for both; the review figures (flagged share, wrong calls without a
flag) come from each package's own Predictor, as a lab would run it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from leukoscope.data.manifest import Manifest
from leukoscope.errors import LeukoscopeError
from leukoscope.models.preprocessing import Preprocess
from leukoscope.models.scoring import score_model
from leukoscope.review.metrics import review_summary

LAB_HELD_OUT, REPLAY_TEST = "lab_held_out", "replay_test"
BENIGN = "Benign"


class AdaptationRefused(LeukoscopeError):
    """The adapted network is not better on the lab's held-out images, or forgot the replay data."""

    exit_code = 1

    def __init__(self, message: str, metrics: dict[str, Any]) -> None:
        super().__init__(message)
        self.metrics = metrics


def network_scores(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, preprocess: Preprocess,
                   classes: tuple[str, ...]) -> dict[str, Any]:
    """Accuracy, macro F1 and the leukemia-called-Benign count of `model` on uint8 images."""
    truth = labels.cpu().numpy()
    scores = score_model(model, images, preprocess, labels=truth, batch_size=64)
    figures = scores.classification(len(classes))
    predicted = scores.logits.argmax(1).numpy()
    out: dict[str, Any] = {"images": len(truth), "accuracy": figures.accuracy, "macro_f1": figures.macro_f1,
                           "errors": int((predicted != truth).sum())}
    if BENIGN in classes:
        benign = classes.index(BENIGN)
        out["leukemia_called_benign"] = int(((truth != benign) & (predicted == benign)).sum())
    return out


def review_figures(package: str | Path, part: Manifest, *, threads: int | None = None) -> dict[str, Any]:
    """The package's Predictor on `part` (labelled): flagged share and wrong calls without a flag."""
    from leukoscope.inference.predictor import load_predictor

    predictor = load_predictor(package, threads=threads)
    index = {name: i for i, name in enumerate(predictor.classes)}
    predictions = list(predictor.predict_paths(part.paths()))
    predicted = [index.get(p.label, -1) if p.label is not None else -1 for p in predictions]
    summary = review_summary(np.asarray(part.labels), predicted, [p.review for p in predictions],
                             [p.review_codes for p in predictions], classes=predictor.classes)
    keys = ("flagged_fraction", "wrong_not_flagged", "leukemia_called_benign_not_flagged",
            "benign_called_leukemia_not_flagged", "unflagged_accuracy")
    return {key: summary[key] for key in keys}


NOT_BETTER_HINT = "keep the parent for this lab, or verify more of the images it gets wrong and adapt again"
FORGET_HINT = "verify more of the lab's images and adapt again, or replay more with --replay-ratio"


def judge(metrics: dict[str, Any], *, max_replay_drop: float) -> None:
    """Raise AdaptationRefused (one line, with the numbers) unless the lab's held-out accuracy improved and
    the replay test accuracy dropped by at most `max_replay_drop`."""
    lab = metrics[LAB_HELD_OUT]
    before, after = lab["before"]["accuracy"], lab["after"]["accuracy"]
    if not after > before:
        raise AdaptationRefused(
            f"refused: on the lab's {lab['before']['images']} held-out images the adapted model's accuracy "
            f"({after:.1%}) is not better than the parent's ({before:.1%}); nothing written ({NOT_BETTER_HINT})",
            metrics)
    replay = metrics.get(REPLAY_TEST)
    if replay:
        before, after = replay["before"]["accuracy"], replay["after"]["accuracy"]
        if before - after > max_replay_drop + 1e-9:
            raise AdaptationRefused(
                f"refused: accuracy on the replay data's {replay['before']['images']} test images drops from "
                f"{before:.2%} to {after:.2%} ({(before - after) * 100:.2f} points; at most "
                f"{max_replay_drop * 100:g} allowed): the model would forget; nothing written ({FORGET_HINT})", metrics)


def summary_line(metrics: dict[str, Any]) -> str:
    """"lab held-out accuracy 62.5% -> 95.8% (24 images); replay test accuracy ..." for the CLI."""
    parts = []
    for key, words in ((LAB_HELD_OUT, "lab held-out"), (REPLAY_TEST, "replay test")):
        if metrics.get(key):
            before, after = metrics[key]["before"], metrics[key]["after"]
            parts.append(f"{words} accuracy {before['accuracy']:.1%} -> {after['accuracy']:.1%} "
                         f"({before['images']} images)")
    return "; ".join(parts)
