"""Batch analysis against real PostgreSQL: load fills, list batches, save gain_loss/trade_analysis."""

from __future__ import annotations

import asyncpg
import pytest

from liu.analysis.batch import (
    BatchNotFound,
    analyse_batch,
    latest_batch,
    list_batches,
    load_bars,
    load_fills,
    save_analysis,
)
from liu.analysis.trades import round_trips
from liu.store import create_runs
from liu.store.writer import ns_to_datetime
from tests.analysis.helpers import BATCH_T as T
from tests.analysis.helpers import FILLS_C0, FILLS_C1, M, write_batch

pytestmark = pytest.mark.db


async def test_load_fills_gives_back_what_was_written(pg_dsn: str) -> None:
    await write_batch(pg_dsn)
    fills = await load_fills(pg_dsn, "b1")
    expected = sorted(FILLS_C0 + FILLS_C1, key=lambda f: f.ts)
    assert fills == expected  # ts are whole µs, so nothing is lost to the database's precision
    assert await load_fills(pg_dsn, "nope") == []


async def test_list_batches_newest_first(pg_dsn: str) -> None:
    await write_batch(pg_dsn, "b1")
    await create_runs(pg_dsn, "b2", "BACKTEST", [("solo", 0, {})])
    batches = await list_batches(pg_dsn)
    assert [b["batch_id"] for b in batches] == ["b2", "b1"]
    assert batches[1]["strategies"] == ["momo", "revert"]
    assert batches[1]["fills"] == 7 and batches[0]["fills"] == 0
    assert batches[0]["env"] == "BACKTEST"
    assert await latest_batch(pg_dsn) == "b2"


async def test_latest_batch_of_an_empty_database(pg_dsn: str) -> None:
    with pytest.raises(BatchNotFound, match="no batch"):
        await latest_batch(pg_dsn)


async def test_save_analysis_is_idempotent_and_files_trips_under_the_closing_run(pg_dsn: str) -> None:
    runs = await write_batch(pg_dsn)
    trips = round_trips(await load_fills(pg_dsn, "b1"))
    assert len(trips) == 3
    assert await save_analysis(pg_dsn, "b1", trips) == 3
    assert await save_analysis(pg_dsn, "b1", trips) == 3  # again: replaces, does not add
    conn = await asyncpg.connect(pg_dsn)
    try:
        gl = await conn.fetch("SELECT * FROM gain_loss ORDER BY tstamp")
        ta = await conn.fetch("SELECT * FROM trade_analysis ORDER BY exit_time")
    finally:
        await conn.close()
    assert len(gl) == 3 and len(ta) == 3
    # AAA long by momo on consumer 0: 10 * 3 - 2 fees = 28; r = 28 / (10 * 2)
    assert gl[0]["symbol"] == "AAA" and gl[0]["algo_run_id"] == runs[("momo", 0)]
    assert gl[0]["gain_value"] == pytest.approx(28.0)
    assert gl[0]["r_units"] == pytest.approx(1.4)
    assert gl[0]["gain_percentage"] == pytest.approx(28.0 / 1000 * 100)
    assert gl[0]["tstamp"] == ns_to_datetime(T + 30 * M)
    # AAA short by revert: 5 * (104 - 105) = -5; r = -5 / (5 * 2)
    assert gl[1]["algo_run_id"] == runs[("revert", 0)]
    assert gl[1]["gain_value"] == pytest.approx(-5.0) and gl[1]["r_units"] == pytest.approx(-0.5)
    # BBB by momo on consumer 1: 20 * -0.5 - 1.0 = -11
    assert gl[2]["symbol"] == "BBB" and gl[2]["algo_run_id"] == runs[("momo", 1)]
    assert gl[2]["gain_value"] == pytest.approx(-11.0)
    assert ta[1]["side"] == "short" and ta[1]["qty"] == 5 and ta[1]["batch_id"] == "b1"
    assert (ta[1]["entry_price"], ta[1]["exit_price"]) == (104.0, 105.0)
    assert ta[1]["entry_time"] == ns_to_datetime(T + 31 * M)
    assert ta[1]["exit_time"] == ns_to_datetime(T + 40 * M)


async def test_save_analysis_leaves_other_batches_alone(pg_dsn: str) -> None:
    await write_batch(pg_dsn, "b1")
    await write_batch(pg_dsn, "b2")
    await save_analysis(pg_dsn, "b1", round_trips(await load_fills(pg_dsn, "b1")))
    await save_analysis(pg_dsn, "b2", round_trips(await load_fills(pg_dsn, "b2")))
    await save_analysis(pg_dsn, "b2", [])
    conn = await asyncpg.connect(pg_dsn)
    try:
        per_batch = dict(await conn.fetch("SELECT batch_id, count(*) FROM trade_analysis GROUP BY batch_id"))
        gl = await conn.fetchval("SELECT count(*) FROM gain_loss")
    finally:
        await conn.close()
    assert per_batch == {"b1": 3}
    assert gl == 3


async def test_analyse_batch_reads_start_cash_and_saves(pg_dsn: str) -> None:
    await write_batch(pg_dsn, cash=50_000.0)
    report = await analyse_batch(pg_dsn, "b1")
    assert report.start_cash == 50_000.0
    assert report.metrics["round_trips"] == 3
    assert report.metrics["pnl"] == pytest.approx(28.0 - 5.0 - 11.0)
    assert report.metrics["fees"] == pytest.approx(3.0)
    assert report.metrics["open_positions"] == 1
    assert report.equity_source == "fills"
    by_strategy = {row["strategy"]: row for row in report.per_strategy}
    assert by_strategy["momo"]["pnl"] == pytest.approx(17.0)
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM gain_loss") == 3
    finally:
        await conn.close()


async def test_analyse_batch_without_accounts_row_says_so(pg_dsn: str) -> None:
    await write_batch(pg_dsn, cash=None)
    report = await analyse_batch(pg_dsn, "b1")
    assert report.start_cash == 100_000.0
    assert any("no accounts row" in n for n in report.notes)
    explicit = await analyse_batch(pg_dsn, "b1", start_cash=20_000.0)
    assert explicit.start_cash == 20_000.0 and not any("accounts" in n for n in explicit.notes)


async def test_analyse_unknown_batch_is_one_clear_error(pg_dsn: str) -> None:
    with pytest.raises(BatchNotFound, match="'zzz'"):
        await analyse_batch(pg_dsn, "zzz")


async def test_load_bars(pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.executemany(
            "INSERT INTO stock_ohlc (symbol, symbol_date, open, high, low, close, volume) "
            "VALUES ($1, $2, $3, $3, $3, $3, 100)",
            [(s, ns_to_datetime(T + i * M), 10.0 + i) for s in ("AAA", "BBB") for i in range(5)],
        )
    finally:
        await conn.close()
    bars = await load_bars(pg_dsn, ["AAA", "ZZZ"], T + M, T + 3 * M)
    assert list(bars) == ["AAA"]
    assert list(bars["AAA"]["ts"]) == [T + M, T + 2 * M, T + 3 * M]
    assert list(bars["AAA"]["close"]) == [11.0, 12.0, 13.0]
