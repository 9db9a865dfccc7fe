"""Cells as the unit of a call: segment a field, classify every white cell, call the field from its cells.

Technologists think in cells: an analyser shows each cell with a class and counts per class. Here each cell
crop of leukoscope.segmentation.field (fixed scale: 64 px of the 224 px working field) is resized to the
model's input and goes through the package's Predictor like any image, so it gets calibrated
probabilities and a review flag from the package's own rules. The field's call (and a sample's) then comes
from its cells with the sample rule of leukoscope.review.samples: "leukemia suspected" as soon as one cell is
called a leukemia subtype, Benign only when every cell is.

Which review rules apply to a crop: the confidence rules (any call, and the stricter Benign one) and the
out-of-distribution check, fitted on cell crops for a cell package (model.json `unit: cells`) and on whole
fields for a field package, whose crops are therefore mostly "unlike the training images". The image rules
(blur, size, JPEG quality, cell scale) are fitted on whole fields and are not applied to crops; the field
is checked by the segmentation instead (grayscale, overexposed: no class, with the reason; too small: as a
Predictor says). A field without a white cell gets status "no cell found", no class, and stays out of
sample calls.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from leukoscope.data.fileio import sha256_bytes
from leukoscope.data.imaging import load_rgb, original_size
from leukoscope.errors import ImageError
from leukoscope.inference.prediction import Prediction
from leukoscope.inference.predictor import Predictor, _Decoded
from leukoscope.models.preprocessing import Preprocess, resize_rgb
from leukoscope.review import reasons as why
from leukoscope.review.samples import SampleCall, sample_call
from leukoscope.segmentation.crops import DECODE_MAX_SIDE
from leukoscope.segmentation.field import NO_CELL, OK, PARAMS, SegmentationParams, segment_field

UNUSABLE, ERROR = "unusable", "error"
FIELD_STATUSES = (OK, NO_CELL, UNUSABLE, ERROR)


def crop_inputs(crops: Sequence[np.ndarray] | np.ndarray, preprocess: Preprocess) -> np.ndarray:
    """Crops (S x S x 3 uint8 each) resized to the model's input, as an N x I x I x 3 uint8 batch."""
    size = preprocess.input_size
    if len(crops) == 0:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack([resize_rgb(Image.fromarray(np.asarray(c, np.uint8)), preprocess) for c in crops])


@dataclass
class CellResult:
    """One cell: its id in the field's mask, bounding box in the file's pixels (x0, y0, x1, y1), area in
    working pixels, nucleus fraction, and its Prediction (source "<field>#cell<id>")."""

    cell_id: int
    bbox: tuple[int, int, int, int]
    area: int
    nucleus_fraction: float
    prediction: Prediction


@dataclass
class FieldResult:
    """One field: status ok | "no cell found" | unusable | error, the reason when not ok, its cells and the
    call made from them (None unless ok)."""

    source: str
    sha256: str
    status: str
    reason: str = ""
    width: int = 0
    height: int = 0
    scale: float = 1.0  # file pixels per working pixel
    cells: list[CellResult] = field(default_factory=list)
    call: SampleCall | None = None

    def counts(self, classes: Sequence[str]) -> dict[str, int]:
        """Cells per class."""
        return {c: sum(cell.prediction.label == c for cell in self.cells) for c in classes}


@dataclass
class _Pending:
    """A field decoded and segmented, its crops waiting for the network."""

    result: FieldResult
    records: list[Any] = field(default_factory=list)
    pixels: list[np.ndarray] = field(default_factory=list)


def _segment(predictor: Predictor, source: str, data: bytes, params: SegmentationParams) -> _Pending:
    """Decode (huge files reduced first) and segment one field; the crops at the model's input size."""
    result = FieldResult(source, sha256_bytes(data), ERROR)
    try:
        image = load_rgb(data, max_side=DECODE_MAX_SIDE)
    except ImageError as exc:
        result.reason = str(exc)
        return _Pending(result)
    except Exception as exc:  # any decoder failure of one file must not stop the others
        result.reason = f"corrupt image: {type(exc).__name__}: {exc}"
        return _Pending(result)
    result.width, result.height = original_size(image)
    if min(result.width, result.height) < predictor.min_side:
        result.status = UNUSABLE
        result.reason = why.too_small(result.width, result.height, predictor.min_side).message
        return _Pending(result)
    segmentation = segment_field(np.asarray(image), params)
    result.scale = segmentation.scale * max(result.width, result.height) / max(image.size)
    if segmentation.status != OK:
        result.status = NO_CELL if segmentation.status == NO_CELL else UNUSABLE
        result.reason = segmentation.reason
        return _Pending(result)
    result.status = OK
    return _Pending(result, list(segmentation.cells), list(crop_inputs(segmentation.crops, predictor.preprocess)))


