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
        assert {r[14:17] for r in after["predictions"]} == {("ok", "[]", "{}")}
    reference = tmp_path / "reference.db"
    Store(reference).open().close()
    assert schema_sql(path) == schema_sql(reference)  # exactly a new database's schema, whatever the way there
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("0008",)]
        assert {r[0] for r in conn.execute("SELECT DISTINCT clinic_id FROM predictions")} <= {1}  # the implicit clinic


def test_an_upgraded_database_is_used_like_a_new_one(tmp_path: Path):
    path = tmp_path / "old.db"
    with contextlib.closing(legacy_database(path)) as conn:
        fill(conn, 5)
    with Store(path) as store:
        first = store.query("SELECT uid FROM predictions WHERE id = 1")[0]["uid"]
        assert [v.user_name for v in verifications.trail(store, first)] == ["Alice", "bob"]
        assert verifications.latest(store, [1])[1].unusable
        users = Users(store)
        assert [u.name for u in users.all_users()] == ["Alice", "bob"] and users.get("alice").role == "admin"
        with pytest.raises(DataError, match="already exists"):
            users.add("ALICE", "technologist", "correct horse battery")
        old = store.get(first)
        again = NewPrediction(**{f.name: getattr(old, f.name) for f in dataclasses.fields(NewPrediction)})
        stored = store.add([again], {old.sha256: b"again"})
        assert stored[0].pk == 6  # ids continue after the old ones (AUTOINCREMENT kept)


def test_a_new_sqlite_database_keeps_every_column_of_leukoscope_0_1_in_order(tmp_path: Path):
    with Store(tmp_path / "new.db"):
        pass
    reference = tmp_path / "reference.db"
    legacy_database(reference).close()
    with contextlib.closing(sqlite3.connect(tmp_path / "new.db")) as new, \
            contextlib.closing(sqlite3.connect(reference)) as old:
        for table in LEGACY_TABLES:
            before = old.execute(f"PRAGMA table_info({table})").fetchall()
            assert new.execute(f"PRAGMA table_info({table})").fetchall()[:len(before)] == before, table


@pytest.mark.filterwarnings("ignore:Skipped unsupported reflection")
def test_postgresql_gets_the_same_tables_and_columns(postgres_url: str, tmp_path: Path):
    with Store(postgres_url) as pg, Store(tmp_path / "new.db") as lite, pg.engine.connect() as a, \
            lite.engine.connect() as b:
        ours, theirs = inspect(a), inspect(b)
        assert set(ours.get_table_names()) == set(theirs.get_table_names())
        for table in theirs.get_table_names():
            assert [c["name"] for c in ours.get_columns(table)] == [c["name"] for c in theirs.get_columns(table)]
            indexes = [{i["name"] for i in found.get_indexes(table) if not i.get("duplicates_constraint")}
                       - {"users_name_nocase", "clinics_name_nocase"}  # (expressions: reflected on PostgreSQL only)
                       for found in (ours, theirs)]  # (PostgreSQL lists a UNIQUE column's index too)
            assert indexes[0] == indexes[1], table


def test_a_legacy_database_of_a_newer_schema_is_refused(tmp_path: Path):
    path = tmp_path / "db.sqlite"
    sqlite3.connect(path).execute(f"PRAGMA user_version = {len(MIGRATIONS) + 5}").connection.close()
    with pytest.raises(DataError, match=r"schema version 10, newer than this leukoscope supports"):
        Store(path).open()


def _upgrade_to(store: Store, target: str) -> None:
    """Migrate `store` to revision `target` only (a database as the release of that revision left it)."""
    from alembic.config import Config
    from alembic.runtime.environment import EnvironmentContext

    from leukoscope.serve import migrate

    scripts = migrate.script()

    def work(conn) -> None:
        with EnvironmentContext(Config(), scripts, fn=lambda rev, _ctx: scripts._upgrade_revs(target, rev)) as env:
            env.configure(connection=conn, target_metadata=None, render_as_batch=conn.dialect.name == "sqlite")
            env.run_migrations()

    store.write(work)


