"""A tiny dataset of synthetic smear fields with segmentable white cells, a cell run trained on it for one
epoch and that run exported as a cell package: one of each per test session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tests.segmentation.synthetic import field

FOLDERS = ("Benign", "Early", "Pre", "Pro")
_CACHE: dict[str, Path] = {}


def make_field_dataset(root: Path, per_class: int = 4) -> Path:
    """root/<class>/<i>.png: fields whose cells' size and count depend on the class."""
    rng = np.random.default_rng(0)
    for k, folder in enumerate(FOLDERS):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            cells = [(float(x), float(y), 16.0 - 2 * k) for x, y in rng.uniform(30, 194, size=(1 + k % 2 + i % 2, 2))]
            Image.fromarray(field(cells, seed=10 * k + i, nucleus_radius=None)[0]).save(root / folder / f"{folder}-{i}.png")
    return root


def cell_config(data: Path, out: Path, name: str = "cells", **values):
    from leukoscope.training.config import TrainConfig

    base = dict(data=str(data), out_dir=str(out), name=name, unit="cells", backbone="test_efficientnet",
                weights="none", input_size=32, trainable="head", warmup_epochs=0, epochs=1, batch_size=8,
                eval_batch_size=16, test_size=0.25, val_size=0.25, frozen_views=1, device="cpu", amp=False,
                workers=1, seed=0, near_duplicate_distance=-1)
    return TrainConfig(**{**base, **values})


def shared_cell_run(tmp_path_factory) -> Path:
    if "run" not in _CACHE:
        from leukoscope.training.cells import fit_cells

        root = tmp_path_factory.mktemp("cellrun")
        data = make_field_dataset(root / "data")
        _CACHE["run"] = fit_cells(cell_config(data, root / "runs"), quiet=True, command="leukoscope train (test)")
    return _CACHE["run"]


def shared_cell_package(tmp_path_factory) -> Path:
    if "package" not in _CACHE:
        from leukoscope.inference.cell_export import export_cell_run

        run = shared_cell_run(tmp_path_factory)
        _CACHE["package"] = export_cell_run(run, run.parent / "package", threads=1)
    return _CACHE["package"]
