"""The cells of stored fields and their verifications (schema 8), as plain reads and writes on a Store.

A field's cells are written once, with the row in `cell_fields` that says it was done, in one transaction
guarded by that row's unique prediction id: two requests (or two server processes) computing the same
field at once store it once, and the later one's work is dropped. Every read takes the caller's clinic (None:
every clinic, a network admin): another clinic's cells do not exist for the caller. Public ids are UUIDs;
the integer keys (`pk`) stay inside. Cell verifications are appended, never overwritten, like a field's:
the latest one is the cell's verified class.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.engine import Connection

from leukoscope.serve.store import MAX_PER_PAGE, Store, StoredPrediction, utc_now
from leukoscope.serve.verifications import Verdict, clinic_clause

CELL_COLUMNS = ("c.id, c.uid, c.clinic_id, c.prediction_id, c.cell_index, c.x0, c.y0, c.x1, c.y1, c.label, "
                "c.confidence, c.probabilities, c.review, c.review_reasons, c.model_version, c.created_at, "
                "p.uid AS prediction_uid, p.sample_id, p.file_name, p.width, p.height")
_FROM = "FROM cells AS c JOIN predictions AS p ON p.id = c.prediction_id"


@dataclass(frozen=True)
class NewCell:
    """One cell to store (what the cell service hands the store)."""

    index: int
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 in the file's pixels
    label: str | None
    confidence: float
    probabilities: dict[str, float]
    review: bool
    review_reasons: list[str]
    crop: bytes | None


@dataclass(frozen=True)
class CellVerification(Verdict):
    """One stored verification of a cell (label None: unusable)."""

    id: str
    cell_id: str
    created_at: str
    user_name: str
    label: str | None
    unusable: bool
    comment: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "cell_id": self.cell_id, "created_at": self.created_at, "user": self.user_name,
                "label": self.label, "unusable": self.unusable, "comment": self.comment}


@dataclass(frozen=True)
class StoredCell:
    """A stored cell, with where it is (its field's prediction, file and size) and its latest verification."""

    id: str
    pk: int
    clinic_id: int
    prediction_pk: int
    prediction_id: str
    sample_id: str
    file_name: str
    index: int
    bbox: tuple[int, int, int, int]
    field_width: int
    field_height: int
    label: str | None
    confidence: float
    probabilities: dict[str, float]
    review: bool
    review_reasons: list[str]
    model_version: str
    created_at: str
    verification: CellVerification | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "prediction_id": self.prediction_id, "sample_id": self.sample_id,
                "file_name": self.file_name, "index": self.index, "bbox": list(self.bbox),
                "field_width": self.field_width, "field_height": self.field_height, "label": self.label,
                "confidence": self.confidence, "probabilities": self.probabilities, "review": self.review,
                "review_reasons": self.review_reasons, "model_version": self.model_version,
                "created_at": self.created_at, "crop": f"/api/v1/cells/{self.id}/crop",
                "verification": self.verification.to_json() if self.verification is not None else None}


@dataclass(frozen=True)
class FieldState:
    """Whether a field's cells were computed, and how it went (ok, "no cell found", unusable, error)."""

    status: str
    reason: str = ""
    model_version: str = ""


def _cell(row: Mapping[str, Any]) -> StoredCell:
    return StoredCell(
        id=row["uid"], pk=int(row["id"]), clinic_id=int(row["clinic_id"]), prediction_pk=int(row["prediction_id"]),
        prediction_id=row["prediction_uid"], sample_id=row["sample_id"], file_name=row["file_name"],
        index=int(row["cell_index"]), bbox=(int(row["x0"]), int(row["y0"]), int(row["x1"]), int(row["y1"])),
        field_width=int(row["width"]), field_height=int(row["height"]), label=row["label"] or None,
        confidence=float(row["confidence"]), probabilities=json.loads(row["probabilities"]),
        review=bool(row["review"]), review_reasons=json.loads(row["review_reasons"]),
        model_version=row["model_version"], created_at=row["created_at"])


