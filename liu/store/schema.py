"""Table definitions (SQLAlchemy Core), adapted from LiuAlgoTrader's model.

Migrations are hand-written (migrations/versions); this module describes the
head schema for code and tests, and a test checks both agree. Times are
timestamptz; data times arrive as int ns since the epoch (UTC) and are stored
to the microsecond.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

metadata = MetaData()

TZ = DateTime(timezone=True)

algo_run = Table(
    "algo_run",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("batch_id", Text, nullable=False, index=True),
    Column("algo_name", Text, nullable=False),
    Column("consumer", Integer, nullable=False, server_default="0"),
    Column("env", Text, nullable=False),
    Column("parameters", JSONB),
    Column("start_time", TZ, nullable=False, server_default=func.now()),
    Column("end_time", TZ),
    Column("end_reason", Text),
    CheckConstraint("env IN ('PAPER', 'BACKTEST', 'LIVE')", name="algo_run_env_check"),
)

orders = Table(
    "orders",
    metadata,
    Column("client_order_id", Text, primary_key=True),
    Column("algo_run_id", Integer, ForeignKey("algo_run.id"), index=True),
    Column("batch_id", Text, nullable=False, index=True),
    Column("symbol", Text, nullable=False),
    Column("side", Text, nullable=False),
    Column("qty", Float, nullable=False),
    Column("order_type", Text, nullable=False),
    Column("limit_price", Float),
    Column("stop_price", Float),
    Column("target_price", Float),
    Column("status", Text, nullable=False),
    Column("reason", Text),
    Column("submitted_at", TZ),
    Column("created_at", TZ, nullable=False, server_default=func.now()),
    Column("indicators", JSONB),
    # Lifecycle (0003): the row holds the order's latest state; `history` one entry per status change,
    # {"status", "ts" (int ns), "filled_qty", "filled_avg_price", "reason"}. Links have no foreign key.
    Column("tif", Text, nullable=False, server_default="day"),
    Column("trigger_price", Float),
    Column("trail_percent", Float),
    Column("trail_price", Float),
    Column("filled_qty", Float, nullable=False, server_default="0"),
    Column("filled_avg_price", Float),
    Column("order_class", Text, nullable=False, server_default="simple"),
    Column("parent_id", Text, index=True),
    Column("leg", Text),
    Column("legs", ARRAY(Text)),
    Column("replaces", Text),
    Column("replaced_by", Text),
    Column("updated_at", TZ),
    Column("history", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
)

trades = Table(
    "trades",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("client_order_id", Text, ForeignKey("orders.client_order_id"), nullable=False, index=True),
    Column("algo_run_id", Integer, ForeignKey("algo_run.id"), index=True),
    Column("batch_id", Text, nullable=False, index=True),
    Column("symbol", Text, nullable=False),
    Column("side", Text, nullable=False),
    Column("qty", Float, nullable=False),
    Column("price", Float, nullable=False),
    Column("fee", Float, nullable=False, server_default="0"),
    Column("filled_at", TZ, nullable=False),
    Column("stop_price", Float),
    Column("target_price", Float),
    Column("indicators", JSONB),
)

gain_loss = Table(
    "gain_loss",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("symbol", Text, nullable=False),
    Column("algo_run_id", Integer, ForeignKey("algo_run.id"), nullable=False, index=True),
    Column("gain_percentage", Float),
    Column("gain_value", Float),
    Column("r_units", Float),
    Column("tstamp", TZ, nullable=False, server_default=func.now()),
)

trade_analysis = Table(
    "trade_analysis",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("symbol", Text, nullable=False),
    Column("algo_run_id", Integer, ForeignKey("algo_run.id"), nullable=False, index=True),
    Column("batch_id", Text, nullable=False, index=True),
    Column("side", Text, nullable=False),
    Column("qty", Float, nullable=False),
    Column("entry_time", TZ),
    Column("exit_time", TZ),
    Column("entry_price", Float),
    Column("exit_price", Float),
    Column("gain_percentage", Float),
    Column("gain_value", Float),
    Column("r_units", Float),
)

keystore = Table(
    "keystore",
    metadata,
    Column("algo_name", Text, nullable=False),
    Column("key", Text, nullable=False),
    Column("value", JSONB),
    Column("updated_at", TZ, nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("algo_name", "key"),
)

accounts = Table(
    "accounts",
    metadata,
    Column("account_id", Integer, primary_key=True),
    Column("batch_id", Text, index=True),
    Column("balance", Float, nullable=False),
    Column("allow_negative", Boolean, nullable=False, server_default="false"),
    Column("credit_line", Float, nullable=False, server_default="0"),
    Column("details", JSONB),
    Column("created_at", TZ, nullable=False, server_default=func.now()),
    # 0004: the paper account continues across sessions (`[broker] persist`); `continues` names the
    # session it continued from. Its start positions are in account_positions, its start cash is `balance`.
    Column("persist", Boolean, nullable=False, server_default="false"),
    Column("continues", Text),
)

account_positions = Table(
    "account_positions",
    metadata,
    Column("batch_id", Text, nullable=False),
    Column("strategy", Text, nullable=False),
    Column("symbol", Text, nullable=False),
    Column("qty", Float, nullable=False),
    Column("avg_price", Float, nullable=False),
    PrimaryKeyConstraint("batch_id", "strategy", "symbol"),
)

# 0004: per writer stream (one consumer of one batch), the last write unit committed (liu.store.writer).
writer_marks = Table(
    "writer_marks",
    metadata,
    Column("stream", Text, primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("updated_at", TZ, nullable=False, server_default=func.now()),
)

# 0005: the execution gateway's journal (liu.brokers.alpaca.journal): each order sent to a broker, written
# before it is sent, with its owner (consumer, strategy) and request; each reported change updates it.
broker_orders = Table(
    "broker_orders",
    metadata,
    Column("client_order_id", Text, primary_key=True),
    Column("batch_id", Text, nullable=False, index=True),
    Column("consumer", Integer, nullable=False),
    Column("strategy", Text, nullable=False),
    Column("symbol", Text, nullable=False),
    Column("side", Text, nullable=False),
    Column("qty", Float, nullable=False),
    Column("parent_id", Text),
    Column("leg", Text),
    Column("request", JSONB),
    Column("broker_id", Text, index=True),
    Column("status", Text, nullable=False),
    Column("filled_qty", Float, nullable=False, server_default="0"),
    Column("filled_avg_price", Float),
    Column("reason", Text),
    Column("created_at", TZ, nullable=False, server_default=func.now()),
    Column("updated_at", TZ, nullable=False, server_default=func.now()),
)

account_transactions = Table(
    "account_transactions",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("account_id", Integer, ForeignKey("accounts.account_id"), nullable=False, index=True),
    Column("amount", Float, nullable=False),
    Column("tstamp", TZ, nullable=False, server_default=func.now()),
    Column("details", JSONB),
)

portfolio = Table(
    "portfolio",
    metadata,
    Column("batch_id", Text, primary_key=True),
    Column("account_id", Integer, ForeignKey("accounts.account_id"), nullable=False),
    Column("size", Float, nullable=False),
    Column("parameters", JSONB),
)

trending_tickers = Table(
    "trending_tickers",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("batch_id", Text, nullable=False, index=True),
    Column("symbol", Text, nullable=False),
    Column("scanner_name", Text, nullable=False),
    Column("create_tstamp", TZ, nullable=False, server_default=func.now()),
)

stock_ohlc = Table(
    "stock_ohlc",
    metadata,
    Column("symbol", Text, nullable=False),
    Column("symbol_date", TZ, nullable=False),
    Column("open", Float, nullable=False),
    Column("high", Float, nullable=False),
    Column("low", Float, nullable=False),
    Column("close", Float, nullable=False),
    Column("volume", Float, nullable=False),
    Column("indicators", JSONB),
    PrimaryKeyConstraint("symbol", "symbol_date"),
)

model_names = Table(
    "model_names",
    metadata,
    Column("name", Text, primary_key=True),
    Column("last_version", Integer, nullable=False),
    Column("created_at", TZ, nullable=False, server_default=func.now()),
)

models = Table(
    "models",
    metadata,
    Column("name", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("path", Text, nullable=False),
    Column("spec_hash", Text, nullable=False),
    Column("input_width", Integer, nullable=False),
    Column("metric_name", Text, nullable=False),
    Column("metric_value", Float, nullable=False),
    Column("metrics", JSONB),
    Column("metadata", JSONB),
    Column("is_best", Boolean, nullable=False, server_default="false"),
    Column("promoted_at", TZ),
    Column("created_at", TZ, nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("name", "version"),
)

predictions = Table(
    "predictions",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("batch_id", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("symbol", Text, nullable=False),
    Column("bar_ts", TZ, nullable=False),
    Column("outputs", ARRAY(Float), nullable=False),
    Column("created_at", TZ, nullable=False, server_default=func.now()),
    Index("ix_predictions_batch_id_model", "batch_id", "model"),
    Index("ix_predictions_model_version", "model", "version"),
)
