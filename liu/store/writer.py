"""Buffered writer for orders and fills, used on each consumer's hot path.

`add_*` only append a tuple to a list; a background task writes the buffers in
one transaction (orders first, so fills can reference them) with COPY, every
`flush_interval` seconds or as soon as a buffer passes `max_batch` rows. If the
database is down the rows stay buffered and the next flush retries them.
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
UPDATE_STATUS = "UPDATE orders SET status = $2, reason = $3 WHERE client_order_id = $1"

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
    """Batches orders, status changes and fills of one consumer process into PostgreSQL."""

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
        self._updates: list[tuple[str, str, str]] = []
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
        """Buffer an order (its fields are copied now; later changes go through update_order_status)."""
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
                order.status,
                order.reason,
                order.submitted_ts,
                order.indicators,
            )
        )
        if len(self._orders) >= self.max_batch:
            self._wake.set()

    def update_order_status(self, client_order_id: str, status: str, reason: str = "") -> None:
        """Buffer a status change for an order added earlier (or in this same batch)."""
        self._updates.append((client_order_id, status, reason))
        if len(self._updates) >= self.max_batch:
            self._wake.set()

    def add_fill(self, fill: Fill) -> None:
        """Buffer a fill (Fill is frozen, so keep the object and convert at flush time)."""
        self._fills.append(fill)  # type: ignore[arg-type]
        if len(self._fills) >= self.max_batch:
            self._wake.set()

    # ---------------------------------------------------------------- flushing

    def _order_records(self, rows: list[tuple]) -> list[tuple]:
        b = self.batch_id
        return [
            (
                coid,
                run,
                b,
                sym,
                side,
                float(qty),
                typ,
                lp,
                st,
                tg,
                status,
                reason,
                ts // 1000 - PG_EPOCH_US if ts else None,
                _json(ind),
            )
            for (coid, run, sym, side, qty, typ, lp, st, tg, status, reason, ts, ind) in rows
        ]

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
        conn = await self._connection()
        async with conn.transaction():
            if orders:
                await conn.copy_records_to_table(
                    "orders", records=self._order_records(orders), columns=ORDER_COLUMNS
                )
            if updates:
                await conn.executemany(UPDATE_STATUS, updates)
            if fills:
                await conn.copy_records_to_table(
                    "trades", records=self._fill_records(fills), columns=FILL_COLUMNS
                )

    async def _salvage(
        self, orders: list[tuple], updates: list[tuple], fills: list[Fill]
    ) -> tuple[int, int, int]:
        """Row by row, each in a savepoint: write what the database accepts, drop (and log) the rest.

        Only used after a batch failed on its data (not the connection), so one bad row
        (say a fill whose order was never added) cannot block every later write.
        """
        conn = await self._connection()
        done = [0, 0, 0]
        jobs = [
            (
                0,
                orders,
                lambda r: conn.copy_records_to_table(
                    "orders", records=self._order_records([r]), columns=ORDER_COLUMNS
                ),
            ),
            (1, updates, lambda r: conn.executemany(UPDATE_STATUS, [r])),
            (
                2,
                fills,
                lambda r: conn.copy_records_to_table(
                    "trades", records=self._fill_records([r]), columns=FILL_COLUMNS
                ),
            ),
        ]
        async with conn.transaction():
            for idx, rows, write in jobs:
                for row in rows:
                    try:
                        async with conn.transaction():
                            await write(row)
                        done[idx] += 1
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
