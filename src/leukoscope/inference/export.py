"""`leukoscope export`: a run folder -> a model package that predicts exactly as checked.

Order of work, and why:
1. The checkpoint's weights are rounded to fp16 first (model.pt stores them so, to keep the bundled package
   small), and everything after - ONNX export, thresholds, statistics - uses the rounded network, so the
   PyTorch and ONNX Runtime backends of one package compute the same function.
2. fp32 ONNX parity with PyTorch is checked on validation images (max probability difference <= 1e-4),
   and, with --int8, static QDQ quantisation (leukoscope.inference.int8's rule: per-channel 7-bit weights, calibrated on
   training images) must agree on top-1 with fp32 on >= 99% of validation images; otherwise export refuses
   with the numbers. A few of those images go into int8_reference.npz, so the package checks its int8 model
   again on the CPU where it is loaded (leukoscope.inference.int8).
3. Temperature, review threshold, OOD statistics and image-quality thresholds (leukoscope.review.rules) are
   computed from the outputs of the backend the package will use by default (int8 when written), so the
   flags behave as calibrated. A temperature `leukoscope evaluate` already saved in the run's
   calibration.json is kept; a damaged calibration.json is refused before any work. With `shift_rules`,
   the val part is also photographed as a second lab would (leukoscope.data.shifts.validation_shifts) to
   choose the rules that must still flag a leukemia image called Benign (review.rules.fit_shift_rules).
"""

from __future__ import annotations

import copy
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from leukoscope import __version__
from leukoscope.data.imaging import load_rgb
from leukoscope.data.manifest import Manifest, read_manifest_csv
from leukoscope.data.shifts import VALIDATION_COMPOSITES, VALIDATION_SEED, validation_shifts
from leukoscope.errors import DataError, ImageError, ModelError
from leukoscope.inference.backends import OnnxBackend, TorchBackend
from leukoscope.inference.int8 import make_reference, quantize_with_gate, run_normalised
from leukoscope.inference.package import INT8_REFERENCE, ONNX_FP32, ONNX_INT8, OOD_FILE, TORCH_FILE, write_package
from leukoscope.models.preprocessing import Preprocess, normalize_numpy, resize_rgb
from leukoscope.review.calibration import read_temperature, softmax
from leukoscope.review.rules import ReviewImages, fit_review, pixel_measures

FP32_TOLERANCE = 1e-4
Log = Callable[[str], None]


@dataclass
class Images:
    """Decoded images of one part at the model's input size, their labels and original sizes."""

    pixels: np.ndarray  # N x S x S x 3 uint8
    labels: np.ndarray
    sizes: np.ndarray  # N x 2 (width, height)
    skipped: int = 0


def load_images(manifest: Manifest, preprocess: Preprocess, *, limit: int | None = None,
                seed: int = 0) -> Images:
    """Decode the images of `manifest` (a random `limit` of them), skipping unreadable files."""
    records = list(zip(manifest.paths(), manifest.labels, strict=True))
    if limit is not None and len(records) > limit:
        chosen = np.random.default_rng(seed).choice(len(records), size=limit, replace=False)
        records = [records[i] for i in sorted(chosen)]
    pixels, labels, sizes, skipped = [], [], [], 0
    for path, label in records:
        try:
            image = load_rgb(path)
        except ImageError:
            skipped += 1
            continue
        pixels.append(resize_rgb(image, preprocess))
        labels.append(label)
        sizes.append(image.size)
    size = preprocess.input_size
    return Images(np.stack(pixels) if pixels else np.zeros((0, size, size, 3), np.uint8),
                  np.asarray(labels, dtype=np.int64), np.asarray(sizes, dtype=np.int64).reshape(-1, 2), skipped)


def run_backend(backend: Any, pixels: np.ndarray, preprocess: Preprocess, batch_size: int = 32
                ) -> tuple[np.ndarray, np.ndarray]:
    """Logits and features of an NHWC uint8 array, in batches."""
    logits, feats = [], []
    for start in range(0, len(pixels), batch_size):
        lo, fe = backend.run(normalize_numpy(pixels[start:start + batch_size], preprocess))
        logits.append(lo)
        feats.append(fe)
    if not logits:
        return np.zeros((0, 0)), np.zeros((0, 0))
    return np.concatenate(logits), np.concatenate(feats)


