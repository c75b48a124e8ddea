"""The execution gateway: the one owner of the Alpaca trading connection.

It holds alpaca-py's `TradingClient` (every call in a worker thread, off the event loop, with an HTTP
timeout alpaca-py does not set itself and without alpaca-py's own retries), one rate limiter for the
account and the one `trade_updates` stream. Consumers send it orders, cancels and replaces; it routes
each order's updates and fills to the consumer that owns the order, and to no other.

Never a lost or a second order:
- the order is written to the journal (owner, strategy, request) before it is sent;
- its client id is deterministic (`liu.brokers.alpaca.ids`), so sending it again is harmless: Alpaca
  refuses a second order with the same id (422 "client_order_id must be unique");
- any answer that does not say what happened (a timeout, a dropped connection, a 5xx, a 429, that 422)
  leaves the order *in flight*: it is looked up by client id, and only an order Alpaca does not know
  is sent again, with the same id. alpaca-py's retries of 429/504 are switched off (`_retry = 0`) so
  the only re-send is this one, after a lookup;
- `trade_updates` replays nothing: after every (re)connect the gateway reads open and recently closed
  orders and turns the difference in filled quantity and average price into the fills it missed.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import QueryOrderStatus
from alpaca.trading.requests import GetOrdersRequest
from alpaca.trading.stream import TradingStream

from liu.brokers.alpaca import ids, mapping
from liu.brokers.alpaca.journal import Journal, MemoryJournal, row_of
from liu.brokers.alpaca.wire import AccountState, Updates
from liu.brokers.base import Update
from liu.events import FINAL_STATUSES, Fill, Order, OrderUpdate

log = logging.getLogger(__name__)

_DUPLICATE = re.compile(r"client[ _]?order[ _]?id must be unique", re.I)
Route = Callable[[int, Any], None]  # (consumer, message)


class RateLimiter:
    """A token bucket: `per_minute` requests a minute, bursts up to `burst`."""

    def __init__(self, per_minute: float = 200.0, burst: int = 20) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= 1.0:
                    self.tokens -= 1.0
                    return
                await asyncio.sleep((1.0 - self.tokens) / self.rate)


class _TimeoutSession(requests.Session):
    """A requests session that gives every request a timeout (alpaca-py passes none)."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.timeout = timeout

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs.setdefault("timeout", self.timeout)
        return super().request(*args, **kwargs)


def trading_client(key: str, secret: str, url: str, *, paper: bool, timeout: float) -> TradingClient:
    """alpaca-py's client with a timeout on every request and its own retries off (we resolve instead)."""
    client = TradingClient(key, secret, paper=paper, raw_data=True, url_override=url)
    client._session = _TimeoutSession(timeout)
    client._retry = 0
    return client


def stream_url(trading_url: str) -> str:
    """The trade_updates websocket of a trading base URL (`https://x` → `wss://x/stream`)."""
    return trading_url.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + "/stream"


def error_text(exc: BaseException) -> str:
    """A short, key-free description of a failed call: Alpaca's message when it sent one."""
    if isinstance(exc, APIError):
        try:
            message = exc.message
        except (KeyError, ValueError):
            message = str(exc)[:200]
        return f"{exc.status_code} {message}"
    return type(exc).__name__


def unsettled(exc: BaseException) -> bool:
    """True when a failed POST may still have created the order (so it must be looked up)."""
    if isinstance(exc, APIError):
        code = exc.status_code or 0
        return code == 429 or code >= 500 or (code == 422 and bool(_DUPLICATE.search(str(exc))))
    return True  # a timeout, a dropped connection, anything unexpected: we cannot know