def _classify(predictor: Predictor, pending: list[_Pending], *, tta: bool, batch_size: int) -> list[FieldResult]:
    """Run every waiting crop through the Predictor (its confidence and OOD rules), in batches across fields,
    and make each field's call from its cells."""
    items = [_Decoded(f"{p.result.source}#cell{record.cell_id}", f"{p.result.sha256}:{record.cell_id}",
                      pixels=pixels, width=pixels.shape[1], height=pixels.shape[0])
             for p in pending for record, pixels in zip(p.records, p.pixels, strict=True)]
    predictions: list[Prediction] = []
    size = max(1, batch_size)
    for start in range(0, len(items), size):
        predictions.extend(predictor._finish(items[start:start + size], tta))
    done = 0
    for p in pending:
        scale = p.result.scale
        for record in p.records:
            x0, y0, x1, y1 = record.bbox
            box = (int(x0 * scale), int(y0 * scale), int(np.ceil(x1 * scale)), int(np.ceil(y1 * scale)))
            p.result.cells.append(CellResult(record.cell_id, box, record.area, record.nucleus_fraction,
                                             predictions[done]))
            done += 1
        if p.result.status == OK:
            p.result.call = sample_call([c.prediction for c in p.result.cells], predictor.classes,
                                        benign_class=_benign(predictor))
    return [p.result for p in pending]


def _benign(predictor: Predictor) -> str:
    index = predictor.benign_index
    return predictor.classes[index] if index is not None else "Benign"


def predict_cells(predictor: Predictor, image: str | Path | bytes, *, source: str | None = None, tta: bool = False,
                  params: SegmentationParams = PARAMS, batch_size: int = 64) -> FieldResult:
    """Cells, their classes and the field's call for one image (a path or the encoded bytes).

    Never raises for a bad image: an unreadable file comes back with status "error", a grayscale,
    overexposed or tiny one "unusable", a field without white cells "no cell found", each with its reason.
    """
    if isinstance(image, bytes):
        name, data = source or "image", image
    else:
        name = source or str(image)
        try:
            data = Path(image).read_bytes()
        except OSError as exc:
            return FieldResult(name, "", ERROR, f"cannot read file: {exc.strerror or exc}")
    return _classify(predictor, [_segment(predictor, name, data, params)], tta=tta, batch_size=batch_size)[0]


def predict_cells_paths(predictor: Predictor, paths: Iterable[str | Path], *, tta: bool = False,
                        params: SegmentationParams = PARAMS, batch_size: int = 64, fields_per_batch: int = 16
                        ) -> Iterator[FieldResult]:
    """`predict_cells` for many files, in order; the crops of several fields share the network's batches."""
    chunk: list[_Pending] = []
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            reason = "is a folder, not an image" if Path(path).is_dir() else f"cannot read file: {exc.strerror or exc}"
            chunk.append(_Pending(FieldResult(str(path), "", ERROR, reason)))
        else:
            chunk.append(_segment(predictor, str(path), data, params))
        if len(chunk) >= max(1, fields_per_batch):
            yield from _classify(predictor, chunk, tta=tta, batch_size=batch_size)
            chunk = []
    if chunk:
        yield from _classify(predictor, chunk, tta=tta, batch_size=batch_size)


def predict_cells_bytes(predictor: Predictor, items: Sequence[tuple[str, bytes]], *, tta: bool = False,
                        params: SegmentationParams = PARAMS, batch_size: int = 64) -> list[FieldResult]:
    """`predict_cells` for encoded images given as (name, bytes), in order (the benchmarks' entry)."""
    pending = [_segment(predictor, name, data, params) for name, data in items]
    return _classify(predictor, pending, tta=tta, batch_size=batch_size)


def sample_of(fields: Sequence[FieldResult], classes: Sequence[str], *, benign_class: str = "Benign") -> SampleCall:
    """One sample's call from the cells of its fields (the sample rule, cells as its units). Fields with no
    cell found are left out; unusable and unreadable fields count as unusable and failed (the sample is
    flagged for review then); a field given twice (same sha256) counts once."""
    units: list[Any] = []
    for result in fields:
        if result.status == OK:
            units.extend(c.prediction for c in result.cells)
        elif result.status in (UNUSABLE, ERROR):
            units.append(Prediction.without_call(result.source, result.sha256, classes, [],
                                                 error=result.reason if result.status == ERROR else None))
    return sample_call(units, classes, benign_class=benign_class)
