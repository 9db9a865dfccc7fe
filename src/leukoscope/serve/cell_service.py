"""Cells in the web app: a sample's gallery, computed lazily and once, and cell verifications.

Why lazily: segmenting and classifying every cell costs far more than the field call, and most samples are
never looked at cell by cell, so uploads stay as fast as before. The first time a sample's gallery is asked
for, its stored fields that have no cells yet are run through `leukoscope.inference.cells.predict_cells_bytes`
with their clinic's model (the routes run `compute` in the bounded inference pool: 503 + Retry-After when it
is full) and stored with a crop per cell; later requests only read. A per-process lock makes concurrent
requests for one sample compute once; across processes the store keeps the first writer's cells.

Every method takes the caller's clinic (None: a network admin): another clinic's samples and cells answer 404.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from leukoscope.data.imaging import load_rgb, original_size
from leukoscope.errors import ImageError
from leukoscope.serve import cell_store, verifications
from leukoscope.serve.cell_store import CellVerification, FieldState, NewCell, StoredCell
from leukoscope.serve.limits import RequestRejected
from leukoscope.serve.sessions import Principal
from leukoscope.serve.store import Filters, Store, StoredPrediction

CROP_SIDE = 128  # the gallery's thumbnails (PNG), from the field decoded at up to DECODE_SIDE a side
DECODE_SIDE = 2048
CROP_MARGIN = 0.15  # of the cell's box on each side, so the cell's edge shows
IMAGE_GONE = "image not kept"  # a field whose image the retention period purged before its cells were found
CellsFn = Callable[[Any, Sequence[tuple[str, bytes]]], list[Any]]  # predictor, [(name, bytes)] -> FieldResults


def default_cells(predictor: Any, items: Sequence[tuple[str, bytes]]) -> list[Any]:
    """leukoscope.inference.cells.predict_cells_bytes, imported on first use (it pulls in scikit-image)."""
    from leukoscope.inference.cells import predict_cells_bytes

    return predict_cells_bytes(predictor, items)


@dataclass(frozen=True)
class FieldCells:
    """One field of a sample: its prediction, how finding its cells went, and its cells."""

    prediction: StoredPrediction
    state: FieldState
    cells: list[StoredCell] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        p = self.prediction
        return {"prediction_id": p.id, "file_name": p.file_name, "width": p.width, "height": p.height,
                "status": self.state.status, "reason": self.state.reason, "n_cells": len(self.cells),
                "model_version": self.state.model_version}


@dataclass(frozen=True)
class Gallery:
    """A sample's cells grouped by class, with counts per class (classes of the clinic's model first)."""

    sample_id: str
    classes: list[str]
    fields: list[FieldCells]

    @property
    def cells(self) -> list[StoredCell]:
        return [c for f in self.fields for c in f.cells]

    @property
    def counts(self) -> dict[str, int]:
        labels = self.classes + sorted({c.label or "" for c in self.cells} - set(self.classes))
        return {name: sum((c.label or "") == name for c in self.cells) for name in labels}

    def groups(self) -> list[tuple[str, list[StoredCell]]]:
        """(class, its cells) for every class with a cell, in the counts' order ('' : no class)."""
        return [(name, [c for c in self.cells if (c.label or "") == name]) for name, n in self.counts.items() if n]

    def to_json(self) -> dict[str, Any]:
        return {"sample_id": self.sample_id, "counts": self.counts, "n_cells": len(self.cells),
                "fields": [f.to_json() for f in self.fields], "cells": [c.to_json() for c in self.cells]}


