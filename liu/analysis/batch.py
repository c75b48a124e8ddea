"""Analysis of a stored batch (daemon or backtest): load its fills, measure, save gain_loss/trade_analysis.

Daemon batches and backtests go through `analyse_batch`, so both are measured by the
same metric code. Results are written in one transaction after deleting the batch's
previous analysis rows, so running it twice leaves one copy.
"""

from __future__ import annotations

import itertools
import json
import logging
import operator
from collections.abc import Sequence

import numpy as np

from liu.analysis.report import Report, build_report, equity_from_fills
from liu.analysis.trades import RoundTrip
from liu.errors import LiuError
from liu.events import Fill
from liu.store.db import connection
from liu.store.writer import ns_to_datetime

log = logging.getLogger(__name__)

DEFAULT_START_CASH = 100_000.0
_DAY_NS = 86_400 * 10**9

# ns since the epoch, exact: EXTRACT returns numeric on PostgreSQL >= 14.
_NS = "(EXTRACT(EPOCH FROM {col}) * 1000000)::bigint * 1000"

GAIN_LOSS_COLUMNS = ("symbol", "algo_run_id", "gain_percentage", "gain_value", "r_units", "tstamp")
TRADE_ANALYSIS_COLUMNS = (
    "symbol",
    "algo_run_id",
    "batch_id",
    "side",
    "qty",
    "entry_time",
    "exit_time",
    "entry_price",
    "exit_price",
    "gain_percentage",
    "gain_value",
    "r_units",
)


class BatchNotFound(LiuError):
    """The batch id has no algo_run rows and no trades."""


async def load_fills(dsn: str, batch_id: str) -> list[Fill]:
    """The batch's fills in time order; the strategy is the algo_run's `algo_name`."""
    async with connection(dsn) as conn:
        rows = await conn.fetch(
            f"""
            SELECT t.client_order_id, COALESCE(r.algo_name, '') AS strategy, t.symbol, t.side, t.qty,
                   t.price, t.fee, {_NS.format(col="t.filled_at")} AS ts_ns,
                   t.stop_price, t.target_price, t.indicators
            FROM trades t LEFT JOIN algo_run r ON r.id = t.algo_run_id
            WHERE t.batch_id = $1
            ORDER BY t.filled_at, t.id
            """,
            batch_id,
        )
    return [
        Fill(
            client_order_id=r["client_order_id"],
            strategy=r["strategy"],
            symbol=r["symbol"],
            side=r["side"],
            qty=r["qty"],
            price=r["price"],
            fee=r["fee"],
            ts=int(r["ts_ns"]),
            stop=r["stop_price"],
            target=r["target_price"],
            indicators=json.loads(r["indicators"]) if r["indicators"] is not None else None,
        )
        for r in rows
    ]


async def list_batches(dsn: str) -> list[dict]:
    """Every batch, newest first: batch_id, env, start, end, strategies, fills."""
    async with connection(dsn) as conn:
        rows = await conn.fetch(
            """
            SELECT r.batch_id, min(r.env) AS env, min(r.start_time) AS start, max(r.end_time) AS "end",
                   array_agg(DISTINCT r.algo_name ORDER BY r.algo_name) AS strategies,
                   COALESCE((SELECT count(*) FROM trades t WHERE t.batch_id = r.batch_id), 0) AS fills
            FROM algo_run r
            GROUP BY r.batch_id
            ORDER BY min(r.start_time) DESC, r.batch_id DESC
            """
        )
    return [
        {
            "batch_id": r["batch_id"],
            "env": r["env"],
            "start": r["start"],
            "end": r["end"],
            "strategies": list(r["strategies"]),
            "fills": int(r["fills"]),
        }
        for r in rows
    ]


async def latest_batch(dsn: str) -> str:
    """The most recently started batch id; BatchNotFound when the database has none."""
    async with connection(dsn) as conn:
        batch_id = await conn.fetchval(
            "SELECT batch_id FROM algo_run GROUP BY batch_id ORDER BY min(start_time) DESC, batch_id DESC LIMIT 1"
        )
    if batch_id is None:
        raise BatchNotFound("database has no batch yet (no algo_run rows): run `trader` or `trader backtest`")
    return batch_id


async def load_start_cash(dsn: str, batch_id: str) -> float | None:
    """The batch's starting cash from its accounts row (see liu.store.runs.record_account), if any."""
    async with connection(dsn) as conn:
        return await conn.fetchval(
            "SELECT balance FROM accounts WHERE batch_id = $1 ORDER BY account_id LIMIT 1", batch_id
        )


