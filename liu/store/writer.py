"""Buffered writer for orders, their status changes and fills, used on each consumer's hot path.

`add_order`/`update_order`/`add_fill` only append to a list; a background task writes the
buffers in one transaction every `flush_interval` seconds or as soon as a buffer passes
`max_batch` rows: new orders with COPY, then the status changes of orders from earlier batches
with one executemany, then fills with COPY (after their orders, which they reference). A status
change of an order added in the same batch is folded into its inserted row instead, so an order
placed and filled between two flushes costs one COPY row and no UPDATE.

Each order row holds the order's latest state and a `history` JSONB array, one entry per status
change, in the order the changes were reported:
`{"status", "ts" (data time, int ns), "filled_qty", "filled_avg_price", "reason"}`. A change
identical to the entry before it (the same snapshot reported twice) is not repeated.

If the database is down the rows stay buffered and the next flush retries them; if it refuses
some row, the batch is written row by row and only the refused rows are dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta

import asyncpg

from liu.errors import DatabaseError
from liu.events import Fill, Order
from liu.store.db import HINT, redact_dsn

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The writer's connection encodes timestamptz from integer µs since PostgreSQL's epoch
# (2000-01-01), skipping a datetime object per row (~1.5 µs each on the hot path).
PG_EPOCH_US = 946_684_800_000_000
_encode_json = json.JSONEncoder(default=str).encode

ORDER_COLUMNS = (
    "client_order_id",
    "algo_run_id",
    "batch_id",
    "symbol",
    "side",
    "qty",
    "order_type",
    "limit_price",
    "stop_price",
    "target_price",
    "status",
    "reason",
    "submitted_at",
    "indicators",
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
)
FILL_COLUMNS = (
    "client_order_id",
    "algo_run_id",
    "batch_id",
    "symbol",
    "side",
    "qty",
    "price",
    "fee",
    "filled_at",
    "stop_price",
    "target_price",
    "indicators",
)
# The latest state wins, a link once set stays, and the history grows by this batch's entries
# (less the first one when it repeats the stored last entry).
UPDATE_ORDER = """
UPDATE orders SET
    status = $2, filled_qty = $3, filled_avg_price = $4, reason = $5,
    parent_id = COALESCE($6, parent_id), leg = COALESCE($7, leg), legs = COALESCE($8, legs),
    replaces = COALESCE($9, replaces), replaced_by = COALESCE($10, replaced_by),
    updated_at = COALESCE($11, updated_at),
    history = CASE WHEN history -> -1 = $12::jsonb -> 0 THEN history || ($12::jsonb - 0)
                   ELSE history || $12::jsonb END
WHERE client_order_id = $1
"""
# Buffered order rows are FIXED fields then STATE fields; a buffered update is (client_order_id, *STATE).
# FIXED: client_order_id, run id, symbol, side, qty, type, limit_price, stop, target, submitted_ts,
#        indicators, tif, trigger_price, trail_percent, trail_price, order_class
# STATE: status, filled_qty, avg_fill_price, reason, parent_id, leg, legs, replaces, replaced_by, updated_ts
_FIXED = 16

# Errors that mean "the connection/server is gone": drop the connection and retry later.
_CONNECTION_ERRORS = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
)


def ns_to_datetime(ns: int) -> datetime:
    """Data time (int ns since epoch, UTC) → aware datetime, truncated to the microsecond."""
    return EPOCH + timedelta(microseconds=ns // 1000)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _json(value: dict | None) -> str | None:
    return None if value is None else _encode_json(value)


def _pg_us(ns: int) -> int | None:
    return ns // 1000 - PG_EPOCH_US if ns else None


def _entry(state: list) -> dict:
    status, qty, avg, reason = state[0], state[1], state[2], state[3]
    return {
        "status": status,
        "ts": state[9] or None,
        "filled_qty": qty,
        "filled_avg_price": avg if qty else None,
        "reason": reason or "",
    }


def _apply(state: list, new: tuple) -> None:
    """Move an order's buffered state to a later snapshot: its figures win, a link once set stays."""
    state[0:4] = new[0:4]
    for i in range(4, 9):
        if new[i]:
            state[i] = new[i]
    state[9] = new[9] or state[9]