@dataclass
class Tracked:
    """An order the gateway looks after."""

    order: Order
    consumer: int
    broker_id: str = ""
    in_flight: bool = True
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Gateway:
    """The Alpaca connection for one account; `route(consumer, message)` delivers to consumers."""

    def __init__(
        self,
        client: TradingClient,
        route: Route,
        *,
        batch_id: str = "",
        journal: Journal | None = None,
        stream: TradingStream | None = None,
        limiter: RateLimiter | None = None,
        lookback: timedelta = timedelta(days=2),
        resend_attempts: int = 5,
        retry_wait: float = 0.5,
        account_interval: float = 30.0,
        sweep_interval: float = 60.0,
    ) -> None:
        self.client = client
        self.route = route
        self.batch_id = batch_id
        self.journal: Journal = journal or MemoryJournal()
        self.stream = stream
        self.limiter = limiter or RateLimiter()
        self.since = datetime.now(UTC) - lookback
        self.resend_attempts = resend_attempts
        self.retry_wait = retry_wait
        self.account_interval = account_interval
        self.sweep_interval = sweep_interval  # also without a reconnect: a leg update the stream never sent
        self.orders: dict[str, Tracked] = {}  # liu client id -> tracked
        self.by_broker: dict[str, str] = {}  # Alpaca order id -> liu client id
        self.counts = {"posts": 0, "lookups": 0, "resends": 0, "sweeps": 0, "duplicates": 0}
        self._pool = ThreadPoolExecutor(4, thread_name_prefix="alpaca-rest")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stream_thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task] = set()
        self._account_due = asyncio.Event()
        self.connected = asyncio.Event()  # the stream listens (set after each (re)connect's sweep)

    # -- life -----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the stream (its thread) and the account refresher."""
        self._loop = asyncio.get_running_loop()
        if self.stream is not None:
            stream = self.stream
            stream.subscribe_trade_updates(self._on_stream_message_async)
            listen = stream._subscribe_trade_updates

            async def listened() -> None:  # after every (re)connect: read what the stream missed
                await listen()
                self._loop.call_soon_threadsafe(self._spawn, self._after_connect())  # type: ignore[union-attr]

            stream._subscribe_trade_updates = listened  # type: ignore[method-assign]
            self._stream_thread = threading.Thread(target=stream.run, name="trade-updates", daemon=True)
            self._stream_thread.start()
        self._spawn(self._account_loop())
        self._spawn(self._sweep_loop())

    async def close(self) -> None:
        if self.stream is not None and self.stream._loop is not None:
            try:
                self.stream.stop()
            except Exception:  # already stopped or never connected
                log.debug("stream stop", exc_info=True)
            if self._stream_thread is not None:
                await asyncio.get_running_loop().run_in_executor(None, self._stream_thread.join, 10)
        for t in list(self._tasks):
            t.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)
        await self.journal.close()

    def _spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("gateway task failed: %s", error_text(task.exception()))  # type: ignore[arg-type]

    async def call(self, fn: Callable, *args: Any) -> Any:
        """One REST call: through the rate limiter, in a worker thread."""
        await self.limiter.acquire()
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # -- orders ---------------------------------------------------------------------------------
    async def submit(self, consumer: int, order: Order) -> None:
        """Journal the order, then send it; its fate reaches `consumer` by `route`."""
        cid = order.client_order_id
        order = replace(order)
        t = Tracked(order, consumer)
        self.orders[cid] = t
        for leg_cid in order.legs:  # named by the consumer (`<id>-sl`, `<id>-tp`); Alpaca's ids come later
            sl = leg_cid.endswith("-sl")
            leg = Order(
                order.symbol,
                "sell" if order.side == "buy" else "buy",
                order.qty,
                type="stop" if sl else "limit",
                limit_price=None if sl else order.target,
                trigger_price=order.stop if sl else None,
                strategy=order.strategy,
                client_order_id=leg_cid,
                status="held",
                tif=order.tif,
                order_class=order.order_class,
                parent_id=cid,
                leg="stop_loss" if sl else "take_profit",
            )
            self.orders[leg_cid] = Tracked(leg, consumer, in_flight=False)
        async with t.lock:
            try:
                request = mapping.to_request(order)
                ids.check(cid)
            except ValueError as e:
                self._reject(t, str(e))
                return
            await self.journal.add(row_of(order, self.batch_id, consumer, request.to_request_fields()))
            for leg_cid in order.legs:
                await self.journal.add(row_of(self.orders[leg_cid].order, self.batch_id, consumer, None))
            await self._send(t, request)

    async def _send(self, t: Tracked, request: Any) -> None:
        cid = t.order.client_order_id
        for attempt in range(self.resend_attempts):
            if attempt:
                self.counts["resends"] += 1
            self.counts["posts"] += 1
            try:
                raw = await self.call(self.client.submit_order, request)
                if not isinstance(raw, dict) or not raw.get("id"):
                    raise ValueError("an answer without an order")
            except Exception as e:  # noqa: BLE001 - classified below; nothing may escape unresolved
                if not unsettled(e):
                    self._reject(t, error_text(e))
                    return
                if isinstance(e, APIError) and e.status_code == 422:
                    self.counts["duplicates"] += 1
                log.warning("order %s in flight (%s): looking it up by client id", cid, error_text(e))
                raw = await self._lookup(cid)
                if raw is None:
                    await asyncio.sleep(self.retry_wait * (attempt + 1))
                    continue  # Alpaca does not know it: send it again, same id
            self._absorb(raw, t)
            return
        log.error(
            "order %s: not placed after %d attempts; stays in flight for the next sweep", cid, attempt + 1
        )

    async def _lookup(self, cid: str) -> dict | None:
        """Alpaca's order for a client id, or None when Alpaca does not know it (asks until it answers)."""
        wait = self.retry_wait
        while True:
            self.counts["lookups"] += 1
            try:
                return await self.call(self.client.get_order_by_client_id, cid)
            except APIError as e:
                if e.status_code == 404:
                    return None
                log.warning("lookup of %s failed (%s); asking again", cid, error_text(e))
            except Exception as e:  # noqa: BLE001 - a timeout or a dropped connection: ask again
                log.warning("lookup of %s failed (%s); asking again", cid, error_text(e))
            await asyncio.sleep(wait)
            wait = min(wait * 2, 10.0)

    async def cancel(self, consumer: int, cid: str, reason: str = "") -> None:
        t = self.orders.get(cid)
        if t is None or t.consumer != consumer or t.order.status in FINAL_STATUSES:
            return
        if t.order.leg and not t.broker_id:
            t = self.orders.get(t.order.parent_id, t)
        async with t.lock:
            if not t.broker_id:
                return  # never placed (rejected or unresolved): nothing to cancel
            try:
                await self.call(self.client.cancel_order_by_id, t.broker_id)
            except Exception as e:  # noqa: BLE001 - the order's state is read back below
                log.info("cancel of %s: %s", cid, error_text(e))
            await self._refresh(t)

    async def replace(self, consumer: int, cid: str, new_id: str, changes: dict[str, float | None]) -> None:
        t = self.orders.get(cid)
        if t is None or t.consumer != consumer or not t.broker_id:
            return
        new = replace(
            t.order,
            client_order_id=new_id,
            status="new",
            reason="",
            filled_qty=0.0,
            avg_fill_price=0.0,
            replaces=cid,
            replaced_by="",
            legs=(),
            **{k: v for k, v in changes.items() if v is not None},
        )
        nt = Tracked(new, consumer)
        self.orders[new_id] = nt
        await self.journal.add(row_of(new, self.batch_id, consumer, {"replaces": cid, **changes}))
        async with t.lock, nt.lock:
            try:
                raw = await self.call(
                    self.client.replace_order_by_id, t.broker_id, mapping.to_replace(new_id, changes)
                )
            except Exception as e:  # noqa: BLE001
                if not unsettled(e):
                    self._reject(nt, error_text(e))
                    await self._refresh(t)
                    return
                raw = await self._lookup(new_id)
                if raw is None:
                    self._reject(nt, f"replace not placed: {error_text(e)}")
                    await self._refresh(t)
                    return
            self._absorb(raw, nt)
            t.order.replaced_by = new_id
            await self._refresh(t)

    async def _refresh(self, t: Tracked) -> None:
        try:
            raw = await self.call(self.client.get_order_by_id, t.broker_id)
        except Exception as e:  # noqa: BLE001 - the stream or the next sweep brings it
            log.info("refresh of %s: %s", t.order.client_order_id, error_text(e))
            return
        self._absorb(raw, t)

    def _reject(self, t: Tracked, reason: str) -> None:
        t.in_flight = False
        o = t.order
        o.status, o.reason, o.updated_ts = "rejected", reason, time.time_ns()
        ups: list[Update] = [OrderUpdate("rejected", replace(o), o.updated_ts)]
        for leg_cid in o.legs:
            leg = self.orders[leg_cid].order
            leg.status, leg.reason, leg.updated_ts = "cancelled", "entry rejected", o.updated_ts
            ups.append(OrderUpdate("cancelled", replace(leg), o.updated_ts))
        self._emit(t.consumer, ups)

    # -- what Alpaca reports ----------------------------------------------------------------------
    def _absorb(self, raw: dict, t: Tracked | None = None, ts: int | None = None) -> None:
        """Apply an Alpaca order snapshot (and its legs) to liu's order and route the difference."""
        if t is None:
            t = self._find(raw)
            if t is None:
                return
        t.in_flight = False
        if raw.get("id") and not t.broker_id:
            t.broker_id = str(raw["id"])
            self.by_broker[t.broker_id] = t.order.client_order_id
        when = ts if ts is not None else mapping.ts_ns(raw.get("updated_at"))
        ups = mapping.apply(t.order, raw, when)
        if raw.get("replaced_by") and str(raw["replaced_by"]) in self.by_broker:
            t.order.replaced_by = self.by_broker[str(raw["replaced_by"])]
        for leg_raw in raw.get("legs") or ():
            lt = self._leg(t, leg_raw)
            if lt is not None:
                ups += mapping.apply(lt.order, leg_raw, mapping.ts_ns(leg_raw.get("updated_at")))
        if ups:
            self._emit(t.consumer, ups)

    def _leg(self, parent: Tracked, raw: dict) -> Tracked | None:
        bid = str(raw.get("id") or "")
        if bid in self.by_broker:
            return self.orders.get(self.by_broker[bid])
        kind = mapping.leg_kind(raw)
        cid = ids.leg_id(parent.order.client_order_id, kind)
        lt = self.orders.get(cid)
        if lt is None:  # a leg liu did not create (an order from before a restart): make it known
            lt = self.orders[cid] = Tracked(mapping.make_leg(parent.order, raw, cid), parent.consumer)
            parent.order.legs = (*parent.order.legs, cid)
        lt.in_flight = False
        lt.broker_id = bid
        self.by_broker[bid] = cid
        return lt

    def _find(self, raw: dict) -> Tracked | None:
        cid = self.by_broker.get(str(raw.get("id") or ""))
        if cid is None:
            cid = str(raw.get("client_order_id") or "")
        return self.orders.get(cid)

    def _emit(self, consumer: int, ups: list[Update]) -> None:
        for up in ups:
            o = up.order if isinstance(up, OrderUpdate) else None
            if o is not None:
                bid = self.orders[o.client_order_id].broker_id if o.client_order_id in self.orders else ""
                self._spawn(self.journal.update(o, bid))
        if any(isinstance(u, Fill) for u in ups):
            self._account_due.set()
        self.route(consumer, Updates(ups))

    def _on_stream_message(self, msg: dict) -> None:
        """trade_updates handler (on the stream's thread): hand over to the gateway's loop."""
        data = msg.get("data") if isinstance(msg, dict) and "stream" in msg else msg
        if self._loop is not None and isinstance(data, dict):
            self._loop.call_soon_threadsafe(self._on_event, data)

    async def _on_stream_message_async(self, msg: dict) -> None:  # alpaca-py wants a coroutine handler
        self._on_stream_message(msg)

    def _on_event(self, data: dict) -> None:
        raw = data.get("order") or {}
        t = self._find(raw)
        if t is None:  # another program's order, or a leg whose parent's answer has not come yet (the
            return  # parent's refresh or the next sweep brings it)
        self._absorb(raw, t, mapping.ts_ns(data.get("timestamp")))

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            if any(t.order.is_open for t in self.orders.values()):  # nothing open: nothing to miss
                await self.sweep()

    async def _after_connect(self) -> None:
        await self.sweep()
        self.connected.set()

    async def sweep(self) -> None:
        """Read open and recently closed orders and apply them: the fills the stream missed come out."""
        self.counts["sweeps"] += 1
        until: datetime | None = None
        seen = 0
        while True:
            req = GetOrdersRequest(
                status=QueryOrderStatus.ALL, after=self.since, until=until, nested=True, limit=500
            )
            try:
                page = await self.call(self.client.get_orders, req)
            except Exception as e:  # noqa: BLE001 - the next reconnect or sweep tries again
                log.warning("sweep failed: %s", error_text(e))
                return
            for raw in page:
                self._absorb(raw)
            seen += len(page)
            if len(page) < 500:
                break
            until = datetime.fromisoformat(str(page[-1]["submitted_at"]).replace("Z", "+00:00")[:26])
        for t in [t for t in self.orders.values() if t.in_flight and not t.order.leg]:
            raw = await self._lookup(t.order.client_order_id)
            if raw is not None:
                self._absorb(raw, t)
        log.info("sweep: %d orders read", seen)

    # -- account --------------------------------------------------------------------------------
    async def account(self) -> AccountState:
        a = await self.call(self.client.get_account)
        return AccountState(
            float(a.get("cash") or 0),
            float(a.get("buying_power") or 0),
            float(a.get("equity") or 0),
            time.time_ns(),
        )

    async def _account_loop(self) -> None:
        while True:
            try:
                state = await self.account()
            except Exception as e:  # noqa: BLE001 - keep the last figures; try again later
                log.warning("account refresh failed: %s", error_text(e))
            else:
                for consumer in self.consumers():
                    self.route(consumer, state)
            self._account_due.clear()
            try:
                await asyncio.wait_for(self._account_due.wait(), self.account_interval)
            except TimeoutError:
                pass
            await asyncio.sleep(0.2)  # several fills in a row: one refresh

    def consumers(self) -> list[int]:
        return sorted({t.consumer for t in self.orders.values()} | set(self.extra_consumers))

    extra_consumers: tuple[int, ...] = ()

    # -- restart ----------------------------------------------------------------------------------
    async def settle_journal(self, rows: list) -> int:
        """Bring journaled orders that were still open (or never answered) up to date with Alpaca, so the
        positions rebuilt from the journal count every fill, including those made while liu was down.
        An entry Alpaca does not know was never sent (the crash came between the write and the send)."""
        settled = 0
        for r in rows:
            if r.status in FINAL_STATUSES:
                continue
            try:
                if r.broker_id:
                    raw = await self.call(self.client.get_order_by_id, r.broker_id)
                elif not r.parent_id:
                    raw = await self._lookup(r.client_order_id)
                else:
                    continue
            except Exception as e:  # noqa: BLE001 - reported; the row keeps what it had
                log.warning("journal: order %s not read back (%s)", r.client_order_id, error_text(e))
                continue
            o = Order(r.symbol, r.side, r.qty, strategy=r.strategy, client_order_id=r.client_order_id)
            o.status, o.filled_qty, o.avg_fill_price = r.status, r.filled_qty, r.filled_avg_price or 0.0
            if raw is None:
                o.status, o.reason = "rejected", "never sent (stopped between the journal and the send)"
            else:
                mapping.apply(o, raw, mapping.ts_ns(raw.get("updated_at")))
            r.status, r.reason = o.status, o.reason
            r.filled_qty, r.filled_avg_price = o.filled_qty, o.avg_fill_price
            r.broker_id = r.broker_id or str((raw or {}).get("id") or "")
            await self.journal.update(o, r.broker_id)
            settled += 1
        return settled

    def adopt(self, orders: dict[int, list[Order]], broker_ids: dict[str, str]) -> None:
        """Look after orders restored from an earlier session (their updates go to their new owner)."""
        for consumer, os_ in orders.items():
            for o in os_:
                t = Tracked(replace(o), consumer, broker_ids.get(o.client_order_id, ""), in_flight=False)
                self.orders[o.client_order_id] = t
                if t.broker_id:
                    self.by_broker[t.broker_id] = o.client_order_id
