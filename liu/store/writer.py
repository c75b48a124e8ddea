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

Exactly once, whatever fails. Each flush is one *unit* with a sequence number in the writer's stream
(one per consumer and batch), written in one transaction that also moves the stream's high-water mark in
`writer_marks`. When a write fails because the database is down, slow (`write_timeout`) or refusing
writes (read-only, out of disk, too many connections...), the unit goes to the spool (`liu.store.spool`;
in memory when the writer has none) and every later unit queues behind it, so rows keep their order.
The writer replays the backlog when the database answers again, and the next start replays what a
session left behind. A replay first reads the mark: units at or below it are already in the database
(their commit went through but its answer was lost with the connection) and are skipped. This was chosen
over a unique key per fill with `ON CONFLICT DO NOTHING` because it covers the three kinds of rows alike:
a status change replayed twice would otherwise add its history entry twice, and COPY, the fast path,
has no ON CONFLICT. It costs one small upsert per flush.

Rows the database refuses as bad data (a broken constraint, a value it cannot take) cannot be helped by
retrying: the unit is written row by row, each in a savepoint, and only the refused rows are left out,
logged and kept in the spool's `.refused` file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from liu.errors import DatabaseError
from liu.events import Fill, Order
from liu.store.db import HINT, close_quietly, redact_dsn
from liu.store.spool import Spool, Unit, read_spool, spool_files

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

# A unit's transaction moves its stream's mark; never backwards (a replay may write older units last).
MARK = """
INSERT INTO writer_marks (stream, seq) VALUES ($1, $2)
ON CONFLICT (stream) DO UPDATE SET seq = GREATEST(writer_marks.seq, EXCLUDED.seq), updated_at = now()
"""
READ_MARK = "SELECT seq FROM writer_marks WHERE stream = $1"
_REPLAY_ROWS = 20_000  # rows per transaction when a backlog is written
_BACKOFF = (0.25, 5.0)  # seconds between background retries while the database is away: first, most

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


def is_data_error(exc: BaseException) -> bool:
    """The database refuses the rows themselves (SQLSTATE class 22 data exception or 23 integrity
    violation, or a value the driver cannot encode): retrying cannot help. Anything else (the connection,
    a timeout, a read-only or full database) may pass later."""
    if isinstance(exc, asyncpg.PostgresError):
        return (getattr(exc, "sqlstate", None) or "")[:2] in ("22", "23")
    return isinstance(exc, ValueError | TypeError | OverflowError)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _json(value: dict | None) -> str | None:
    return None if value is None else _encode_json(value)


def _pg_us(ns: int) -> int | None:
    return ns // 1000 - PG_EPOCH_US if ns else None