def _plan(orders: list[tuple], updates: list[tuple]) -> tuple[list[list], list[list]]:
    """Fold each update into its order's row when both are in this batch; collapse the other updates
    into one per order. Updates apply in the order they were buffered.

    Returns (rows to insert, changes to earlier rows), each item `[fixed, state, history, n_updates]`.
    """
    inserts: list[list] = []
    by_id: dict[str, list] = {}
    for o in orders:
        state = list(o[_FIXED:])
        state[9] = state[9] or o[9]  # first status change: the submit time
        item = [o[:_FIXED], state, [_entry(state)], 0]
        inserts.append(item)
        by_id.setdefault(o[0], item)  # a duplicate id is refused by the database: keep the first
    changes: list[list] = []
    for u in updates:
        item = by_id.get(u[0])
        if item is None:
            state = list(u[1:])
            by_id[u[0]] = item = [u[:1], state, [_entry(state)], 1]
            changes.append(item)
            continue
        _apply(item[1], u[1:])
        entry = _entry(item[1])
        if entry != item[2][-1]:
            item[2].append(entry)
        item[3] += 1
    return inserts, changes


async def _connect(dsn: str, timeout: float) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn, timeout=timeout)
    try:
        await conn.set_type_codec(
            "timestamptz",
            schema="pg_catalog",
            encoder=lambda us: (us,),
            decoder=lambda t: t[0],
            format="tuple",
        )
    except BaseException:
        conn.terminate()
        raise
    return conn


class _Connected:
    """What every batched writer does with its one connection: connect (or fail with one clear line),
    reconnect after a failure, log a failure streak once and its end once, and close."""

    label = "writer"

    def __init__(self, dsn: str, connect_timeout: float) -> None:
        self.dsn = dsn
        self.connect_timeout = connect_timeout
        self.failed_flushes = 0
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()
        self._failing = False

    @property
    def pending(self) -> int:
        raise NotImplementedError

    async def _connect_or_raise(self) -> None:
        try:
            self._conn = await _connect(self.dsn, self.connect_timeout)
        except Exception as exc:  # noqa: BLE001 - one line for the operator
            raise DatabaseError(
                f"database: {self.label} cannot connect to {redact_dsn(self.dsn)} "
                f"({type(exc).__name__}: {_first_line(exc)}); {HINT}"
            ) from None

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await _connect(self.dsn, self.connect_timeout)
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None

    def _write_failed(self, exc: BaseException) -> None:
        """The connection is gone (rows already put back): drop it, log once per failure streak."""
        self.failed_flushes += 1
        self._drop_connection()
        if not self._failing:
            self._failing = True
            log.error(
                "%s: cannot write %d rows to %s (%s: %s); keeping them and retrying",
                self.label,
                self.pending,
                redact_dsn(self.dsn),
                type(exc).__name__,
                _first_line(exc),
            )

    def _write_worked(self) -> None:
        if self._failing:
            self._failing = False
            log.warning(
                "%s: database writes work again after %d failed flushes", self.label, self.failed_flushes
            )

    async def _close_connection(self, ok: bool) -> bool:
        if self._conn is not None:
            try:
                await self._conn.close(timeout=2)
            except Exception:  # noqa: BLE001
                self._conn.terminate()
            self._conn = None
        if not ok:
            log.error("%s: closed with %d rows not written", self.label, self.pending)
        return ok


