"""Run folders for the evaluation tests, made without training (training has its own tests).

- ``make_noise_dataset(root, per_class=6, seed=0)``: root/<Benign|Early|Pre|Pro>/*.jpg of 48 px colour
  noise, each class around its own colour.
- ``make_run(folder, data_root, seed=0, val=True)``: a run folder as `leukoscope train` writes it
  (best.pt, config.yaml, manifest.csv, split.csv, metrics.csv) holding an untrained
  ``test_efficientnet`` at 64 px (`seed` seeds its weights; the split is always seed 0, so runs of one
  dataset share their test part). Its scores are near chance: tests check the machinery, not the model.

Importable from any test module as `tests.helpers.evalfixtures` (tests/ is a package).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from PIL import Image

FOLDERS = ("Benign", "Early", "Pre", "Pro")
_COLOURS = ((200, 160, 190), (150, 90, 170), (110, 60, 150), (180, 120, 110))
PREPROCESS = {"input_size": 64, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
              "interpolation": "bilinear"}


def make_noise_dataset(root: Path, per_class: int = 6, seed: int = 0, folders=FOLDERS) -> Path:
    """Distinct noise JPEGs per class; a different seed gives different bytes (no shared sha256)."""
    rng = np.random.default_rng(seed)
    for k, folder in enumerate(folders):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.integers(-50, 51, size=(48, 48, 3))
            pixels = np.clip(np.asarray(_COLOURS[k % 4]) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / folder / f"{folder}-{seed}-{i:02d}.jpg", quality=90)
    return root


def make_run(folder: Path, data_root: Path, *, seed: int = 0, val: bool = True, epochs: int = 3) -> Path:
    """A run folder for `data_root` with an untrained test_efficientnet; returns the folder."""
    import torch

    from leukoscope.data.discover import discover
    from leukoscope.data.split import split
    from leukoscope.models.checkpoint import save_checkpoint
    from leukoscope.models.factory import ModelSpec, create_model

    torch.manual_seed(seed)
    manifest = discover(data_root)
    parted = split(manifest, test_size=0.34, val_size=0.17 if val else 0.0, seed=0, near_duplicate_distance=None)
    folder.mkdir(parents=True, exist_ok=True)
    manifest.write_csv(folder / "manifest.csv")
    parted.write_csv(folder / "split.csv")
    spec = ModelSpec("test_efficientnet", num_classes=len(manifest.classes))
    model = create_model(spec, weights="none")
    config = {"data": str(data_root.resolve()), "protocol": "finetune", "backbone": spec.backbone, "seed": seed,
              "epochs": epochs, "augment": "strong", "eval_part": "val" if val else "test",
              "command": f"leukoscope train {data_root} --backbone test_efficientnet --seed {seed}"}
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    rows = ["epoch,stage,train_loss,train_acc,val_loss,val_acc,val_macro_f1,lr,seconds"]
    for epoch in range(1, epochs + 1):
        stage = "warmup" if epoch == 1 else "main"
        rows.append(f"{epoch},{stage},{1.4 / epoch:.4f},{0.3 + 0.1 * epoch:.4f},{1.5 / epoch:.4f},"
                    f"{0.25 + 0.1 * epoch:.4f},{0.2 + 0.1 * epoch:.4f},0.001,1.5")
    (folder / "metrics.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    save_checkpoint(folder / "best.pt", {
        "model": model.state_dict(), "spec": spec.to_dict(), "classes": list(manifest.classes),
        "preprocess": PREPROCESS, "epoch": epochs, "stage": "main", "best_score": 0.5, "history": [],
        "config": config, "manifest_digest": parted.digest(),
    })
    return folder
