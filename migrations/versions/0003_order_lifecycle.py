"""Order lifecycle: time in force, trigger and trail prices, fills so far, bracket and replace links, history.

`history` is a JSONB array with one entry per status change:
`{"status", "ts" (data time, int ns), "filled_qty", "filled_avg_price", "reason"}`.
`parent_id` links a bracket leg to its entry and `legs` lists an entry's leg ids; `replaces` and
`replaced_by` link the two orders of a replace. The links carry no foreign key: the trade writer drops a
row the database refuses on its own, and a refused entry must not take its legs with it.

Orders written before this revision get their fills so far (from `trades`), `updated_at` and a
one-entry history holding their current status.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def _columns() -> list[sa.Column]:
    return [
        sa.Column("tif", sa.Text, nullable=False, server_default="day"),
        sa.Column("trigger_price", sa.Float),
        sa.Column("trail_percent", sa.Float),
        sa.Column("trail_price", sa.Float),
        sa.Column("filled_qty", sa.Float, nullable=False, server_default="0"),
        sa.Column("filled_avg_price", sa.Float),
        sa.Column("order_class", sa.Text, nullable=False, server_default="simple"),
        sa.Column("parent_id", sa.Text),
        sa.Column("leg", sa.Text),
        sa.Column("legs", ARRAY(sa.Text)),
        sa.Column("replaces", sa.Text),
        sa.Column("replaced_by", sa.Text),
        sa.Column("updated_at", TZ),
        sa.Column("history", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
    ]


# Orders written before this revision: their fills so far, and their current status as the one
# history entry known (ts null when the order has neither fills nor a submit time).
BACKFILL_FILLS = """
WITH f AS (
    SELECT client_order_id, sum(qty) AS qty, sum(qty * price) / NULLIF(sum(qty), 0) AS avg_price,
           max(filled_at) AS last_at
    FROM trades GROUP BY client_order_id
)
UPDATE orders o SET filled_qty = f.qty, filled_avg_price = f.avg_price, updated_at = f.last_at
FROM f WHERE f.client_order_id = o.client_order_id
"""
BACKFILL_HISTORY = """
UPDATE orders SET
    updated_at = COALESCE(updated_at, submitted_at),
    history = jsonb_build_array(jsonb_build_object(
        'status', status,
        'ts', floor(extract(epoch FROM COALESCE(updated_at, submitted_at)) * 1000000)::bigint * 1000,
        'filled_qty', filled_qty,
        'filled_avg_price', filled_avg_price,
        'reason', COALESCE(reason, '')))
"""


def upgrade() -> None:
    for column in _columns():
        op.add_column("orders", column)
    op.create_index("ix_orders_parent_id", "orders", ["parent_id"])
    op.execute(BACKFILL_FILLS)
    op.execute(BACKFILL_HISTORY)


def downgrade() -> None:
    op.drop_index("ix_orders_parent_id", table_name="orders")
    for column in reversed(_columns()):
        op.drop_column("orders", column.name)
