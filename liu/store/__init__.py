"""Persistence in PostgreSQL: embedded server, migrations, run bookkeeping and the trade writer."""

from liu.store.db import (
    EmbeddedPostgres,
    connect_check,
    create_database,
    downgrade,
    drop_database,
    prepare_database,
    redact_dsn,
    upgrade,
    upgrade_async,
)
from liu.store.runs import (
    add_trending,
    close_runs,
    create_runs,
    load_keystore,
    record_account,
    save_keystore,
)
from liu.store.writer import TradeWriter, ns_to_datetime

__all__ = [
    "EmbeddedPostgres",
    "TradeWriter",
    "add_trending",
    "close_runs",
    "connect_check",
    "create_database",
    "create_runs",
    "downgrade",
    "drop_database",
    "load_keystore",
    "ns_to_datetime",
    "record_account",
    "redact_dsn",
    "save_keystore",
    "prepare_database",
    "upgrade",
    "upgrade_async",
]
