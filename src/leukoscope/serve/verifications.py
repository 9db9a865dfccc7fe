"""The verification trail: technologists' calls on stored predictions, appended and never overwritten.

A verification says who looked at a prediction, when, and what they saw: one of the model's classes, or
"unusable" (label NULL). It never changes the model's call, and a later verification of the same prediction
supersedes an earlier one without erasing it: the latest (highest id) is the prediction's verified class,
and every one stays for the audit (schema.py, migration 5). Each is written in one transaction that first
checks the prediction exists, so a refused verification leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.engine import Connection

from leukoscope.serve.store import (
    MAX_PAGE,
    MAX_PER_PAGE,
    MAX_ROW_ID,
    PREDICTION_COLUMNS,
    Store,
    StoredPrediction,
    row_to_prediction,
    utc_now,
)

MAX_COMMENT = 1000
UNUSABLE = "unusable"  # how an unusable verdict reads on pages and in CSV (never a class name)
_COLUMNS = "id, prediction_id, created_at, user_name, label, unusable, comment"
# the latest verification of each verified prediction
LATEST = "SELECT prediction_id, MAX(id) AS id FROM verifications GROUP BY prediction_id"
_LATEST_OF = text(f"SELECT {_COLUMNS} FROM verifications WHERE id IN (SELECT MAX(id) FROM verifications "
                  "WHERE prediction_id IN :ids GROUP BY prediction_id)").bindparams(bindparam("ids", expanding=True))


@dataclass(frozen=True)
class Verification:
    """One stored verification."""

    id: int
    prediction_id: int
    created_at: str
    user_name: str
    label: str | None  # None when marked unusable
    unusable: bool
    comment: str = ""

    @property
    def call(self) -> str:
        """The verified class, or "unusable"."""
        return UNUSABLE if self.label is None else self.label

    def agrees_with(self, model_label: str | None) -> bool:
        """Same call as the model's (an unusable verdict agrees with a model that gave no class)."""
        return (self.label or "") == (model_label or "")

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "prediction_id": self.prediction_id, "created_at": self.created_at,
                "user": self.user_name, "label": self.label, "unusable": self.unusable, "comment": self.comment}


@dataclass(frozen=True)
class AuditEntry:
    """A verification with what the model had said, as `GET /api/v1/verifications` lists them."""

    verification: Verification
    model_label: str | None
    model_version: str
    latest: bool  # not superseded by a later verification of the same prediction

    def to_json(self) -> dict[str, Any]:
        return {**self.verification.to_json(), "model_label": self.model_label, "model_version": self.model_version,
                "agrees": self.verification.agrees_with(self.model_label), "latest": self.latest}


def _verification(row: Mapping[str, Any]) -> Verification:
    return Verification(id=row["id"], prediction_id=row["prediction_id"], created_at=row["created_at"],
                        user_name=row["user_name"], label=row["label"], unusable=bool(row["unusable"]),
                        comment=row["comment"])


def add(store: Store, prediction_id: int, user_name: str, label: str | None, comment: str = "") -> Verification | None:
    """Append a verification (label None: unusable) in one transaction; None when there is no such prediction."""
    if not 1 <= prediction_id <= MAX_ROW_ID:
        return None
    now = utc_now()

    def work(conn: Connection) -> Verification | None:
        if conn.execute(text("SELECT 1 FROM predictions WHERE id = :id"), {"id": prediction_id}).first() is None:
            return None
        new_id = conn.execute(text(
            "INSERT INTO verifications (prediction_id, created_at, user_name, label, unusable, comment) "
            "VALUES (:pid, :now, :user, :label, :unusable, :comment) RETURNING id"),
            {"pid": prediction_id, "now": now, "user": user_name, "label": label, "unusable": int(label is None),
             "comment": comment}).scalar_one()
        return Verification(int(new_id), prediction_id, now, user_name, label, label is None, comment)

    return store.write(work)


def trail(store: Store, prediction_id: int) -> list[Verification]:
    """Every verification of one prediction, oldest first (the last one is its verified class)."""
    if not 1 <= prediction_id <= MAX_ROW_ID:
        return []
    rows = store.query(f"SELECT {_COLUMNS} FROM verifications WHERE prediction_id = :pid ORDER BY id",
                       {"pid": prediction_id})
    return [_verification(r) for r in rows]


def latest(store: Store, prediction_ids: Sequence[int]) -> dict[int, Verification]:
    """The latest verification of each of these predictions that has one."""
    found: dict[int, Verification] = {}
    ids = sorted(set(prediction_ids))
    for start in range(0, len(ids), 500):  # SQLite's bound-parameter limit
        chunk = ids[start:start + 500]
        rows = store.query(_LATEST_OF, {"ids": chunk})
        found.update({r["prediction_id"]: _verification(r) for r in rows})
    return found


