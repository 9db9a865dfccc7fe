"""Which database the web app uses, and how it connects: SQLite by default, PostgreSQL for several servers.

`--db PATH` (or a bare path in LEUKOSCOPE_DB) is an embedded SQLite file, as before: WAL, synchronous=FULL,
foreign keys and secure_delete on every connection, and `BEGIN IMMEDIATE` for writes so that writers of
several threads or processes queue on SQLite's lock (busy_timeout 30 s) instead of failing half-way.
`--db postgresql://user@host/db` (or LEUKOSCOPE_DB_URL) runs the same schema on PostgreSQL through psycopg 3:
a pool whose connections are checked before use (a restarted PostgreSQL is reconnected to, no server
restart), and a connect timeout so an unreachable server is an error within seconds, never a hang.

Errors that mean "the database is not there right now" become `DatabaseUnavailable` (HTTP 503 with
Retry-After in the app, one line and exit 1 in the CLI); the password of a URL never appears in a message.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from leukoscope.errors import DataError, UsageError

CONNECT_TIMEOUT_S = 10  # PostgreSQL: an unreachable host fails within this, at start-up and per request
BUSY_TIMEOUT_MS = 30_000  # SQLite: how long a writer waits for another (thread or process) to commit
IMMEDIATE = "leukoscope_immediate"  # execution option: open SQLite transactions with BEGIN IMMEDIATE
SCHEMES = ("sqlite", "postgresql")


class DatabaseUnavailable(DataError):
    """The database cannot be reached or answered with a connection-level error (retry later: HTTP 503)."""


UNAVAILABLE_ANSWER = "the database is unavailable right now: retry shortly"  # what a client is told (no details)


def is_url(target: str | os.PathLike[str]) -> bool:
    """Whether `target` is a database URL (scheme://...) rather than a SQLite file path."""
    return isinstance(target, str) and "://" in target


def database_url(target: str | os.PathLike[str]) -> URL:
    """The SQLAlchemy URL of a --db value: a path is a SQLite file; postgresql:// uses psycopg 3.

    UsageError (one line, no password) for a URL of another kind or one that cannot be parsed.
    """
    if not is_url(target):
        return URL.create("sqlite", database=str(Path(target).expanduser()))
    try:
        url = make_url(str(target))
    except ArgumentError:
        raise UsageError(f"cannot read the database URL {_scheme_only(str(target))}...: "
                         "use postgresql://USER[:PASSWORD]@HOST[:PORT]/NAME or a file path") from None
    backend = url.get_backend_name()
    if backend not in SCHEMES:
        raise UsageError(f"unsupported database {backend!r} in --db: use a SQLite file path or "
                         "postgresql://USER[:PASSWORD]@HOST[:PORT]/NAME")
    if backend == "postgresql":
        if url.get_driver_name() not in ("psycopg", "psycopg2") or url.drivername == "postgresql":
            url = url.set(drivername="postgresql+psycopg")
        if not url.database:
            raise UsageError(f"the database URL {display(url)} names no database (…/NAME at its end)")
        if importlib.util.find_spec("psycopg") is None:
            raise UsageError("PostgreSQL needs its driver: pip install 'leukoscope[postgres]' (psycopg 3)")
    elif not url.database or url.database == ":memory:":
        raise UsageError("a SQLite URL must name a file (sqlite:///path/to/leukoscope.db)")
    return url


def _scheme_only(text: str) -> str:
    return text.split("://", 1)[0][:20] + "://"


def display(url: URL | str) -> str:
    """The URL as it may be shown or logged: the password masked; a SQLite file as its path."""
    url = make_url(url) if isinstance(url, str) else url
    if url.get_backend_name() == "sqlite":
        return str(url.database)
    return url.render_as_string(hide_password=True)


def sqlite_path(url: URL) -> Path | None:
    """The file of a SQLite URL, None for another database."""
    return Path(str(url.database)) if url.get_backend_name() == "sqlite" else None


SQLITE_PRAGMAS = (f"busy_timeout = {BUSY_TIMEOUT_MS}", "journal_mode = WAL",
                  "synchronous = FULL",  # a committed answer survives power loss, not just kill -9
                  "foreign_keys = ON",
                  "secure_delete = ON")  # purged images are overwritten, not left in free pages


def _sqlite_connect(dbapi_conn: Any, _record: Any, pragmas: tuple[str, ...] = SQLITE_PRAGMAS) -> None:
    dbapi_conn.isolation_level = None  # SQLAlchemy's begin event below says when a transaction starts
    cursor = dbapi_conn.cursor()
    for pragma in pragmas:
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _sqlite_connect_read_only(dbapi_conn: Any, record: Any) -> None:
    _sqlite_connect(dbapi_conn, record, SQLITE_PRAGMAS[:1])  # a reader sets nothing in the file


def _sqlite_begin(conn: Any) -> None:
    # Reads take a deferred BEGIN (a WAL snapshot, never blocking writers); writes take the write lock at once,
    # so a transaction never fails on its first write because another connection wrote in between.
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(IMMEDIATE) else "BEGIN")


def make_engine(url: URL, *, read_only: bool = False) -> Engine:
    """An engine for `url`: SQLite with the pragmas above, PostgreSQL with a checked pool and timeouts."""
    if url.get_backend_name() == "sqlite":
        path = sqlite_path(url)
        if read_only and path is not None:
            url = url.set(database=f"file:{path.resolve()}", query={"mode": "ro", "uri": "true"})
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
                               pool_size=8, max_overflow=32, pool_timeout=60)
        event.listen(engine, "connect", _sqlite_connect_read_only if read_only else _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    options = " ".join(filter(None, [
        str(url.query.get("options") or ""),  # the URL's own (e.g. -csearch_path=...) are kept
        "-c statement_timeout=120000",  # a query stuck on a lock ends with an error, not never
        "-c default_transaction_read_only=on" if read_only else ""]))
    url = url.difference_update_query(["options"])
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=15, pool_timeout=30,
                         connect_args={"connect_timeout": CONNECT_TIMEOUT_S, "options": options,
                                       "application_name": "leukoscope"})


def reason(exc: BaseException) -> str:
    """The driver's message as one short line (PostgreSQL's hints and details dropped)."""
    original = getattr(exc, "orig", None) or exc
    text = " ".join(str(original).split("\n")[0].split()) or type(original).__name__
    return text[:300]


def unavailable(exc: SQLAlchemyError) -> bool:
    """Whether an error means the database is gone or unreachable (rather than a bad statement)."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    # psycopg's AdminShutdown etc. are OperationalErrors; TimeoutError: no pooled connection came free in time
    return isinstance(exc, OperationalError | InterfaceError | PoolTimeout)


@contextlib.contextmanager
def translated(where: str):
    """Turn connection-level errors into DatabaseUnavailable (a one-line message naming `where`)."""
    try:
        yield
    except SQLAlchemyError as exc:
        if unavailable(exc):
            raise DatabaseUnavailable(f"the database {where} is unavailable: {reason(exc)}") from exc
        raise