def _state_of(order: Order) -> tuple:
    """The STATE fields of a buffered order row or update (see `_FIXED`)."""
    return (
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

    def _write_failed(self, exc: BaseException, keeping: str = "keeping them") -> None:
        """The connection is gone (rows already put back): drop it, log once per failure streak."""
        self.failed_flushes += 1
        self._drop_connection()
        if not self._failing:
            self._failing = True
            log.error(
                "%s: cannot write %d rows to %s (%s: %s); %s and retrying",
                self.label,
                self.pending,
                redact_dsn(self.dsn),
                type(exc).__name__,
                _first_line(exc) or "no answer",
                keeping,
            )

    def _write_worked(self) -> None:
        if self._failing:
            self._failing = False
            log.warning(
                "%s: database writes work again after %d failed flushes", self.label, self.failed_flushes
            )

    async def _close_connection(self, ok: bool, quiet: bool = False) -> bool:
        if self._conn is not None:
            await close_quietly(self._conn)
            self._conn = None
        if not ok and not quiet:
            log.error("%s: closed with %d rows not written", self.label, self.pending)
        return ok


def _chunks(units: list[Unit], rows: int) -> Iterator[list[Unit]]:
    """Consecutive runs of `units` holding about `rows` rows each (one transaction each)."""
    chunk: list[Unit] = []
    n = 0
    for u in units:
        chunk.append(u)
        n += u.rows
        if n >= rows:
            yield chunk
            chunk, n = [], 0
    if chunk:
        yield chunk


def _merged(units: list[Unit]) -> tuple[list, list, list]:
    if len(units) == 1:
        u = units[0]
        return u.orders, u.updates, u.fills
    orders: list = []
    updates: list = []
    fills: list = []
    for u in units:
        orders += u.orders
        updates += u.updates
        fills += u.fills
    return orders, updates, fills


class TradeWriter(_Connected):
    """Batches orders, their status changes and fills of one consumer process into PostgreSQL.

    The runner calls `add_order(order)` when it first sees an order, `update_order(order)` after
    each status change and `add_fill(fill)` for each fill; `flush()`/`close()` write what is buffered.
    Rows the database cannot take wait in the spool (see the module docstring); `backlog` counts them
    and `on_backlog` (if set) hears each change of that count.
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
        *,
        spool: Spool | None = None,
        stream: str | None = None,
        write_timeout: float = 30.0,
    ) -> None:
        super().__init__(dsn, connect_timeout)
        self.batch_id = batch_id
        self.run_ids = dict(run_ids)
        self.flush_interval = flush_interval
        self.max_batch = max_batch
        self.write_timeout = write_timeout
        self.stream = stream or f"{batch_id}/{uuid.uuid4().hex[:12]}"
        self.spool = spool
        self.orders_written = 0
        self.fills_written = 0
        self.updates_written = 0
        self.rows_dropped = 0
        self.rows_spooled = 0  # rows that had to wait in the spool (or memory), this process
        self.on_backlog: Callable[[int], None] | None = None
        self._orders: list[tuple] = []
        self._updates: list[tuple] = []
        self._fills: list[Fill] = []
        self._seq = 0  # the last unit's sequence number in this stream
        self._counted = 0  # units up to this one are counted in *_written
        self._unsent: list[Unit] = []  # units waiting in memory (no spool, or the spool's disk failed)
        self._retry_at = 0.0
        self._backoff = _BACKOFF[0]
        self._shown_backlog = 0
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
        *,
        spool_dir: Path | None = None,
        name: str | None = None,
    ) -> TradeWriter:
        """Connect and start the background flusher.

        `name` names this writer's stream in the batch (a consumer: "consumer-0"); with `spool_dir`, rows
        the database cannot take wait in `<spool_dir>/<batch_id>-<name>.log`, and a file an earlier process
        of the same stream left there is taken over and written first. Without `name` the stream is this
        writer's alone; without `spool_dir` such rows wait in memory.
        """
        key = name or uuid.uuid4().hex[:12]
        stream = f"{batch_id}/{key}"
        spool = Spool.open(spool_dir, stream, batch_id, key) if spool_dir is not None else None
        self = cls(dsn, batch_id, run_ids, flush_interval, max_batch, spool=spool, stream=stream)
        await self._connect_or_raise()
        try:
            mark = await self._conn.fetchval(READ_MARK, stream) or 0  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001 - one line for the operator
            self._drop_connection()
            raise DatabaseError(
                f"database: {self.label} cannot read its mark on {redact_dsn(dsn)} "
                f"({type(exc).__name__}: {_first_line(exc)}); is the database migrated (`trader db upgrade`)?"
            ) from None
        self._seq = max(mark, spool.last_seq if spool is not None else 0)
        self._counted = mark  # an earlier process of the stream counted those
        self._task = asyncio.create_task(self._run(), name="liu-trade-writer")
        return self

    # ---------------------------------------------------------------- hot path

    @property
    def pending(self) -> int:
        """Rows buffered or waiting for the database, not yet written."""
        return len(self._orders) + len(self._updates) + len(self._fills) + self.backlog

    @property
    def backlog(self) -> int:
        """Rows the database could not take yet (in the spool, or in memory without one)."""
        return (self.spool.rows if self.spool is not None else 0) + sum(u.rows for u in self._unsent)

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
            )
            + _state_of(order)
        )
        if len(self._orders) >= self.max_batch:
            self._wake.set()

    def update_order(self, order: Order) -> None:
        """Buffer a status change of an order added earlier (or in this same batch).

        Copies the order's state now (status, filled_qty, avg_fill_price, reason, links,
        updated_ts), so the live order may be passed as well as a snapshot; at flush the row
        takes that state and its history gains one entry.
        """
        self._updates.append((order.client_order_id,) + _state_of(order))
        if len(self._updates) >= self.max_batch:
            self._wake.set()

    def add_fill(self, fill: Fill) -> None:
        """Buffer a fill (Fill is frozen, so keep the object and convert at flush time)."""
        self._fills.append(fill)
        if len(self._fills) >= self.max_batch:
            self._wake.set()

    # ---------------------------------------------------------------- records

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

    # ---------------------------------------------------------------- writing

    async def _write(
        self, conn: asyncpg.Connection, orders: list, updates: list, fills: list, seq: int
    ) -> None:
        inserts, changes = _plan(orders, updates)
        async with conn.transaction():
            if inserts:
                await conn.copy_records_to_table(
                    "orders", records=[self._order_record(i) for i in inserts], columns=ORDER_COLUMNS
                )
            if changes:
                await conn.executemany(UPDATE_ORDER, [self._change_record(c) for c in changes])
            if fills:
                await conn.copy_records_to_table("trades", records=fills, columns=FILL_COLUMNS)
            await conn.execute(MARK, self.stream, seq)

    async def _salvage(
        self, conn: asyncpg.Connection, orders: list, updates: list, fills: list, seq: int
    ) -> tuple[int, int, int]:
        """Row by row, each in a savepoint: write what the database accepts, leave out (and keep) the rest.

        Only used after a unit failed on its data (not the connection), so one bad row
        (say a fill whose order was never added) cannot block every later write. The unit for
        orders and their changes is one order: its row with the updates folded in, or all of
        this unit's updates of an earlier order. An error that is not about the row (the connection,
        a full disk) aborts the salvage: the whole unit is then kept and retried.
        Returns (orders, updates, fills) written; an update counts with its order.
        """
        inserts, changes = _plan(orders, updates)
        done = [0, 0, 0]
        jobs = [
            (
                "order",
                inserts,
                self._order_record,
                lambda r: conn.copy_records_to_table("orders", records=[r], columns=ORDER_COLUMNS),
                lambda i: (1, i[3], 0),
            ),
            (
                "update",
                changes,
                self._change_record,
                lambda r: conn.execute(UPDATE_ORDER, *r),
                lambda c: (0, c[3], 0),
            ),
            (
                "fill",
                fills,
                lambda f: f,
                lambda r: conn.copy_records_to_table("trades", records=[r], columns=FILL_COLUMNS),
                lambda f: (0, 0, 1),
            ),
        ]
        async with conn.transaction():
            for kind, rows, record, write, weight in jobs:
                for row in rows:
                    rec = record(row)
                    try:
                        async with conn.transaction():
                            await write(rec)
                    except Exception as exc:
                        if not is_data_error(exc):
                            raise
                        self._refuse(kind, rec, exc)
                        continue
                    for k, n in enumerate(weight(row)):
                        done[k] += n
            await conn.execute(MARK, self.stream, seq)
        return done[0], done[1], done[2]

    def _refuse(self, kind: str, record: tuple, exc: BaseException) -> None:
        self.rows_dropped += 1
        error = f"{type(exc).__name__}: {_first_line(exc)}"
        kept = ""
        if self.spool is not None:
            try:
                self.spool.refuse(kind, record, error)
                kept = f"; kept in {self.spool.path.with_suffix('.refused')}"
            except OSError as e:
                kept = f"; could not keep it ({e})"
        if self.rows_dropped <= 20:
            log.error("trade writer: dropped a row the database refuses (%s)%s: %r", error, kept, record)

    async def _send(self, units: list[Unit]) -> BaseException | None:
        """Write `units` in one transaction (with the mark of the last); the error when that failed."""
        orders, updates, fills = _merged(units)
        seq = units[-1].seq
        try:
            conn = await self._connection()
            try:
                await asyncio.wait_for(self._write(conn, orders, updates, fills, seq), self.write_timeout)
                counts = (len(orders), len(updates), len(fills))
            except Exception as exc:  # noqa: BLE001 - sorted below: bad rows, or the database away
                if not is_data_error(exc):
                    raise
                counts = await asyncio.wait_for(
                    self._salvage(conn, orders, updates, fills, seq), self.write_timeout
                )
        except Exception as exc:  # noqa: BLE001 - down, slow or refusing: the rows wait
            self._drop_connection()
            return exc
        self.orders_written += counts[0]
        self.updates_written += counts[1]
        self.fills_written += counts[2]
        self._counted = max(self._counted, seq)
        return None

    def _take(self) -> Unit | None:
        """The buffered rows as the stream's next unit (None when there are none)."""
        if not (self._orders or self._updates or self._fills):
            return None
        self._seq += 1
        unit = Unit(self._seq, self._orders, self._updates, self._fill_records(self._fills))
        self._orders, self._updates, self._fills = [], [], []
        return unit

    def _keep(self, units: list[Unit]) -> None:
        """Queue units behind the backlog: in the spool (fsynced), else in memory."""
        self.rows_spooled += sum(u.rows for u in units)
        if self.spool is not None and not self._unsent:
            try:
                self.spool.append(units)
                return
            except OSError as exc:
                log.error(
                    "%s: cannot write the spool %s (%s); keeping %d rows in memory",
                    self.label,
                    self.spool.path,
                    exc,
                    sum(u.rows for u in units),
                )
        self._unsent.extend(units)

    def _failed(self, exc: BaseException) -> None:
        where = f"spooling them to {self.spool.path}" if self.spool is not None else "keeping them"
        self._write_failed(exc, where)
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, _BACKOFF[1])

    async def _drain(self) -> bool:
        """Write the backlog, oldest first, skipping units the database already has; True once it is empty."""
        try:
            units = (self.spool.read() if self.spool is not None else []) + self._unsent
        except (OSError, ValueError) as exc:
            log.error("%s: cannot read the spool: %s", self.label, exc)
            return False
        try:
            conn = await self._connection()
            mark = await asyncio.wait_for(conn.fetchval(READ_MARK, self.stream), self.write_timeout) or 0
        except Exception as exc:  # noqa: BLE001 - still away
            self._failed(exc)
            return False
        for u in units:
            if self._counted < u.seq <= mark:  # committed, but the answer was lost with the connection
                self.orders_written += len(u.orders)
                self.updates_written += len(u.updates)
                self.fills_written += len(u.fills)
        self._counted = max(self._counted, mark)
        todo = [u for u in units if u.seq > mark]
        for chunk in _chunks(todo, _REPLAY_ROWS):
            exc = await self._send(chunk)
            if exc is not None:
                self._unsent = [u for u in self._unsent if u.seq >= chunk[0].seq]  # the rest got in
                self._failed(exc)
                return False
        if self.spool is not None:
            self.spool.clear()
        self._unsent = []
        if self._failing:
            self._failing = False
            log.warning(
                "%s: the database takes writes again after %d failed flushes; the %d rows that waited are in",
                self.label,
                self.failed_flushes,
                sum(u.rows for u in units),
            )
        self._backoff = _BACKOFF[0]
        return True

    def _show_backlog(self) -> None:
        n = self.backlog
        if n != self._shown_backlog:
            self._shown_backlog = n
            if self.on_backlog is not None:
                self.on_backlog(n)

    async def flush(self, *, now: bool = True) -> bool:
        """Write everything buffered (after any backlog); False when rows still wait for the database.

        `now=False` (the background flusher) leaves a backlog alone until its retry is due.
        """
        async with self._lock:
            unit = self._take()
            if self.backlog:
                if unit is not None:
                    self._keep([unit])
                ok = False if not now and time.monotonic() < self._retry_at else await self._drain()
            elif unit is None:
                ok = True
            else:
                stale = self._conn is not None
                exc = await self._send([unit])
                ok = exc is None
                if ok:
                    self._write_worked()
                else:
                    self._keep([unit])
                    if stale:
                        # A connection left over from before a server restart fails on first use: one more
                        # try on a fresh one (the mark tells whether the first got in).
                        ok = await self._drain()
                    else:
                        self._failed(exc)  # type: ignore[arg-type]
            self._show_backlog()
            return ok

    async def _run(self) -> None:
        while not self._closed:
            try:
                await asyncio.wait_for(self._wake.wait(), self.flush_interval)
            except TimeoutError:
                pass
            self._wake.clear()
            if self._closed:
                break
            await self.flush(now=False)

    async def close(self) -> bool:
        """Stop the flusher, write what is left and close the connection; False if rows remain unwritten
        (they stay in the spool, written at the next start)."""
        self._closed = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        ok = await self.flush()
        spooled = not ok and self.spool is not None and not self._unsent and self.spool.rows > 0
        if spooled:
            log.error(
                "%s: %d rows could not be written before the end; they are in %s and are written at the next start",
                self.label,
                self.spool.rows,  # type: ignore[union-attr]
                self.spool.path,  # type: ignore[union-attr]
            )
        if self.spool is not None:
            self.spool.close()
        return await self._close_connection(ok, quiet=spooled)