def attach(store: Store, rows: Sequence[StoredPrediction]) -> list[StoredPrediction]:
    """The rows with their latest verification (`StoredPrediction.verification`, None when not verified)."""
    found = latest(store, [r.id for r in rows])
    return [replace(r, verification=found.get(r.id)) for r in rows]


def attach_all(store: Store, rows: Iterable[StoredPrediction], *, chunk: int = 200) -> Iterator[StoredPrediction]:
    """`attach` for a stream of rows (the CSV export), a chunk at a time."""
    batch: list[StoredPrediction] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= chunk:
            yield from attach(store, batch)
            batch = []
    if batch:
        yield from attach(store, batch)


@dataclass(frozen=True)
class TrailFilters:
    """Filters of the verification list; None means "any". Times are utc_text strings."""

    since: str | None = None
    until: str | None = None
    user: str | None = None
    disagrees: bool | None = None  # this verification's call differs from the model's
    latest: bool | None = None  # only verifications not superseded (True) or only superseded ones (False)

    def where(self) -> tuple[str, dict[str, Any]]:
        clauses: list[str] = []
        params: dict[str, Any] = {}
        if self.since is not None:
            clauses.append("v.created_at >= :since")
            params["since"] = self.since
        if self.until is not None:
            clauses.append("v.created_at < :until")
            params["until"] = self.until
        if self.user is not None:
            clauses.append("v.user_name = :user")
            params["user"] = self.user
        if self.disagrees is not None:
            clauses.append(f"COALESCE(v.label, '') {'!=' if self.disagrees else '='} p.label")
        if self.latest is not None:
            clauses.append(f"v.id {'' if self.latest else 'NOT '}IN (SELECT id FROM ({LATEST}) AS latest)")
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


@dataclass(frozen=True)
class TrailPage:
    """One page of the verification trail, newest first."""

    items: list[AuditEntry]
    page: int
    per_page: int
    total: int
    filters: TrailFilters = field(default_factory=TrailFilters)

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


def page(store: Store, page: int = 1, per_page: int = 50, filters: TrailFilters | None = None) -> TrailPage:
    """The verifications, newest first, with the model's call on each one's prediction."""
    filters = filters or TrailFilters()
    page, per_page = min(max(1, page), MAX_PAGE), min(max(1, per_page), MAX_PER_PAGE)
    where, params = filters.where()
    source = f"FROM verifications AS v JOIN predictions AS p ON p.id = v.prediction_id{where}"
    total = int(store.scalar(f"SELECT COUNT(*) {source}", params))
    rows = store.query(
        f"SELECT v.id, v.prediction_id, v.created_at, v.user_name, v.label, v.unusable, v.comment, "
        f"p.label AS model_label, p.model_version, v.id IN (SELECT id FROM ({LATEST}) AS latest WHERE "
        f"prediction_id = v.prediction_id) AS is_latest {source} ORDER BY v.id DESC LIMIT :limit OFFSET :offset",
        {**params, "limit": per_page, "offset": (page - 1) * per_page})
    items = [AuditEntry(_verification(r), r["model_label"] or None, r["model_version"], bool(r["is_latest"]))
             for r in rows]
    return TrailPage(items, page, per_page, total, filters)


def pending(store: Store, limit: int, *, after_id: int | None = None,
            after_flagged: bool = True) -> tuple[list[StoredPrediction], int]:
    """Predictions awaiting verification (none yet) whose image is still kept: flagged first, then the rest,
    newest first within each; at most `limit`, from after the item `after_id` (whose flag is `after_flagged`)
    when given, with how many await in all."""
    source = ("FROM predictions WHERE NOT EXISTS (SELECT 1 FROM verifications AS v WHERE v.prediction_id = "
              "predictions.id) AND EXISTS (SELECT 1 FROM images AS i WHERE i.sha256 = predictions.sha256 "
              "AND i.size > 0)")
    total = int(store.scalar(f"SELECT COUNT(*) {source}"))
    cursor, params = "", {}
    if after_id is not None:
        cursor = " AND (review < :flag OR (review = :flag AND id < :after))"
        params = {"flag": int(after_flagged), "after": min(after_id, MAX_ROW_ID)}
    rows = store.query(f"SELECT {PREDICTION_COLUMNS} {source}{cursor} ORDER BY review DESC, id DESC LIMIT :limit",
                       {**params, "limit": max(1, min(limit, MAX_PER_PAGE))})
    return [row_to_prediction(r) for r in rows], total


def users_seen(store: Store) -> list[str]:
    """Everyone who has verified something (for filter menus)."""
    return [r["user_name"] for r in store.query("SELECT DISTINCT user_name FROM verifications ORDER BY user_name")]
