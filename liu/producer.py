"""The producer: owns the market-data websockets and routes events to consumers.

It speaks Alpaca's market-data stream protocol (msgpack frames holding arrays of messages) to Alpaca or
to liu's own server, decodes each message straight into a compact wire tuple stamped with the receive
time (`liu.sources.protocol.wire_event`, the decode the backtester uses too), and routes it by a stable
hash of its symbol, so a symbol lands on the same consumer after a restart. Each frame's events go out
as one batch per consumer. What it tells the main process are the typed messages of `liu.messages`.

With Alpaca (`crypto_url` given) it holds up to two connections, opened as symbols need them: the stock
feed (`/v2/{iex|sip|delayed_sip}`) and the crypto feed (`/v1beta3/crypto/us`, every `BASE/QUOTE`
symbol); both route into the same consumers. Stream errors follow Alpaca's codes: wrong keys (402), a
feed the plan does not include (409) and a connection limit (406, unless it clears while reconnecting)
stop the session with one line; anything else (407 slow client, 404 auth timeout, 500, a dropped
socket, an HTTP 429 on the upgrade) reconnects with backoff, tells the consumers to back-fill the gap
from historical bars (`Backfill`, sent before the resubscribe, so it precedes every new event), then
resubscribes. Updated bars (`u`) go to the owning consumer (`BarRevision`); trade corrections (`c`) and
cancels (`x`) are counted and logged.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import msgpack
import websockets
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from liu.commands import CancelOrder
from liu.events import Assign, Backfill, BarRevision, NewChannel, Start, Stop, Subscribe
from liu.messages import ProducerFailed, ProducerStopped, Reconnected, SourceEnded, Subscribed
from liu.shard import shard_of
from liu.sources.protocol import wire_event
from liu.stats import SharedStats
from liu.transport import EOF_MARK, ChannelWriter, watch_connection

log = logging.getLogger(__name__)

# A 406 right after a drop is usually our own old connection not reaped yet (Alpaca reaps within ~90 s):
# keep retrying that long before calling it another program's connection.
CONNECTION_LIMIT_GRACE = 120.0
_SAMPLE = (1, 10, 100, 1000, 10_000)  # log the n-th correction / cancel / revision for these n


class AuthError(Exception):
    """The market-data server refused us for good (wrong keys, feed not in the plan, connection limit)."""


class StreamError(Exception):
    """An Alpaca `{"T": "error", "code", "msg"}` message during the handshake."""

    def __init__(self, code: Any, msg: Any) -> None:
        super().__init__(f"{msg} ({code})")
        self.code = code
        self.msg = msg


@dataclass
class _Link:
    """One websocket: its URL, channels, the symbols it carries, and its reconnect state."""

    key: str  # its key in Producer.links ("main", or "stocks" / "crypto" with Alpaca)
    name: str
    url: str
    kinds: tuple[str, ...]
    symbols: set[str] = field(default_factory=set)
    ws: Any = None
    task: asyncio.Task | None = None
    connected_once: bool = False
    down_since: float | None = None  # monotonic
    down_wall: int | None = None  # ns: the last frame before it went down (the consumers back-fill from it)
    last_ts: int = 0  # ns, data time of the last message of the last frame (live: about wall time)
    cause: str = ""  # why it went down, for the log and the back-fill


@dataclass
class _Pending:
    """A subscription the main process waits for: the symbols still unacknowledged, per link."""

    symbols: tuple[str, ...]
    parts: dict[str, set[str]]


class Producer:
    """Websockets → decoded, sharded batches. Runs in its own process via `producer_main`.

    `crypto_url`: Alpaca's crypto stream; `BASE/QUOTE` symbols go there, the rest to `url`. Then both
    connections open only once they have symbols, and a reconnect asks the consumers to back-fill.
    """

    def __init__(
        self,
        url: str,
        key: str,
        secret: str,
        writers: list[ChannelWriter],
        stats: SharedStats,
        kinds: tuple[str, ...] = ("trades", "quotes"),
        notify: Callable[[object], None] = lambda m: None,
        max_backoff: float = 5.0,
        crypto_url: str | None = None,
        resumed_from: int | None = None,
    ) -> None:
        self.url, self.key, self.secret = url, key, secret
        self.writers = writers
        self.stats = stats
        self.kinds = kinds
        self.notify = notify
        self.max_backoff = max_backoff
        self.alpaca = crypto_url is not None
        if crypto_url is None:
            self.links: dict[str, _Link] = {"main": _Link("main", "market data", url, kinds)}
        else:
            self.links = {
                "stocks": _Link("stocks", "stock market data", url, kinds),
                "crypto": _Link("crypto", "crypto market data", crypto_url, kinds),
            }
        if resumed_from is not None:  # a restart: the first connect is a reconnect (gap, back-fill)
            for link in self.links.values():
                link.down_since = time.monotonic()
                link.down_wall = resumed_from
                link.cause = "producer restarted"
        self.symbols: dict[str, int] = {}  # subscribed symbol → consumer
        self._shard_cache: dict[str, int] = {}
        self._stopping: Stop | None = None
        self._fatal: AuthError | None = None
        self._done = asyncio.Event()
        self._stopped = asyncio.Event()
        self.gaps: list[float] = []
        self._pending: list[_Pending] = []
        self._a = stats.array
        self._i_frames = stats.producer_index("frames")
        self._i_events = stats.producer_index("events")
        self._i_unroutable = stats.producer_index("unroutable")
        self._i_connected = stats.producer_index("connected")
        self._i_sent = [stats.consumer_index(i, "sent") for i in range(len(writers))]
        self._i_backlog = [stats.consumer_index(i, "backlog_bytes") for i in range(len(writers))]
        for i, w in enumerate(writers):
            w.on_backlog = lambda size, k=self._i_backlog[i]: self._a.__setitem__(k, size)
        # What each consumer was told, for a restarted one (`rewire`): the clock, and per (strategies,
        # scanner) its symbols (a dict as an ordered set: bounded by the symbols, not by the scans).
        self._start: Start | None = None
        self.assigned: list[dict[tuple[tuple[str, ...], str], dict[str, None]]] = [{} for _ in writers]

    @property
    def _ws(self) -> Any:
        """The first open connection (tests and callers that knew one socket)."""
        return next((link.ws for link in self.links.values() if link.ws is not None), None)

    def _link_of(self, symbol: str) -> _Link:
        if self.alpaca:
            return self.links["crypto" if "/" in symbol else "stocks"]
        return self.links["main"]

    # -- control --------------------------------------------------------
    async def subscribe(self, assign: Assign) -> None:
        """Subscribe new symbols and tell their consumers which strategies trade them.

        The consumers hear first (`Assign`, which starts their warm-up); the subscribe goes to the
        server after, so every event of a new symbol reaches its consumer behind the `Assign`.
        """
        n = len(self.writers)
        new = [s for s in assign.symbols if s not in self.symbols]
        for s in new:
            self.symbols[s] = shard_of(s, n)
        per: dict[int, list[str]] = {}
        for s in assign.symbols:
            per.setdefault(self.symbols[s], []).append(s)
        for i, syms in per.items():
            self.writers[i].send_control(Assign(tuple(syms), assign.strategies, assign.scanner))
            self.assigned[i].setdefault((assign.strategies, assign.scanner), {}).update(dict.fromkeys(syms))
        if not new:
            self.notify(Subscribed())
            return
        parts: dict[str, list[str]] = {}
        for s in new:
            parts.setdefault(self._link_of(s).key, []).append(s)
        # Confirmed only when the server's ack lists them: data sent before that would not reach us.
        self._pending.append(_Pending(tuple(sorted(new)), {k: set(v) for k, v in parts.items()}))
        for name, syms in parts.items():
            link = self.links[name]
            link.symbols.update(syms)
            if link.ws is not None:
                await self._send_subscribe(link, syms)
            elif self.alpaca and self._stopping is None:
                self._ensure(link)

    def start(self, msg: Start) -> None:
        self._start = msg
        for w in self.writers:
            w.send_control(msg)

    def rewire(self, i: int, writer: ChannelWriter) -> None:
        """Consumer `i` was restarted: its events go to its new channel, behind the clock and its symbols.

        What was routed to it while it was down is counted as sent and never received: the daemon reports
        it as lost."""
        self.writers[i].close()
        # The dead consumer's last counts are still in its slot (its successor starts from them).
        lost, received = self.stats.consumer_index(i, "lost"), self.stats.consumer_index(i, "received")
        self._a[lost] = self._a[self._i_sent[i]] - self._a[received]
        writer.on_backlog = lambda size, k=self._i_backlog[i]: self._a.__setitem__(k, size)
        self.writers[i] = writer
        if self._start is not None:
            writer.send_control(self._start)
        for (strategies, scanner), symbols in self.assigned[i].items():
            writer.send_control(Assign(tuple(symbols), strategies, scanner))

    async def stop(self, msg: Stop) -> None:
        self._stopping = msg
        self._done.set()
        for link in self.links.values():
            if link.ws is not None:
                await link.ws.close()
        await self._stopped.wait()

    # -- connections ----------------------------------------------------
    def _ensure(self, link: _Link) -> None:
        if link.task is None:
            link.task = asyncio.get_running_loop().create_task(self._run_link(link), name=f"liu-{link.name}")

    async def run(self) -> None:
        """Run every connection until stopped; raise AuthError when the server refused us for good."""
        try:
            if not self.alpaca:
                self._ensure(self.links["main"])
            await self._done.wait()
            for link in self.links.values():
                if link.ws is not None:
                    await link.ws.close()
            tasks = [link.task for link in self.links.values() if link.task is not None]
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._fatal is not None and self._stopping is None:
                raise self._fatal
        finally:
            await self._finish()

    async def _send_subscribe(self, link: _Link, symbols: list[str]) -> None:
        req: dict[str, Any] = {"action": "subscribe"}
        for k in link.kinds:
            req[k] = symbols
        await link.ws.send(msgpack.packb(req))

    async def _handshake(self, ws: Any, link: _Link) -> None:
        first = msgpack.unpackb(await ws.recv())
        if first and isinstance(first, list) and first[0].get("T") == "error":
            raise StreamError(first[0].get("code"), first[0].get("msg"))
        if not (first and isinstance(first, list) and first[0].get("T") == "success"):
            raise ConnectionError(f"unexpected greeting {first!r}"[:200])
        await ws.send(msgpack.packb({"action": "auth", "key": self.key, "secret": self.secret}))
        reply = msgpack.unpackb(await ws.recv())
        if reply and isinstance(reply, list) and reply[0].get("T") == "error":
            raise StreamError(reply[0].get("code"), reply[0].get("msg"))

    def _refusal(self, link: _Link, e: StreamError) -> AuthError | None:
        """The AuthError that ends the session for this handshake error, or None to reconnect."""
        where = f"{link.name} server {link.url}"
        if e.code == 402:
            return AuthError(
                f"{where} refused authentication: {e.msg} (code 402); check the API keys "
                "(APCA_API_KEY_ID / APCA_API_SECRET_KEY)"
            )
        if e.code == 409:
            return AuthError(
                f"{where}: {e.msg} (code 409): the account's market-data subscription does not include "
                'this feed; use [source] feed = "iex" (or "delayed_sip")'
            )
        if e.code == 406:
            down = time.monotonic() - link.down_since if link.down_since is not None else 0.0
            if not link.connected_once or down > CONNECTION_LIMIT_GRACE:
                return AuthError(
                    f"{where}: {e.msg} (code 406): another program already streams this feed with these "
                    "keys (Alpaca allows one connection per feed); stop it or use other keys"
                )
        return None

    async def _run_link(self, link: _Link) -> None:
        """Connect, read until stopped; reconnect with exponential backoff, back-fill, resubscribe."""
        backoff = 0.1
        while self._stopping is None and self._fatal is None:
            try:
                async with connect(
                    link.url,
                    max_size=None,
                    compression=None,
                    ping_interval=None,
                    open_timeout=5,
                    close_timeout=1,  # a refused or failing server must not hold a fatal stop for 10 s
                    additional_headers={"Content-Type": "application/msgpack"},  # Alpaca: msgpack, not JSON
                ) as ws:
                    await self._handshake(ws, link)
                    link.ws = ws
                    self._a[self._i_connected] = 1
                    if link.down_since is not None:
                        self._reconnected(link)
                    link.connected_once = True
                    if link.symbols:
                        await self._send_subscribe(link, sorted(link.symbols))
                    backoff = 0.1
                    await self._read(ws, link)
                    if self._stopping is None:
                        raise ConnectionError(link.cause or "the server closed the connection")
            except StreamError as e:
                fatal = self._refusal(link, e)
                if fatal is not None:
                    self._fatal = fatal
                    # Say it now: draining the consumers' channels on the way out can take a while.
                    self.notify(ProducerFailed(str(fatal)))
                    self._done.set()
                    break
                self._down(link, f"{e.msg} ({e.code})")
            except (
                TimeoutError,
                OSError,
                ConnectionClosed,
                websockets.InvalidHandshake,
                ConnectionError,
            ) as e:
                if self._stopping is not None:
                    break
                self._down(link, link.cause or str(e) or type(e).__name__)
            finally:
                link.ws = None
                if not any(lk.ws is not None for lk in self.links.values()):
                    self._a[self._i_connected] = 0
            if self._stopping is None and self._fatal is None:
                try:  # sleep, but wake at once on stop
                    await asyncio.wait_for(self._done.wait(), backoff)
                except TimeoutError:
                    pass
                backoff = min(backoff * 2, self.max_backoff)

    def _down(self, link: _Link, cause: str) -> None:
        if link.down_since is None:
            link.down_since = time.monotonic()
            # The data time of the last frame: a stalled process that wakes up reads a socket full of
            # old frames before it notices the close, so its own receive times would hide the gap.
            link.down_wall = link.last_ts or time.time_ns()
            link.cause = cause
            log.warning("%s connection to %s lost (%s); reconnecting", link.name, link.url, cause)

    def _reconnected(self, link: _Link) -> None:
        gap = time.monotonic() - (link.down_since or time.monotonic())
        if link.down_wall is not None:  # from the last frame: a stalled process notices late
            gap = max(gap, (time.time_ns() - link.down_wall) / 1e9)
        self.gaps.append(gap)
        self._a[self.stats.producer_index("gap_ms")] = int(gap * 1000)
        self._a[self.stats.producer_index("reconnects")] += 1
        cause = link.cause or "connection lost"
        if self.alpaca and link.symbols and link.down_wall is not None:
            # Before the resubscribe: every event after the gap reaches each consumer behind this.
            per: dict[int, list[str]] = {}
            for s in link.symbols:
                per.setdefault(self.symbols[s], []).append(s)
            for i, syms in per.items():
                self.writers[i].send_control(Backfill(tuple(sorted(syms)), link.down_wall, cause))
        log.warning(
            "%s reconnected after a %.2fs gap (%s); %sresubscribed %d symbols",
            link.name,
            gap,
            cause,
            "back-filling and " if self.alpaca and link.symbols else "",
            len(link.symbols),
        )
        self.notify(Reconnected(gap))
        link.down_since = link.down_wall = None
        link.cause = ""

    # -- the hot path ---------------------------------------------------
    async def _read(self, ws: Any, link: _Link | None = None) -> None:
        if link is None:
            link = next(iter(self.links.values()))
        n = len(self.writers)
        a = self._a
        shard_cache = self._shard_cache
        writers = self.writers
        unpackb = msgpack.unpackb
        decode = wire_event
        time_ns = time.time_ns
        pending: list[list] = [[] for _ in range(n)]
        async for frame in ws:
            recv = time_ns()
            a[self._i_frames] += 1
            try:
                msgs = unpackb(frame, timestamp=2)
                if msgs.__class__ is not list:
                    raise ValueError("frame is not an array")
            except Exception as e:
                a[self._i_unroutable] += 1
                if a[self._i_unroutable] in _SAMPLE:
                    log.warning("undecodable market data frame (%s); %d so far", e, a[self._i_unroutable])
                continue
            events = unroutable = 0
            for m in msgs:
                ev = decode(m, recv)
                if ev:
                    sym = ev[1]
                    shard = shard_cache.get(sym)
                    if shard is None:
                        shard = shard_cache[sym] = shard_of(sym, n)
                    pending[shard].append(ev)
                    events += 1
                elif ev is None:
                    try:
                        self._control_message(m, link)
                    except Exception as e:  # noqa: BLE001 - a broken control message is counted, never fatal
                        unroutable += 1
                        if a[self._i_unroutable] + unroutable in _SAMPLE:
                            log.warning("unusable %r message (%s: %s)", m.get("T"), type(e).__name__, e)
                else:
                    unroutable += 1
            if unroutable:
                a[self._i_unroutable] += unroutable
            a[self._i_events] += events
            if events:
                t = msgs[-1].get("t") if msgs[-1].__class__ is dict else None
                if t.__class__ is int:
                    link.last_ts = t
            for i in range(n):
                batch = pending[i]
                if batch:
                    writers[i].send_batch(batch)
                    a[self._i_sent[i]] += len(batch)
                    pending[i] = []

    # -- everything that is not a trade, quote or bar -------------------
    def _control_message(self, m: Any, link: _Link | None = None) -> None:
        if m.__class__ is not dict:
            return
        t = m.get("T")
        if t == "u":
            self._updated_bar(m)
        elif t == "c" or t == "x":
            self._trade_fix(t, m)
        elif t == "success" and m.get("msg") == "end of data":
            self.notify(SourceEnded(m.get("events", 0)))
        elif t == "subscription":
            self._acked(m, link or next(iter(self.links.values())))
        elif t == "error":
            self._stream_error(m, link or next(iter(self.links.values())))

    def _acked(self, m: dict, link: _Link) -> None:
        name = link.key
        acked = set(m.get(link.kinds[0]) or ())
        for p in list(self._pending):
            part = p.parts.get(name)
            if part is not None and ("*" in acked or part <= acked):
                del p.parts[name]
                if not p.parts:
                    self._pending.remove(p)
                    self.notify(Subscribed(p.symbols))

    def _stream_error(self, m: dict, link: _Link) -> None:
        code, msg = m.get("code"), m.get("msg")
        if code == 407:
            link.cause = f"{msg} (407): we read too slowly and the server dropped us"
            log.warning("%s server %s: %s (407); expecting a disconnect", link.name, link.url, msg)
            return
        if code == 405:
            # Earlier subscriptions stay; the ones waiting are refused: say so, and do not keep the
            # main process waiting for an ack that will not come.
            name = link.key
            refused = sorted({s for p in self._pending for s in p.parts.get(name, ())})
            log.error(
                "%s server %s: %s (405): the account's plan streams fewer symbols; not subscribed: %s",
                link.name,
                link.url,
                msg,
                refused[:20],
            )
            for p in list(self._pending):
                if p.parts.pop(name, None) is not None and not p.parts:
                    self._pending.remove(p)
                    self.notify(Subscribed(p.symbols))
            return
        hint = ""
        if code == 400 and link is self.links.get("stocks"):
            hint = "; a symbol it cannot parse? (crypto pairs are written BASE/QUOTE, e.g. BTC/USD)"
        log.error("%s server %s error %s: %s%s", link.name, link.url, code, msg, hint)

    def _updated_bar(self, m: dict) -> None:
        a = self._a
        k = self.stats.producer_index("updated_bars")
        try:
            sym = m["S"]
            rev = BarRevision(
                sym, int(m["t"]), float(m["o"]), float(m["h"]), float(m["l"]), float(m["c"]), float(m["v"])
            )
            owner = self.symbols.get(sym)
            if owner is None:
                owner = shard_of(sym, len(self.writers))
        except Exception as e:  # noqa: BLE001 - a bad revision is counted, never fatal
            a[self._i_unroutable] += 1
            log.warning("unusable updated bar %r: %s", m.get("S"), e)
            return
        self.writers[owner].send_control(rev)
        a[k] += 1
        if a[k] in _SAMPLE:
            log.info(
                "updated bar %s at %d: close %s, volume %s (%d so far)",
                sym,
                rev.ts,
                rev.close,
                rev.volume,
                a[k],
            )

    def _trade_fix(self, t: str, m: dict) -> None:
        field_name = "corrections" if t == "c" else "cancel_errors"
        k = self.stats.producer_index(field_name)
        self._a[k] += 1
        if self._a[k] in _SAMPLE:
            if t == "c":
                log.warning(
                    "trade correction %s: id %s price %s size %s -> id %s price %s size %s (%d so far; bars "
                    "follow Alpaca's updated bars)",
                    m.get("S"),
                    m.get("oi"),
                    m.get("op"),
                    m.get("os"),
                    m.get("ci"),
                    m.get("cp"),
                    m.get("cs"),
                    self._a[k],
                )
            else:
                log.warning(
                    "trade %s %s: id %s price %s size %s (%d so far; bars follow Alpaca's updated bars)",
                    m.get("S"),
                    "cancelled" if m.get("a", "C") == "C" else "errored",
                    m.get("i"),
                    m.get("p"),
                    m.get("s"),
                    self._a[k],
                )

    async def _finish(self) -> None:
        reason = self._stopping or Stop("producer ended")
        for w in self.writers:
            w.send_control(reason)
        await asyncio.gather(*(w.drain() for w in self.writers))
        self._stopped.set()


def producer_main(
    url: str,
    key: str,
    secret: str,
    conns: list[Connection],
    control: Connection,
    stats: SharedStats,
    kinds: tuple[str, ...],
    crypto_url: str | None = None,
    resumed_from: int | None = None,
) -> None:
    """Process entry: run the producer, taking `Subscribe`/`Start`/`Stop` from the main process.

    `crypto_url` (Alpaca): the crypto stream; with it the producer works as described for Alpaca.
    `resumed_from` (wall ns): this producer replaces one that died then; its first connection reports the
    gap and, on Alpaca, has the consumers back-fill it.
    """
    import uvloop

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # also when a service manager signals the whole group
    logging.basicConfig(level=logging.INFO, format="%(asctime)s producer %(levelname)s %(message)s")

    async def main() -> None:
        writers = [ChannelWriter(c) for c in conns]
        producer = Producer(
            url,
            key,
            secret,
            writers,
            stats,
            kinds,
            notify=control.send,
            crypto_url=crypto_url,
            resumed_from=resumed_from,
        )
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task] = set()

        def on_control(msg: object) -> None:
            if msg is EOF_MARK:  # the main process is gone: stop
                msg = Stop("main process exited")
            if isinstance(msg, Subscribe):
                task = loop.create_task(producer.subscribe(msg.assign))
            elif isinstance(msg, Start):
                producer.start(msg)
                return
            elif isinstance(msg, Stop):
                task = loop.create_task(producer.stop(msg))
            elif isinstance(msg, CancelOrder):  # through the consumer's channel, in order with its events
                writers[msg.consumer].send_control(msg)
                return
            elif isinstance(msg, NewChannel):  # the daemon restarted that consumer
                producer.rewire(msg.consumer, ChannelWriter(msg.conn))
                return
            else:
                return
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        watch_connection(control, on_control, loop)
        try:
            await producer.run()
        except AuthError:
            pass  # reported (ProducerFailed) when the server refused us
        control.send(ProducerStopped(tuple(producer.gaps)))

    uvloop.run(main())
