"""leukoscope 0.1's hand-written SQLite schema (src/leukoscope/serve/schema.py before Alembic), copied verbatim: the
tests build databases exactly as that release wrote them and check that the Alembic upgrade keeps every row."""

from __future__ import annotations

# Migration k takes a database from user_version k to k + 1. Never edit a released migration: append one.
MIGRATIONS: list[str] = [
    # 0 -> 1: first release
    """
    CREATE TABLE images (
        sha256     TEXT PRIMARY KEY,
        data       BLOB NOT NULL,
        size       INTEGER NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE predictions (
        id             INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at     TEXT NOT NULL,
        sample_id      TEXT NOT NULL,
        file_name      TEXT NOT NULL,
        sha256         TEXT NOT NULL REFERENCES images(sha256),
        model_version  TEXT NOT NULL,
        label          TEXT NOT NULL,
        confidence     REAL NOT NULL,
        probabilities  TEXT NOT NULL,
        review         INTEGER NOT NULL CHECK (review IN (0, 1)),
        review_reasons TEXT NOT NULL,
        ood_score      REAL,
        width          INTEGER NOT NULL,
        height         INTEGER NOT NULL
    );
    CREATE INDEX predictions_label ON predictions(label, id);
    CREATE INDEX predictions_review ON predictions(review, id);
    CREATE INDEX predictions_sample ON predictions(sample_id, id);
    """,
    # 1 -> 2: the retention purge finds old images by this index; without it every purge would read every
    # stored image (created_at sits after the BLOB in each row)
    """
    CREATE INDEX images_created ON images(created_at);
    """,
    # 2 -> 3: a small PNG of each image, made once at upload, so listing thumbnails never decodes an upload
    # again (a 7000x7000 PNG is 147 MB decoded); NULL for images stored before, made on first request
    """
    ALTER TABLE images ADD COLUMN thumbnail BLOB;
    """,
    # 3 -> 4: status (ok | unusable; an unusable image is stored with label '' and no class), stable review
    # codes and the numbers behind them; rows from before read as status 'ok' with their reasons only
    """
    ALTER TABLE predictions ADD COLUMN status TEXT NOT NULL DEFAULT 'ok';
    ALTER TABLE predictions ADD COLUMN review_codes TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE predictions ADD COLUMN review_details TEXT NOT NULL DEFAULT '{}';
    """,
    # 4 -> 5: named users (technologists verify calls, admins manage) and the append-only verification
    # trail: a verification never overwrites the model's call or an earlier verification; the latest one
    # (highest id) of a prediction is its verified class, and every one stays for the audit
    """
    CREATE TABLE users (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        name          TEXT NOT NULL UNIQUE,
        role          TEXT NOT NULL CHECK (role IN ('technologist', 'admin')),
        password_hash TEXT NOT NULL,
        created_at    TEXT NOT NULL,
        disabled      INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1))
    );
    CREATE TABLE verifications (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        prediction_id INTEGER NOT NULL REFERENCES predictions(id),
        created_at    TEXT NOT NULL,
        user_name     TEXT NOT NULL,
        label         TEXT,
        unusable      INTEGER NOT NULL DEFAULT 0 CHECK (unusable IN (0, 1)),
        comment       TEXT NOT NULL DEFAULT '',
        CHECK ((label IS NULL) = (unusable = 1))
    );
    CREATE INDEX verifications_prediction ON verifications(prediction_id, id);
    CREATE INDEX verifications_created ON verifications(created_at, id);
    """,
]


def legacy_database(path, version: int = len(MIGRATIONS)):  # -> sqlite3.Connection
    """A SQLite database at schema `version` as leukoscope 0.1's Store made it (WAL, migrations 0..version in
    one transaction each, PRAGMA user_version), open for the test to insert rows; close it when done."""
    import sqlite3
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA foreign_keys = ON")
    for step in range(version):
        conn.execute("BEGIN IMMEDIATE")
        for statement in MIGRATIONS[step].split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {step + 1}")
        conn.execute("COMMIT")
    return conn
