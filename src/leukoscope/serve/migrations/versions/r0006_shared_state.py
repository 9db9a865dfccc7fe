"""Schema 6: login sessions and failed-login counts in the database, shared by every server process.

Before, both lived in one process's memory: a second process (`leukoscope serve --processes N`, or servers
behind a proxy) would not know a session another one issued, and a guesser could spread tries over them.
Session ids are kept only as their SHA-256 (a copy of the database holds no usable cookie). User names are
unique without regard to case by an index now, as the code always checked; two processes adding "Bob" and
"bob" at once can no longer both succeed.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _seq() -> sa.Column:
    # an INTEGER PRIMARY KEY is SQLite's rowid (autoincrementing); a BIGINT identity elsewhere
    return sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), sa.Identity(), primary_key=True)


def upgrade() -> None:
    op.create_table(
        "login_sessions",
        _seq(),
        sa.Column("id_hash", sa.Text, nullable=False, unique=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("via", sa.Text, nullable=False),
        sa.Column("stamp", sa.Text, nullable=False, server_default=""),
        sa.Column("expires_at", sa.Double, nullable=False),
    )
    op.create_index("login_sessions_expires", "login_sessions", ["expires_at"])
    op.create_index("login_sessions_name", "login_sessions", ["name"])
    op.create_table(
        "auth_failures",
        _seq(),
        sa.Column("lock_key", sa.Text, nullable=False),
        sa.Column("at", sa.Double, nullable=False),
    )
    op.create_index("auth_failures_key", "auth_failures", ["lock_key", "at"])
    op.create_index("auth_failures_at", "auth_failures", ["at"])
    op.create_index("users_name_nocase", "users", [sa.text("lower(name)")], unique=True)


def downgrade() -> None:
    raise NotImplementedError("leukoscope never downgrades a database: restore a backup instead")
