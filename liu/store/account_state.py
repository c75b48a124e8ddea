"""The paper account across sessions: cash, positions per strategy and symbol, open good-till-cancelled orders.

With `[broker] persist` (the default for paper trading) a session continues the account of the last
persisted session instead of starting with `[broker] cash`, so a paper session behaves like a broker
account that lives across restarts, whether the last session ended cleanly or was killed. There is one
persisted paper account per database; a session with `persist = false` starts fresh and leaves it alone.

Nothing is written at a session's end, so no crash can leave a half-written end state. A persisted
session's start is stored as it starts (`start_account`: its `accounts` row with `persist`, its cash as
`balance` and its positions in `account_positions`, in one transaction). Its state at any later moment is
that start plus its fills, which the trade writer puts in the database exactly once (the next start
replays the spool before it reads them). Cash moves only with fills (a buy: -qty·price - fee; a sell:
+qty·price - fee) and positions follow `Position.apply`, the paper broker's own bookkeeping, so the
figures restored are the ones the broker had. The open orders are the rows still open: the writer keeps
each order's latest status, and a crashed session's orders that are not good-till-cancelled are cancelled
at the next start (`liu.store.runs.close_crashed_runs`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import asyncpg

from liu.brokers.base import Position
from liu.events import OPEN_STATUSES, Order
from liu.store.db import connection
from liu.store.runs import UPSERT_PORTFOLIO
from liu.store.writer import EPOCH

log = logging.getLogger(__name__)

# A session's fills in the order they were written (per symbol, the order they happened: one writer per
# symbol, and a spool keeps its writer's order), with the strategy of the order they filled.
FILLS = """
SELECT COALESCE(r.algo_name, tr.algo_name) AS strategy, t.symbol, t.side, t.qty, t.price, t.fee
FROM trades t
LEFT JOIN orders o ON o.client_order_id = t.client_order_id
LEFT JOIN algo_run r ON r.id = o.algo_run_id
LEFT JOIN algo_run tr ON tr.id = t.algo_run_id
WHERE t.batch_id = $1
ORDER BY t.id
"""
# The account's open orders, whichever persisted session placed them: entries before their legs.
OPEN_ORDERS = """
SELECT o.*, r.algo_name AS strategy
FROM orders o LEFT JOIN algo_run r ON r.id = o.algo_run_id
WHERE o.status = ANY($1::text[])
  AND (o.batch_id = $2 OR o.batch_id IN (SELECT batch_id FROM accounts WHERE persist))