def shifted_copies(manifest: Manifest, preprocess: Preprocess, *, composites: int = VALIDATION_COMPOSITES,
                   seed: int = VALIDATION_SEED) -> Iterator[tuple[str, list[bytes], np.ndarray, np.ndarray]]:
    """(name, files, model-input pixels, labels) of each copy of validation_shifts of `manifest`'s readable
    images: encoded as the other lab's files and decoded as a Predictor decodes them."""
    from leukoscope.inference.predictor import DECODE_SIDE_FACTOR

    records = []
    for path, label in zip(manifest.paths(), manifest.labels, strict=True):
        try:
            records.append((load_rgb(path), label))
        except ImageError:
            continue
    labels = np.asarray([label for _, label in records], np.int64)
    side = DECODE_SIDE_FACTOR * preprocess.input_size
    for name, shifts in validation_shifts(len(records), composites=composites, seed=seed).items():
        files = [shift.encode(image) for (image, _), shift in zip(records, shifts, strict=True)]
        yield name, files, np.stack([resize_rgb(load_rgb(data, max_side=side), preprocess) for data in files]), labels


def shifted_review_images(manifest: Manifest, backend: Any, preprocess: Preprocess, *,
                          composites: int = VALIDATION_COMPOSITES, seed: int = VALIDATION_SEED,
                          log: Log | None = None) -> ReviewImages:
    """`manifest`'s images as they are and through every copy of validation_shifts (shifted_copies),
    through `backend`: what fit_shift_rules chooses on. One copy at a time, so only its outputs and pixel
    measures are kept."""
    parts = []
    for name, _, pixels, labels in shifted_copies(manifest, preprocess, composites=composites, seed=seed):
        logits, feats = run_backend(backend, pixels, preprocess)
        parts.append(ReviewImages(logits, feats, labels, pixel_measures(pixels),
                                  np.full(len(labels), name != "none"), [name] * len(labels)))
        if log is not None:
            log(f"shifted val copy {name!r}: {len(labels)} images")
    return ReviewImages.concatenate(parts)


# ------------------------------------------------------------------------------------------- onnx


def _two_outputs(model: Any) -> Any:
    """Wrap a timm model so that it returns (logits, penultimate features)."""
    from torch import nn

    from leukoscope.models.factory import features

    class LogitsAndFeatures(nn.Module):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x):  # type: ignore[no-untyped-def]
            feats = features(self.net, x)
            return self.net.get_classifier()(feats), feats

    return LogitsAndFeatures(model).eval()


def export_onnx(model: Any, input_size: int, path: str | Path) -> None:
    """Export fp32 ONNX (opset 17, legacy exporter, dynamic batch) with outputs `logits` and `features`."""
    import torch

    wrapper = _two_outputs(model.eval())
    dummy = torch.rand(2, 3, input_size, input_size)
    with torch.inference_mode():
        if not torch.allclose(wrapper(dummy)[0], model(dummy), atol=1e-4, rtol=1e-4):
            raise ModelError("this backbone's classifier does not follow its pooled features directly; "
                             "exporting it with a features output is not supported")
    axes = {name: {0: "batch"} for name in ("input", "logits", "features")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (dummy,), str(path), opset_version=17, dynamo=False,
                          input_names=["input"], output_names=["logits", "features"], dynamic_axes=axes)


def _check_fp32(original: Any, rounded: Any, onnx_path: Path, check: np.ndarray, pre: Preprocess, log: Log,
                threads: int | None = None) -> dict[str, Any]:
    """ONNX Runtime fp32 vs PyTorch (same fp16-rounded weights) on `check` (normalised NCHW): refuse
    above FP32_TOLERANCE. Also report what rounding the weights to fp16 changed against the checkpoint
    (scored as every checkpoint is scored, with leukoscope.models.scoring)."""
    import torch

    from leukoscope.models.scoring import score_model

    torch_probs = softmax(run_normalised(TorchBackend(rounded, threads), check)[0])
    onnx_probs = softmax(run_normalised(OnnxBackend(onnx_path, threads), check)[0])
    diff = float(np.abs(torch_probs - onnx_probs).max())
    log(f"fp32 ONNX vs PyTorch: max probability difference {diff:.2e} on {len(check)} images")
    if not diff <= FP32_TOLERANCE:
        raise ModelError(f"ONNX export does not match PyTorch: max probability difference {diff:.2e} on "
                         f"{len(check)} images (tolerance {FP32_TOLERANCE:g}); not written")
    original_probs = softmax(score_model(original, torch.from_numpy(check), pre, batch_size=32).logits.numpy())
    return {"fp32_max_abs_prob_diff": diff,
            "fp16_weights_max_abs_prob_diff": float(np.abs(original_probs - torch_probs).max()),
            "fp16_weights_top1_agreement": float(np.mean(original_probs.argmax(1) == torch_probs.argmax(1))),
            "images": len(check)}


