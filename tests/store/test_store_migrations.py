"""Migrations against a real embedded PostgreSQL."""

from __future__ import annotations

import asyncpg
import pytest

from liu.errors import DatabaseError
from liu.store import downgrade, upgrade, upgrade_async
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


async def test_downgrade_base_then_upgrade_head(pg_dsn: str) -> None:
    # Called while this test's event loop runs: upgrade must not need the caller's loop.
    downgrade(pg_dsn, "base")
    assert await _tables(pg_dsn) == {"alembic_version"}
    upgrade(pg_dsn, "head")
    assert set(metadata.tables) <= await _tables(pg_dsn)
    await upgrade_async(pg_dsn)  # already at head: a no-op


def test_upgrade_from_sync_code(pg_dsn: str) -> None:
    upgrade(pg_dsn)


def test_upgrade_unreachable_raises_database_error() -> None:
    with pytest.raises(DatabaseError) as info:
        upgrade("postgresql://u:secret@127.0.0.1:1/x")
    msg = str(info.value)
    assert "127.0.0.1:1" in msg and "secret" not in msg
    assert "\n" not in msg
