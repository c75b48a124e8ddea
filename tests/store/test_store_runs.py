"""algo_run bookkeeping, accounts, trending tickers and the keystore."""

from __future__ import annotations

import asyncpg
import pytest

from liu.store import (
    add_trending,
    close_runs,
    create_runs,
    load_keystore,
    record_account,
    save_keystore,
)

pytestmark = pytest.mark.db


async def test_create_and_close_runs(pg_dsn: str) -> None:
    ids = await create_runs(
        pg_dsn,
        "b1",
        "backtest",
        [("momo", 0, {"x": 1}), ("momo", 1, {"x": 1}), ("revert", 1, {})],
    )
    assert set(ids) == {("momo", 0), ("momo", 1), ("revert", 1)}
    assert len(set(ids.values())) == 3
    other = await create_runs(pg_dsn, "b2", "PAPER", [("momo", 0, {})])

    # Consumer 1 ends first (crash); then the whole batch stops.
    assert await close_runs(pg_dsn, "b1", "consumer crashed", consumer=1) == 2
    assert await close_runs(pg_dsn, "b1", "stop") == 1
    assert await close_runs(pg_dsn, "b1", "again") == 0

    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch(
            "SELECT id, algo_name, consumer, env, parameters, end_time, end_reason FROM algo_run"
        )
    finally:
        await conn.close()
    by_id = {r["id"]: r for r in rows}
    assert by_id[ids[("momo", 1)]]["end_reason"] == "consumer crashed"
    assert by_id[ids[("revert", 1)]]["end_reason"] == "consumer crashed"
    assert by_id[ids[("momo", 0)]]["end_reason"] == "stop"
    assert by_id[ids[("momo", 0)]]["env"] == "BACKTEST"
    assert by_id[ids[("momo", 0)]]["parameters"] == '{"x": 1}'
    assert by_id[other[("momo", 0)]]["end_time"] is None  # other batch untouched


async def test_create_runs_rejects_bad_env(pg_dsn: str) -> None:
    with pytest.raises(ValueError):
        await create_runs(pg_dsn, "b", "prod", [("a", 0, {})])


async def test_account_and_trending(pg_dsn: str) -> None:
    account_id = await record_account(pg_dsn, "b1", 100_000.0)
    await add_trending(pg_dsn, "b1", "gappers", ["AAPL", "MSFT", "TSLA"])
    await add_trending(pg_dsn, "b1", "gappers", [])
    conn = await asyncpg.connect(pg_dsn)
    try:
        p = await conn.fetchrow("SELECT account_id, size FROM portfolio WHERE batch_id = 'b1'")
        bal = await conn.fetchval("SELECT balance FROM accounts WHERE account_id = $1", account_id)
        tickers = await conn.fetch("SELECT symbol, scanner_name FROM trending_tickers ORDER BY id")
    finally:
        await conn.close()
    assert p["account_id"] == account_id and p["size"] == 100_000.0 and bal == 100_000.0
    assert [(r["symbol"], r["scanner_name"]) for r in tickers] == [
        ("AAPL", "gappers"),
        ("MSFT", "gappers"),
        ("TSLA", "gappers"),
    ]


async def test_keystore_roundtrip(pg_dsn: str) -> None:
    assert await load_keystore(pg_dsn, "momo") == {}
    items = {"count": 3, "levels": [1.5, 2.5], "state": {"open": True, "symbol": "AAPL"}, "none": None}
    await save_keystore(pg_dsn, "momo", items)
    await save_keystore(pg_dsn, "other", {"count": 99})
    assert await load_keystore(pg_dsn, "momo") == items
    await save_keystore(pg_dsn, "momo", {"count": 4})
    loaded = await load_keystore(pg_dsn, "momo")
    assert loaded["count"] == 4 and loaded["levels"] == [1.5, 2.5]
    assert await load_keystore(pg_dsn, "other") == {"count": 99}