def test_a_database_at_revision_0006_moves_every_row_into_the_implicit_clinic(db_url: str):
    """Clinics (revision 0007) on SQLite and PostgreSQL: rows written before land in "default", none lost,
    every prediction and verification gets a distinct UUID, and the old users still log in."""
    from sqlalchemy import text as sql

    from leukoscope.serve.clinics import Clinics
    from leukoscope.serve.users import hash_password

    store = Store(db_url)
    if store.path is not None:
        store.path.parent.mkdir(parents=True, exist_ok=True)
    try:
        _upgrade_to(store, "0006")
        store.write(lambda conn: [conn.execute(sql(statement), params) for statement, params in (
            ("INSERT INTO images (sha256, data, size, created_at) VALUES ('ab', :data, 3, 'then')", {"data": b"abc"}),
            ("INSERT INTO predictions (created_at, sample_id, file_name, sha256, model_version, label, confidence, "
             "probabilities, review, review_reasons, width, height) VALUES ('then', 's1', 'a.png', 'ab', 'm@1', "
             "'Benign', 0.5, '{}', 0, '[]', 8, 8)", {}),
            ("INSERT INTO predictions (created_at, sample_id, file_name, sha256, model_version, label, confidence, "
             "probabilities, review, review_reasons, width, height) VALUES ('then', 's1', 'b.png', 'ab', 'm@1', "
             "'Pre-B', 0.5, '{}', 1, '[]', 8, 8)", {}),
            ("INSERT INTO users (name, role, password_hash, created_at) VALUES ('Alice', 'admin', :h, 'then')",
             {"h": hash_password("correct horse battery")}),
            ("INSERT INTO verifications (prediction_id, created_at, user_name, label) VALUES (1, 'then', 'Alice', "
             "'Benign')", {}),
            ("INSERT INTO login_sessions (id_hash, name, role, via, expires_at) VALUES ('h', 'Alice', 'admin', "
             "'password', 1e12)", {}),
        )])
        assert store.version == 6
        store.migrate()
        assert store.version == schema_version() == 8
        rows = store.query("SELECT uid, clinic_id, file_name FROM predictions ORDER BY id")
        assert [(r["clinic_id"], r["file_name"]) for r in rows] == [(1, "a.png"), (1, "b.png")]
        assert len({r["uid"] for r in rows}) == 2 and all(len(r["uid"]) == 36 for r in rows)
        assert store.scalar("SELECT clinic_id FROM users WHERE name = 'Alice'") == 1
        assert store.scalar("SELECT clinic_id FROM login_sessions") == 1
        (verification,) = verifications.trail(store, rows[0]["uid"], clinic=1)
        assert verification.user_name == "Alice" and len(verification.id) == 36
        assert [c.name for c in Clinics(store).all_clinics()] == ["default"]
        user, principal = Users(store).authenticate("alice", "correct horse battery")
        assert user is not None and user.clinic == "default" and principal.clinic_id == 1
        assert store.get(rows[1]["uid"], 1).label == "Pre-B" and store.get(rows[1]["uid"], 2) is None
    finally:
        store.close()


def test_a_database_at_revision_0007_gets_cells_keeping_every_row(db_url: str):
    """Cells (revision 0008) on SQLite and PostgreSQL: the rows of 0007 stay as they were, field verifications
    read as before, and the new tables take a field's cells and a cell verification."""
    from sqlalchemy import text as sql

    from leukoscope.serve import cell_store

    store = Store(db_url)
    if store.path is not None:
        store.path.parent.mkdir(parents=True, exist_ok=True)
    try:
        _upgrade_to(store, "0007")
        store.write(lambda conn: [conn.execute(sql(statement), params) for statement, params in (
            ("INSERT INTO images (sha256, data, size, created_at) VALUES ('ab', :data, 3, 'then')", {"data": b"abc"}),
            ("INSERT INTO predictions (uid, clinic_id, created_at, sample_id, file_name, sha256, model_version, "
             "label, confidence, probabilities, review, review_reasons, width, height) VALUES "
             "('00000000-0000-4000-8000-000000000001', 1, 'then', 's1', 'a.png', 'ab', 'm@1', 'Benign', 0.5, "
             "'{}', 0, '[]', 8, 8)", {}),
            ("INSERT INTO verifications (uid, prediction_id, created_at, user_name, label) VALUES "
             "('00000000-0000-4000-8000-0000000000v1', 1, 'then', 'Alice', 'Pre-B')", {}),
        )])
        before = store.query("SELECT * FROM predictions")
        assert store.version == 7
        store.migrate()
        assert store.version == schema_version() == 8
        assert store.query("SELECT * FROM predictions") == before
        row = store.get("00000000-0000-4000-8000-000000000001")
        assert verifications.latest(store, [row.pk])[row.pk].label == "Pre-B"
        cell = cell_store.NewCell(0, (1, 2, 5, 6), "Pro-B", 0.8, {"Pro-B": 0.8}, False, [], b"png")
        assert cell_store.save_field(store, row, "ok", "", "m@1", [cell])
        assert not cell_store.save_field(store, row, "ok", "", "m@1", [cell])  # a field is stored once
        (stored,) = cell_store.cells_of(store, [row.pk])
        assert stored.bbox == (1, 2, 5, 6) and stored.prediction_id == row.id and stored.clinic_id == 1
        assert cell_store.add_verification(store, stored.id, "Alice", None, clinic=1).unusable
        assert cell_store.get(store, stored.id, 1).verification.call == "unusable"
        assert cell_store.get(store, stored.id, 2) is None  # another clinic's cell does not exist for it
        assert store.scalar("SELECT COUNT(*) FROM verifications") == 1
    finally:
        store.close()