# ---------------------------------------------------------------------------- replay at start


@dataclass
class Replayed:
    """What replaying one spool file did."""

    path: Path
    batch_id: str
    rows: int  # rows in the file
    written: bool  # every row is in the database now (the file is gone)
    refused: int  # rows the database refused as bad data (kept in the .refused file)


async def replay_spools(dsn: str, directory: Path) -> list[Replayed]:
    """Write every spool file left in `directory` (a session that ended, or died, with the database away),
    oldest first; a file is removed once all its rows are in. Units already in the database are skipped."""
    out = []
    for path in spool_files(directory):
        try:
            header, _, _ = read_spool(path)
            stream, batch_id = header["stream"], header["batch_id"]
            spool = Spool.open(directory, stream, batch_id, stream.split("/", 1)[1])
        except (OSError, ValueError, KeyError, IndexError) as exc:
            log.error("spool %s cannot be replayed: %s", path, exc)
            out.append(Replayed(path, "", 0, False, 0))
            continue
        rows = spool.rows
        w = TradeWriter(dsn, batch_id, {}, spool=spool, stream=stream)
        w.label = f"spool replay {path.name}"
        ok = await w.flush()
        await w._close_connection(ok, quiet=True)
        spool.close()
        out.append(Replayed(path, batch_id, rows, ok, spool.refused))
    return out
