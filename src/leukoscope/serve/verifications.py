"""The verification trail: technologists' calls on stored predictions, appended and never overwritten.

A verification says who looked at a prediction, when, and what they saw: one of the model's classes, or
"unusable" (label NULL). It never changes the model's call, and a later verification of the same prediction
supersedes an earlier one without erasing it: the latest (highest id) is the prediction's verified class,
and every one stays for the audit (schema.py, migration 5). Each is written in one transaction that first
checks the prediction exists, so a refused verification leaves nothing behind.

A verification belongs to its prediction's clinic: every function takes the caller's `clinic` (None: every
clinic, for a network admin, and for the library's own callers) and sees nothing of another. `id` and
`prediction_id` in JSON are the public UUIDs; the integer keys (`pk`) stay inside.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.engine import Connection

from leukoscope.serve.store import (
    MAX_PAGE,
    MAX_PER_PAGE,
    PREDICTION_COLUMNS,
    Store,
    StoredPrediction,
    row_to_prediction,
    utc_now,
)

MAX_COMMENT = 1000
UNUSABLE = "unusable"  # how an unusable verdict reads on pages and in CSV (never a class name)
_COLUMNS = ("v.id, v.uid, v.prediction_id, p.uid AS prediction_uid, v.created_at, v.user_name, v.label, v.unusable, "
            "v.comment")
_FROM = "FROM verifications AS v JOIN predictions AS p ON p.id = v.prediction_id"
# the latest verification of each verified prediction
LATEST = "SELECT prediction_id, MAX(id) AS id FROM verifications GROUP BY prediction_id"
_LATEST_OF = text(f"SELECT {_COLUMNS} {_FROM} WHERE v.id IN (SELECT MAX(id) FROM verifications "
                  "WHERE prediction_id IN :ids GROUP BY prediction_id)").bindparams(bindparam("ids", expanding=True))


def clinic_clause(clinic: int | None, column: str = "p.clinic_id") -> tuple[str, dict[str, Any]]:
    """" AND <column> = :clinic" for one clinic; nothing for every clinic (None)."""
    return ("", {}) if clinic is None else (f" AND {column} = :clinic", {"clinic": clinic})


def pk_of(store: Store, public_id: str, clinic: int | None, *, table: str = "predictions") -> int | None:
    """The internal key of the row of `table` (predictions, or cells) with this public id in `clinic`, or None
    (no such row there)."""
    where, params = clinic_clause(clinic, "clinic_id")
    found = store.scalar(f"SELECT id FROM {table} WHERE uid = :uid{where}", {**params, "uid": str(public_id)})
    return None if found is None else int(found)


class Verdict:
    """What a verification says, for a field's or a cell's: its `label` (None: marked unusable)."""

    label: str | None

    @property
    def call(self) -> str:
        """The verified class, or "unusable"."""
        return UNUSABLE if self.label is None else self.label

    def agrees_with(self, model_label: str | None) -> bool:
        """Same call as the model's (an unusable verdict agrees with a model that gave no class)."""
        return (self.label or "") == (model_label or "")


@dataclass(frozen=True)
class Verification(Verdict):
    """One stored verification."""

    id: str  # public (a UUID)
    prediction_id: str  # the prediction's public id
    created_at: str
    user_name: str
    label: str | None  # None when marked unusable
    unusable: bool
    comment: str = ""
    pk: int = 0  # internal keys, never shown
    prediction_pk: int = 0

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
    return Verification(id=row["uid"], prediction_id=row["prediction_uid"], created_at=row["created_at"],
                        user_name=row["user_name"], label=row["label"], unusable=bool(row["unusable"]),
                        comment=row["comment"], pk=int(row["id"]), prediction_pk=int(row["prediction_id"]))


def add(store: Store, prediction_id: str, user_name: str, label: str | None, comment: str = "", *,
        clinic: int | None = None) -> Verification | None:
    """Append a verification (label None: unusable) in one transaction; None when there is no such prediction
    in `clinic` (None: in any clinic)."""
    now, uid = utc_now(), str(uuid.uuid4())
    where, params = clinic_clause(clinic, "clinic_id")

    def work(conn: Connection) -> Verification | None:
        pk = conn.execute(text(f"SELECT id FROM predictions WHERE uid = :uid{where}"),
                          {**params, "uid": str(prediction_id)}).scalar()
        if pk is None:
            return None
        new_id = conn.execute(text(
            "INSERT INTO verifications (uid, prediction_id, created_at, user_name, label, unusable, comment) "
            "VALUES (:uid, :pid, :now, :user, :label, :unusable, :comment) RETURNING id"),
            {"uid": uid, "pid": pk, "now": now, "user": user_name, "label": label, "unusable": int(label is None),
             "comment": comment}).scalar_one()
        return Verification(uid, str(prediction_id), now, user_name, label, label is None, comment, int(new_id),
                            int(pk))

    return store.write(work)


