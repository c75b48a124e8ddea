"""The producer: owns the market-data websocket and routes events to consumers.

It speaks Alpaca's v2 stream protocol (msgpack frames holding arrays of
messages) to Alpaca or to liu's own server, decodes each message straight into
a compact wire tuple stamped with the receive time (`liu.sources.protocol.
wire_event`, the decode the backtester uses too), and routes it by a stable
hash of its symbol, so a symbol lands on the same consumer after a restart.
Each frame's events go out as one batch per consumer. What it tells the main
process are the typed messages of `liu.messages`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
import zlib
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import msgpack
import websockets
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from liu.events import Assign, Start, Stop, Subscribe
from liu.messages import ProducerFailed, ProducerStopped, Reconnected, SourceEnded, Subscribed
from liu.sources.protocol import wire_event
from liu.stats import SharedStats
from liu.transport import EOF_MARK, ChannelWriter, watch_connection

log = logging.getLogger(__name__)


class AuthError(Exception):
    """The market-data server refused our keys; reconnecting will not help."""


def shard_of(symbol: str, consumers: int) -> int:
    """Stable consumer index for `symbol` (crc32, unlike `hash()`, does not change per process)."""
    return zlib.crc32(symbol.encode()) % consumers


class Producer:
    """Websocket → decoded, sharded batches. Runs in its own process via `producer_main`."""

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
    ) -> None:
        self.url, self.key, self.secret = url, key, secret
        self.writers = writers
        self.stats = stats
        self.kinds = kinds
        self.notify = notify
        self.max_backoff = max_backoff
        self.symbols: dict[str, int] = {}  # subscribed symbol → consumer
        self._shard_cache: dict[str, int] = {}
        self._ws: Any = None
        self._stopping: Stop | None = None
        self._stopped = asyncio.Event()
        self.gaps: list[float] = []
        self._awaiting: list[set[str]] = []
        self._a = stats.array
        self._i_frames = stats.producer_index("frames")
        self._i_events = stats.producer_index("events")
        self._i_unroutable = stats.producer_index("unroutable")
        self._i_sent = [stats.consumer_index(i, "sent") for i in range(len(writers))]
        self._i_backlog = [stats.consumer_index(i, "backlog_bytes") for i in range(len(writers))]
        for i, w in enumerate(writers):
            w.on_backlog = lambda size, k=self._i_backlog[i]: self._a.__setitem__(k, size)

    # -- control --------------------------------------------------------
    async def subscribe(self, assign: Assign) -> None:
        """Subscribe new symbols and tell their consumers which strategies trade them."""
        n = len(self.writers)
        new = [s for s in assign.symbols if s not in self.symbols]
        for s in new:
            self.symbols[s] = shard_of(s, n)
        per: dict[int, list[str]] = {}
        for s in assign.symbols:
            per.setdefault(self.symbols[s], []).append(s)
        for i, syms in per.items():
            self.writers[i].send_control(Assign(tuple(syms), assign.strategies, assign.scanner))
        if not new:
            self.notify(Subscribed())
            return
        # Confirmed only when the server's ack lists them: data sent before that would not reach us.
        self._awaiting.append(set(new))
        if self._ws is not None:
            await self._send_subscribe(new)

    def start(self, msg: Start) -> None:
        for w in self.writers:
            w.send_control(msg)

    async def stop(self, msg: Stop) -> None:
        self._stopping = msg
        if self._ws is not None:
            await self._ws.close()
        await self._stopped.wait()

    # -- websocket ------------------------------------------------------
    async def _send_subscribe(self, symbols: list[str]) -> None:
        req: dict[str, Any] = {"action": "subscribe"}
        for k in self.kinds:
            req[k] = symbols
        await self._ws.send(msgpack.packb(req))

    async def _handshake(self, ws: Any) -> None:
        first = msgpack.unpackb(await ws.recv())
        if not (first and first[0].get("T") == "success"):
            raise ConnectionError(f"unexpected greeting {first!r}")
        await ws.send(msgpack.packb({"action": "auth", "key": self.key, "secret": self.secret}))
        reply = msgpack.unpackb(await ws.recv())
        if reply and reply[0].get("T") == "error":
            raise AuthError(
                f"market data server {self.url} refused authentication: {reply[0].get('msg')} "
                f"(code {reply[0].get('code')})"
            )

    async def run(self) -> None:
        """Connect, read until stopped; reconnect with exponential backoff and resubscribe."""
        backoff = 0.1
        down_since: float | None = None
        connected = self.stats.producer_index("connected")
        try:
            while self._stopping is None:
                try:
                    async with connect(
                        self.url, max_size=None, compression=None, ping_interval=None, open_timeout=5
                    ) as ws:
                        await self._handshake(ws)
                        self._ws = ws
                        if self.symbols:
                            await self._send_subscribe(list(self.symbols))
                        self._a[connected] = 1
                        if down_since is not None:
                            gap = time.monotonic() - down_since
                            self.gaps.append(gap)
                            self._a[self.stats.producer_index("gap_ms")] = int(gap * 1000)
                            self._a[self.stats.producer_index("reconnects")] += 1
                            log.warning(
                                "market data reconnected after a %.2fs gap; resubscribed %d symbols",
                                gap,
                                len(self.symbols),
                            )
                            self.notify(Reconnected(gap))
                            down_since = None
                        backoff = 0.1
                        await self._read(ws)
                        if self._stopping is None:
                            raise ConnectionError("the server closed the connection")
                except AuthError:
                    raise
                except (
                    TimeoutError,
                    OSError,
                    ConnectionClosed,
                    websockets.InvalidHandshake,
                    ConnectionError,
                ) as e:
                    if self._stopping is not None:
                        break
                    if down_since is None:
                        down_since = time.monotonic()
                        log.warning("market data connection to %s lost (%s); reconnecting", self.url, e)
                finally:
                    self._ws = None
                    self._a[connected] = 0
                if self._stopping is None:
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.max_backoff)
        finally:
            await self._finish()

    async def _read(self, ws: Any) -> None:
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
                    self._control_message(m)
                else:
                    unroutable += 1
            if unroutable:
                a[self._i_unroutable] += unroutable
            a[self._i_events] += events
            for i in range(n):
                batch = pending[i]
                if batch:
                    writers[i].send_batch(batch)
                    a[self._i_sent[i]] += len(batch)
                    pending[i] = []

    def _control_message(self, m: dict) -> None:
        t = m.get("T")
        if t == "success" and m.get("msg") == "end of data":
            self.notify(SourceEnded(m.get("events", 0)))
        elif t == "subscription":
            acked = set(m.get(self.kinds[0]) or ())
            for waiting in [w for w in self._awaiting if "*" in acked or w <= acked]:
                self._awaiting.remove(waiting)
                self.notify(Subscribed(tuple(sorted(waiting))))
        elif t == "error":
            log.error("market data server error %s: %s", m.get("code"), m.get("msg"))

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
) -> None:
    """Process entry: run the producer, taking `Subscribe`/`Start`/`Stop` from the main process."""
    import uvloop

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides when to stop
    logging.basicConfig(level=logging.INFO, format="%(asctime)s producer %(levelname)s %(message)s")

    async def main() -> None:
        writers = [ChannelWriter(c) for c in conns]
        producer = Producer(url, key, secret, writers, stats, kinds, notify=control.send)
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
            else:
                return
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        watch_connection(control, on_control, loop)
        try:
            await producer.run()
        except AuthError as e:
            control.send(ProducerFailed(str(e)))
        control.send(ProducerStopped(tuple(producer.gaps)))

    uvloop.run(main())
