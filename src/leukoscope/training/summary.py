"""The end of a training run: its best checkpoint scored on the test part, written as summary.json (scores,
timings) and predictions_test.csv (per-image probabilities), both atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from leukoscope.data.fileio import write_json, write_text
from leukoscope.data.manifest import Manifest
from leukoscope.models.checkpoint import read_checkpoint
from leukoscope.models.factory import ModelSpec, create_model
from leukoscope.models.inputs import load_uint8_batch
from leukoscope.models.preprocessing import Preprocess
from leukoscope.training.config import TrainConfig
from leukoscope.training.steps import classification_scores, predict_logits


def write_run_summary(run_dir: Path, parted: Manifest, preprocess: Preprocess, device: torch.device, config: TrainConfig,
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
