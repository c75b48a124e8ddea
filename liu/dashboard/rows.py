"""The session's batch in PostgreSQL as the live page shows it: positions (rebuilt from the fills with the
broker's own `Position.apply`, read incrementally), open orders, scanner picks, models' scores.

Positions are marked at the latest fill price of each symbol: the main process sees fills, not the
market, so "unrealised" moves when something trades.
"""

from __future__ import annotations

import asyncio
import collections
from datetime import datetime
from zoneinfo import ZoneInfo

import asyncpg

from liu.brokers.base import Position
from liu.events import OPEN_STATUSES

NY = ZoneInfo("America/New_York")
LATEST_FILLS = 50
MAX_ORDERS = 200


_FILLS_SQL = """
SELECT t.id, t.client_order_id, COALESCE(r.algo_name, '') AS strategy, t.symbol, t.side, t.qty, t.price,
       t.fee, t.filled_at
FROM trades t LEFT JOIN algo_run r ON r.id = t.algo_run_id
WHERE t.batch_id = $1 AND t.id > $2
ORDER BY t.id
LIMIT 10000
"""
_ORDERS_SQL = """
SELECT o.client_order_id, COALESCE(r.algo_name, '') AS strategy, o.symbol, o.side, o.qty, o.order_type,
       o.limit_price, o.trigger_price, o.status, o.leg, o.filled_qty, o.submitted_at, o.tif,
       count(*) OVER () AS total
FROM orders o LEFT JOIN algo_run r ON r.id = o.algo_run_id
WHERE o.batch_id = $1 AND o.status = ANY($2::text[])
ORDER BY o.submitted_at DESC NULLS LAST, o.client_order_id
LIMIT $3
"""
_PICKS_SQL = """
SELECT scanner_name, create_tstamp, array_agg(symbol ORDER BY id) AS symbols
FROM trending_tickers WHERE batch_id = $1
GROUP BY scanner_name, create_tstamp
ORDER BY create_tstamp DESC
LIMIT 10
"""
_MODELS_SQL = """
SELECT model, version, count(*) AS scores,
       count(*) FILTER (WHERE created_at > now() - interval '1 minute') AS last_minute,
       max(created_at) AS last
FROM predictions WHERE batch_id = $1
GROUP BY model, version
ORDER BY model, version
"""


class BatchRows:
    """The session's batch in PostgreSQL: fills (read incrementally) into positions, open orders, picks,
    models. One connection, reopened after an error; the error is shown, never raised."""

    def __init__(self, dsn: str, batch_id: str) -> None:
        self.dsn = dsn
        self.batch_id = batch_id
        self._conn: asyncpg.Connection | None = None
        self._last_id = 0
        self.positions: dict[tuple[str, str], Position] = {}
        self.marks: dict[str, float] = {}
        self.fills: collections.deque[dict] = collections.deque(maxlen=LATEST_FILLS)
        self.fill_count = 0
        self.orders: list[dict] = []
        self.open_orders = 0
        self.picks: list[dict] = []
        self.models: list[dict] = []
        self.error: str | None = None
        self._ticks = 0

    async def refresh(self) -> None:
        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = await asyncpg.connect(self.dsn, timeout=5)
            await self._fills(self._conn)
            await self._orders(self._conn)
            if self._ticks % 5 == 0:
                await self._picks_models(self._conn)
            self._ticks += 1
            self.error = None
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as e:
            self.error = f"database: {type(e).__name__}: {e}"
            await self.close()

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                await asyncio.wait_for(conn.close(), 2)
            except (OSError, asyncpg.InterfaceError, TimeoutError):
                conn.terminate()

    async def _fills(self, conn: asyncpg.Connection) -> None:
        rows = await conn.fetch(_FILLS_SQL, self.batch_id, self._last_id)
        for r in rows:
            self.positions.setdefault((r["strategy"], r["symbol"]), Position()).apply(
                r["side"], r["qty"], r["price"], r["fee"]
            )
            self.marks[r["symbol"]] = r["price"]
            self.fills.appendleft(
                {
                    "time": _ny(r["filled_at"]),
                    "client_order_id": r["client_order_id"],
                    "strategy": r["strategy"],
                    "symbol": r["symbol"],
                    "side": r["side"],
                    "qty": r["qty"],
                    "price": r["price"],
                    "fee": r["fee"],
                }
            )
            self._last_id = r["id"]
        self.fill_count += len(rows)

    async def _orders(self, conn: asyncpg.Connection) -> None:
        rows = await conn.fetch(_ORDERS_SQL, self.batch_id, sorted(OPEN_STATUSES), MAX_ORDERS)
        self.open_orders = rows[0]["total"] if rows else 0
        self.orders = [
            {
                "client_order_id": r["client_order_id"],
                "strategy": r["strategy"],
                "symbol": r["symbol"],
                "side": r["side"],
                "qty": r["qty"],
                "filled_qty": r["filled_qty"],
                "type": r["order_type"],
                "price": r["limit_price"] if r["limit_price"] is not None else r["trigger_price"],
                "status": r["status"],
                "leg": r["leg"] or "",
                "tif": r["tif"],
                "submitted": _ny(r["submitted_at"]),
            }
            for r in rows
        ]

    async def _picks_models(self, conn: asyncpg.Connection) -> None:
        self.picks = [
            {"scanner": r["scanner_name"], "at": _ny(r["create_tstamp"]), "symbols": list(r["symbols"])}
            for r in await conn.fetch(_PICKS_SQL, self.batch_id)
        ]
        self.models = [
            {
                "model": r["model"],
                "version": r["version"],
                "scores": r["scores"],
                "per_minute": r["last_minute"],
                "last": _ny(r["last"]),
            }
            for r in await conn.fetch(_MODELS_SQL, self.batch_id)
        ]

    def position_rows(self) -> list[dict]:
        rows = []
        for (strategy, symbol), p in sorted(self.positions.items()):
            if not p.qty and not p.realized:
                continue
            mark = self.marks.get(symbol, p.avg_price)
            rows.append(
                {
                    "strategy": strategy,
                    "symbol": symbol,
                    "qty": p.qty,
                    "avg_price": p.avg_price,
                    "mark": mark,
                    "unrealized": (mark - p.avg_price) * p.qty,
                    "realized": p.realized,
                    "fees": p.fees,
                }
            )
        rows.sort(key=lambda r: (r["qty"] == 0, r["strategy"], r["symbol"]))
        return rows


def _ny(ts: datetime | None) -> str:
    return ts.astimezone(NY).strftime("%Y-%m-%d %H:%M:%S") if ts is not None else ""
