"""The prediction history: SQLite by default (one file in WAL mode), PostgreSQL for several servers.

Why SQLite by default: one file the lab can copy, no server to run, and transactions that survive `kill -9`.
PostgreSQL (`--db postgresql://...`) when one network runs several server processes on several machines.
Both go through SQLAlchemy Core with portable SQL, and the schema is Alembic's (leukoscope.serve.migrate,
run by `open`). Every request writes its rows (and the uploaded bytes, needed to redraw Grad-CAM later) in
one transaction that is committed before the HTTP answer leaves, so an answered prediction is always on
disk, and a crashed request leaves nothing half-written.

Uploaded images are kept in the `images` table keyed by their sha256 (content-addressed, so the same image
uploaded twice is stored once and no user-supplied file name ever becomes a path), in the database rather
than a folder so that every server process sees them without a shared filesystem and a backup of the
database is a backup of everything. With a retention period, `purge_images` empties the bytes of images
not uploaded within it (the predictions stay); SQLite's `secure_delete` overwrites the freed pages.

Clinics (revision 0007): every prediction belongs to one clinic (`clinic_id`; 1, "default", on a single
workstation) and has a public `uid` (a UUID: the id in URLs and JSON, not guessable); reads take the caller's
clinic (`Filters.clinic`, `get(uid, clinic)`; None only for a network admin) so another clinic's rows do not
exist for them. Images stay shared by content (one row per sha256): they are reached only through a
prediction, never by hash from outside.

Threads and processes: connections come from a pool; writes on SQLite take `BEGIN IMMEDIATE` (and a lock
within the process), so concurrent writers queue instead of interleaving, and `busy_timeout` covers other
processes; on PostgreSQL each write is one READ COMMITTED transaction.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import TextClause, text
from sqlalchemy.engine import Connection, Engine, RowMapping
from sqlalchemy.exc import SQLAlchemyError

from leukoscope.errors import DataError
from leukoscope.serve import migrate
from leukoscope.serve.database import (
    IMMEDIATE,
    DatabaseUnavailable,
    database_url,
    display,
    make_engine,
    reason,
    sqlite_path,
    translated,
)

if TYPE_CHECKING:
    from leukoscope.serve.verifications import Verification

T = TypeVar("T")
MAX_ROW_ID = 2**63 - 1  # SQLite's INTEGER, PostgreSQL's BIGINT: larger ids cannot exist (and overflow when bound)
MAX_PER_PAGE = 500
MAX_PAGE = 10**9  # (MAX_PAGE - 1) * MAX_PER_PAGE stays far inside an OFFSET's range

PREDICTION_COLUMNS = (
    "id, uid, clinic_id, created_at, sample_id, file_name, sha256, model_version, model_package, label, confidence, "
    "probabilities, review, review_reasons, ood_score, width, height, status, review_codes, review_details"
)
DEFAULT_CLINIC_ID = 1  # the implicit clinic (revision 0007): a single workstation's everything


def schema_version() -> int:
    """The schema version this code writes (the head Alembic revision, a number)."""
    return migrate.schema_version()


def utc_text(moment: datetime) -> str:
    """ISO 8601 UTC with milliseconds: sorts as text, reads in any tool."""
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_now() -> str:
    return utc_text(datetime.now(timezone.utc))


@dataclass(frozen=True)
class NewPrediction:
    """One prediction to be stored (what the service hands the store)."""

    sample_id: str
    file_name: str
    sha256: str
    model_version: str
    label: str | None  # None when the image was unusable (stored as '')
    confidence: float
    probabilities: dict[str, float]
    review: bool
    review_reasons: list[str]
    ood_score: float | None
    width: int
    height: int
    status: str = "ok"  # ok | unusable (unreadable uploads are never stored)
    review_codes: list[str] = field(default_factory=list)
    review_details: dict[str, dict[str, Any]] = field(default_factory=dict)
    clinic_id: int = DEFAULT_CLINIC_ID  # whose prediction it is
    model_package: str = ""  # which package made it ("" : the server's own, before per-clinic models)


@dataclass(frozen=True)
class StoredPrediction(NewPrediction):
    """A stored prediction: a NewPrediction plus its ids and time. `id` is the public one (a UUID, in URLs and
    JSON: not guessable); `pk` the internal integer key (joins, keyset paging), never shown."""

    id: str = ""
    pk: int = 0
    created_at: str = ""
    verification: Verification | None = None  # the latest verification, when read with it (verifications.attach)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "created_at": self.created_at, "sample_id": self.sample_id,
            "file_name": self.file_name, "sha256": self.sha256, "model_version": self.model_version,
            "model_package": self.model_package, "label": self.label, "confidence": self.confidence,
            "probabilities": self.probabilities,
            "review": self.review, "review_reasons": self.review_reasons, "ood_score": self.ood_score,
            "width": self.width, "height": self.height, "status": self.status, "review_codes": self.review_codes,
            "review_details": self.review_details,
            "verification": self.verification.to_json() if self.verification is not None else None,
        }


# The latest verification's call on the row's prediction ('' when unusable, as the model's label is then;
# NULL when never verified): agreement is equality with the model's `label`.
VERIFIED_CALL = ("(SELECT COALESCE(v.label, '') FROM verifications AS v WHERE v.prediction_id = predictions.id "
                 "ORDER BY v.id DESC LIMIT 1)")


@dataclass(frozen=True)
class Filters:
    """History filters; None means "any". `disagrees` implies verified (an unverified row neither agrees
    nor disagrees with the model)."""

    label: str | None = None
    review: bool | None = None
    sample_id: str | None = None
    verified: bool | None = None
    disagrees: bool | None = None
    clinic: int | None = None  # the caller's clinic; None only for a network admin (every clinic)

    def where(self) -> tuple[str, dict[str, Any]]:
        clauses: list[str] = []
        params: dict[str, Any] = {}
        if self.clinic is not None:
            clauses.append("clinic_id = :f_clinic")
            params["f_clinic"] = self.clinic
        if self.label is not None:
            clauses.append("label = :f_label")
            params["f_label"] = self.label
        if self.review is not None:
            clauses.append("review = :f_review")
            params["f_review"] = int(self.review)
        if self.sample_id is not None:
            clauses.append("sample_id = :f_sample")
            params["f_sample"] = self.sample_id
        if self.verified is not None:
            clauses.append(f"{VERIFIED_CALL} IS {'NOT ' if self.verified else ''}NULL")
        if self.disagrees is not None:
            clauses.append(f"{VERIFIED_CALL} {'!=' if self.disagrees else '='} label")
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


@dataclass(frozen=True)
class Page:
    """One page of history, newest first."""

    items: list[StoredPrediction]
    page: int
    per_page: int
    total: int
    filters: Filters = field(default_factory=Filters)

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


def row_to_prediction(row: Mapping[str, Any]) -> StoredPrediction:
    return StoredPrediction(
        id=row["uid"], pk=row["id"], clinic_id=row["clinic_id"], model_package=row["model_package"],
        created_at=row["created_at"], sample_id=row["sample_id"], file_name=row["file_name"],
        sha256=row["sha256"], model_version=row["model_version"], label=row["label"] or None,
        confidence=row["confidence"], probabilities=json.loads(row["probabilities"]),
        review=bool(row["review"]), review_reasons=json.loads(row["review_reasons"]),
        ood_score=row["ood_score"], width=row["width"], height=row["height"], status=row["status"],
        review_codes=json.loads(row["review_codes"]), review_details=json.loads(row["review_details"]),
    )



class Store:
    """The prediction store on one database (a SQLite path or a URL). Open once per process; thread-safe."""

    def __init__(self, target: str | os.PathLike[str]) -> None:
        self.url = database_url(target)
        self.path: Path | None = sqlite_path(self.url)  # the SQLite file; None on PostgreSQL
        self.where = display(self.url)  # for messages and logs: never the password
        self.dialect = self.url.get_backend_name()
        self._engine: Engine | None = None
        self._writer: Engine | None = None
        self._write_lock = threading.Lock()  # SQLite: this process's writers queue here, not on busy_timeout
        self._closed = False

    # -- connections -------------------------------------------------------------------------------------
    @property
    def engine(self) -> Engine:
        if self._closed:
            raise DataError("the prediction store is closed")
        if self._engine is None:
            self._engine = make_engine(self.url)
            self._writer = self._engine.execution_options(**{IMMEDIATE: True})
        return self._engine

    def open(self) -> Store:
        """Create the folder and database if needed and bring the schema up to date (or refuse a newer one)."""
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DataError(f"cannot create the data folder {self.path.parent}: {exc.strerror or exc}") from None
        try:
            self.migrate()
        except DatabaseUnavailable as exc:
            self.close()
            raise DataError(f"cannot reach the database {self.where}: {reason(exc.__cause__ or exc)}") from None
        except SQLAlchemyError as exc:
            self.close()
            raise DataError(f"cannot open the prediction database {self.where}: {reason(exc)}") from None
        except DataError:
            self.close()
            raise
        return self

    def close(self) -> None:
        self._closed = True
        if self._engine is not None:
            self._engine.dispose()

    def __enter__(self) -> Store:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(self, work: Callable[[Connection], T]) -> T:
        """Run `work(connection)` in one transaction (BEGIN IMMEDIATE on SQLite): all of it is committed, or
        none of it. Connection-level failures raise DatabaseUnavailable."""
        engine = self.engine
        assert self._writer is not None
        with translated(self.where):
            if self.dialect == "sqlite":
                with self._write_lock, self._writer.begin() as conn:
                    return work(conn)
            with engine.begin() as conn:
                return work(conn)

    def query(self, sql: str | TextClause, params: Mapping[str, Any] | None = None) -> list[RowMapping]:
        """Rows of one read (SQL text with :named parameters), as mappings (row["column"])."""
        with translated(self.where), self.engine.connect() as conn:
            return list(conn.execute(text(sql) if isinstance(sql, str) else sql, dict(params or {})).mappings())

    def scalar(self, sql: str | TextClause, params: Mapping[str, Any] | None = None) -> Any:
        """The first column of the first row of one read (None when there is no row)."""
        with translated(self.where), self.engine.connect() as conn:
            return conn.execute(text(sql) if isinstance(sql, str) else sql, dict(params or {})).scalar()

    # -- schema ------------------------------------------------------------------------------------------
    @property
    def version(self) -> int:
        with translated(self.where), self.engine.connect() as conn:
            return migrate.version_of(conn)

    def migrate(self) -> int:
        """Apply every revision newer than the database's (Alembic); returns the final schema version."""
        return self.write(lambda conn: migrate.upgrade(conn, self.where))

    # -- writing -----------------------------------------------------------------------------------------
    def add(self, predictions: Sequence[NewPrediction], images: dict[str, bytes],
            thumbnails: dict[str, bytes] | None = None) -> list[StoredPrediction]:
        """Store one request's predictions, their images and the images' thumbnails (PNG bytes by sha256)
        in one transaction; returns them with ids."""
        thumbnails = thumbnails or {}
        missing = {p.sha256 for p in predictions} - set(images)
        if missing:
            raise ValueError(f"no image bytes given for {sorted(missing)}")
        now = utc_now()

        def work(conn: Connection) -> list[StoredPrediction]:
            for sha, data in sorted(images.items()):  # sorted: concurrent writers lock rows in one order
                conn.execute(text(  # an image uploaded again is kept anew (its retention restarts)
                    "INSERT INTO images (sha256, data, size, created_at, thumbnail) "
                    "VALUES (:sha, :data, :size, :now, :thumb) ON CONFLICT (sha256) DO UPDATE SET "
                    "data = excluded.data, size = excluded.size, created_at = excluded.created_at, "
                    "thumbnail = COALESCE(excluded.thumbnail, images.thumbnail)"),
                    {"sha": sha, "data": data, "size": len(data), "now": now, "thumb": thumbnails.get(sha)})
            stored = []
            for p in predictions:
                uid = str(uuid.uuid4())
                new_id = conn.execute(text(
                    "INSERT INTO predictions (uid, clinic_id, created_at, sample_id, file_name, sha256, model_version, "
                    "model_package, label, confidence, probabilities, review, review_reasons, ood_score, width, "
                    "height, status, review_codes, review_details) VALUES (:uid, :clinic, :now, :sample, :file, "
                    ":sha, :version, :package, :label, :conf, :probs, :review, :reasons, :ood, :width, :height, "
                    ":status, :codes, :details) RETURNING id"),
                    {"uid": uid, "clinic": p.clinic_id, "package": p.model_package, "now": now,
                     "sample": p.sample_id, "file": p.file_name, "sha": p.sha256,
                     "version": p.model_version, "label": p.label or "", "conf": float(p.confidence),
                     "probs": json.dumps(p.probabilities), "review": int(p.review),
                     "reasons": json.dumps(p.review_reasons), "ood": p.ood_score, "width": p.width,
                     "height": p.height, "status": p.status, "codes": json.dumps(p.review_codes),
                     "details": json.dumps(p.review_details)}).scalar_one()
                stored.append(StoredPrediction(**vars(p), id=uid, pk=int(new_id), created_at=now))
            return stored

        return self.write(work)

    def purge_images(self, uploaded_before: str) -> int:
        """Empty the stored bytes of images last uploaded before `uploaded_before` (a utc_now() string);
        their predictions stay. Returns how many images were purged."""
        return self.write(lambda conn: int(conn.execute(text(
            "UPDATE images SET data = :empty, size = 0, thumbnail = NULL WHERE created_at < :before AND size > 0"),
            {"empty": b"", "before": uploaded_before}).rowcount))

    # -- reading -----------------------------------------------------------------------------------------
    def get(self, prediction_id: str, clinic: int | None = None) -> StoredPrediction | None:
        """The prediction with this public id in `clinic` (None: any clinic, for a network admin); None when
        there is none there (another clinic's prediction does not exist for the caller)."""
        where, params = Filters(clinic=clinic).where()
        joiner = " AND " if where else " WHERE "
        rows = self.query(f"SELECT {PREDICTION_COLUMNS} FROM predictions{where}{joiner}uid = :uid",
                          {**params, "uid": str(prediction_id)})
        return row_to_prediction(rows[0]) if rows else None

    def image(self, sha256: str) -> bytes | None:
        """The uploaded bytes, or None when unknown or purged by the retention period."""
        data = self.scalar("SELECT data FROM images WHERE sha256 = :sha", {"sha": sha256})
        return bytes(data) if data else None

    def thumbnail(self, sha256: str) -> bytes | None:
        """The stored thumbnail PNG, or None when not made yet (older databases) or purged."""
        data = self.scalar("SELECT thumbnail FROM images WHERE sha256 = :sha AND size > 0", {"sha": sha256})
        return bytes(data) if data else None

    def set_thumbnail(self, sha256: str, png: bytes) -> None:
        """Keep a thumbnail made later (for an image stored before thumbnails were)."""
        self.write(lambda conn: conn.execute(text("UPDATE images SET thumbnail = :png WHERE sha256 = :sha AND size > 0"),
                                             {"png": png, "sha": sha256}))

    def count(self, filters: Filters | None = None) -> int:
        where, params = (filters or Filters()).where()
        return int(self.scalar(f"SELECT COUNT(*) FROM predictions{where}", params))

    def page(self, page: int = 1, per_page: int = 50, filters: Filters | None = None) -> Page:
        """Newest first; `page` counts from 1 (a page past the end is simply empty)."""
        filters = filters or Filters()
        page, per_page = min(max(1, page), MAX_PAGE), min(max(1, per_page), MAX_PER_PAGE)
        where, params = filters.where()
        rows = self.query(f"SELECT {PREDICTION_COLUMNS} FROM predictions{where} ORDER BY id DESC "
                          "LIMIT :limit OFFSET :offset", {**params, "limit": per_page, "offset": (page - 1) * per_page})
        return Page([row_to_prediction(r) for r in rows], page, per_page, self.count(filters), filters)

    def iter_all(self, filters: Filters | None = None, *, chunk: int = 500) -> Iterator[StoredPrediction]:
        """Every matching row, newest first, read in keyset chunks.

        Each chunk is one complete query, so a streaming response may pull successive chunks from
        different threads (each then takes its own pooled connection).
        """
        where, params = (filters or Filters()).where()
        joiner = " AND " if where else " WHERE "
        last_id: int | None = None
        while True:
            keyset = "" if last_id is None else f"{joiner}id < :last_id"
            rows = self.query(f"SELECT {PREDICTION_COLUMNS} FROM predictions{where}{keyset} ORDER BY id DESC "
                              "LIMIT :chunk", {**params, "chunk": chunk, "last_id": last_id})
            if not rows:
                return
            for row in rows:
                yield row_to_prediction(row)
            last_id = int(rows[-1]["id"])

    def labels(self, clinic: int | None = None) -> list[str]:
        """Every class name present in the clinic's history (for filter menus)."""
        where, params = Filters(clinic=clinic).where()
        joiner = " AND " if where else " WHERE "
        return [r["label"] for r in self.query(f"SELECT DISTINCT label FROM predictions{where}{joiner}label != '' "
                                               "ORDER BY label", params)]

