"""Schema 5, the last hand-written one (leukoscope 0.1): images, predictions, users, verifications.

On SQLite this revision *is* the five hand-written migrations of leukoscope 0.1 (PRAGMA user_version 0..5),
frozen here word for word: a database written by any earlier release gets exactly the steps it lacks, and a
new one gets exactly the schema those releases made, so nothing is lost or reshaped on the way to Alembic.
On PostgreSQL it creates the same tables with the nearest types: BIGINT identity ids (SQLite's INTEGER is
64-bit), DOUBLE PRECISION for REAL (SQLite's REAL is 8 bytes; PostgreSQL's REAL is 4) and BYTEA for BLOB.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from leukoscope.errors import DataError

revision = "0005"
down_revision = None
branch_labels = None
depends_on = None

# Migration k takes a SQLite database from user_version k to k + 1 (leukoscope.serve.schema before Alembic).
LEGACY_SQLITE: list[str] = [
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
    # 1 -> 2: the retention purge finds old images by this index
    """
    CREATE INDEX images_created ON images(created_at);
    """,
    # 2 -> 3: a small PNG of each image, made once at upload; NULL for images stored before
    """
    ALTER TABLE images ADD COLUMN thumbnail BLOB;
    """,
    # 3 -> 4: status, stable review codes and the numbers behind them
    """
    ALTER TABLE predictions ADD COLUMN status TEXT NOT NULL DEFAULT 'ok';
    ALTER TABLE predictions ADD COLUMN review_codes TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE predictions ADD COLUMN review_details TEXT NOT NULL DEFAULT '{}';
    """,
    # 4 -> 5: named users and the append-only verification trail
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


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _upgrade_sqlite()
    else:
        _create_portable()


def _upgrade_sqlite() -> None:
    bind = op.get_bind()
    current = int(bind.exec_driver_sql("PRAGMA user_version").scalar() or 0)
    if current > len(LEGACY_SQLITE):
        raise DataError(f"schema version {current}")  # leukoscope.serve.migrate refuses these before
    for step in LEGACY_SQLITE[current:]:
        for statement in step.split(";"):
            if statement.strip():
                bind.exec_driver_sql(statement)
    bind.exec_driver_sql(f"PRAGMA user_version = {len(LEGACY_SQLITE)}")


def _id() -> sa.Column:
    return sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True)


def _create_portable() -> None:
    op.create_table(
        "images",
        sa.Column("sha256", sa.Text, primary_key=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Text, nullable=False),
        sa.Column("thumbnail", sa.LargeBinary),
    )
    op.create_table(
        "predictions",
        _id(),
        sa.Column("created_at", sa.Text, nullable=False),
        sa.Column("sample_id", sa.Text, nullable=False),
        sa.Column("file_name", sa.Text, nullable=False),
        sa.Column("sha256", sa.Text, sa.ForeignKey("images.sha256"), nullable=False),
        sa.Column("model_version", sa.Text, nullable=False),
        sa.Column("label", sa.Text, nullable=False),
        sa.Column("confidence", sa.Double, nullable=False),
        sa.Column("probabilities", sa.Text, nullable=False),
        sa.Column("review", sa.Integer, sa.CheckConstraint("review IN (0, 1)"), nullable=False),
        sa.Column("review_reasons", sa.Text, nullable=False),
        sa.Column("ood_score", sa.Double),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="ok"),
        sa.Column("review_codes", sa.Text, nullable=False, server_default="[]"),
        sa.Column("review_details", sa.Text, nullable=False, server_default="{}"),
    )
    op.create_index("predictions_label", "predictions", ["label", "id"])
    op.create_index("predictions_review", "predictions", ["review", "id"])
    op.create_index("predictions_sample", "predictions", ["sample_id", "id"])
    op.create_index("images_created", "images", ["created_at"])
    op.create_table(
        "users",
        _id(),
        sa.Column("name", sa.Text, nullable=False, unique=True),
        sa.Column("role", sa.Text, sa.CheckConstraint("role IN ('technologist', 'admin')"), nullable=False),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("created_at", sa.Text, nullable=False),
        sa.Column("disabled", sa.Integer, sa.CheckConstraint("disabled IN (0, 1)"), nullable=False,
                  server_default="0"),
    )
    op.create_table(
        "verifications",
        _id(),
        sa.Column("prediction_id", sa.BigInteger, sa.ForeignKey("predictions.id"), nullable=False),
        sa.Column("created_at", sa.Text, nullable=False),
        sa.Column("user_name", sa.Text, nullable=False),
        sa.Column("label", sa.Text),
        sa.Column("unusable", sa.Integer, sa.CheckConstraint("unusable IN (0, 1)"), nullable=False,
                  server_default="0"),
        sa.Column("comment", sa.Text, nullable=False, server_default=""),
        sa.CheckConstraint("(label IS NULL) = (unusable = 1)"),
    )
    op.create_index("verifications_prediction", "verifications", ["prediction_id", "id"])
    op.create_index("verifications_created", "verifications", ["created_at", "id"])


def downgrade() -> None:
    raise NotImplementedError("leukoscope never downgrades a database: restore a backup instead")
