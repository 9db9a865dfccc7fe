"""A fake predictor and Grad-CAM that honour docs/INTERFACES.md, for fast server tests without a model.

Also imported by `fake_server.py`, which runs the app on them in a real uvicorn subprocess.
"""

from __future__ import annotations

import io
import struct
import threading
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from leukoscope.data.fileio import sha256_bytes
from leukoscope.data.imaging import load_rgb
from leukoscope.errors import ImageError, ModelError
from leukoscope.inference.explain import WORKING_SIDE
from leukoscope.review.reasons import too_small
from leukoscope.serve.service import WARMUP_SOURCE

CLASSES = ("Benign", "Early Pre-B", "Pre-B", "Pro-B")


class FakePrediction:
    """Field-for-field the Prediction of docs/INTERFACES.md."""

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)


class FakePredictor:
    """Probabilities from the image's mean colour: deterministic, instant, different per image.

    `hold` (a threading.Event) makes predict_bytes wait until it is set, to fill the server's pool;
    `explode` makes it raise a RuntimeError, to test the 500 path.
    """

    backend = "fake"

    def __init__(self, *, hold: threading.Event | None = None, explode: bool = False) -> None:
        self.classes = CLASSES
        self.info = {"format": "leukoscope-model", "name": "fake-model", "classes": list(CLASSES),
                     "files": {"model.onnx": "0" * 64}, "temperature": 1.0,
                     "metrics": {"accuracy": 0.99}}
        self.hold = hold
        self.explode = explode
        self.entered = threading.Semaphore(0)
        self.calls = 0
        self.warmed_up = False

    def _one(self, name: str, data: bytes) -> FakePrediction:
        try:
            image = load_rgb(data)
        except ImageError as exc:
            return FakePrediction(source=name, sha256=sha256_bytes(data), label=None,
                                  probabilities=dict.fromkeys(CLASSES, 0.0), confidence=0.0, review=True,
                                  review_reasons=["image could not be read"], ood_score=None, width=0,
                                  height=0, error=str(exc), status="error", review_codes=["unreadable"],
                                  review_details={})
        if min(image.size) < 8:  # like the real predictor's too_small: no class for a few pixels
            reason = too_small(*image.size, 8)
            return FakePrediction(source=name, sha256=sha256_bytes(data), label=None,
                                  probabilities=dict.fromkeys(CLASSES, 0.0), confidence=0.0, review=True,
                                  review_reasons=[reason.message], ood_score=None, width=image.size[0],
                                  height=image.size[1], error=None, status="unusable",
                                  review_codes=[reason.code], review_details={reason.code: reason.details})
        mean = np.asarray(image, dtype=np.float64).mean(axis=(0, 1))
        logits = np.array([mean[0], mean[1], mean[2], 128.0]) / 12.0
        p = np.exp(logits - logits.max())
        p /= p.sum()
        top = int(np.argmax(p))
        reasons = [f"low confidence ({p[top]:.2f} < 0.90)"] if p[top] < 0.9 else []
        return FakePrediction(source=name, sha256=sha256_bytes(data), label=CLASSES[top],
                              probabilities={c: float(v) for c, v in zip(CLASSES, p, strict=True)},
                              confidence=float(p[top]), review=bool(reasons), review_reasons=reasons,
                              ood_score=1.5, width=image.size[0], height=image.size[1], error=None, status="ok",
                              review_codes=["low_confidence"] if reasons else [],
                              review_details={"low_confidence": {"confidence": float(p[top])}} if reasons else {})

    def predict_bytes(self, items: Sequence[tuple[str, bytes]], *, tta: bool = False) -> list[FakePrediction]:
        if [name for name, _ in items] == [WARMUP_SOURCE]:  # the server's start-up warm-up: not a request
            self.warmed_up = True
            return [self._one(name, data) for name, data in items]
        self.calls += 1
        self.entered.release()
        if self.hold is not None:
            self.hold.wait(timeout=60)
        if self.explode:
            raise RuntimeError("secret internal detail /etc/passwd")
        return [self._one(name, data) for name, data in items]


def fake_gradcam(predictor: Any, image: bytes, *, target: str | None = None) -> Image.Image:
    """A red-tinted copy of the image at its own size up to WORKING_SIDE (what the real overlay looks like, roughly)."""
    if target is not None and target not in predictor.classes:
        raise ModelError(f"unknown class {target}")
    rgb = load_rgb(image, max_side=WORKING_SIDE)
    red = Image.new("RGB", rgb.size, (255, 0, 0))
    return Image.blend(rgb, red, 0.4)


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb, as far as a header says)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def files(*items: tuple[str, bytes], content_type: str = "application/octet-stream") -> list[tuple]:
    """httpx multipart `files=` for the predict endpoint."""
    return [("files", (name, data, content_type)) for name, data in items]


class FakeCells:
    """A fake `predict_cells_bytes` (leukoscope.inference.cells): instant and deterministic, without segmenting.

    A field under 8 px a side is unusable, a near-white one has no cell ("no cell found"); any other has two
    cells, its top-left and bottom-right quarters, each classified by the fake predictor on its crop. `calls`
    lists the file names of every call (to check the server computes a sample's cells once).
    """

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, predictor: Any, items: Sequence[tuple[str, bytes]]) -> list[Any]:
        from leukoscope.inference.cells import CellResult, FieldResult

        self.calls.append([name for name, _ in items])
        results = []
        for name, data in items:
            image = load_rgb(data)
            w, h = image.size
            result = FieldResult(name, sha256_bytes(data), "ok", width=w, height=h)
            if min(w, h) < 8:  # like the real library (and the fake predictor): no cells in a few pixels
                result.status, result.reason = "unusable", too_small(w, h, 8).message
                results.append(result)
                continue
            if np.asarray(image, dtype=np.float64).mean() > 240:
                result.status, result.reason = "no cell found", "no white cell in the field"
                results.append(result)
                continue
            for index, box in enumerate(((0, 0, w // 2, h // 2), (w // 2, h // 2, w, h)), start=1):
                crop = io.BytesIO()
                image.crop(box).save(crop, "PNG")
                result.cells.append(CellResult(index, box, (box[2] - box[0]) * (box[3] - box[1]), 0.5,
                                               predictor._one(f"{name}#cell{index}", crop.getvalue())))
            results.append(result)
        return results
