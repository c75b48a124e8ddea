"""The execution gateway's journal of orders sent to a broker (Alpaca).

`broker_orders`: one row per order the gateway sends (and per bracket leg the broker creates), written
*before* the order is sent, with the consumer and strategy that own it and the full request; every change
the broker reports updates the row (its own id, status, cumulative filled quantity and average price).
A crash between the write and the send leaves a row with `broker_id` NULL: the next start resolves it by
client order id, and restart reconciliation gives each strategy its positions and open orders back from
these rows. It is separate from `orders` (written by each consumer's buffered writer) so the write before
the send is one synchronous INSERT that never waits for a consumer's batch.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "broker_orders",
        sa.Column("client_order_id", sa.Text, primary_key=True),
        sa.Column("batch_id", sa.Text, nullable=False, index=True),
        sa.Column("consumer", sa.Integer, nullable=False),
        sa.Column("strategy", sa.Text, nullable=False),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("side", sa.Text, nullable=False),
        sa.Column("qty", sa.Float, nullable=False),
        sa.Column("parent_id", sa.Text),
        sa.Column("leg", sa.Text),
        sa.Column("request", JSONB),
        sa.Column("broker_id", sa.Text, index=True),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("filled_qty", sa.Float, nullable=False, server_default="0"),
        sa.Column("filled_avg_price", sa.Float),
        sa.Column("reason", sa.Text),
        sa.Column("created_at", TZ, nullable=False, server_default=sa.text("now()")),
        sa.Column("updated_at", TZ, nullable=False, server_default=sa.text("now()")),
    )


def downgrade() -> None:
    op.drop_table("broker_orders")