ORDER BY (o.parent_id IS NOT NULL), o.created_at, o.client_order_id
"""
LAST_PRICES = """
SELECT DISTINCT ON (symbol) symbol, price FROM trades
WHERE symbol = ANY($1::text[]) AND (batch_id = $2 OR batch_id IN (SELECT batch_id FROM accounts WHERE persist))
ORDER BY symbol, id DESC
"""


@dataclass
class PaperAccount:
    """A persisted paper account as it stands: what a session continues from."""

    batch_id: str  # the session whose state this is (its start plus its fills)
    cash: float
    positions: dict[tuple[str, str], Position] = field(default_factory=dict)  # (strategy, symbol), qty != 0
    orders: list[Order] = field(default_factory=list)  # open, entries before their legs
    prices: dict[str, float] = field(default_factory=dict)  # last fill price of the open orders' symbols
    persist: bool = True  # False: a session's own account, read for a restarted consumer only

    def describe(self) -> str:
        return (
            f"cash {self.cash:,.2f}, {len(self.positions)} positions, {len(self.orders)} open orders "
            f"(from batch {self.batch_id})"
        )

    def to_json(self) -> dict:
        return {
            "from_batch": self.batch_id,
            "cash": self.cash,
            "positions": [[st, sym, p.qty, p.avg_price] for (st, sym), p in sorted(self.positions.items())],
            "orders": [o.client_order_id for o in self.orders],
        }


def _ns(value: datetime | None) -> int:
    return 0 if value is None else (value - EPOCH) // timedelta(microseconds=1) * 1000


def _order(row: asyncpg.Record) -> Order:
    indicators = row["indicators"]
    if isinstance(indicators, str):
        indicators = json.loads(indicators)
    return Order(
        row["symbol"],
        row["side"],
        row["qty"],
        row["order_type"],
        limit_price=row["limit_price"],
        stop=row["stop_price"],
        target=row["target_price"],
        strategy=row["strategy"],
        client_order_id=row["client_order_id"],
        submitted_ts=_ns(row["submitted_at"]),
        status=row["status"],
        reason=row["reason"] or "",
        indicators=indicators,
        tif=row["tif"],
        trigger_price=row["trigger_price"],
        trail_percent=row["trail_percent"],
        trail_price=row["trail_price"],
        filled_qty=row["filled_qty"],
        avg_fill_price=row["filled_avg_price"] or 0.0,
        order_class=row["order_class"],
        parent_id=row["parent_id"] or "",
        leg=row["leg"] or "",
        legs=tuple(row["legs"] or ()),
        replaces=row["replaces"] or "",
        replaced_by=row["replaced_by"] or "",
        updated_ts=_ns(row["updated_at"]),
    )


async def _state(conn: asyncpg.Connection, batch_id: str, cash: float, persist: bool = True) -> PaperAccount:
    """Session `batch_id`'s start (`cash` and its start positions) plus its fills, and the open orders."""
    positions = {
        (r["strategy"], r["symbol"]): Position(r["qty"], r["avg_price"])
        for r in await conn.fetch(
            "SELECT strategy, symbol, qty, avg_price FROM account_positions WHERE batch_id = $1", batch_id
        )
    }
    unknown = 0
    for f in await conn.fetch(FILLS, batch_id):
        qty, price, fee = f["qty"], f["price"], f["fee"]
        cash += qty * price - fee if f["side"] == "sell" else -qty * price - fee
        if f["strategy"] is None:
            unknown += 1
            continue
        key = (f["strategy"], f["symbol"])
        pos = positions.get(key)
        if pos is None:
            pos = positions[key] = Position()
        pos.apply(f["side"], qty, price, fee)
    if unknown:
        log.warning("batch %s: %d fills of orders without a strategy count in cash only", batch_id, unknown)
    # Realised P&L and fees belong to the session that made them: a position carries quantity and price.
    kept = {k: Position(p.qty, p.avg_price) for k, p in positions.items() if abs(p.qty) > 1e-12}
    orders = []
    for row in await conn.fetch(OPEN_ORDERS, list(OPEN_STATUSES), batch_id):
        if row["strategy"] is None:
            log.warning("open order %s has no strategy: not restored", row["client_order_id"])
            continue
        orders.append(_order(row))
    symbols = sorted({o.symbol for o in orders})
    prices = (
        {r["symbol"]: r["price"] for r in await conn.fetch(LAST_PRICES, symbols, batch_id)} if symbols else {}
    )
    return PaperAccount(batch_id, cash, kept, orders, prices, persist)


async def load_previous(dsn: str) -> PaperAccount | None:
    """The persisted paper account as the last persisted session left it; None when there is none yet."""
    async with connection(dsn, jsonb=True) as conn:
        row = await conn.fetchrow(
            "SELECT batch_id, balance FROM accounts WHERE persist ORDER BY account_id DESC LIMIT 1"
        )
        if row is None:
            return None
        return await _state(conn, row["batch_id"], row["balance"])


async def load_session(dsn: str, batch_id: str, restarted: bool = False) -> PaperAccount | None:
    """Session `batch_id`'s paper account as it stands now, for its consumers to continue; None when the
    session does not persist its account, unless `restarted` (a consumer restarted mid-session continues
    the session either way)."""
    async with connection(dsn, jsonb=True) as conn:
        row = await conn.fetchrow(
            "SELECT balance, persist FROM accounts WHERE batch_id = $1 AND (persist OR $2) "
            "ORDER BY account_id DESC LIMIT 1",
            batch_id,
            restarted,
        )
        if row is None:
            return None
        return await _state(conn, batch_id, row["balance"], row["persist"])


async def start_account(
    dsn: str, batch_id: str, cash: float, *, persist: bool, previous: PaperAccount | None = None
) -> int:
    """Record a session's account at its start (accounts and portfolio rows, and with `persist` its start
    positions, which are `previous`'s); return the account id."""
    async with connection(dsn) as conn, conn.transaction():
        account_id = await conn.fetchval(
            """
            INSERT INTO accounts (batch_id, balance, details, persist, continues)
            VALUES ($1, $2, '{}'::jsonb, $3, $4) RETURNING account_id
            """,
            batch_id,
            float(cash),
            persist,
            previous.batch_id if previous is not None else None,
        )
        await conn.execute(UPSERT_PORTFOLIO, batch_id, account_id, float(cash))
        if persist and previous is not None and previous.positions:
            await conn.executemany(
                """
                INSERT INTO account_positions (batch_id, strategy, symbol, qty, avg_price)
                VALUES ($1, $2, $3, $4, $5)
                """,
                [(batch_id, st, sym, p.qty, p.avg_price) for (st, sym), p in previous.positions.items()],
            )
    return account_id