# ------------------------------------------------------------------------------------------- run


def _read_config(run_dir: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """config.yaml of the run (the checkpoint's copy when the file is absent)."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return dict(meta.get("config") or {})
    import yaml

    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from None
    return config if isinstance(config, dict) else {}


def _load_split(run_dir: Path, config: dict[str, Any], classes: tuple[str, ...],
                data_root: str | Path | None) -> Manifest:
    split_csv = run_dir / "split.csv"
    if not split_csv.is_file():
        raise ModelError(f"run folder {run_dir} has no split.csv: export needs the run's train/val images")
    root = Path(data_root or config.get("data") or "")
    if not root.is_absolute() and not root.is_dir():
        root = run_dir / root
    if not str(data_root or config.get("data") or "") or not root.is_dir():
        raise DataError(f"the run's data folder {root} is not here; pass --data FOLDER (the dataset root "
                        "the run was trained on)")
    return read_manifest_csv(split_csv, root, classes=classes)


def _round_fp16(model: Any) -> tuple[Any, dict[str, Any]]:
    """A copy of `model` whose float weights went through fp16, and that fp16 state_dict."""
    half = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    rounded = copy.deepcopy(model)
    rounded.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in half.items()})
    return rounded.eval(), half


def _summaries(run_dir: Path) -> dict[str, Any]:
    """Metrics the run already has (summary.json from training, metrics.json from evaluate), if small."""
    import json

    found = {}
    for key, name in (("training_summary", "summary.json"), ("evaluation", "metrics.json")):
        path = run_dir / name
        if path.is_file() and path.stat().st_size < 200_000:
            try:
                found[key] = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
    return found


def _describe(run_dir: Path, loaded: Any, config: dict[str, Any], split: Manifest, train: Images,
              name: str | None) -> dict[str, Any]:
    """Provenance and preprocessing part of model.json."""
    sizes = train.sizes.min(axis=1) if len(train.sizes) else np.array([loaded.preprocess.input_size])
    meta = loaded.meta
    return {
        "name": name or run_dir.name, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "leukoscope_version": __version__, "backbone": loaded.spec.backbone, "spec": loaded.spec.to_dict(),
        "classes": list(loaded.classes), "preprocess": loaded.preprocess.to_dict(),
        "training_image_size": int(np.median(sizes)),
        "training": {"run": run_dir.name, "command": config.get("command"), "epoch": meta.get("epoch"),
                     "best_score": meta.get("best_score"), "config": config},
        "data": {"manifest_digest": meta.get("manifest_digest") or split.digest(), "split_digest": split.digest(),
                 "parts": {p: len(split.part(p)) for p in ("train", "val", "test")}},
        "disclaimer": "Research software, not a certified medical device: never use it alone for a diagnosis.",
    }


def export_run(run: str | Path, out: str | Path, *, int8: bool = False, int8_only: bool = False,
               data_root: str | Path | None = None, name: str | None = None, calibration_images: int = 256,
               parity_images: int = 512, threads: int | None = None, log: Log | None = None,
               shift_rules: bool = False) -> Path:
    """Export a run folder (or checkpoint inside one) as a model package at `out`; returns `out`.

    `threads`: CPU threads for the checks (default: all cores). `shift_rules`: also choose the review rules
    for other labs' images (a Benign-call confidence threshold and a cell-scale range) on shifted copies of
    the val part (several minutes on a CPU); without it the review section is that of older packages.
    Raises ModelError when a parity check fails (nothing is written then) and DataError when the run's
    images cannot be found.
    """
    from leukoscope.models.checkpoint import find_checkpoint, load_trained

    log = log or (lambda message: None)
    int8 = int8 or int8_only
    checkpoint = find_checkpoint(run)
    run_dir = checkpoint.parent
    loaded = load_trained(checkpoint)
    config = _read_config(run_dir, loaded.meta)
    split = _load_split(run_dir, config, loaded.classes, data_root)
    temperature = read_temperature(run_dir, strict=True)  # evaluate's; a damaged file refuses before any work
    pre = loaded.preprocess
    train, val = load_images(split.part("train"), pre), load_images(split.part("val"), pre)
    if len(train.pixels) < 2:
        raise DataError(f"run {run_dir} has fewer than 2 readable training images in {split.root}")
    check = val if len(val.pixels) else load_images(split.part("test"), pre, limit=parity_images)
    check = check if len(check.pixels) else train
    check_x = normalize_numpy(check.pixels[:parity_images], pre)
    log(f"{len(train.pixels)} train, {len(val.pixels)} val images; checking parity on {len(check_x)}")
    rounded, half_state = _round_fp16(loaded.model)
    with tempfile.TemporaryDirectory(prefix="leukoscope-export-") as tmp:
        work = Path(tmp)
        export_onnx(rounded, pre.input_size, work / ONNX_FP32)
        parity = _check_fp32(loaded.model, rounded, work / ONNX_FP32, check_x, pre, log, threads)
        default = ONNX_FP32
        if int8:
            chosen = np.random.default_rng(0).permutation(len(train.pixels))[:calibration_images]
            fp32_probs = softmax(run_normalised(OnnxBackend(work / ONNX_FP32, threads), check_x)[0])
            calibration = normalize_numpy(train.pixels[np.sort(chosen)], pre)
            parity.update(quantize_with_gate(work, calibration, check_x, fp32_probs, log, threads))
            parity["int8_reference"] = write_reference(work, check.pixels[:parity_images], pre, threads)
            log(f"int8 reference batch: {parity['int8_reference']['images']} images, checked again at every load")
            default = ONNX_INT8
        engine = OnnxBackend(work / default, threads)
        _, train_feats = run_backend(engine, train.pixels, pre)
        val_logits, val_feats = run_backend(engine, val.pixels, pre) if len(val.pixels) else (None, None)
        shifted = (shifted_review_images(split.part("val"), engine, pre, log=log)
                   if shift_rules and len(val.pixels) else None)
        review_info, ood, val_metrics = fit_review(
            train_feats, train.labels, train.pixels, val_logits, val_feats, val.labels,
            run_temperature=temperature, log=log, shifted=shifted, classes=loaded.classes)
        ood.save(work / OOD_FILE)
        _save_torch_payload(work / TORCH_FILE, loaded, half_state)
        info = _describe(run_dir, loaded, config, split, train, name)
        info.update(review_info)
        info.update({"default_onnx": default, "parity": parity,
                     "onnx": {"opset": 17, "input": "input", "outputs": ["logits", "features"],
                              "input_layout": "N x 3 x S x S float32, (x/255 - mean) / std"},
                     "metrics": {"val": val_metrics, **_summaries(run_dir)}})
        names = [n for n in (ONNX_FP32, ONNX_INT8, INT8_REFERENCE, TORCH_FILE, OOD_FILE) if (work / n).is_file()]
        if int8_only:
            names.remove(ONNX_FP32)
        return write_package(out, info, {n: work / n for n in names})


def write_reference(work: Path, pixels: np.ndarray, pre: Preprocess, threads: int | None) -> dict[str, Any]:
    """work/int8_reference.npz from the check images, judged by the fp32 and int8 models just written."""
    return make_reference(work / INT8_REFERENCE, pixels, OnnxBackend(work / ONNX_FP32, threads),
                          OnnxBackend(work / ONNX_INT8, threads), pre)


def _save_torch_payload(path: Path, loaded: Any, half_state: dict[str, Any]) -> None:
    import torch

    torch.save({"spec": loaded.spec.to_dict(), "classes": list(loaded.classes),
                "preprocess": loaded.preprocess.to_dict(), "model": half_state}, path)