async def load_bars(
    dsn: str, symbols: Sequence[str], start_ns: int | None = None, end_ns: int | None = None
) -> dict[str, dict[str, np.ndarray]]:
    """`stock_ohlc` bars per symbol as arrays (ts ns, open, high, low, close, volume)."""
    async with connection(dsn) as conn:
        rows = await conn.fetch(
            f"""
            SELECT symbol, {_NS.format(col="symbol_date")} AS ts_ns, open, high, low, close, volume
            FROM stock_ohlc
            WHERE symbol = ANY($1::text[])
              AND ($2::timestamptz IS NULL OR symbol_date >= $2)
              AND ($3::timestamptz IS NULL OR symbol_date <= $3)
            ORDER BY symbol, symbol_date
            """,
            list(symbols),
            None if start_ns is None else ns_to_datetime(start_ns),
            None if end_ns is None else ns_to_datetime(end_ns),
        )
    out: dict[str, dict[str, np.ndarray]] = {}
    for sym, group in itertools.groupby(
        rows, key=operator.itemgetter("symbol")
    ):  # rows come sorted by symbol
        sel = list(group)
        out[sym] = {"ts": np.array([r["ts_ns"] for r in sel], dtype=np.int64)}
        for col in ("open", "high", "low", "close", "volume"):
            out[sym][col] = np.array([r[col] for r in sel], dtype=np.float64)
    return out


