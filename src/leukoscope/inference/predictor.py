"""Prediction: one `Predictor` over a model package (ONNX Runtime or PyTorch), used by the CLI, the web app
and the benchmarks alike.

A prediction is only useful with its caveats, so every `Prediction` carries calibrated probabilities
(softmax of logits / temperature) and a `review` flag with its reasons: low calibrated confidence (a Benign
call needs more where the package says so), an image unlike the training data (leukoscope.review.ood), a
blurry image, one far from the training resolution (leukoscope.review.quality) or with cells at another
scale (leukoscope.review.rules). An image unlike the training data is tried at the package's other
magnifications and stain hues, and keeps its flag when one of those gives the call (leukoscope.review.realign);
a Benign call nothing else flags must also hold at the package's other magnifications
(leukoscope.review.benign_check). Images that show nothing to judge (blank, noise, a smooth gradient, a few
pixels) get status `unusable` and no class. Unreadable files become predictions with `error` set
instead of exceptions, so one bad file never stops a folder of thousands.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from leukoscope.data.fileio import sha256_bytes
from leukoscope.data.imaging import jpeg_quality, load_rgb, original_size
from leukoscope.errors import ImageError, ModelError, UsageError
from leukoscope.inference.backends import TorchBackend, cpu_count, load_torch_file
from leukoscope.inference.int8 import checked_onnx
from leukoscope.inference.package import (
    MODEL_JSON,
    ONNX_FP32,
    TORCH_FILE,
    bundled_package_path,
    is_package,
    package_file,
    verify_package,
)
from leukoscope.inference.prediction import Prediction
from leukoscope.models.preprocessing import Preprocess, normalize_numpy, resize_rgb
from leukoscope.review import reasons as why
from leukoscope.review.calibration import read_temperature
from leukoscope.review.ood import OOD_FILE, MahalanobisOOD
from leukoscope.review.quality import quality_reasons, size_reasons
from leukoscope.review.reasons import Reason
from leukoscope.review.rules import DEFAULT_CONFIDENCE_THRESHOLD, ReviewThresholds, scale_reasons

BACKENDS = ("auto", "onnx", "torch")


# ------------------------------------------------------------------------------------------- predictor

_BLAS_LOCK = threading.Lock()
_BLAS_CONTROLLER: list[Any] = []


def one_blas_thread() -> contextlib.AbstractContextManager[Any]:
    """Run numpy's BLAS (OpenBLAS) on one thread inside the block.

    The out-of-distribution score is a few small matrix products per batch. Left multi-threaded, OpenBLAS
    wakes its own busy-waiting threads for them, which fight ONNX Runtime's (or PyTorch's) spinning
    threads for the same cores on every batch: on 2 cores, `_finish` took 5.3 ms/image for a network that
    takes 3.2 ms/image alone (ONNX fp32), and predict_paths ran ~1.35x (fp32) to ~1.5x (int8) slower.
    One thread is plenty for these sizes, and the scores are unchanged. The limit is process-wide while it
    lasts, so callers hold _BLAS_LOCK (which also guards creating the controller) to keep concurrent
    predictors from restoring each other's settings in the wrong order.
    """
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # threadpoolctl comes with scikit-learn; without it, leave BLAS as it is
        return contextlib.nullcontext()
    if not _BLAS_CONTROLLER:
        _BLAS_CONTROLLER.append(ThreadpoolController())
    return _BLAS_CONTROLLER[0].limit(limits=1, user_api="blas")


DECODE_SIDE_FACTOR = 4  # images are decoded reduced to at most 4x the model's input side (896 px at 224)


@dataclass
class _Decoded:
    source: str
    sha256: str = ""
    pixels: np.ndarray | None = None  # model input, S x S x 3 uint8; None when unreadable or unusable
    width: int = 0
    height: int = 0
    error: str | None = None
    reasons: list[Reason] = field(default_factory=list)  # an unusable reason first, when there is one


def tta_views(batch: np.ndarray) -> Iterator[np.ndarray]:
    """The 8 symmetries of the square (4 rotations x horizontal flip) of an NHWC batch, identity first."""
    for k in range(4):
        rotated = np.rot90(batch, k, axes=(1, 2))
        yield np.ascontiguousarray(rotated)
        yield np.ascontiguousarray(rotated[:, :, ::-1])


class Predictor:
    """Calibrated predictions with review flags; build it with `load_predictor`."""

    onnx_file: str | None = None  # the package's ONNX model that runs (after the int8 check); None in PyTorch
    int8_check: dict[str, Any] | None = None  # leukoscope.inference.int8.checked_onnx's findings when int8 was asked for
    streams: int = 1  # batches predict_paths scores at once, each on one thread (load_predictor's `streams`)

    def __init__(self, backend: Any, info: dict[str, Any], *, ood: MahalanobisOOD | None = None,
                 source: Path | None = None, torch_model: Any = None,
                 confidence_threshold: float | None = None) -> None:
        self._backend = backend
        self.info = info
        self.classes: tuple[str, ...] = tuple(info["classes"])
        self.preprocess = Preprocess.from_dict(info["preprocess"])
        self.temperature = float(info.get("temperature") or 1.0)
        self.training_size = int(info.get("training_image_size") or self.preprocess.input_size)
        rules = ReviewThresholds.from_dict(info.get("review", {}), self.training_size)
        self.confidence_threshold = float(confidence_threshold if confidence_threshold is not None
                                          else rules.confidence)
        self.quality = rules.quality
        self.min_jpeg_quality = rules.min_jpeg_quality
        self.size_ratio_range = rules.size_ratio_range
        self.min_side = rules.min_side
        # a Benign call needs at least the confidence any call needs (older packages: exactly that)
        self.benign_threshold = max(self.confidence_threshold, rules.benign_confidence)
        self.benign_index = self.classes.index(rules.benign_class) if rules.benign_class in self.classes else None
        self.cell_scale_range = rules.cell_scale_range
        self.realign = rules.realign  # None: never realign (set it to None to compare with and without)
        self.benign_check = rules.benign_check  # None: no view check of Benign calls (likewise)
        self.ood = ood
        self.source = source
        self._torch_model = torch_model

    @property
    def backend(self) -> str:
        return self._backend.name

    def torch_model(self) -> Any:
        """The PyTorch network (for Grad-CAM); loaded from model.pt on first use."""
        if self._torch_model is None:
            path = package_file(self.source, self.info, TORCH_FILE) if self.source else None
            if path is None:
                raise ModelError("this model package has no model.pt, so it cannot run in PyTorch "
                                 "(needed for --backend torch and Grad-CAM); re-export it")
            self._torch_model = load_torch_file(path)
        return self._torch_model

    def raw(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits and penultimate features of an N x H x W x 3 uint8 batch at the model's input size."""
        return self._backend.run(normalize_numpy(batch, self.preprocess))

    def _calibrate(self, logits: np.ndarray) -> np.ndarray:
        z = np.asarray(logits, dtype=np.float64) / self.temperature
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def _forward(self, batch: np.ndarray, tta: bool) -> tuple[np.ndarray, np.ndarray]:
        if not tta:
            logits, feats = self.raw(batch)
            return self._calibrate(logits), feats
        probs, feats = None, None
        for view in tta_views(batch):
            logits, view_feats = self.raw(view)
            feats = view_feats if feats is None else feats  # OOD on the identity view, as calibrated
            p = self._calibrate(logits)
            probs = p if probs is None else probs + p
        return probs / 8.0, feats

    def predict_proba(self, batch: np.ndarray, *, tta: bool = False) -> np.ndarray:
        """Calibrated probabilities (N x C) of an N x S x S x 3 uint8 batch at the model's input size."""
        batch = np.asarray(batch, dtype=np.uint8)
        if batch.ndim != 4 or batch.shape[3] != 3:
            raise ValueError(f"expected an N x H x W x 3 uint8 batch, got shape {batch.shape}")
        if len(batch) == 0:
            return np.zeros((0, len(self.classes)))
        return self._forward(batch, tta)[0]

    def scored(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Calibrated probabilities (N x C) and OOD scores (N; None without OOD statistics) of an N x S x S x 3
        uint8 batch at the model's input size, with no review rule applied (for fitting rules)."""
        probs, feats = self._forward(np.asarray(batch, dtype=np.uint8), False)
        if self.ood is None:
            return probs, None
        with _BLAS_LOCK, one_blas_thread():
            return probs, self.ood.score(feats)

    # ---- decoding

    def _decode(self, source: str, data: bytes) -> _Decoded:
        item = _Decoded(source, sha256_bytes(data))
        try:
            # Reduced while decoding to a few times the model input: a 7000x7000 PNG (147 MB of RGB) costs
            # no more than the model needs; width, height and the size checks use the file's own size.
            image = load_rgb(data, max_side=DECODE_SIDE_FACTOR * self.preprocess.input_size)
        except ImageError as exc:
            item.error = str(exc)
            return item
        except Exception as exc:  # any decoder failure of one file must not stop the others
            item.error = f"corrupt image: {type(exc).__name__}: {exc}"
            return item
        item.width, item.height = original_size(image)
        if min(item.width, item.height) < self.min_side:
            item.reasons = [why.too_small(item.width, item.height, self.min_side)]
            return item
        pixels = resize_rgb(image, self.preprocess)
        native = np.asarray(image) if min(image.size) < self.preprocess.input_size else None
        item.reasons = quality_reasons(pixels, self.quality, native=native)
        if item.reasons and item.reasons[0].unusable:
            return item  # no class for it: the model never sees it
        item.pixels = pixels
        item.reasons += size_reasons(item.width, item.height, self.training_size, self.size_ratio_range)
        at_input = image.size == (self.preprocess.input_size,) * 2  # then pixels are this image's own
        item.reasons += scale_reasons(image if at_input else pixels, self.cell_scale_range)
        quality = jpeg_quality(image)  # the tables load_rgb kept: no second parse of the header
        if quality is not None and quality < self.min_jpeg_quality:
            item.reasons.append(why.jpeg_quality(quality, self.min_jpeg_quality))
        return item

    def _decode_path(self, path: str | Path) -> _Decoded:
        try:
            data = Path(path).read_bytes()
        except IsADirectoryError:
            return _Decoded(str(path), error="is a folder, not an image")
        except OSError as exc:
            return _Decoded(str(path), error=f"cannot read file: {exc.strerror or exc}")
        return self._decode(str(path), data)

    # ---- inference

    def _finish(self, items: Sequence[_Decoded], tta: bool) -> list[Prediction]:
        good = [i for i, item in enumerate(items) if item.pixels is not None]
        probs = np.zeros((0, len(self.classes)))
        scores: np.ndarray | None = None
        added: dict[int, Reason] = {}  # by row: `realigned` or `benign_view`
        if good:
            pixels = np.stack([items[i].pixels for i in good])
            probs, feats = self._forward(pixels, tta)
            if self.ood is not None:
                with _BLAS_LOCK, one_blas_thread():
                    scores = self.ood.score(feats)
                added = self._realign(pixels, probs, scores, tta)
            plain = [row for row, index in enumerate(good) if not items[index].reasons and row not in added
                     and (scores is None or self.ood is None or scores[row] <= self.ood.threshold)]
            added.update(self._check_benign(pixels, probs, plain, tta))
        results: list[Prediction] = []
        row_of = {index: row for row, index in enumerate(good)}
        for index, item in enumerate(items):
            if item.pixels is None:  # unreadable (error) or readable but unusable (its reasons say why)
                error = item.error if item.error is not None or item.reasons else "unreadable"
                reasons = [why.unreadable(error)] if error is not None else item.reasons
                results.append(Prediction.without_call(item.source, item.sha256, self.classes, reasons,
                                                       width=item.width, height=item.height, error=error))
                continue
            p = probs[row_of[index]]
            score = None if scores is None else float(scores[row_of[index]])
            results.append(self._prediction(item, p, score, added.get(row_of[index])))
        return results

    def _realign(self, pixels: np.ndarray, probs: np.ndarray, scores: np.ndarray, tta: bool) -> dict[int, Reason]:
        """Replace, in place, the probabilities of OOD-flagged rows whose best view (leukoscope.review.realign)
        looks more like the training images; the `realigned` reason of each replaced row, by row."""
        rule, ood = self.realign, self.ood
        if rule is None or ood is None:
            return {}
        rows = np.flatnonzero(scores > ood.threshold)
        if not len(rows):
            return {}
        view_probs, view_feats = self._forward(rule.view_batch(pixels[rows]), tta)
        with _BLAS_LOCK, one_blas_thread():
            view_scores = ood.score(view_feats).reshape(len(rows), len(rule.views))
        chosen = rule.choose(scores[rows], view_scores)
        done: dict[int, Reason] = {}
        for k, (row, view) in enumerate(zip(rows.tolist(), chosen.tolist(), strict=True)):
            if view >= 0:
                as_given = self.classes[int(np.argmax(probs[row]))], float(np.max(probs[row]))
                probs[row] = view_probs[k * len(rule.views) + view]
                done[row] = why.realigned(rule.views[view].describe(), float(scores[row]),
                                          float(view_scores[k, view]), *as_given)
        return done

    def _check_benign(self, pixels: np.ndarray, probs: np.ndarray, rows: Sequence[int], tta: bool) -> dict[int, Reason]:
        """The `benign_view` reason, by row, of those `rows` (nothing else flags them) called Benign with the
        confidence a Benign call needs whose lowest view P(Benign) falls below the check's threshold."""
        check, benign = self.benign_check, self.benign_index
        if check is None or benign is None or not len(rows):
            return {}
        rows = np.asarray(rows, np.int64)
        called = (probs[rows].argmax(1) == benign) & (probs[rows, benign] >= self.benign_threshold)
        rows = rows[called]
        if not len(rows):
            return {}
        view_probs = self._forward(check.view_batch(pixels[rows]), tta)[0].reshape(len(rows), len(check.views), -1)
        doubt = check.doubting_view(view_probs[:, :, benign])
        return {int(row): why.benign_view(check.views[view].describe(why=False), float(view_probs[k, view, benign]),
                                          check.threshold, self.classes[int(view_probs[k, view].argmax())])
                for k, (row, view) in enumerate(zip(rows.tolist(), doubt.tolist(), strict=True)) if view >= 0}

    def _prediction(self, item: _Decoded, p: np.ndarray, score: float | None,
                    added: Reason | None = None) -> Prediction:
        top = int(np.argmax(p))
        confidence = float(p[top])
        reasons = list(item.reasons)
        if score is not None and self.ood is not None and score > self.ood.threshold:
            reasons.append(why.out_of_distribution(score, self.ood.threshold))
        if added is not None:  # realigned, or benign_view
            reasons.append(added)
        if confidence < self.confidence_threshold:
            reasons.append(why.low_confidence(confidence, self.confidence_threshold))
        elif top == self.benign_index and confidence < self.benign_threshold:
            reasons.append(why.benign_low_confidence(confidence, self.benign_threshold))
        messages, codes, details = why.split(reasons)
        return Prediction(item.source, item.sha256, self.classes[top],
                          {c: float(v) for c, v in zip(self.classes, p, strict=True)}, confidence,
                          bool(reasons), messages, score, item.width, item.height, None, "ok", codes, details)

    def predict_bytes(self, items: Sequence[tuple[str, bytes]], *, tta: bool = False,
                      batch_size: int = 32) -> list[Prediction]:
        """Predict encoded images given as (name, bytes); unreadable ones get `error` set."""
        results: list[Prediction] = []
        for start in range(0, len(items), max(1, batch_size)):
            chunk = items[start:start + max(1, batch_size)]
            results.extend(self._finish([self._decode(name, data) for name, data in chunk], tta))
        return results

    def predict_paths(self, paths: Iterable[str | Path], *, tta: bool = False,
                      batch_size: int = 32) -> Iterator[Prediction]:
        """Predict image files in order: with one stream, decoding batch k+1 in threads while batch k runs;
        with several (`streams`), each batch decoded and scored in its own thread, `streams` at a time."""
        paths = list(paths)
        size = max(1, batch_size)
        batches = [paths[i:i + size] for i in range(0, len(paths), size)]
        if self.streams > 1:
            yield from self._streamed(batches, tta)
            return
        pool = ThreadPoolExecutor(max_workers=min(4, cpu_count()))
        try:
            pending = [pool.submit(self._decode_path, p) for p in batches[0]] if batches else []
            for k in range(len(batches)):
                current = pending
                nxt = batches[k + 1] if k + 1 < len(batches) else []
                pending = [pool.submit(self._decode_path, p) for p in nxt]
                yield from self._finish([f.result() for f in current], tta)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _streamed(self, batches: list[list[str | Path]], tta: bool) -> Iterator[Prediction]:
        """`streams` batches in flight, each decoded and scored start to end by one worker thread on a
        single-threaded ONNX Runtime session, results in input order.

        On 2 cores, one run on two intra-op threads waits at a barrier after every operator: 8.5-8.9 ms an
        image against 12-12.7 CPU-ms on one thread, and two one-thread runs side by side took 7.3-7.9 ms
        (scratch measurement, 320 test images, batch 32). What the barriers wasted goes to the work that
        used to compete with the network instead: one batch decodes while the other's network runs.
        """
        def score(batch: list[str | Path]) -> list[Prediction]:
            return self._finish([self._decode_path(p) for p in batch], tta)

        pool = ThreadPoolExecutor(max_workers=self.streams)
        waiting = iter(batches)
        try:
            running = deque(pool.submit(score, batch) for batch in itertools.islice(waiting, self.streams))
            while running:
                done = running.popleft().result()
                nxt = next(waiting, None)
                if nxt is not None:
                    running.append(pool.submit(score, nxt))  # before handing results out: no core idles
                yield from done
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------------------------------- loading


def load_predictor(model: str | Path | None = None, *, backend: str = "auto", threads: int | None = None,
                   confidence_threshold: float | None = None, onnx_file: str | None = None,
                   streams: int | None = None) -> Predictor:
    """A Predictor for a model package folder, a run folder or checkpoint, or (None, or `default` where no such
    path exists, as `leukoscope evaluate` reads it) the bundled package.

    backend "auto" uses ONNX Runtime when the package has an ONNX model (the int8 one when model.json's
    `default_onnx` names it, or `onnx_file` to choose), else PyTorch. An int8 model is first checked on this
    CPU against the package's reference batch and replaced by fp32 when it fails (leukoscope.inference.int8.checked_onnx);
    `Predictor.onnx_file` says which file runs. `confidence_threshold` overrides the package's review threshold.
    `streams` > 1 (ONNX Runtime only; for folders of images, not single requests): the session runs each batch
    on one thread and predict_paths scores that many batches at once (`threads` is then ignored).
    Raises ModelError for missing or damaged packages (and an int8-only package whose int8 check fails).
    """
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; choose from {list(BACKENDS)}")
    if streams is not None and streams < 1:
        raise UsageError(f"streams must be at least 1, got {streams}")
    if model is not None and str(model) == "default" and not Path(model).exists():
        model = None
    path = Path(model) if model is not None else bundled_package_path()
    if model is None or is_package(path) or path.name == MODEL_JSON:
        path = path.parent if path.name == MODEL_JSON else path
        return _from_package(path, backend, threads, confidence_threshold, onnx_file, streams or 1)
    if not path.exists():
        raise ModelError(f"model not found: {path} (give a model package, a run folder or a checkpoint)")
    return _from_run(path, backend, threads, confidence_threshold)


def _from_package(path: Path, backend: str, threads: int | None, threshold: float | None,
                  onnx_file: str | None, streams: int = 1) -> Predictor:
    info = verify_package(path)
    onnx_name = onnx_file or info.get("default_onnx") or ONNX_FP32
    onnx_path = package_file(path, info, onnx_name)
    if onnx_file and onnx_path is None:
        raise ModelError(f"model package {path} has no {onnx_file}")
    ood_path = package_file(path, info, OOD_FILE)
    ood = MahalanobisOOD.load(ood_path) if ood_path is not None else None
    torch_model = None
    if backend == "onnx" or (backend == "auto" and onnx_path is not None):
        if onnx_path is None:
            raise ModelError(f"model package {path} has no ONNX model; use --backend torch")
        engine, onnx_name, int8_check = checked_onnx(path, info, onnx_name, 1 if streams > 1 else threads)
    else:
        torch_path = package_file(path, info, TORCH_FILE)
        if torch_path is None:
            raise ModelError(f"model package {path} has no {TORCH_FILE}; use --backend onnx")
        torch_model = load_torch_file(torch_path)
        engine = TorchBackend(torch_model, threads)
    predictor = Predictor(engine, info, ood=ood, source=path, torch_model=torch_model,
                          confidence_threshold=threshold)
    if torch_model is None:
        predictor.onnx_file, predictor.int8_check, predictor.streams = onnx_name, int8_check, streams
    return predictor


def _from_run(path: Path, backend: str, threads: int | None, threshold: float | None) -> Predictor:
    """A run folder or checkpoint, in PyTorch: calibrated when the run has calibration.json, but without
    out-of-distribution statistics (those are computed by `leukoscope export`)."""
    from leukoscope.models.checkpoint import load_trained

    if backend == "onnx":
        raise ModelError(f"{path} is a run or checkpoint, not an exported package: it has no ONNX model; "
                         "run `leukoscope export` first or use --backend torch")
    loaded = load_trained(path)
    run_dir = path if path.is_dir() else path.parent
    info = {"name": run_dir.name, "source": "run", "classes": list(loaded.classes),
            "preprocess": loaded.preprocess.to_dict(), "spec": loaded.spec.to_dict(),
            "backbone": loaded.spec.backbone, "temperature": read_temperature(run_dir, strict=True) or 1.0,
            "review": {"confidence_threshold": DEFAULT_CONFIDENCE_THRESHOLD}}
    return Predictor(TorchBackend(loaded.model, threads), info, source=None, torch_model=loaded.model,
                     confidence_threshold=threshold)
