"""Checkpoints: one plain dict, like torchvision's reference scripts, so `--resume` restores everything
and every downstream tool (evaluate, export, predict) rebuilds the exact network and preprocessing.

Keys: format, model (state_dict), spec (ModelSpec dict), classes, preprocess (Preprocess dict), epoch
(completed epochs), optimizer, scheduler, stage, best_score, history (list of per-epoch dicts), config
(the resolved TrainConfig dict), manifest_digest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from leukoscope.data.fileio import save_torch
from leukoscope.errors import ModelError
from leukoscope.models.factory import ModelSpec, build_model
from leukoscope.models.preprocessing import Preprocess

CHECKPOINT_FORMAT = 1


@dataclass
class LoadedModel:
    """A trained network ready for inference, with what it needs to be used correctly."""

    model: nn.Module
    spec: ModelSpec
    classes: tuple[str, ...]
    preprocess: Preprocess
    meta: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    save_torch(path, {"format": CHECKPOINT_FORMAT, **payload})


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ModelError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(payload, dict) or "model" not in payload or "spec" not in payload:
        raise ModelError(f"{path} is not a leukoscope checkpoint")
    return payload


def find_checkpoint(run_dir: str | Path) -> Path:
    """best.pt of a run folder (last.pt when no best was kept); raises ModelError when there is none."""
    run_dir = Path(run_dir)
    if run_dir.is_file():
        return run_dir
    for name in ("best.pt", "last.pt"):
        if (run_dir / name).is_file():
            return run_dir / name
    raise ModelError(f"no checkpoint (best.pt or last.pt) in run folder {run_dir}")


def load_trained(path: str | Path) -> LoadedModel:
    """Rebuild the network of a checkpoint or run folder, in eval mode on the CPU."""
    payload = read_checkpoint(find_checkpoint(path))
    spec = ModelSpec.from_dict(payload["spec"])
    model = build_model(spec, payload["model"])
    model.eval()
    meta = {k: v for k, v in payload.items() if k not in ("model", "optimizer", "scheduler")}
    return LoadedModel(model, spec, tuple(payload["classes"]), Preprocess.from_dict(payload["preprocess"]), meta)