def trail(store: Store, prediction_id: str, *, clinic: int | None = None) -> list[Verification]:
    """Every verification of one prediction (public id, in `clinic`), oldest first (the last one is its
    verified class)."""
    where, params = clinic_clause(clinic)
    rows = store.query(f"SELECT {_COLUMNS} {_FROM} WHERE p.uid = :uid{where} ORDER BY v.id",
                       {**params, "uid": str(prediction_id)})
    return [_verification(r) for r in rows]


def latest(store: Store, prediction_ids: Sequence[int]) -> dict[int, Verification]:
    """The latest verification of each of these predictions (internal keys, `pk`) that has one."""
    found: dict[int, Verification] = {}
    ids = sorted(set(prediction_ids))
    for start in range(0, len(ids), 500):  # SQLite's bound-parameter limit
        chunk = ids[start:start + 500]
        rows = store.query(_LATEST_OF, {"ids": chunk})
        found.update({r["prediction_id"]: _verification(r) for r in rows})
    return found


def attach(store: Store, rows: Sequence[StoredPrediction]) -> list[StoredPrediction]:
    """The rows with their latest verification (`StoredPrediction.verification`, None when not verified)."""
    found = latest(store, [r.pk for r in rows])
    return [replace(r, verification=found.get(r.pk)) for r in rows]


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
    clinic: int | None = None  # the caller's clinic (None: every clinic, a network admin)

    def where(self) -> tuple[str, dict[str, Any]]:
        clauses: list[str] = []
        params: dict[str, Any] = {}
        if self.clinic is not None:
            clauses.append("p.clinic_id = :clinic")
            params["clinic"] = self.clinic
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
        f"SELECT {_COLUMNS}, p.label AS model_label, p.model_version, v.id IN (SELECT id FROM ({LATEST}) AS latest WHERE "
        f"prediction_id = v.prediction_id) AS is_latest {source} ORDER BY v.id DESC LIMIT :limit OFFSET :offset",
        {**params, "limit": per_page, "offset": (page - 1) * per_page})
    items = [AuditEntry(_verification(r), r["model_label"] or None, r["model_version"], bool(r["is_latest"]))
             for r in rows]
    return TrailPage(items, page, per_page, total, filters)


def pending(store: Store, limit: int, *, clinic: int | None = None, after_pk: int | None = None,
            after_flagged: bool = True) -> tuple[list[StoredPrediction], int]:
    """Predictions of `clinic` awaiting verification (none yet) whose image is still kept: flagged first, then
    the rest, newest first within each; at most `limit`, from after the item `after_pk` (internal key; whose
    flag is `after_flagged`) when given, with how many await in all."""
    mine, params = clinic_clause(clinic, "clinic_id")
    source = ("FROM predictions WHERE NOT EXISTS (SELECT 1 FROM verifications AS v WHERE v.prediction_id = "
              "predictions.id) AND EXISTS (SELECT 1 FROM images AS i WHERE i.sha256 = predictions.sha256 "
              f"AND i.size > 0){mine}")
    total = int(store.scalar(f"SELECT COUNT(*) {source}", params))
    cursor = ""
    if after_pk is not None:
        cursor = " AND (review < :flag OR (review = :flag AND id < :after))"
        params = {**params, "flag": int(after_flagged), "after": after_pk}
    rows = store.query(f"SELECT {PREDICTION_COLUMNS} {source}{cursor} ORDER BY review DESC, id DESC LIMIT :limit",
                       {**params, "limit": max(1, min(limit, MAX_PER_PAGE))})
    return [row_to_prediction(r) for r in rows], total


def users_seen(store: Store, clinic: int | None = None) -> list[str]:
    """Everyone who has verified something in `clinic` (for filter menus)."""
    where, params = clinic_clause(clinic)
    return [r["user_name"] for r in store.query(f"SELECT DISTINCT v.user_name {_FROM} WHERE 1 = 1{where} "
                                                "ORDER BY v.user_name", params)]
