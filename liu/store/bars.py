"""Bars in PostgreSQL (`stock_ohlc`): import recorded files, and read them back as wire events.

The backtester can replay bars already in the database (`trader backtest
--from-db`); `trader db import FILE` puts a recorded file's bars there. Reading
yields the same BAR wire tuples the producer makes, in time order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from liu.clock import FakeClock
from liu.events import BAR
from liu.store.db import connection
from liu.store.writer import ns_to_datetime

_CHUNK = 20_000


async def import_bars(dsn: str, path: Path, adjustment: str = "all") -> int:
    """Copy a recorded file's bars (any bar format the replay reads) into stock_ohlc; return how many.

    Prices are adjusted as a replay adjusts them (`liu.sources.adjust`; splits and dividends by
    default), so `backtest --from-db` and training on stored bars see no jump at a split either.
    Rows already there (same symbol and time) are replaced, so importing twice is harmless.
    """
    from liu.sources.replay import ReplayFeed

    feed = ReplayFeed(path, speed=None, batch=_CHUNK, adjustment=adjustment)
    if feed.format not in ("lean_minute", "minute_end", "daily"):
        raise ValueError(f"{path}: {feed.format} holds ticks, not bars; import a bar file")
    n = 0
    async with connection(dsn) as conn:
        async for frame in feed.frames(FakeClock(0)):
            rows = [
                (m["S"], ns_to_datetime(m["t"].to_unix_nano()), m["o"], m["h"], m["l"], m["c"], m["v"])
                for m in frame
                if m["T"] == "b"
            ]
            if not rows:
                continue
            async with conn.transaction():
                await conn.execute("CREATE TEMP TABLE IF NOT EXISTS _bars (LIKE stock_ohlc) ON COMMIT DROP")
                await conn.copy_records_to_table(
                    "_bars",
                    records=rows,
                    columns=["symbol", "symbol_date", "open", "high", "low", "close", "volume"],
                )
                await conn.execute(
                    """
                    INSERT INTO stock_ohlc (symbol, symbol_date, open, high, low, close, volume)
                    SELECT symbol, symbol_date, open, high, low, close, volume FROM _bars
                    ON CONFLICT (symbol, symbol_date) DO UPDATE SET
                      open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low,
                      close = EXCLUDED.close, volume = EXCLUDED.volume
                    """
                )
            n += len(rows)
    return n


US = "(extract(epoch FROM symbol_date) * 1000000)::bigint"  # a bar's time in µs (exact: timestamptz is µs)


def filter_sql(symbols: list[str] | None, start: Any, end: Any) -> tuple[str, list[Any]]:
    """The WHERE clause (and its arguments) selecting stock_ohlc rows of `symbols` from `start` to `end`."""
    from liu.sources.replay import bounds

    lo, hi = bounds(start, end)
    clauses, args = [], []
    if symbols is not None:
        args.append(symbols)
        clauses.append(f"symbol = ANY(${len(args)})")
    if lo is not None:
        args.append(ns_to_datetime(lo))
        clauses.append(f"symbol_date >= ${len(args)}")
    if hi is not None:
        args.append(ns_to_datetime(hi))
        clauses.append(f"symbol_date < ${len(args)}")
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


async def bars_universe(dsn: str, symbols: list[str] | None, start: Any, end: Any) -> dict[str, dict]:
    """symbol → {price, avg_volume, shortable} of the stored bars in range (what a feed's universe gives)."""
    where, args = filter_sql(symbols, start, end)
    async with connection(dsn) as conn:
        rows = await conn.fetch(
            f"""
            SELECT symbol, (array_agg(close ORDER BY symbol_date))[1] AS price, avg(volume) AS avg_volume
            FROM stock_ohlc{where} GROUP BY symbol ORDER BY symbol
            """,
            *args,
        )
    return {
        r["symbol"]: {"price": r["price"], "avg_volume": r["avg_volume"], "shortable": True} for r in rows
    }


async def bar_batches(
    dsn: str, symbols: list[str] | None, start: Any, end: Any
) -> AsyncIterator[list[tuple]]:
    """The stored bars as BAR wire tuples in time order (symbol order within a time), in chunks."""
    where, args = filter_sql(symbols, start, end)
    async with connection(dsn) as conn, conn.transaction():
        cur = conn.cursor(
            f"SELECT symbol, {US} AS us, open, high, low, close, volume FROM stock_ohlc{where}"
            " ORDER BY symbol_date, symbol",
            *args,
            prefetch=_CHUNK,
        )
        batch: list[tuple] = []
        async for r in cur:
            ts = r["us"] * 1000
            batch.append((BAR, r["symbol"], ts, r["open"], r["high"], r["low"], r["close"], r["volume"], ts))
            if len(batch) >= _CHUNK:
                yield batch
                batch = []
        if batch:
            yield batch