class CellService:
    """Cells of stored fields, behind the methods the routes call."""

    def __init__(self, store: Store, model_for: Callable[[int | None], Any], cells_fn: CellsFn | None = None,
                 classes_for: Callable[[int | None], Sequence[str]] | None = None) -> None:
        self.store = store
        self.model_for = model_for  # clinic id -> LoadedModel (serve/models.py)
        self.cells_fn = cells_fn or default_cells
        self.classes_for = classes_for or (lambda clinic: model_for(clinic).classes)
        self._lock = threading.Lock()

    def _fields(self, sample_id: str, clinic: int | None) -> list[StoredPrediction]:
        rows = list(self.store.iter_all(Filters(sample_id=sample_id, clinic=clinic)))
        if not rows:
            raise RequestRejected(f"no predictions stored for sample {sample_id!r}", 404)
        return rows[::-1]  # upload order

    def _waiting(self, rows: Sequence[StoredPrediction]) -> list[StoredPrediction]:
        done = cell_store.field_states(self.store, [r.pk for r in rows])
        return [r for r in rows if r.pk not in done]

    def needs_compute(self, sample_id: str, clinic: int | None) -> bool:
        """Whether some field of the sample has no cells yet (404 when the sample has no field in `clinic`)."""
        return bool(self._waiting(self._fields(sample_id, clinic)))

    def compute(self, sample_id: str, clinic: int | None) -> int:
        """Find, classify and store the cells of the sample's fields that have none yet, each with its clinic's
        model (run it in the inference pool); returns how many fields were computed now."""
        with self._lock:  # a second request for the same sample waits, then finds the work done
            waiting = self._waiting(self._fields(sample_id, clinic))
            done = 0
            for clinic_id in sorted({r.clinic_id for r in waiting}):
                done += self._compute_clinic([r for r in waiting if r.clinic_id == clinic_id], clinic_id)
            return done

    def _compute_clinic(self, rows: Sequence[StoredPrediction], clinic_id: int) -> int:
        model = self.model_for(clinic_id)
        kept: list[tuple[StoredPrediction, bytes]] = []
        done = 0
        for row in rows:
            data = self.store.image(row.sha256)
            if data is None:  # purged: nothing to segment; stored, so it is not tried again
                done += cell_store.save_field(self.store, row, IMAGE_GONE, "the image is no longer kept "
                                              "(retention period over)", model.version, [])
            else:
                kept.append((row, data))
        if not kept:
            return done
        with model.predict_lock:
            results = self.cells_fn(model.predictor, [(row.file_name, data) for row, data in kept])
        for (row, data), result in zip(kept, results, strict=True):
            crops = _cropper(data, result)
            cells = [_new_cell(i, cell, crops) for i, cell in enumerate(result.cells)]
            done += cell_store.save_field(self.store, row, result.status, result.reason or "", model.version, cells)
        return done

    def gallery(self, sample_id: str, clinic: int | None) -> Gallery:
        """The sample's fields and cells as stored (a field not computed yet reads as status "pending")."""
        rows = self._fields(sample_id, clinic)
        states = cell_store.field_states(self.store, [r.pk for r in rows])
        cells = cell_store.cells_of(self.store, [r.pk for r in rows])
        by_field: dict[int, list[StoredCell]] = {}
        for cell in cells:
            by_field.setdefault(cell.prediction_pk, []).append(cell)
        fields = [FieldCells(r, states.get(r.pk, FieldState("pending")), by_field.get(r.pk, [])) for r in rows]
        return Gallery(sample_id, list(self.classes_for(clinic)), fields)

    def cell(self, cell_id: str, clinic: int | None) -> StoredCell:
        found = cell_store.get(self.store, cell_id, clinic)
        if found is None:
            raise RequestRejected(f"no cell with id {cell_id}", 404)
        return found

    def crop(self, cell_id: str, clinic: int | None) -> bytes:
        data = cell_store.crop(self.store, cell_id, clinic)
        if data is None:
            raise RequestRejected(f"no cell with id {cell_id}", 404)
        return data

    def record(self, cell_id: str, principal: Principal, label: str | None, comment: str = "") -> CellVerification:
        """Append `principal`'s call on a cell of their clinic: the rules of a field verification (422 for a
        class the model does not have, 404 for a cell that does not exist there; nothing written either way)."""
        classes = list(self.classes_for(principal.clinic_id))
        if label is not None and label not in classes:
            raise RequestRejected(f"unknown class {label[:100]!r}; choose one of {classes} or unusable", 422)
        stored = cell_store.add_verification(self.store, cell_id, principal.name, label, comment,
                                             clinic=principal.scope)
        if stored is None:
            raise RequestRejected(f"no cell with id {cell_id}", 404)
        return stored

    def trail(self, cell_id: str, clinic: int | None) -> list[CellVerification]:
        self.cell(cell_id, clinic)
        return cell_store.trail(self.store, cell_id, clinic)

    def worklist(self, limit: int, clinic: int | None, after_id: str | None = None,
                 after_flagged: bool = True) -> cell_store.Pending:
        """Computed cells awaiting verification (flagged first, newest first); 404 for an unknown `after_id`."""
        after_pk = None
        if after_id is not None:
            after_pk = verifications.pk_of(self.store, after_id, clinic, table="cells")
            if after_pk is None:
                raise RequestRejected(f"no cell with id {after_id}", 404)
        return cell_store.pending(self.store, limit, clinic=clinic, after_pk=after_pk, after_flagged=after_flagged)


def _cropper(data: bytes, result: Any) -> Callable[[tuple[int, int, int, int]], bytes | None]:
    """A function bbox (file pixels) -> the cell's crop as PNG, decoding the field once (None if it cannot)."""
    try:
        image = load_rgb(data, max_side=DECODE_SIDE)
    except ImageError:
        return lambda _box: None
    width = result.width or original_size(image)[0]
    scale = image.size[0] / max(1, width)

    def crop(box: tuple[int, int, int, int]) -> bytes | None:
        x0, y0, x1, y1 = (v * scale for v in box)
        mx, my = (x1 - x0) * CROP_MARGIN, (y1 - y0) * CROP_MARGIN
        area = (max(0, int(x0 - mx)), max(0, int(y0 - my)), min(image.size[0], int(x1 + mx) + 1),
                min(image.size[1], int(y1 + my) + 1))
        if area[2] <= area[0] or area[3] <= area[1]:
            return None
        piece = image.crop(area)
        piece.thumbnail((CROP_SIDE, CROP_SIDE), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        piece.save(buffer, "PNG")
        return buffer.getvalue()

    return crop


def _new_cell(index: int, cell: Any, crops: Callable[[tuple[int, int, int, int]], bytes | None]) -> NewCell:
    p = cell.prediction
    box = tuple(int(v) for v in cell.bbox)
    return NewCell(index=index, bbox=box, label=p.label, confidence=float(p.confidence),  # type: ignore[arg-type]
                   probabilities={k: float(v) for k, v in p.probabilities.items()}, review=bool(p.review),
                   review_reasons=list(p.review_reasons), crop=crops(box))  # type: ignore[arg-type]
