"""The end of a training run: its best checkpoint scored on the test part, written as summary.json (scores,
timings) and predictions_test.csv (per-image probabilities), both atomically.

Scored with `leukoscope.models.scoring.score_model`, as evaluate and the accuracy benchmark score, with the
run's own batch size, mixed precision and memory format; a run that only trained its head is scored through
ONNX Runtime on the CPU (leukoscope.training.frozen_body), as its epochs were.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from leukoscope.data.fileio import write_json, write_text
from leukoscope.data.manifest import Manifest
from leukoscope.models.checkpoint import read_checkpoint
from leukoscope.models.factory import ModelSpec, create_model
from leukoscope.models.preprocessing import Preprocess
from leukoscope.models.scoring import score_model
from leukoscope.training.config import TrainConfig
from leukoscope.training.frozen_body import frozen_module
from leukoscope.training.stages import stages_of


def predictions_csv(test: Manifest, classes: tuple[str, ...], probs: np.ndarray) -> str:
    """predictions_test.csv: path, sha256, label, predicted, prob_<class> (6 decimals) per image."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "sha256", "label", "predicted", *(f"prob_{c}" for c in classes)])
    for record, p in zip(test.records, probs, strict=True):
        writer.writerow([record.path, record.sha256, record.label, classes[int(p.argmax())],
                         *(f"{v:.6f}" for v in p)])
    return buffer.getvalue()


def write_run_summary(run_dir: Path, parted: Manifest, preprocess: Preprocess, device: torch.device,
                      config: TrainConfig, history: list[dict[str, Any]], seconds: float) -> None:
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
        if all(stage.trainable == "head" for stage in stages_of(config)):  # the backbone never changed
            model = frozen_module(model, config, device, preprocess.input_size, len(test))
        scores = score_model(model, test.paths(), preprocess, labels=test.labels,
                             batch_size=config.eval_batch_size, device=device, amp=config.amp,
                             channels_last=config.channels_last, workers=config.workers)
        summary["test"] = {"n": len(test), **scores.classification(len(parted.classes)).to_dict()}
        probs = torch.softmax(scores.logits, 1).numpy()
        write_text(run_dir / "predictions_test.csv", predictions_csv(test, parted.classes, probs))
    write_json(run_dir / "summary.json", summary)
