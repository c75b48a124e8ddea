"""Model registry and predictions.

`models`: one row per kept version of a trained model (the registry keeps the best K by the spec's metric).
`model_names`: the last version number handed out per model, so numbers never repeat after pruning.
`predictions`: what each model version said for each bar, written in batches by the consumers.

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)
NOW = sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "model_names",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("last_version", sa.Integer, nullable=False),
        sa.Column("created_at", TZ, nullable=False, server_default=NOW),
    )
    op.create_table(
        "models",
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("spec_hash", sa.Text, nullable=False),
        sa.Column("input_width", sa.Integer, nullable=False),
        sa.Column("metric_name", sa.Text, nullable=False),
        sa.Column("metric_value", sa.Float, nullable=False),
        sa.Column("metrics", JSONB),
        sa.Column("metadata", JSONB),
        sa.Column("is_best", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("promoted_at", TZ),
        sa.Column("created_at", TZ, nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("name", "version"),
    )
    op.create_table(
        "predictions",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("batch_id", sa.Text, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("bar_ts", TZ, nullable=False),
        sa.Column("outputs", ARRAY(sa.Float), nullable=False),
        sa.Column("created_at", TZ, nullable=False, server_default=NOW),
    )
    op.create_index("ix_predictions_batch_id_model", "predictions", ["batch_id", "model"])
    op.create_index("ix_predictions_model_version", "predictions", ["model", "version"])


def downgrade() -> None:
    op.drop_index("ix_predictions_model_version", table_name="predictions")
    op.drop_index("ix_predictions_batch_id_model", table_name="predictions")
    op.drop_table("predictions")
    op.drop_table("models")
    op.drop_table("model_names")
