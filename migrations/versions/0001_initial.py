"""Initial schema, adapted from LiuAlgoTrader's tables.

Revision ID: 0001
Revises:
Create Date: 2025-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)
NOW = sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "algo_run",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("batch_id", sa.Text, nullable=False),
        sa.Column("algo_name", sa.Text, nullable=False),
        sa.Column("consumer", sa.Integer, nullable=False, server_default="0"),
        sa.Column("env", sa.Text, nullable=False),
        sa.Column("parameters", JSONB),
        sa.Column("start_time", TZ, nullable=False, server_default=NOW),
        sa.Column("end_time", TZ),
        sa.Column("end_reason", sa.Text),
        sa.CheckConstraint("env IN ('PAPER', 'BACKTEST', 'LIVE')", name="algo_run_env_check"),
    )
    op.create_index("ix_algo_run_batch_id", "algo_run", ["batch_id"])

    op.create_table(
        "orders",
        sa.Column("client_order_id", sa.Text, primary_key=True),
        sa.Column("algo_run_id", sa.Integer, sa.ForeignKey("algo_run.id")),
        sa.Column("batch_id", sa.Text, nullable=False),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("side", sa.Text, nullable=False),
        sa.Column("qty", sa.Float, nullable=False),
        sa.Column("order_type", sa.Text, nullable=False),
        sa.Column("limit_price", sa.Float),
        sa.Column("stop_price", sa.Float),
        sa.Column("target_price", sa.Float),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("submitted_at", TZ),
        sa.Column("created_at", TZ, nullable=False, server_default=NOW),
        sa.Column("indicators", JSONB),
    )
    op.create_index("ix_orders_algo_run_id", "orders", ["algo_run_id"])
    op.create_index("ix_orders_batch_id", "orders", ["batch_id"])

    op.create_table(
        "trades",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("client_order_id", sa.Text, sa.ForeignKey("orders.client_order_id"), nullable=False),
        sa.Column("algo_run_id", sa.Integer, sa.ForeignKey("algo_run.id")),
        sa.Column("batch_id", sa.Text, nullable=False),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("side", sa.Text, nullable=False),
        sa.Column("qty", sa.Float, nullable=False),
        sa.Column("price", sa.Float, nullable=False),
        sa.Column("fee", sa.Float, nullable=False, server_default="0"),
        sa.Column("filled_at", TZ, nullable=False),
        sa.Column("stop_price", sa.Float),
        sa.Column("target_price", sa.Float),
        sa.Column("indicators", JSONB),
    )
    op.create_index("ix_trades_client_order_id", "trades", ["client_order_id"])
    op.create_index("ix_trades_algo_run_id", "trades", ["algo_run_id"])
    op.create_index("ix_trades_batch_id", "trades", ["batch_id"])

    op.create_table(
        "gain_loss",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("algo_run_id", sa.Integer, sa.ForeignKey("algo_run.id"), nullable=False),
        sa.Column("gain_percentage", sa.Float),
        sa.Column("gain_value", sa.Float),
        sa.Column("r_units", sa.Float),
        sa.Column("tstamp", TZ, nullable=False, server_default=NOW),
    )
    op.create_index("ix_gain_loss_algo_run_id", "gain_loss", ["algo_run_id"])

    op.create_table(
        "trade_analysis",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("algo_run_id", sa.Integer, sa.ForeignKey("algo_run.id"), nullable=False),
        sa.Column("batch_id", sa.Text, nullable=False),
        sa.Column("side", sa.Text, nullable=False),
        sa.Column("qty", sa.Float, nullable=False),
        sa.Column("entry_time", TZ),
        sa.Column("exit_time", TZ),
        sa.Column("entry_price", sa.Float),
        sa.Column("exit_price", sa.Float),
        sa.Column("gain_percentage", sa.Float),
        sa.Column("gain_value", sa.Float),
        sa.Column("r_units", sa.Float),
    )
    op.create_index("ix_trade_analysis_algo_run_id", "trade_analysis", ["algo_run_id"])
    op.create_index("ix_trade_analysis_batch_id", "trade_analysis", ["batch_id"])

    op.create_table(
        "keystore",
        sa.Column("algo_name", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("value", JSONB),
        sa.Column("updated_at", TZ, nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("algo_name", "key"),
    )

    op.create_table(
        "accounts",
        sa.Column("account_id", sa.Integer, primary_key=True),
        sa.Column("batch_id", sa.Text),
        sa.Column("balance", sa.Float, nullable=False),
        sa.Column("allow_negative", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("credit_line", sa.Float, nullable=False, server_default="0"),
        sa.Column("details", JSONB),
        sa.Column("created_at", TZ, nullable=False, server_default=NOW),
    )
    op.create_index("ix_accounts_batch_id", "accounts", ["batch_id"])

    op.create_table(
        "account_transactions",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.account_id"), nullable=False),
        sa.Column("amount", sa.Float, nullable=False),
        sa.Column("tstamp", TZ, nullable=False, server_default=NOW),
        sa.Column("details", JSONB),
    )
    op.create_index("ix_account_transactions_account_id", "account_transactions", ["account_id"])

    op.create_table(
        "portfolio",
        sa.Column("batch_id", sa.Text, primary_key=True),
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.account_id"), nullable=False),
        sa.Column("size", sa.Float, nullable=False),
        sa.Column("parameters", JSONB),
    )

    op.create_table(
        "trending_tickers",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("batch_id", sa.Text, nullable=False),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("scanner_name", sa.Text, nullable=False),
        sa.Column("create_tstamp", TZ, nullable=False, server_default=NOW),
    )
    op.create_index("ix_trending_tickers_batch_id", "trending_tickers", ["batch_id"])

    op.create_table(
        "stock_ohlc",
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("symbol_date", TZ, nullable=False),
        sa.Column("open", sa.Float, nullable=False),
        sa.Column("high", sa.Float, nullable=False),
        sa.Column("low", sa.Float, nullable=False),
        sa.Column("close", sa.Float, nullable=False),
        sa.Column("volume", sa.Float, nullable=False),
        sa.Column("indicators", JSONB),
        sa.PrimaryKeyConstraint("symbol", "symbol_date"),
    )


def downgrade() -> None:
    for table in (
        "stock_ohlc",
        "trending_tickers",
        "portfolio",
        "account_transactions",
        "accounts",
        "keystore",
        "trade_analysis",
        "gain_loss",
        "trades",
        "orders",
        "algo_run",
    ):
        op.drop_table(table)