class TradeWriter(_Connected):
    """Batches orders, their status changes and fills of one consumer process into PostgreSQL.

    The runner calls `add_order(order)` when it first sees an order, `update_order(order)` after
    each status change and `add_fill(fill)` for each fill; `flush()`/`close()` write what is buffered.
    """

    label = "trade writer"

    def __init__(
        self,
        dsn: str,
        batch_id: str,
        run_ids: dict[str, int],
        flush_interval: float = 0.2,
        max_batch: int = 5000,
        connect_timeout: float = 5.0,
    ) -> None:
        super().__init__(dsn, connect_timeout)
        self.batch_id = batch_id
        self.run_ids = dict(run_ids)
        self.flush_interval = flush_interval
        self.max_batch = max_batch
        self.orders_written = 0
        self.fills_written = 0
        self.updates_written = 0
        self.rows_dropped = 0
        self._orders: list[tuple] = []
        self._updates: list[tuple] = []
        self._fills: list[tuple] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closed = False

    @classmethod
    async def open(
        cls,
        dsn: str,
        batch_id: str,
        run_ids: dict[str, int],
        flush_interval: float = 0.2,
        max_batch: int = 5000,
    ) -> TradeWriter:
        """Connect and start the background flusher."""
        self = cls(dsn, batch_id, run_ids, flush_interval, max_batch)
        await self._connect_or_raise()
        self._task = asyncio.create_task(self._run(), name="liu-trade-writer")
        return self

    # ---------------------------------------------------------------- hot path

    @property
    def pending(self) -> int:
        """Rows buffered and not yet written."""
        return len(self._orders) + len(self._updates) + len(self._fills)

    def add_order(self, order: Order) -> None:
        """Buffer a new order, every field as it is now; its status starts the row's history.

        Call it once per order (a bracket's legs included), then `update_order` on each change.
        """
        self._orders.append(
            (
                order.client_order_id,
                self.run_ids.get(order.strategy),
                order.symbol,
                order.side,
                order.qty,
                order.type,
                order.limit_price,
                order.stop,
                order.target,
                order.submitted_ts,
                order.indicators,
                order.tif,
                order.trigger_price,
                order.trail_percent,
                order.trail_price,
                order.order_class,
                order.status,
                order.filled_qty,
                order.avg_fill_price,
                order.reason,
                order.parent_id,
                order.leg,
                order.legs,
                order.replaces,
                order.replaced_by,
                order.updated_ts,
            )
        )
        if len(self._orders) >= self.max_batch:
            self._wake.set()

    def update_order(self, order: Order) -> None:
        """Buffer a status change of an order added earlier (or in this same batch).

        Copies the order's state now (status, filled_qty, avg_fill_price, reason, links,
        updated_ts), so the live order may be passed as well as a snapshot; at flush the row
        takes that state and its history gains one entry.
        """
        self._updates.append(
            (
                order.client_order_id,
                order.status,
                order.filled_qty,
                order.avg_fill_price,
                order.reason,
                order.parent_id,
                order.leg,
                order.legs,
                order.replaces,
                order.replaced_by,
                order.updated_ts,
            )
        )
        if len(self._updates) >= self.max_batch:
            self._wake.set()

    def add_fill(self, fill: Fill) -> None:
        """Buffer a fill (Fill is frozen, so keep the object and convert at flush time)."""
        self._fills.append(fill)  # type: ignore[arg-type]
        if len(self._fills) >= self.max_batch:
            self._wake.set()

    # ---------------------------------------------------------------- flushing

    def _order_record(self, item: list) -> tuple:
        (
            (coid, run, sym, side, qty, typ, lp, st, tg, sub_ts, ind, tif, trig, tpct, tpx, cls),
            state,
            history,
            _,
        ) = item
        status, fqty, avg, reason, parent, leg, legs, repl, repl_by, upd_ts = state
        return (
            coid,
            run,
            self.batch_id,
            sym,
            side,
            float(qty),
            typ,
            lp,
            st,
            tg,
            status,
            reason,
            _pg_us(sub_ts),
            _json(ind),
            tif,
            trig,
            tpct,
            tpx,
            float(fqty),
            float(avg) if fqty else None,
            cls,
            parent or None,
            leg or None,
            list(legs) or None,
            repl or None,
            repl_by or None,
            _pg_us(upd_ts),
            _encode_json(history),
        )

    @staticmethod
    def _change_record(item: list) -> tuple:
        (coid,), state, history, _ = item
        status, fqty, avg, reason, parent, leg, legs, repl, repl_by, upd_ts = state
        return (
            coid,
            status,
            float(fqty),
            float(avg) if fqty else None,
            reason,
            parent or None,
            leg or None,
            list(legs) or None,
            repl or None,
            repl_by or None,
            _pg_us(upd_ts),
            _encode_json(history),
        )

    def _fill_records(self, fills: list[Fill]) -> list[tuple]:
        b = self.batch_id
        runs = self.run_ids
        return [
            (
                f.client_order_id,
                runs.get(f.strategy),
                b,
                f.symbol,
                f.side,
                float(f.qty),
                float(f.price),
                float(f.fee),
                f.ts // 1000 - PG_EPOCH_US,
                f.stop,
                f.target,
                _json(f.indicators),
            )
            for f in fills
        ]

    async def _write(self, orders: list[tuple], updates: list[tuple], fills: list[Fill]) -> None:
        inserts, changes = _plan(orders, updates)
        conn = await self._connection()
        async with conn.transaction():
            if inserts:
                await conn.copy_records_to_table(
                    "orders", records=[self._order_record(i) for i in inserts], columns=ORDER_COLUMNS
                )
            if changes:
                await conn.executemany(UPDATE_ORDER, [self._change_record(c) for c in changes])
            if fills:
                await conn.copy_records_to_table(
                    "trades", records=self._fill_records(fills), columns=FILL_COLUMNS
                )

    async def _salvage(
        self, orders: list[tuple], updates: list[tuple], fills: list[Fill]
    ) -> tuple[int, int, int]:
        """Row by row, each in a savepoint: write what the database accepts, drop (and log) the rest.

        Only used after a batch failed on its data (not the connection), so one bad row
        (say a fill whose order was never added) cannot block every later write. The unit for
        orders and their changes is one order: its row with the updates folded in, or all of
        this batch's updates of an earlier order.
        Returns (orders, updates, fills) written; an update counts with its order.
        """
        inserts, changes = _plan(orders, updates)
        conn = await self._connection()
        done = [0, 0, 0]
        jobs = [
            (
                inserts,
                lambda i: conn.copy_records_to_table(
                    "orders", records=[self._order_record(i)], columns=ORDER_COLUMNS
                ),
                lambda i: (1, i[3], 0),
            ),
            (
                changes,
                lambda c: conn.execute(UPDATE_ORDER, *self._change_record(c)),
                lambda c: (0, c[3], 0),
            ),
            (
                fills,
                lambda f: conn.copy_records_to_table(
                    "trades", records=self._fill_records([f]), columns=FILL_COLUMNS
                ),
                lambda f: (0, 0, 1),
            ),
        ]
        async with conn.transaction():
            for rows, write, weight in jobs:
                for row in rows:
                    try:
                        async with conn.transaction():
                            await write(row)
                        for k, n in enumerate(weight(row)):
                            done[k] += n
                    except _CONNECTION_ERRORS:
                        raise
                    except Exception as exc:  # noqa: BLE001 - the row is bad, not the connection
                        self.rows_dropped += 1
                        if self.rows_dropped <= 20:
                            log.error(
                                "trade writer: dropped a row the database refuses (%s: %s): %r",
                                type(exc).__name__,
                                _first_line(exc),
                                row,
                            )
        return done[0], done[1], done[2]

    def _keep(self, orders: list[tuple], updates: list[tuple], fills: list[Fill], exc: BaseException) -> None:
        """Put rows back in front of the buffers after a failed flush; log once per failure streak."""
        self._orders = orders + self._orders
        self._updates = updates + self._updates
        self._fills = fills + self._fills
        self._write_failed(exc)

    async def flush(self) -> bool:
        """Write everything buffered now; return False (rows kept for the next try) if the database is unreachable."""
        async with self._lock:
            if not self.pending:
                return True
            orders, updates, fills = self._orders, self._updates, self._fills
            self._orders, self._updates, self._fills = [], [], []
            counts = (len(orders), len(updates), len(fills))
            try:
                try:
                    await self._write(orders, updates, fills)
                except _CONNECTION_ERRORS:
                    # A connection left over from before a server restart fails on first use;
                    # retry once on a fresh one before calling it a failure.
                    self._drop_connection()
                    await self._write(orders, updates, fills)
            except _CONNECTION_ERRORS as exc:
                self._keep(orders, updates, fills, exc)
                return False
            except Exception:  # noqa: BLE001 - some row is bad: isolate it
                try:
                    counts = await self._salvage(orders, updates, fills)
                except Exception as exc:  # noqa: BLE001 - connection lost meanwhile: retry all later
                    self._keep(orders, updates, fills, exc)
                    return False
            self.orders_written += counts[0]
            self.updates_written += counts[1]
            self.fills_written += counts[2]
            self._write_worked()
            return True

    async def _run(self) -> None:
        while not self._closed:
            try:
                await asyncio.wait_for(self._wake.wait(), self.flush_interval)
            except TimeoutError:
                pass
            self._wake.clear()
            if self._closed:
                break
            await self.flush()

    async def close(self) -> bool:
        """Stop the flusher, write what is left and close the connection; False if rows remain unwritten."""
        self._closed = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        return await self._close_connection(await self.flush())