def save_field(store: Store, prediction: StoredPrediction, status: str, reason: str, model_version: str,
               cells: Sequence[NewCell]) -> bool:
    """Store one field's outcome and its cells in one transaction; False (nothing written) when the field was
    stored already (another request or process got there first)."""
    now = utc_now()

    def work(conn: Connection) -> bool:
        claimed = conn.execute(text(
            "INSERT INTO cell_fields (prediction_id, clinic_id, status, reason, model_version, created_at) "
            "VALUES (:pid, :clinic, :status, :reason, :version, :now) ON CONFLICT (prediction_id) DO NOTHING "
            "RETURNING id"), {"pid": prediction.pk, "clinic": prediction.clinic_id, "status": status,
                              "reason": reason, "version": model_version, "now": now}).scalar()
        if claimed is None:
            return False
        for cell in cells:
            conn.execute(text(
                "INSERT INTO cells (uid, clinic_id, prediction_id, cell_index, x0, y0, x1, y1, label, confidence, "
                "probabilities, review, review_reasons, model_version, crop, created_at) VALUES (:uid, :clinic, "
                ":pid, :index, :x0, :y0, :x1, :y1, :label, :conf, :probs, :review, :reasons, :version, :crop, :now)"),
                {"uid": str(uuid.uuid4()), "clinic": prediction.clinic_id, "pid": prediction.pk,
                 "index": cell.index, "x0": cell.bbox[0], "y0": cell.bbox[1], "x1": cell.bbox[2],
                 "y1": cell.bbox[3], "label": cell.label or "", "conf": float(cell.confidence),
                 "probs": json.dumps(cell.probabilities), "review": int(cell.review),
                 "reasons": json.dumps(cell.review_reasons), "version": model_version, "crop": cell.crop,
                 "now": now})
        return True

    return store.write(work)


def _chunks(ids: Sequence[int]) -> list[list[int]]:
    ordered = sorted(set(ids))
    return [ordered[i:i + 500] for i in range(0, len(ordered), 500)]  # SQLite's bound-parameter limit


def field_states(store: Store, prediction_pks: Sequence[int]) -> dict[int, FieldState]:
    """The computed fields among these predictions (internal keys)."""
    found: dict[int, FieldState] = {}
    sql = text("SELECT prediction_id, status, reason, model_version FROM cell_fields WHERE prediction_id IN :ids"
               ).bindparams(bindparam("ids", expanding=True))
    for chunk in _chunks(prediction_pks):
        for r in store.query(sql, {"ids": chunk}):
            found[int(r["prediction_id"])] = FieldState(r["status"], r["reason"], r["model_version"])
    return found


def cells_of(store: Store, prediction_pks: Sequence[int]) -> list[StoredCell]:
    """The cells of these fields, field by field in the order of the keys given, each field's in index order,
    with their latest verifications."""
    sql = text(f"SELECT {CELL_COLUMNS} {_FROM} WHERE c.prediction_id IN :ids").bindparams(
        bindparam("ids", expanding=True))
    found: list[StoredCell] = []
    for chunk in _chunks(prediction_pks):
        found.extend(_cell(r) for r in store.query(sql, {"ids": chunk}))
    order = {pk: i for i, pk in enumerate(prediction_pks)}
    found.sort(key=lambda c: (order.get(c.prediction_pk, 0), c.index))
    return attach(store, found)


def get(store: Store, cell_id: str, clinic: int | None) -> StoredCell | None:
    """The cell with this public id in `clinic` (None: any clinic), with its latest verification."""
    where, params = clinic_clause(clinic, "c.clinic_id")
    rows = store.query(f"SELECT {CELL_COLUMNS} {_FROM} WHERE c.uid = :uid{where}", {**params, "uid": str(cell_id)})
    return attach(store, [_cell(rows[0])])[0] if rows else None


def crop(store: Store, cell_id: str, clinic: int | None) -> bytes | None:
    """The cell's crop (PNG), or None when there is no such cell in `clinic` (or no crop)."""
    where, params = clinic_clause(clinic, "clinic_id")
    data = store.scalar(f"SELECT crop FROM cells WHERE uid = :uid{where}", {**params, "uid": str(cell_id)})
    return bytes(data) if data else None


