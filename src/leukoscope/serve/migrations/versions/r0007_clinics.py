"""Schema 7: clinics. One service for a hospital network; each clinic sees only its own data.

A `clinics` table (soft-deleted: `deleted_at`; `model`: the package it predicts with, NULL for the server's
own) and `api_tokens` (per clinic, stored as the SHA-256 of a 256-bit random token: a copy of the database
holds no usable token). Users, predictions and login sessions get a `clinic_id`; verifications belong to
their prediction's clinic. Every row written before this revision moves to the one implicit clinic
("default", id 1), so a single workstation keeps working with nothing to set up and no row is lost.

Predictions and verifications get a `uid` (a random UUID): the id that appears in URLs and JSON, so no
client can walk another clinic's ids by counting. The integer ids stay as internal keys. Predictions also
record `model_package` (which package made them, beside `model_version`, its exact weights). Roles gain
`network-admin` (all clinics): SQLite cannot change a CHECK constraint in place, so the users table is
rebuilt there (nothing references it by key: verifications name their user).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

DEFAULT_CLINIC = "default"
ROLES_CHECK = "role IN ('technologist', 'admin', 'network-admin')"


def _id() -> sa.Column:
    return sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), sa.Identity(), primary_key=True)


def _clinic_column() -> sa.Column:
    # no foreign key: SQLite cannot add a REFERENCES column with a non-NULL default; clinics are never
    # deleted (only marked so), and the code writes clinic ids it has just read from the clinics table
    return sa.Column("clinic_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False,
                     server_default="1")


def _fill_uids(table: str) -> None:
    bind = op.get_bind()
    ids = [row[0] for row in bind.execute(sa.text(f"SELECT id FROM {table} WHERE uid IS NULL"))]
    if ids:
        bind.execute(sa.text(f"UPDATE {table} SET uid = :uid WHERE id = :id"),
                     [{"uid": str(uuid.uuid4()), "id": i} for i in ids])


def upgrade() -> None:
    bind = op.get_bind()
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    op.create_table(
        "clinics",
        _id(),
        sa.Column("uid", sa.Text, nullable=False, unique=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("created_at", sa.Text, nullable=False),
        sa.Column("deleted_at", sa.Text),
        sa.Column("model", sa.Text),
    )
    op.create_index("clinics_name_nocase", "clinics", [sa.text("lower(name)")], unique=True)
    bind.execute(sa.text("INSERT INTO clinics (uid, name, created_at) VALUES (:uid, :name, :now)"),
                 {"uid": str(uuid.uuid4()), "name": DEFAULT_CLINIC, "now": now})
    assert bind.execute(sa.text("SELECT id FROM clinics")).scalar_one() == 1  # the implicit clinic is id 1
    op.create_table(
        "api_tokens",
        _id(),
        sa.Column("uid", sa.Text, nullable=False, unique=True),
        sa.Column("clinic_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), sa.ForeignKey("clinics.id"),
                  nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("role", sa.Text, sa.CheckConstraint("role IN ('technologist', 'admin')"), nullable=False),
        sa.Column("token_hash", sa.Text, nullable=False, unique=True),
        sa.Column("created_at", sa.Text, nullable=False),
        sa.Column("revoked_at", sa.Text),
    )
    op.create_index("api_tokens_clinic", "api_tokens", ["clinic_id"])
    op.add_column("predictions", _clinic_column())
    op.add_column("predictions", sa.Column("uid", sa.Text))
    op.add_column("predictions", sa.Column("model_package", sa.Text, nullable=False, server_default=""))
    _fill_uids("predictions")
    op.create_index("predictions_uid", "predictions", ["uid"], unique=True)
    op.create_index("predictions_clinic", "predictions", ["clinic_id", "id"])
    op.add_column("verifications", sa.Column("uid", sa.Text))
    _fill_uids("verifications")
    op.create_index("verifications_uid", "verifications", ["uid"], unique=True)
    op.add_column("login_sessions", _clinic_column())
    if bind.dialect.name == "sqlite":
        _rebuild_sqlite_users()
    else:
        _widen_roles_portable()
    op.create_index("users_clinic", "users", ["clinic_id"])


def _rebuild_sqlite_users() -> None:
    bind = op.get_bind()
    for statement in (
        f"""CREATE TABLE users_new (
            id            INTEGER PRIMARY KEY AUTOINCREMENT,
            name          TEXT NOT NULL UNIQUE,
            role          TEXT NOT NULL CHECK ({ROLES_CHECK}),
            password_hash TEXT NOT NULL,
            created_at    TEXT NOT NULL,
            disabled      INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
            clinic_id     INTEGER NOT NULL DEFAULT 1
        )""",
        "INSERT INTO users_new (id, name, role, password_hash, created_at, disabled) "
        "SELECT id, name, role, password_hash, created_at, disabled FROM users",
        "DROP TABLE users",
        "ALTER TABLE users_new RENAME TO users",
        "CREATE UNIQUE INDEX users_name_nocase ON users (lower(name))",
    ):
        bind.exec_driver_sql(statement)


def _widen_roles_portable() -> None:
    bind = op.get_bind()
    names = bind.execute(sa.text(
        "SELECT conname FROM pg_constraint WHERE conrelid = 'users'::regclass AND contype = 'c' "
        "AND pg_get_constraintdef(oid) LIKE '%role%'")).scalars().all()
    for name in names:
        op.drop_constraint(name, "users", type_="check")
    op.create_check_constraint("users_role_check", "users", ROLES_CHECK)
    op.add_column("users", _clinic_column())


def downgrade() -> None:
    raise NotImplementedError("leukoscope never downgrades a database: restore a backup instead")
