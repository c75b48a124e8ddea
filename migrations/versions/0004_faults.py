"""Surviving faults: writer high-water marks, and a paper account that lives across sessions.

`writer_marks`: per writer stream (one consumer of one batch), the sequence number of the last write unit
committed. Each unit is written in one transaction that also moves the mark, so after a connection lost
mid-commit, or when the spool is replayed at the next start, a unit at or below the mark is known to be in
the database already and is skipped: every order, status change and fill is written exactly once.

`accounts.persist`: the session's paper account continues across sessions (`[broker] persist`), and
`accounts.continues` names the session it continued from (NULL: it started fresh with `[broker] cash`).
`account_positions`: a persisted session's positions at its start, per strategy and symbol, with their
average price; its cash at the start is `accounts.balance`. A session's end state is its start state plus
its fills, so nothing more is written at the end and a crash cannot leave the two out of step.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "writer_marks",
        sa.Column("stream", sa.Text, primary_key=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("updated_at", TZ, nullable=False, server_default=sa.text("now()")),
    )
    op.add_column("accounts", sa.Column("persist", sa.Boolean, nullable=False, server_default="false"))
    op.add_column("accounts", sa.Column("continues", sa.Text))
    op.create_table(
        "account_positions",
        sa.Column("batch_id", sa.Text, nullable=False),
        sa.Column("strategy", sa.Text, nullable=False),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("qty", sa.Float, nullable=False),
        sa.Column("avg_price", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("batch_id", "strategy", "symbol"),
    )


def downgrade() -> None:
    op.drop_table("account_positions")
    op.drop_column("accounts", "continues")
    op.drop_column("accounts", "persist")
    op.drop_table("writer_marks")
