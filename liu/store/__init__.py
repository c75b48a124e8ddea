"""Persistence in PostgreSQL: embedded server, migrations, run bookkeeping, the trade writer and its spool,
and the paper account across sessions (liu.store.account_state)."""

from liu.store.db import (
    EmbeddedPostgres,
    connect_check,
    connection,
    create_database,
    downgrade,
    drop_database,
    plan_database,
    prepare_database,
    prepare_plan_database,
    redact_dsn,
    upgrade,
    upgrade_async,
)
from liu.store.runs import (
    SessionLock,
    add_trending,
    close_crashed_runs,
    close_runs,
    create_runs,
    load_keystore,
    record_account,
    save_keystore,
)
from liu.store.writer import TradeWriter, ns_to_datetime, replay_spools

__all__ = [
    "EmbeddedPostgres",
    "SessionLock",
    "TradeWriter",
    "add_trending",
    "close_crashed_runs",
    "close_runs",
    "connect_check",
    "connection",
    "create_database",
    "create_runs",
    "downgrade",
    "drop_database",
    "load_keystore",
    "ns_to_datetime",
    "record_account",
    "redact_dsn",
    "replay_spools",
    "save_keystore",
    "plan_database",
    "prepare_database",
    "prepare_plan_database",
    "upgrade",
    "upgrade_async",
]
