"""Alembic takes over from leukoscope 0.1's hand-written SQLite migrations without losing a row: databases
built exactly as 0.1 built them (tests/serve/legacy_schema.py), at every schema version, open with this code
and keep every row and column; a new SQLite database has exactly 0.1's tables; PostgreSQL gets the same
tables; newer databases are refused in one line."""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import inspect

from leukoscope.errors import DataError
from leukoscope.serve import verifications
from leukoscope.serve.store import NewPrediction, Store, schema_version
from leukoscope.serve.users import Users
from tests.serve.legacy_schema import MIGRATIONS, legacy_database

LEGACY_TABLES = ("images", "predictions", "users", "verifications")


def fill(conn: sqlite3.Connection, version: int) -> None:
    """Rows in every table that schema `version` has, as 0.1 wrote them (a purged image included)."""
    thumb = version >= 3
    conn.execute("BEGIN")
    for i in range(3):
        columns = "sha256, data, size, created_at" + (", thumbnail" if thumb else "")
        values = [f"{i:064x}", b"" if i == 2 else bytes([i]) * 50, 0 if i == 2 else 50, f"2026-01-0{i + 1}T00:00:00.000Z"]
        conn.execute(f"INSERT INTO images ({columns}) VALUES ({', '.join('?' * len(values + ([b'png'] if thumb else [])))})",
                     values + ([b"png" if i == 0 else None] if thumb else []))
    for i in range(5):
        extra = ", status, review_codes, review_details" if version >= 4 else ""
        extra_values = ("unusable" if i == 4 else "ok", '["low_confidence"]', '{"low_confidence": {"p": 0.5}}')
        conn.execute(
            "INSERT INTO predictions (created_at, sample_id, file_name, sha256, model_version, label, confidence, "
            f"probabilities, review, review_reasons, ood_score, width, height{extra}) VALUES "
            f"(?, ?, ?, ?, 'm@1', ?, ?, '{{\"Benign\": 0.3}}', ?, '[\"low\"]', ?, 64, 48{', ?, ?, ?' if extra else ''})",
            (f"2026-01-0{i + 1}T10:00:00.123Z", f"s{i % 2}", f"cell {i}.png", f"{i % 3:064x}",
             "" if i == 4 else "Pre-B", 0.1 + i / 7, i % 2, None if i % 2 else 1.25e-3,
             *(extra_values if extra else ())))
    if version >= 5:
        conn.execute("INSERT INTO users (name, role, password_hash, created_at, disabled) VALUES "
                     "('Alice', 'admin', '$argon2id$x', '2026-01-01T00:00:00.000Z', 0), "
                     "('bob', 'technologist', '$argon2id$y', '2026-01-02T00:00:00.000Z', 1)")
        conn.execute("INSERT INTO verifications (prediction_id, created_at, user_name, label, unusable, comment) "
                     "VALUES (1, '2026-01-03T00:00:00.000Z', 'Alice', 'Benign', 0, 'looks mature'), "
                     "(1, '2026-01-04T00:00:00.000Z', 'bob', NULL, 1, ''), (3, '2026-01-05', 'bob', 'Pre-B', 0, 'é ✓')")
    conn.execute("COMMIT")


def dump(path: Path) -> dict[str, list[tuple]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall() for t in LEGACY_TABLES if t in tables}


def schema_sql(path: Path) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name IN "
                            "(SELECT name FROM sqlite_master WHERE tbl_name IN (?, ?, ?, ?)) AND name != "
                            "'users_name_nocase' ORDER BY name", LEGACY_TABLES).fetchall()


@pytest.mark.parametrize("version", range(len(MIGRATIONS) + 1))
def test_a_database_of_every_earlier_schema_upgrades_keeping_every_row(tmp_path: Path, version: int):
    path = tmp_path / "old.db"
    with contextlib.closing(legacy_database(path, version)) as conn:
        if version:
            fill(conn, version)
    before = dump(path)
    with Store(path) as store:
        assert store.version == schema_version()
        assert store.count() == (5 if version else 0)
        if version:
            assert store.image(f"{0:064x}") == bytes([0]) * 50 and store.image(f"{2:064x}") is None
    after = dump(path)
    for table, rows in before.items():  # every row and every old column as it was; new columns appended
        assert [row[:len(rows[0])] for row in after[table]] == rows, table
    if version == 3:  # rows from before status and codes read as status ok with no codes
        assert {r[14:] for r in after["predictions"]} == {("ok", "[]", "{}")}
    reference = tmp_path / "reference.db"
    legacy_database(reference).close()
    assert schema_sql(path) == schema_sql(reference)  # exactly 0.1's last schema, whatever the way there
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("0006",)]


def test_an_upgraded_database_is_used_like_a_new_one(tmp_path: Path):
    path = tmp_path / "old.db"
    with contextlib.closing(legacy_database(path)) as conn:
        fill(conn, 5)
    with Store(path) as store:
        assert [v.user_name for v in verifications.trail(store, 1)] == ["Alice", "bob"]
        assert verifications.latest(store, [1])[1].unusable
        users = Users(store)
        assert [u.name for u in users.all_users()] == ["Alice", "bob"] and users.get("alice").role == "admin"
        with pytest.raises(DataError, match="already exists"):
            users.add("ALICE", "technologist", "correct horse battery")
        old = store.get(1)
        again = NewPrediction(**{f.name: getattr(old, f.name) for f in dataclasses.fields(NewPrediction)})
        stored = store.add([again], {old.sha256: b"again"})
        assert stored[0].id == 6  # ids continue after the old ones (AUTOINCREMENT kept)


def test_a_new_sqlite_database_has_exactly_the_schema_of_leukoscope_0_1(tmp_path: Path):
    with Store(tmp_path / "new.db"):
        pass
    reference = tmp_path / "reference.db"
    legacy_database(reference).close()
    assert schema_sql(tmp_path / "new.db") == schema_sql(reference)


@pytest.mark.filterwarnings("ignore:Skipped unsupported reflection")
def test_postgresql_gets_the_same_tables_and_columns(postgres_url: str, tmp_path: Path):
    with Store(postgres_url) as pg, Store(tmp_path / "new.db") as lite, pg.engine.connect() as a, \
            lite.engine.connect() as b:
        ours, theirs = inspect(a), inspect(b)
        assert set(ours.get_table_names()) == set(theirs.get_table_names())
        for table in theirs.get_table_names():
            assert [c["name"] for c in ours.get_columns(table)] == [c["name"] for c in theirs.get_columns(table)]
            indexes = [{i["name"] for i in found.get_indexes(table) if not i.get("duplicates_constraint")}
                       - {"users_name_nocase"}  # (an expression: SQLAlchemy reflects it on PostgreSQL only)
                       for found in (ours, theirs)]  # (PostgreSQL lists a UNIQUE column's index too)
            assert indexes[0] == indexes[1], table


def test_a_legacy_database_of_a_newer_schema_is_refused(tmp_path: Path):
    path = tmp_path / "db.sqlite"
    sqlite3.connect(path).execute(f"PRAGMA user_version = {len(MIGRATIONS) + 5}").connection.close()
    with pytest.raises(DataError, match=r"schema version 10, newer than this leukoscope supports"):
        Store(path).open()