# -- verifications --------------------------------------------------------------------------------------
_V_COLUMNS = "v.id, v.uid, v.cell_id, c.uid AS cell_uid, v.created_at, v.user_name, v.label, v.unusable, v.comment"


def _verification(row: Mapping[str, Any]) -> CellVerification:
    return CellVerification(row["uid"], row["cell_uid"], row["created_at"], row["user_name"], row["label"],
                            bool(row["unusable"]), row["comment"])


def add_verification(store: Store, cell_id: str, user_name: str, label: str | None, comment: str = "", *,
                     clinic: int | None = None) -> CellVerification | None:
    """Append a verification of a cell (label None: unusable) in one transaction; None when there is no such
    cell in `clinic`."""
    now, uid = utc_now(), str(uuid.uuid4())
    where, params = clinic_clause(clinic, "clinic_id")

    def work(conn: Connection) -> CellVerification | None:
        pk = conn.execute(text(f"SELECT id FROM cells WHERE uid = :uid{where}"),
                          {**params, "uid": str(cell_id)}).scalar()
        if pk is None:
            return None
        conn.execute(text("INSERT INTO cell_verifications (uid, cell_id, created_at, user_name, label, unusable, "
                          "comment) VALUES (:uid, :cell, :now, :user, :label, :unusable, :comment)"),
                     {"uid": uid, "cell": pk, "now": now, "user": user_name, "label": label,
                      "unusable": int(label is None), "comment": comment})
        return CellVerification(uid, str(cell_id), now, user_name, label, label is None, comment)

    return store.write(work)


def trail(store: Store, cell_id: str, clinic: int | None) -> list[CellVerification]:
    """Every verification of one cell, oldest first."""
    where, params = clinic_clause(clinic, "c.clinic_id")
    rows = store.query(f"SELECT {_V_COLUMNS} FROM cell_verifications AS v JOIN cells AS c ON c.id = v.cell_id "
                       f"WHERE c.uid = :uid{where} ORDER BY v.id", {**params, "uid": str(cell_id)})
    return [_verification(r) for r in rows]


def attach(store: Store, cells: Sequence[StoredCell]) -> list[StoredCell]:
    """The cells with their latest verification (None when not verified)."""
    sql = text(f"SELECT {_V_COLUMNS} FROM cell_verifications AS v JOIN cells AS c ON c.id = v.cell_id WHERE v.id IN "
               "(SELECT MAX(id) FROM cell_verifications WHERE cell_id IN :ids GROUP BY cell_id)").bindparams(
        bindparam("ids", expanding=True))
    latest: dict[str, CellVerification] = {}
    for chunk in _chunks([c.pk for c in cells]):
        latest.update({r["cell_uid"]: _verification(r) for r in store.query(sql, {"ids": chunk})})
    return [replace(c, verification=latest.get(c.id)) for c in cells]


@dataclass(frozen=True)
class Pending:
    """Cells awaiting verification and how many await in all."""

    items: list[StoredCell] = field(default_factory=list)
    total: int = 0


def pending(store: Store, limit: int, *, clinic: int | None = None, after_pk: int | None = None,
            after_flagged: bool = True) -> Pending:
    """Computed cells of `clinic` no one has verified yet: flagged first, then the rest, newest first within
    each (the field worklist's order); from after the cell `after_pk` when given."""
    mine, params = clinic_clause(clinic, "c.clinic_id")
    source = (f"{_FROM} WHERE NOT EXISTS (SELECT 1 FROM cell_verifications AS v WHERE v.cell_id = c.id){mine}")
    total = int(store.scalar(f"SELECT COUNT(*) {source}", params))
    cursor = ""
    if after_pk is not None:
        cursor = " AND (c.review < :flag OR (c.review = :flag AND c.id < :after))"
        params = {**params, "flag": int(after_flagged), "after": after_pk}
    rows = store.query(f"SELECT {CELL_COLUMNS} {source}{cursor} ORDER BY c.review DESC, c.id DESC LIMIT :limit",
                       {**params, "limit": max(1, min(limit, MAX_PER_PAGE))})
    return Pending([_cell(r) for r in rows], total)
