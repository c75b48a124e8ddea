"""Migrations against a real embedded PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from liu.errors import DatabaseError
from liu.store import downgrade, upgrade, upgrade_async
from liu.store.db import MIGRATIONS_DIR
from liu.store.schema import metadata

pytestmark = pytest.mark.db


async def _tables(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await conn.close()
    return {r["tablename"] for r in rows}


async def _columns(dsn: str) -> dict[str, set[str]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public'"
        )
    finally:
        await conn.close()
    out: dict[str, set[str]] = {}
    for r in rows:
        out.setdefault(r["table_name"], set()).add(r["column_name"])
    return out


async def test_head_has_every_table_of_schema(pg_dsn: str) -> None:
    tables = await _tables(pg_dsn)
    assert set(metadata.tables) <= tables
    assert "alembic_version" in tables
    cols = await _columns(pg_dsn)
    for name, table in metadata.tables.items():
        assert cols[name] == {c.name for c in table.columns}, name


async def test_schema_matches_migrations_exactly(pg_dsn: str) -> None:
    # Types, nullability, server defaults, indexes and foreign keys, not only the column names.
    engine = create_async_engine(
        "postgresql+asyncpg://", async_creator=lambda: asyncpg.connect(pg_dsn), poolclass=NullPool
    )

    def diff(sync_conn) -> list:
        opts = {"compare_type": True, "compare_server_default": True}
        return compare_metadata(MigrationContext.configure(sync_conn, opts=opts), metadata)

    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(diff) == []
    finally:
        await engine.dispose()


LIFECYCLE_COLUMNS = {
    "tif",
    "trigger_price",
    "trail_percent",
    "trail_price",
    "filled_qty",
    "filled_avg_price",
    "order_class",
    "parent_id",
    "leg",
    "legs",
    "replaces",
    "replaced_by",
    "updated_at",
    "history",
}


async def test_order_lifecycle_migration_round_trip_keeps_and_backfills_rows(pg_dsn: str) -> None:
    submitted = datetime(2025, 3, 3, 14, 30, 0, 123456, tzinfo=UTC)
    last_fill = datetime(2025, 3, 3, 14, 31, 5, 654321, tzinfo=UTC)
    downgrade(pg_dsn, "0002")
    cols = await _columns(pg_dsn)
    assert cols["orders"] == {c.name for c in metadata.tables["orders"].columns} - LIFECYCLE_COLUMNS
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("SELECT to_regclass('ix_orders_parent_id')") is None
        await conn.execute(
            "INSERT INTO orders (client_order_id, batch_id, symbol, side, qty, order_type, status, reason,"
            " submitted_at) VALUES ('old-1', 'b', 'AAPL', 'buy', 10, 'market', 'filled', '', $1),"
            " ('old-2', 'b', 'AAPL', 'buy', 5, 'limit', 'rejected', 'no buying power', $1)",
            submitted,
        )
        await conn.execute(
            "INSERT INTO trades (client_order_id, batch_id, symbol, side, qty, price, filled_at) VALUES"
            " ('old-1', 'b', 'AAPL', 'buy', 4, 100, $1), ('old-1', 'b', 'AAPL', 'buy', 6, 101, $2)",
            submitted,
            last_fill,
        )
    finally:
        await conn.close()

    upgrade(pg_dsn, "head")
    assert (await _columns(pg_dsn))["orders"] == {c.name for c in metadata.tables["orders"].columns}
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("SELECT to_regclass('ix_orders_parent_id')") is not None
        rows = {r["client_order_id"]: r for r in await conn.fetch("SELECT * FROM orders")}
    finally:
        await conn.close()
    filled, rejected = rows["old-1"], rows["old-2"]
    assert (filled["filled_qty"], filled["filled_avg_price"], filled["updated_at"]) == (
        10.0,
        100.6,
        last_fill,
    )
    assert json.loads(filled["history"]) == [
        {
            "status": "filled",
            "ts": int(last_fill.timestamp()) * 10**9 + 654_321_000,
            "filled_qty": 10,
            "filled_avg_price": 100.6,
            "reason": "",
        }
    ]
    assert (rejected["filled_qty"], rejected["filled_avg_price"], rejected["updated_at"]) == (
        0.0,
        None,
        submitted,
    )
    assert json.loads(rejected["history"]) == [
        {
            "status": "rejected",
            "ts": int(submitted.timestamp()) * 10**9 + 123_456_000,
            "filled_qty": 0,
            "filled_avg_price": None,
            "reason": "no buying power",
        }
    ]
    for row in (filled, rejected):
        assert (row["tif"], row["order_class"], row["parent_id"], row["legs"]) == (
            "day",
            "simple",
            None,
            None,
        )

    downgrade(pg_dsn, "0002")
    assert LIFECYCLE_COLUMNS.isdisjoint((await _columns(pg_dsn))["orders"])
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM orders") == 2
        assert await conn.fetchval("SELECT count(*) FROM trades") == 2
    finally:
        await conn.close()
    upgrade(pg_dsn, "head")


async def test_downgrade_base_then_upgrade_head(pg_dsn: str) -> None:
    # Called while this test's event loop runs: upgrade must not need the caller's loop.
    downgrade(pg_dsn, "base")
    assert await _tables(pg_dsn) == {"alembic_version"}
    upgrade(pg_dsn, "head")
    assert set(metadata.tables) <= await _tables(pg_dsn)
    await upgrade_async(pg_dsn)  # already at head: a no-op


async def _version(dsn: str) -> str | None:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT version_num FROM alembic_version")
    finally:
        await conn.close()


def test_upgrade_from_sync_code(pg_dsn: str) -> None:
    """Plain sync code (no event loop anywhere, as in `trader db upgrade`): base, one step, then head."""
    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    downgrade(pg_dsn, "base")
    assert asyncio.run(_tables(pg_dsn)) == {"alembic_version"}
    assert asyncio.run(_version(pg_dsn)) is None
    upgrade(pg_dsn, "0001")
    assert asyncio.run(_version(pg_dsn)) == "0001"
    assert "models" not in asyncio.run(_tables(pg_dsn))  # 0002's table is not there yet
    upgrade(pg_dsn)
    assert asyncio.run(_version(pg_dsn)) == head
    assert set(metadata.tables) <= asyncio.run(_tables(pg_dsn))


def test_upgrade_unreachable_raises_database_error() -> None:
    with pytest.raises(DatabaseError) as info:
        upgrade("postgresql://u:secret@127.0.0.1:1/x")
    msg = str(info.value)
    assert "127.0.0.1:1" in msg and "secret" not in msg
    assert "\n" not in msg