def bar_closes(bars: dict[str, dict[str, np.ndarray]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """symbol -> (time of each bar's END, close), for `equity_from_fills(prices=...)`.

    stock_ohlc stamps a bar with its start; its close is only known at its end. The bar
    length is the most common spacing of the symbol's bars (60 s when there is one bar).
    """
    out = {}
    for sym, b in bars.items():
        ts = b["ts"]
        steps = np.diff(ts)
        if steps.size:
            values, counts = np.unique(steps, return_counts=True)
            length = int(values[np.argmax(counts)])
        else:
            length = 60 * 10**9
        out[sym] = (ts + length, b["close"])
    return out


async def save_analysis(dsn: str, batch_id: str, trips: Sequence[RoundTrip]) -> int:
    """Replace the batch's gain_loss and trade_analysis rows with one row per round trip each.

    A round trip is filed under the algo_run of its closing fill (the run of the consumer
    that traded it), else the first run of its strategy in the batch. Trips whose strategy
    has no run in the batch cannot be stored (algo_run_id is required) and are skipped with
    a warning. Returns the number of round trips stored.
    """
    async with connection(dsn) as conn, conn.transaction():
        runs = await conn.fetch(
            "SELECT id, algo_name FROM algo_run WHERE batch_id = $1 ORDER BY id", batch_id
        )
        by_name: dict[str, int] = {}
        for r in runs:
            by_name.setdefault(r["algo_name"], r["id"])
        by_order = dict(
            await conn.fetch(
                "SELECT DISTINCT ON (client_order_id) client_order_id, algo_run_id FROM trades "
                "WHERE batch_id = $1 AND algo_run_id IS NOT NULL ORDER BY client_order_id, id",
                batch_id,
            )
        )
        run_ids = [by_order.get(t.exit_order_id) or by_name.get(t.strategy) for t in trips]
        skipped = sorted({t.strategy for t, rid in zip(trips, run_ids, strict=True) if rid is None})
        if skipped:
            log.warning(
                "analysis of batch %s: strategies %s have no algo_run row; their round trips are not stored",
                batch_id,
                skipped,
            )
        await conn.execute(
            "DELETE FROM gain_loss WHERE algo_run_id IN (SELECT id FROM algo_run WHERE batch_id = $1)",
            batch_id,
        )
        await conn.execute("DELETE FROM trade_analysis WHERE batch_id = $1", batch_id)
        kept = [(t, rid) for t, rid in zip(trips, run_ids, strict=True) if rid is not None]
        if kept:
            await conn.copy_records_to_table(
                "gain_loss",
                records=[
                    (
                        t.symbol,
                        rid,
                        _num(t.gain_percentage),
                        t.gain_value,
                        t.r_units,
                        ns_to_datetime(t.exit_ts),
                    )
                    for t, rid in kept
                ],
                columns=GAIN_LOSS_COLUMNS,
            )
            await conn.copy_records_to_table(
                "trade_analysis",
                records=[
                    (
                        t.symbol,
                        rid,
                        batch_id,
                        t.side,
                        t.qty,
                        ns_to_datetime(t.entry_ts),
                        ns_to_datetime(t.exit_ts),
                        t.entry_price,
                        t.exit_price,
                        _num(t.gain_percentage),
                        t.gain_value,
                        t.r_units,
                    )
                    for t, rid in kept
                ],
                columns=TRADE_ANALYSIS_COLUMNS,
            )
    return len(kept)


async def batch_report(
    dsn: str,
    batch_id: str,
    *,
    start_cash: float | None = None,
    equity: tuple[np.ndarray, np.ndarray] | None = None,
    mark_to_bars: bool = False,
    title: str | None = None,
    prices: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> Report:
    """The batch's report, read-only (the notebooks use this; `analyse_batch` also saves).

    `equity` = (ts ns, equity) when the caller has a marked curve (the backtester). Without
    it the curve is rebuilt from the fills: marked at `stock_ohlc` bar closes of the traded
    symbols when `mark_to_bars` and such bars exist, else fill-marked. `start_cash`
    defaults to the batch's accounts row, else 100,000 (said in the report's notes).
    `prices` (symbol -> (ts ns, price)) are what the page draws the fills on; with
    `mark_to_bars` the bar closes read for the equity serve when none are given.
    """
    fills = await load_fills(dsn, batch_id)
    notes: list[str] = []
    if start_cash is None:
        start_cash = await load_start_cash(dsn, batch_id)
        if start_cash is None:
            start_cash = DEFAULT_START_CASH
            notes.append(
                f"batch {batch_id} has no accounts row: start cash assumed {DEFAULT_START_CASH:,.0f}"
            )
    if not fills:
        async with connection(dsn) as conn:
            known = await conn.fetchval("SELECT count(*) FROM algo_run WHERE batch_id = $1", batch_id)
        if not known:
            raise BatchNotFound(f"batch {batch_id!r}: no algo_run rows and no trades in the database")
        notes.append(f"batch {batch_id} has no fills")
    source = "given"
    if equity is None and mark_to_bars and fills:
        symbols = sorted({f.symbol for f in fills})
        bars = await load_bars(dsn, symbols, fills[0].ts - _DAY_NS, fills[-1].ts + _DAY_NS)
        if bars:
            first = fills[0].ts  # fills come in time order
            every = bar_closes(bars)
            if prices is None:
                prices = every
            closes = {s: (t[t >= first], c[t >= first]) for s, (t, c) in every.items()}
            equity = equity_from_fills(fills, float(start_cash), closes)
            source = "bar closes"
            notes.append(
                f"equity marked at stock_ohlc bar closes of {len(bars)} of {len(symbols)} traded symbols "
                "(the others at their latest fill price)"
            )
    eq_ts, eq = equity if equity is not None else (None, None)
    return build_report(
        fills,
        eq_ts,
        eq,
        float(start_cash),
        title=title or f"batch {batch_id}",
        notes=notes,
        equity_source=source,
        prices=prices,
        batch_id=batch_id,
    )


async def analyse_batch(
    dsn: str,
    batch_id: str,
    *,
    start_cash: float | None = None,
    equity: tuple[np.ndarray, np.ndarray] | None = None,
    title: str | None = None,
    prices: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> Report:
    """Load the batch's fills, build the report, store gain_loss/trade_analysis, return the report.

    `equity` = (ts ns, equity) when the caller has a marked curve (the backtester);
    without it the curve is rebuilt from the fills (fill-marked). `start_cash` defaults to
    the batch's accounts row, else 100,000 (said in the report's notes).
    """
    report = await batch_report(
        dsn, batch_id, start_cash=start_cash, equity=equity, title=title, prices=prices
    )
    await save_analysis(dsn, batch_id, report.trips)
    return report


async def batch_page(dsn: str, batch_id: str, *, plotly_js: str = "inline") -> str:
    """The page of a stored batch (daemon or backtest): fills from PostgreSQL, equity marked at the
    `stock_ohlc` bar closes of the traded symbols when there are any (else at fill prices), start cash
    from the batch's accounts row. Raises `BatchNotFound` for an unknown batch."""
    from liu.analysis.page import render

    report = await batch_report(dsn, batch_id, mark_to_bars=True)
    async with connection(dsn) as conn:
        report.env = await conn.fetchval("SELECT min(env) FROM algo_run WHERE batch_id = $1", batch_id) or ""
    return render(report, plotly_js=plotly_js)


def _num(value: float) -> float | None:
    return None if value != value else value  # NaN → NULL


__all__ = [
    "BatchNotFound",
    "analyse_batch",
    "bar_closes",
    "batch_page",
    "batch_report",
    "latest_batch",
    "list_batches",
    "load_bars",
    "load_fills",
    "load_start_cash",
    "save_analysis",
]
