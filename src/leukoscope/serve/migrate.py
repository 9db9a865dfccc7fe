"""Bring a database to the schema this code writes (Alembic), or refuse one that is newer.

Runs at every server start (`Store.open`) and as `leukoscope db upgrade`, in one transaction: on SQLite
under `BEGIN IMMEDIATE`, on PostgreSQL under an advisory lock, so several processes starting at once
migrate the database once and the others find it done. A database whose revision this code does not know
was written by a newer leukoscope: it is refused with one line, never "downgraded" or half-read.
The revisions live in leukoscope/serve/migrations/versions (one file per schema version, never edited
once released); their ids are the schema version numbers ("0005" is 0.1's hand-written schema 5).
"""

from __future__ import annotations

import functools
from pathlib import Path

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from leukoscope.errors import DataError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
LEGACY_VERSION = 5  # the last PRAGMA user_version written by the hand-written migrations (revision "0005")
LOCK_ID = 0x6C65756B  # pg_advisory_xact_lock key ("leuk"): one migrating process at a time


@functools.cache
def script() -> ScriptDirectory:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config)


def head() -> str:
    """The revision this code writes."""
    revision = script().get_current_head()
    assert revision is not None
    return revision


def schema_version() -> int:
    """The schema version this code writes, as a number (the head revision's id)."""
    return int(head())


def known() -> set[str]:
    return {r.revision for r in script().walk_revisions()}


def current(conn: Connection) -> str | None:
    """The database's revision; None for a new database (or a SQLite one from before Alembic)."""
    return MigrationContext.configure(conn).get_current_revision()


def version_of(conn: Connection) -> int:
    """The database's schema version as a number (0: empty)."""
    revision = current(conn)
    if revision is not None:
        return int(revision) if revision.isdigit() else -1
    if conn.dialect.name == "sqlite":
        return int(conn.exec_driver_sql("PRAGMA user_version").scalar() or 0)
    return 0


def refuse_newer(conn: Connection, where: str) -> None:
    """DataError (one line) when the database was written by a newer leukoscope."""
    revision = current(conn)
    newer = revision is not None and revision not in known()
    if revision is None and conn.dialect.name == "sqlite":
        legacy = int(conn.exec_driver_sql("PRAGMA user_version").scalar() or 0)
        newer, revision = legacy > LEGACY_VERSION, str(legacy)
    if newer:
        raise DataError(f"{where} has schema version {revision}, newer than this leukoscope supports "
                        f"({head()}): upgrade leukoscope or use another --db")


def refuse_foreign(conn: Connection, where: str) -> None:
    """DataError (one line) for a database that holds another application's tables and no leukoscope schema:
    a mistyped --db must not get leukoscope's tables written among someone else's. Every leukoscope schema,
    the hand-written ones of 0.1 included, has a `predictions` table; an empty database (or file) is new."""
    if current(conn) is not None or version_of(conn) > 0:
        return
    tables = sorted(inspect(conn).get_table_names())
    if tables and "predictions" not in tables:
        shown = ", ".join(tables[:5]) + (f" and {len(tables) - 5} more" if len(tables) > 5 else "")
        raise DataError(f"{where} holds other tables ({shown}) and no leukoscope data: give an empty or a "
                        "leukoscope database with --db")


def upgrade(conn: Connection, where: str) -> int:
    """Apply every missing revision on `conn`, inside its open transaction; returns the schema version."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({LOCK_ID})")
    refuse_newer(conn, where)
    refuse_foreign(conn, where)
    scripts = script()
    if current(conn) != head():
        with EnvironmentContext(Config(), scripts, fn=lambda rev, _ctx: scripts._upgrade_revs(head(), rev)) as env:
            env.configure(connection=conn, target_metadata=None, render_as_batch=conn.dialect.name == "sqlite")
            env.run_migrations()
    return schema_version()
