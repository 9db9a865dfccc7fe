"""Schema 8: cells. Technologists think in cells: a gallery per sample, and cells verified one by one.

Cells are found and classified lazily, once per stored field (prediction), when a sample's gallery is first
asked for; `cell_fields` records that it was done (with the field's status: ok, "no cell found", unusable,
error, and the reason), so a field without cells is not segmented again. `cells` holds each white cell: its
index in the field, bounding box in the file's pixels, class, probabilities, review flag and reasons, the
weights that called it, and its crop (PNG). Both belong to their prediction's clinic (`clinic_id`, copied so
every read filters on one column) and have public UUIDs.

Cell verifications get their own table (`cell_verifications`, the shape of `verifications`) rather than a
nullable column on `verifications`: the field verification code (latest verified call, agreement, the
verified export) keeps reading exactly the rows it read before, with no filter to forget.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def _key() -> sa.types.TypeEngine:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _id() -> sa.Column:
    return sa.Column("id", _key(), sa.Identity(), primary_key=True)


def upgrade() -> None:
    op.create_table(
        "cell_fields",
        _id(),
        sa.Column("prediction_id", _key(), sa.ForeignKey("predictions.id"), nullable=False, unique=True),
        sa.Column("clinic_id", _key(), nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("model_version", sa.Text, nullable=False),
        sa.Column("created_at", sa.Text, nullable=False),
    )
    op.create_table(
        "cells",
        _id(),
        sa.Column("uid", sa.Text, nullable=False, unique=True),
        sa.Column("clinic_id", _key(), nullable=False),
        sa.Column("prediction_id", _key(), sa.ForeignKey("predictions.id"), nullable=False),
        sa.Column("cell_index", sa.Integer, nullable=False),
        sa.Column("x0", sa.Integer, nullable=False),
        sa.Column("y0", sa.Integer, nullable=False),
        sa.Column("x1", sa.Integer, nullable=False),
        sa.Column("y1", sa.Integer, nullable=False),
        sa.Column("label", sa.Text, nullable=False),  # '' when the cell got no class
        sa.Column("confidence", sa.Float, nullable=False),
        sa.Column("probabilities", sa.Text, nullable=False),
        sa.Column("review", sa.Integer, nullable=False),
        sa.Column("review_reasons", sa.Text, nullable=False),
        sa.Column("model_version", sa.Text, nullable=False),
        sa.Column("crop", sa.LargeBinary),
        sa.Column("created_at", sa.Text, nullable=False),
    )
    op.create_index("cells_prediction", "cells", ["prediction_id", "cell_index"])
    op.create_index("cells_clinic", "cells", ["clinic_id", "id"])
    op.create_table(
        "cell_verifications",
        _id(),
        sa.Column("uid", sa.Text, nullable=False, unique=True),
        sa.Column("cell_id", _key(), sa.ForeignKey("cells.id"), nullable=False),
        sa.Column("created_at", sa.Text, nullable=False),
        sa.Column("user_name", sa.Text, nullable=False),
        sa.Column("label", sa.Text),  # NULL: unusable
        sa.Column("unusable", sa.Integer, nullable=False, server_default="0"),
        sa.Column("comment", sa.Text, nullable=False, server_default=""),
    )
    op.create_index("cell_verifications_cell", "cell_verifications", ["cell_id", "id"])


def downgrade() -> None:
    raise NotImplementedError("leukoscope never downgrades a database: restore a backup instead")
