"""Export a cell run (`leukoscope train --unit cells`) as a model package whose review rules fit cell crops.

Why not `export_run` as it is: it fits the temperature, the review threshold and the out-of-distribution
statistics on whole fields, which a cell model never sees. This export cuts the run's train and val fields
into the crops its training used (leukoscope.segmentation.crops, the same seed and cap), resizes them as
`predict --cells` does, and fits the same rules (leukoscope.review.rules.fit_review) on their outputs, with
the export's own steps (fp16 weights, ONNX with its parity check). model.json says `unit: cells`, so the
CLI refuses to run the package on whole fields.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from leukoscope.errors import DataError, ModelError
from leukoscope.inference.backends import OnnxBackend
from leukoscope.inference.cells import crop_inputs
from leukoscope.inference.export import (
    Images,
    _check_fp32,
    _describe,
    _load_split,
    _read_config,
    _round_fp16,
    _save_torch_payload,
    _summaries,
    export_onnx,
    run_backend,
)
from leukoscope.inference.package import ONNX_FP32, OOD_FILE, TORCH_FILE, UNIT_CELLS, write_package
from leukoscope.models.preprocessing import Preprocess, normalize_numpy
from leukoscope.review.calibration import read_temperature
from leukoscope.review.rules import fit_review
from leukoscope.segmentation.crops import field_crops
from leukoscope.segmentation.field import PARAMS

Log = Callable[[str], None]
LABEL_NOTE = ("each training cell took its field's label: wrong for a normal lymphocyte or hematogone in a "
              "leukemic field (and any leukemic cell in a field called Benign)")


def crop_images(manifest: Any, preprocess: Preprocess, *, per_field: int = 0, seed: int = 0) -> Images:
    """The crops of `manifest`'s fields at the model's input size, with their fields' labels."""
    crops = field_crops(manifest.paths(), manifest.labels, per_field=per_field, seed=seed)
    sizes = np.full((len(crops), 2), PARAMS.crop_size, np.int64)
    return Images(crop_inputs(crops.crops, preprocess), crops.labels, sizes)


def export_cell_run(run: str | Path, out: str | Path, *, data_root: str | Path | None = None,
                    name: str | None = None, parity_images: int = 512, threads: int | None = None,
                    log: Log | None = None) -> Path:
    """Export a cell run folder as a package at `out` (fp32 ONNX + fp16 model.pt, review rules on crops).

    Raises ModelError for a run that is not a cell run or whose ONNX export disagrees with PyTorch, and
    DataError when the run's images cannot be found.
    """
    from leukoscope.models.checkpoint import find_checkpoint, load_trained

    log = log or (lambda message: None)
    checkpoint = find_checkpoint(run)
    run_dir = checkpoint.parent
    loaded = load_trained(checkpoint)
    config = _read_config(run_dir, loaded.meta)
    if config.get("unit") != UNIT_CELLS:
        raise ModelError(f"{run_dir} is not a cell run (config unit: {config.get('unit', 'fields')}); "
                         "use `leukoscope export`")
    split = _load_split(run_dir, config, loaded.classes, data_root)
    temperature = read_temperature(run_dir, strict=True)
    pre = loaded.preprocess
    seed, per_field = int(config.get("seed", 0)), int(config.get("cells_per_field", 0))
    train = crop_images(split.part("train"), pre, per_field=per_field, seed=seed)
    val = crop_images(split.part("val"), pre)
    if len(train.pixels) < 2:
        raise DataError(f"run {run_dir}: fewer than 2 training cell crops in {split.root}")
    check = val if len(val.pixels) else train
    check_x = normalize_numpy(check.pixels[:parity_images], pre)
    log(f"{len(train.pixels)} train, {len(val.pixels)} val cell crops; checking parity on {len(check_x)}")
    rounded, half_state = _round_fp16(loaded.model)
    with tempfile.TemporaryDirectory(prefix="leukoscope-cell-export-") as tmp:
        work = Path(tmp)
        export_onnx(rounded, pre.input_size, work / ONNX_FP32)
        parity = _check_fp32(loaded.model, rounded, work / ONNX_FP32, check_x, pre, log, threads)
        engine = OnnxBackend(work / ONNX_FP32, threads)
        _, train_feats = run_backend(engine, train.pixels, pre)
        val_logits, val_feats = run_backend(engine, val.pixels, pre) if len(val.pixels) else (None, None)
        review_info, ood, val_metrics = fit_review(
            train_feats, train.labels, train.pixels, val_logits, val_feats, val.labels,
            run_temperature=temperature, log=log, classes=loaded.classes)
        ood.save(work / OOD_FILE)
        _save_torch_payload(work / TORCH_FILE, loaded, half_state)
        info = _describe(run_dir, loaded, config, split, train, name)
        info.update(review_info)
        info.update({"unit": UNIT_CELLS, "default_onnx": ONNX_FP32, "parity": parity,
                     "cells": {"crop_size": PARAMS.crop_size, "work_side": PARAMS.work_side,
                               "cells_per_field": per_field, "train_crops": len(train.pixels),
                               "val_crops": len(val.pixels), "labels": LABEL_NOTE},
                     "onnx": {"opset": 17, "input": "input", "outputs": ["logits", "features"],
                              "input_layout": "N x 3 x S x S float32, (x/255 - mean) / std"},
                     "metrics": {"val": {**val_metrics, "unit": "cell crops"}, **_summaries(run_dir)}})
        names = [n for n in (ONNX_FP32, TORCH_FILE, OOD_FILE) if (work / n).is_file()]
        return write_package(out, info, {n: work / n for n in names})
