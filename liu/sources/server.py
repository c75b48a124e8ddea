"""liu's own market-data server, speaking Alpaca's v2 market-data stream protocol.

Any Alpaca client (alpaca-py's `StockDataStream(..., url_override="ws://host:port")`,
or a bare `websockets` + msgpack client) can connect, authenticate and subscribe.
Server → client frames are always msgpack arrays of maps; clients may send
msgpack (binary) or JSON (text) requests.

The server streams nothing until `start_feed(clock)`: the daemon lets its
producer connect and subscribe first, then starts the shared clock.

Delivery is lossless: a frame is sent to each connection in turn and a slow
connection's send backpressure (websockets' write buffer) slows the feed for
everyone. Alpaca would instead disconnect a slow client (error 407).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing.connection
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from liu.clock import Clock
from liu.events import Start, Stop
from liu.messages import ServerFailed, ServerReady, ServerStopped
from liu.sources import protocol as P
from liu.sources.feeds import Feed, make_feed
from liu.transport import EOF_MARK, watch_connection

log = logging.getLogger(__name__)

# Channels a subscribe / unsubscribe request may carry. Only the first five carry
# data here; the others are accepted and acknowledged like Alpaca does.
KNOWN_CHANNELS = P.CHANNELS + ("statuses", "lulds", "corrections", "cancelErrors")
_MISSING = object()


class _Conn:
    __slots__ = ("ws", "authed", "subs", "route", "sig", "sent", "universe")

    def __init__(self, ws: ServerConnection, universe: frozenset[str] = frozenset()) -> None:
        self.ws = ws
        self.universe = universe  # the feed's symbols: a set covering them all counts as "*"
        self.authed = False
        self.subs: dict[str, set[str]] = {ch: set() for ch in KNOWN_CHANNELS}
        self.route: dict[str, set[str] | None] = {}  # message type → symbols (None = all)
        self.sig: tuple = ()
        self.sent = 0

    def update_route(self) -> None:
        route: dict[str, set[str] | None] = {}
        for typ, ch in P.CHANNEL_OF_TYPE.items():
            syms = self.subs[ch]
            if syms:
                every = "*" in syms or (self.universe and self.universe <= syms)
                route[typ] = None if every else set(syms)
        self.route = route
        self.sig = tuple(sorted((t, None if s is None else tuple(sorted(s))) for t, s in route.items()))

    def takes_all(self, types: frozenset[str]) -> bool:
        route = self.route
        return all(route.get(t, _MISSING) is None for t in types)

    def select(self, msgs: list[dict]) -> list[dict]:
        route = self.route
        out = []
        for m in msgs:
            r = route.get(m["T"], _MISSING)
            if r is None or (r is not _MISSING and m["S"] in r):
                out.append(m)
        return out

    def ack(self) -> bytes:
        msg: dict[str, Any] = {"T": "subscription"}
        for ch in KNOWN_CHANNELS:
            msg[ch] = sorted(self.subs[ch])
        return P.encode([msg])


class MarketDataServer:
    """Serves one feed to any number of Alpaca-protocol clients.

    Attributes:
        port: the bound port (after `start()`).
        feed_done: set when a finite feed is exhausted and "end of data" was sent.
        sent_events: market messages sent so far, summed over connections.
        feed_error: the exception that ended the feed task, if any.
    """

    def __init__(
        self,
        feed: Feed,
        host: str = "127.0.0.1",
        port: int = 0,
        key: str | None = None,
        secret: str | None = None,
        *,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 60.0,
        write_limit: int = 2**18,
        yield_every: int = 16,
    ) -> None:
        self.feed = feed
        self.host = host
        self.port = port
        self.key = key
        self.secret = secret
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.write_limit = write_limit
        self.yield_every = yield_every
        self.sent_events = 0
        self.feed_done = asyncio.Event()
        self.feed_error: BaseException | None = None
        self._conns: dict[ServerConnection, _Conn] = {}
        self._server: Server | None = None
        self._feed_task: asyncio.Task | None = None
        self._sub_changed = asyncio.Condition()
        self._universe: frozenset[str] | None = None

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> int:
        """Bind and listen; returns the port (an ephemeral one when port=0)."""
        if self._server is not None:
            raise RuntimeError("server already started")
        self._server = await serve(
            self._handler,
            self.host,
            self.port,
            reuse_address=True,
            compression=None,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            close_timeout=2,
            write_limit=self.write_limit,
            max_size=2**20,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """Stop the feed, close every connection and the listener. `start()` may follow."""
        task, self._feed_task = self._feed_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        self._conns.clear()

    def subscribers(self) -> int:
        """Authenticated connections with a non-empty data subscription."""
        return sum(1 for c in self._conns.values() if c.route)

    async def wait_for_subscribers(self, n: int = 1) -> None:
        """Wait until at least `n` connections have subscribed to something."""
        async with self._sub_changed:
            await self._sub_changed.wait_for(lambda: self.subscribers() >= n)

    def start_feed(self, clock: Clock) -> asyncio.Task:
        """Start streaming the feed, paced by `clock`, in a background task."""
        if self._feed_task is not None and not self._feed_task.done():
            raise RuntimeError("feed already running")
        self.feed_done.clear()
        self._feed_task = asyncio.get_running_loop().create_task(self._run_feed(clock), name="liu-feed")
        return self._feed_task

    async def broadcast_raw(self, data: bytes) -> None:
        """Send raw bytes to every authenticated connection (tests inject bad frames)."""
        for conn in list(self._conns.values()):
            if conn.authed:
                await self._send(conn, data)

    # -- feed ------------------------------------------------------------------

    async def _run_feed(self, clock: Clock) -> None:
        try:
            n = 0
            every = self.yield_every
            async for frame in self.feed.frames(clock):
                if type(frame) is P.Encoded:
                    await self._send_encoded(frame)
                elif frame:
                    await self._send_msgs(frame)
                n += 1
                if n % every == 0:
                    # ws.send() only yields when a buffer is full: let clients be heard.
                    await asyncio.sleep(0)
            if self.feed.finite:
                end = P.end_of_data(self.feed.events)
                for conn in list(self._conns.values()):
                    if conn.authed:
                        await self._send(conn, end)
                self.feed_done.set()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            log.exception("feed failed")
            self.feed_error = exc
            self.feed_done.set()

    async def _send(self, conn: _Conn, data: bytes) -> bool:
        try:
            await conn.ws.send(data)
            return True
        except ConnectionClosed:
            self._conns.pop(conn.ws, None)
            return False

    async def _send_encoded(self, frame: P.Encoded) -> None:
        types = self.feed.types
        for conn in list(self._conns.values()):
            if conn.authed and conn.route and conn.takes_all(types):
                if await self._send(conn, frame.data):
                    conn.sent += frame.count
                    self.sent_events += frame.count

    async def _send_msgs(self, msgs: list[dict]) -> None:
        cache: dict[tuple, tuple[bytes | None, int]] = {}
        types = self.feed.types
        for conn in list(self._conns.values()):
            if not conn.route:
                continue
            entry = cache.get(conn.sig)
            if entry is None:
                sel = msgs if conn.takes_all(types) else conn.select(msgs)
                entry = (P.encode(sel), len(sel)) if sel else (None, 0)
                cache[conn.sig] = entry
            data, count = entry
            if data is not None and await self._send(conn, data):
                conn.sent += count
                self.sent_events += count

    # -- connections -----------------------------------------------------------

    async def _handler(self, ws: ServerConnection) -> None:
        if self._universe is None:
            self._universe = frozenset(self.feed.universe())
        conn = _Conn(ws, self._universe)
        self._conns[ws] = conn
        try:
            await ws.send(P.CONNECTED)
            async for raw in ws:
                route = conn.route
                reply = self._on_request(conn, raw)
                if reply is not None:
                    await ws.send(reply)
                    if conn.route is not route:
                        async with self._sub_changed:
                            self._sub_changed.notify_all()
                    if reply is P.ERR_AUTH_FAILED:
                        await ws.close()
                        return
        except ConnectionClosed:
            pass
        finally:
            self._conns.pop(ws, None)
            async with self._sub_changed:
                self._sub_changed.notify_all()

    def _on_request(self, conn: _Conn, raw: bytes | str) -> bytes | None:
        try:
            req = P.decode(raw)
        except Exception:
            return P.ERR_INVALID_SYNTAX
        if not isinstance(req, dict):
            return P.ERR_INVALID_SYNTAX
        action = req.get("action")
        if action == "auth":
            if conn.authed:
                return P.ERR_ALREADY_AUTHENTICATED
            if self.key is not None and (
                req.get("key") != self.key or (self.secret is not None and req.get("secret") != self.secret)
            ):
                return P.ERR_AUTH_FAILED
            conn.authed = True
            return P.AUTHENTICATED
        if action not in ("subscribe", "unsubscribe"):
            return P.ERR_INVALID_SYNTAX if conn.authed or action is None else P.ERR_NOT_AUTHENTICATED
        if not conn.authed:
            return P.ERR_NOT_AUTHENTICATED
        changes = {}
        for ch, syms in req.items():
            if ch == "action":
                continue
            if ch not in KNOWN_CHANNELS or not isinstance(syms, list):
                return P.ERR_INVALID_SYNTAX
            if not all(isinstance(s, str) for s in syms):
                return P.ERR_INVALID_SYNTAX
            changes[ch] = syms
        for ch, syms in changes.items():
            if action == "subscribe":
                conn.subs[ch].update(syms)
            else:
                conn.subs[ch].difference_update(syms)
        conn.update_route()
        return conn.ack()


# -- process entry point -------------------------------------------------------


def serve_process(feed_config: dict, conn: multiprocessing.connection.Connection) -> None:
    """Run a `MarketDataServer` in this (child) process, on uvloop, driven over `conn`.

    `feed_config` keys:
        kind: "sim" (default) or "replay".
        host, port, key, secret: passed to `MarketDataServer` (defaults 127.0.0.1, 0, None, None).
        sim: symbols (int or list), rate (events/s or None), seed, batch, kinds,
            preencoded, prebuilt_frames (see `liu.sources.sim.SimFeed`).
        replay: path, symbols, start, end, speed ("clock" | float | None), batch,
            format (see `liu.sources.replay.ReplayFeed`).

    Messages on `conn` (`liu.messages`, child → parent unless noted):
        `ServerReady(port, universe, first_ts)` once listening.
        parent → `Start(clock_spec)`: start streaming with `Clock(clock_spec)`.
        parent → `Stop()`: stop; the child answers `ServerStopped(sent_events)` and returns.
        `ServerFailed(reason)` if the feed or server cannot be built; the child returns.
    The child also stops (without answering) when the parent end of `conn` closes.
    """
    import uvloop

    uvloop.run(_serve_main(feed_config, conn))


async def _serve_main(cfg: dict, conn: multiprocessing.connection.Connection) -> None:
    loop = asyncio.get_running_loop()
    try:
        feed = make_feed(cfg)
        server = MarketDataServer(
            feed,
            host=cfg.get("host", "127.0.0.1"),
            port=cfg.get("port", 0),
            key=cfg.get("key"),
            secret=cfg.get("secret"),
        )
        port = await server.start()
        universe = feed.universe()
        first = feed.first_ts()
    except Exception as exc:
        log.exception("market-data server failed to start")
        conn.send(ServerFailed(f"{type(exc).__name__}: {exc}"))
        return
    inbox: asyncio.Queue = asyncio.Queue()
    conn.send(ServerReady(port, universe, first))
    watch_connection(conn, lambda msg: inbox.put_nowait(None if msg is EOF_MARK else msg), loop)
    try:
        while True:
            msg = await inbox.get()
            if msg is None:
                return
            if isinstance(msg, Start):
                server.start_feed(Clock(msg.clock))
            elif isinstance(msg, Stop):
                await server.stop()
                conn.send(ServerStopped(server.sent_events))
                return
            else:
                log.warning("serve_process: unknown command %r", msg)
    finally:
        await server.stop()
