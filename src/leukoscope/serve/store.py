"""The prediction history: one SQLite file in WAL mode, versioned with PRAGMA user_version.

Why SQLite: one file the lab can copy, no server to run, and transactions that survive `kill -9`. Every
request writes its rows (and the uploaded bytes, needed to redraw Grad-CAM later) in one transaction that
is committed before the HTTP answer leaves, so an answered prediction is always on disk, and a crashed
request leaves nothing half-written.

Uploaded images are kept as BLOBs in the `images` table keyed by their sha256 (content-addressed, so the
same image uploaded twice is stored once and no user-supplied file name ever becomes a path). With a
retention period, `purge_images` empties the BLOBs of images not uploaded within it (the predictions stay);
`secure_delete` makes SQLite overwrite the freed pages, so a purged image is gone from the file too.

Threads: each thread gets its own connection (SQLite connections must not be shared while in use);
writes take `BEGIN IMMEDIATE` under a process-wide lock, so concurrent requests never interleave or lose
a row, and `busy_timeout` covers other processes holding the database.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from leukoscope.errors import DataError
from leukoscope.serve.schema import MIGRATIONS

if TYPE_CHECKING:
    from leukoscope.serve.verifications import Verification

MAX_ROW_ID = 2**63 - 1  # SQLite's INTEGER: larger ids cannot exist (and overflow when bound)
MAX_PER_PAGE = 500
MAX_PAGE = 10**9  # (MAX_PAGE - 1) * MAX_PER_PAGE stays far inside SQLite's OFFSET range

PREDICTION_COLUMNS = (
    "id, created_at, sample_id, file_name, sha256, model_version, label, confidence, probabilities, "
    "review, review_reasons, ood_score, width, height, status, review_codes, review_details"
)


def schema_version() -> int:
    """The schema version this code writes (the number of migrations)."""
    return len(MIGRATIONS)


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


@dataclass(frozen=True)
class StoredPrediction(NewPrediction):
    """A stored prediction: a NewPrediction plus its id and time."""

    id: int = 0
    created_at: str = ""
    verification: Verification | None = None  # the latest verification, when read with it (verifications.attach)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "created_at": self.created_at, "sample_id": self.sample_id,
            "file_name": self.file_name, "sha256": self.sha256, "model_version": self.model_version,
            "label": self.label, "confidence": self.confidence, "probabilities": self.probabilities,
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

    def where(self) -> tuple[str, list[Any]]:
        clauses, params = [], []
        if self.label is not None:
            clauses.append("label = ?")
            params.append(self.label)
        if self.review is not None:
            clauses.append("review = ?")
            params.append(int(self.review))
        if self.sample_id is not None:
            clauses.append("sample_id = ?")
            params.append(self.sample_id)
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


def row_to_prediction(row: sqlite3.Row) -> StoredPrediction:
    return StoredPrediction(
        id=row["id"], created_at=row["created_at"], sample_id=row["sample_id"], file_name=row["file_name"],
        sha256=row["sha256"], model_version=row["model_version"], label=row["label"] or None,
        confidence=row["confidence"], probabilities=json.loads(row["probabilities"]),
        review=bool(row["review"]), review_reasons=json.loads(row["review_reasons"]),
        ood_score=row["ood_score"], width=row["width"], height=row["height"], status=row["status"],
        review_codes=json.loads(row["review_codes"]), review_details=json.loads(row["review_details"]),
    )


class Store:
    """The SQLite prediction store. Open once per process; safe to use from many threads."""

    def __init__(self, path: str | Path, *, migrations: Sequence[str] | None = None) -> None:
        self.path = Path(path)
        self._migrations = list(MIGRATIONS if migrations is None else migrations)
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._closed = False

    # -- connections -------------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        # check_same_thread=False only so close() may run on the shutdown thread; each connection is
        # otherwise used by the one thread that opened it.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")  # a committed answer survives power loss, not just -9
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA secure_delete = ON")  # purged images are overwritten, not left in free pages
        with self._connections_lock:
            self._connections.append(conn)
        return conn

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise DataError("the prediction store is closed")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def open(self) -> Store:
        """Create the folder and database if needed and bring the schema up to date."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"cannot create the data folder {self.path.parent}: {exc.strerror or exc}") from None
        try:
            self.migrate()
        except sqlite3.Error as exc:
            raise DataError(f"cannot open the prediction database {self.path}: {exc}") from None
        return self

    def close(self) -> None:
        with self._connections_lock:
            self._closed = True
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    def __enter__(self) -> Store:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run `work` in one IMMEDIATE transaction: all of it is committed, or none of it."""
        conn = self._conn
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

    def write(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run `work(connection)` in one IMMEDIATE transaction (users.py, verifications.py): all or nothing."""
        return self._write(work)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Rows of one read on this thread's connection (users.py, verifications.py, agreement.py)."""
        return self._conn.execute(sql, list(params)).fetchall()

    # -- schema ------------------------------------------------------------------------------------------
    @property
    def version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def migrate(self) -> int:
        """Apply every migration newer than the database's user_version; returns the final version."""
        target = len(self._migrations)

        def work(conn: sqlite3.Connection) -> int:
            current = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if current > target:
                raise DataError(
                    f"{self.path} has schema version {current}, newer than this leukoscope supports "
                    f"({target}): upgrade leukoscope or use another --db"
                )
            for version in range(current, target):
                for statement in self._migrations[version].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {version + 1}")
            return target

        return self._write(work)

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

        def work(conn: sqlite3.Connection) -> list[StoredPrediction]:
            conn.executemany(  # an image uploaded again is kept anew (its retention restarts)
                "INSERT INTO images (sha256, data, size, created_at, thumbnail) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(sha256) DO UPDATE SET data = excluded.data, size = excluded.size, "
                "created_at = excluded.created_at, thumbnail = COALESCE(excluded.thumbnail, thumbnail)",
                [(sha, data, len(data), now, thumbnails.get(sha)) for sha, data in images.items()],
            )
            stored = []
            for p in predictions:
                cursor = conn.execute(
                    "INSERT INTO predictions (created_at, sample_id, file_name, sha256, model_version, label, "
                    "confidence, probabilities, review, review_reasons, ood_score, width, height, status, "
                    "review_codes, review_details) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (now, p.sample_id, p.file_name, p.sha256, p.model_version, p.label or "", float(p.confidence),
                     json.dumps(p.probabilities), int(p.review), json.dumps(p.review_reasons),
                     p.ood_score, p.width, p.height, p.status, json.dumps(p.review_codes),
                     json.dumps(p.review_details)),
                )
                stored.append(StoredPrediction(**vars(p), id=int(cursor.lastrowid or 0), created_at=now))
            return stored

        return self._write(work)

    def purge_images(self, uploaded_before: str) -> int:
        """Empty the stored bytes of images last uploaded before `uploaded_before` (a utc_now() string);
        their predictions stay. Returns how many images were purged."""
        def work(conn: sqlite3.Connection) -> int:
            cursor = conn.execute("UPDATE images SET data = zeroblob(0), size = 0, thumbnail = NULL "
                                  "WHERE created_at < ? AND size > 0", (uploaded_before,))
            return int(cursor.rowcount)

        return self._write(work)

    # -- reading -----------------------------------------------------------------------------------------
    def get(self, prediction_id: int) -> StoredPrediction | None:
        if not 1 <= prediction_id <= MAX_ROW_ID:  # SQLite cannot even bind such a number: no such row
            return None
        row = self._conn.execute(f"SELECT {PREDICTION_COLUMNS} FROM predictions WHERE id = ?",
                                 (prediction_id,)).fetchone()
        return row_to_prediction(row) if row else None

    def image(self, sha256: str) -> bytes | None:
        """The uploaded bytes, or None when unknown or purged by the retention period."""
        row = self._conn.execute("SELECT data FROM images WHERE sha256 = ?", (sha256,)).fetchone()
        return bytes(row["data"]) if row and row["data"] else None

    def thumbnail(self, sha256: str) -> bytes | None:
        """The stored thumbnail PNG, or None when not made yet (older databases) or purged."""
        row = self._conn.execute("SELECT thumbnail FROM images WHERE sha256 = ? AND size > 0", (sha256,)).fetchone()
        return bytes(row["thumbnail"]) if row and row["thumbnail"] else None

    def set_thumbnail(self, sha256: str, png: bytes) -> None:
        """Keep a thumbnail made later (for an image stored before thumbnails were)."""
        self._write(lambda conn: conn.execute("UPDATE images SET thumbnail = ? WHERE sha256 = ? AND size > 0",
                                              (png, sha256)))

    def count(self, filters: Filters | None = None) -> int:
        where, params = (filters or Filters()).where()
        return int(self._conn.execute(f"SELECT COUNT(*) FROM predictions{where}", params).fetchone()[0])

    def page(self, page: int = 1, per_page: int = 50, filters: Filters | None = None) -> Page:
        """Newest first; `page` counts from 1 (a page past the end is simply empty)."""
        filters = filters or Filters()
        page, per_page = min(max(1, page), MAX_PAGE), min(max(1, per_page), MAX_PER_PAGE)
        where, params = filters.where()
        rows = self._conn.execute(
            f"SELECT {PREDICTION_COLUMNS} FROM predictions{where} ORDER BY id DESC LIMIT ? OFFSET ?",
            [*params, per_page, (page - 1) * per_page],
        ).fetchall()
        return Page([row_to_prediction(r) for r in rows], page, per_page, self.count(filters), filters)

    def iter_all(self, filters: Filters | None = None, *, chunk: int = 500) -> Iterator[StoredPrediction]:
        """Every matching row, newest first, read in keyset chunks.

        Each chunk is one complete query, so a streaming response may pull successive chunks from
        different threads (each then uses its own connection).
        """
        where, params = (filters or Filters()).where()
        joiner = " AND " if where else " WHERE "
        last_id: int | None = None
        while True:
            keyset = "" if last_id is None else f"{joiner}id < {int(last_id)}"
            rows = self._conn.execute(
                f"SELECT {PREDICTION_COLUMNS} FROM predictions{where}{keyset} ORDER BY id DESC LIMIT ?",
                [*params, chunk]
            ).fetchall()
            if not rows:
                return
            for row in rows:
                yield row_to_prediction(row)
            last_id = rows[-1]["id"]

    def labels(self) -> list[str]:
        """Every class name present in the history (for filter menus)."""
        return [r[0] for r in self._conn.execute("SELECT DISTINCT label FROM predictions WHERE label != '' "
                                                 "ORDER BY label")]
