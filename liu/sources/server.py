"""liu's own market-data server: Alpaca's market-data streams and REST on one port, a local Alpaca market.

Streams (msgpack, Alpaca's handshake, subscriptions and error codes), at Alpaca's paths:

    ws://HOST:PORT/v2/iex, /v2/sip, /v2/delayed_sip, /v2/test     stocks
    ws://HOST:PORT/v1beta3/crypto/us                              crypto (BTC/USD; v1beta3 message shapes)
    ws://HOST:PORT/                                               liu's own: every symbol of the feed

Any other path is refused with HTTP 404 on the upgrade, as Alpaca does. alpaca-py's
`StockDataStream(key, secret, url_override="ws://HOST:PORT/v2/iex")` and
`CryptoDataStream(key, secret, url_override="ws://HOST:PORT/v1beta3/crypto/us")` work against it. Plain
HTTP GETs on the same port are Alpaca's REST (`liu.sources.exchange.rest`): historical bars, latest
trades / quotes / bars and snapshots, and the trading API's clock, calendar and assets, all derived from
the feed being served. Server → client frames are msgpack arrays of maps; clients may send msgpack
(binary) or JSON (text) requests.

Stream errors, each `[{"T":"error","code":N,"msg":…}]` as Alpaca sends them: 400 invalid syntax (also a
crypto pair on a stock path or the reverse), 401 not authenticated, 402 auth failed (then closed), 403
already authenticated, 404 auth timeout (no auth within `auth_timeout` s; closed), 405 symbol limit
exceeded (`symbol_limit`; earlier subscriptions stay), 406 connection limit exceeded (`connection_limit`
authenticated connections per key and asset class; closed), 407 slow client (see below; closed), 409
insufficient subscription (`sip_allowed=False` and the SIP path; closed), 410 invalid subscribe action for
this feed (e.g. `orderbooks` on stocks).

The server streams nothing until `start_feed(clock)`: the daemon lets its producer connect and subscribe
first, then starts the shared clock.

Slow clients. With `slow_client_bytes=None` (the default; what the daemon uses) delivery is lossless: a
slow connection's send backpressure (websockets' write buffer, `write_limit`) slows the feed for
everyone, so an unpaced replay never outruns its consumer. With `slow_client_bytes=N` the server behaves
like Alpaca: it never waits for one client; a connection whose unsent backlog passes N bytes is sent 407
`slow client` and closed (1008), and the others carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import logging
import multiprocessing.connection
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from liu.clock import Clock
from liu.events import Start, Stop
from liu.messages import ServerFailed, ServerReady, ServerStopped
from liu.sources import protocol as P
from liu.sources.exchange.calendar import MarketCalendar
from liu.sources.exchange.history import History, LiveBook, history_uses
from liu.sources.exchange.market import Market, is_crypto
from liu.sources.exchange.rest import RestApi
from liu.sources.feeds import Feed, feed_history, make_feed
from liu.transport import EOF_MARK, watch_connection

if TYPE_CHECKING:
    from liu.sources.exchange.trading import TradingEngine
    from liu.sources.exchange.trading_api import TradingApi

log = logging.getLogger(__name__)
# websockets logs every plain HTTP answer at INFO; REST requests are routine here.
_ws_log = logging.getLogger(__name__ + ".websockets")
_ws_log.setLevel(logging.WARNING)

STOCK, CRYPTO, ANY = "stock", "crypto", "any"
STOCK_PATHS = ("/v2/iex", "/v2/sip", "/v2/delayed_sip", "/v2/test")
CRYPTO_PATH = "/v1beta3/crypto/us"
LIU_PATH = "/"

# Channels a subscribe / unsubscribe may carry, in the order of Alpaca's acknowledgement. Only
# trades, quotes, bars, updatedBars and dailyBars carry data here; the others are acknowledged.
STOCK_CHANNELS = P.CHANNELS + ("statuses", "lulds", "corrections", "cancelErrors")
CRYPTO_CHANNELS = ("trades", "quotes", "orderbooks", "bars", "updatedBars", "dailyBars")
KNOWN_CHANNELS = STOCK_CHANNELS  # kept for callers of the old name
_CHANNELS = {STOCK: STOCK_CHANNELS, CRYPTO: CRYPTO_CHANNELS, ANY: STOCK_CHANNELS + ("orderbooks",)}
_ALL_CHANNELS = frozenset(_CHANNELS[ANY])
_MISSING = object()


def _err(code: int, msg: str) -> bytes:
    return P.encode([P.error(code, msg)])


ERR_AUTH_TIMEOUT = _err(404, "auth timeout")
ERR_SYMBOL_LIMIT = _err(405, "symbol limit exceeded")
ERR_CONNECTION_LIMIT = _err(406, "connection limit exceeded")
ERR_SLOW_CLIENT = _err(407, "slow client")
ERR_INSUFFICIENT_SUBSCRIPTION = _err(409, "insufficient subscription")
ERR_INVALID_ACTION = _err(410, "invalid subscribe action for this feed")
_CLOSING = (P.ERR_AUTH_FAILED, ERR_CONNECTION_LIMIT, ERR_INSUFFICIENT_SUBSCRIPTION)


def stream_kind(path: str) -> tuple[str, str] | None:
    """(asset class, feed) served at a websocket path, or None for a path Alpaca does not serve."""
    if path in STOCK_PATHS:
        return STOCK, path.rsplit("/", 1)[1]
    if path == CRYPTO_PATH:
        return CRYPTO, "us"
    if path == LIU_PATH:
        return ANY, "liu"
    return None


class _Conn:
    __slots__ = ("ws", "asset", "feed", "authed", "key", "subs", "route", "sig", "sent", "universe", "kicked")

    def __init__(self, ws: ServerConnection, asset: str, feed: str, universe: frozenset[str]) -> None:
        self.ws = ws
        self.asset = asset
        self.feed = feed
        self.universe = universe  # this path's symbols: a set covering them all counts as "*"
        self.authed = False
        self.key: str | None = None
        self.subs: dict[str, set[str]] = {ch: set() for ch in _CHANNELS[asset]}
        self.route: dict[str, set[str] | None] = {}  # message type → symbols (None = all)
        self.sig: tuple = ()
        self.sent = 0
        self.kicked = False

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

    def symbol_count(self, subs: dict[str, set[str]]) -> int:
        syms = set().union(*subs.values())
        if "*" in syms:
            return max(len(self.universe), len(syms))
        return len(syms)

    def ack(self) -> bytes:
        msg: dict[str, Any] = {"T": "subscription"}
        for ch in _CHANNELS[self.asset]:
            msg[ch] = sorted(self.subs[ch])
        return P.encode([msg])


class MarketDataServer:
    """Serves one feed to any number of Alpaca-protocol clients, plus Alpaca's REST for that feed.

    Args:
        feed: what is streamed (`liu.sources.feeds.Feed`).
        host, port: where to listen (port 0: any free port; see `port` after `start()`).
        key, secret: the credentials clients must give (None: any).
        calendar: the market calendar for `/v2/clock`, `/v2/calendar` and the simulator's history.
        epoch_ns: data time before the stream starts (REST "now"): the replay's first event by default,
            else the time the server was built.
        history: the bars REST serves; by default the feed's own (`liu.sources.feeds.feed_history`).
        symbol_limit: 405 when one connection would subscribe more symbols (None: no limit).
        connection_limit: 406 when a key already has this many authenticated connections on the same
            asset class (None: no limit).
        slow_client_bytes: None for lossless delivery with backpressure; N to send 407 and close a
            connection whose unsent backlog passes N bytes (Alpaca's behaviour).
        slow_client_grace: seconds a dropped slow client gets to read its backlog and the 407 before
            the socket is cut.
        auth_timeout: seconds a connection may stay unauthenticated before 404 (None: forever).
        sip_allowed: False answers the SIP stream with 409 and recent SIP history with 403 (a free plan).
        trading, trading_port, cash: also serve Alpaca's trading API and `trade_updates` stream on
            `trading_port` (0: any free port; see `trading_url`), filling orders with the paper broker
            against what this server streams; each API key's account starts with `cash`
            (`liu.sources.exchange.trading`).

    Attributes:
        port: the bound port (after `start()`).
        feed_done: set when a finite feed is exhausted and "end of data" was sent.
        sent_events: market messages sent so far, summed over connections.
        feed_error: the exception that ended the feed task, if any.
        slow_disconnects: connections closed with 407 so far.
        auth_failures, connections: 402 answers and websocket connections accepted so far.
        market, rest: what the REST side answers from, and its router.
    """

    def __init__(
        self,
        feed: Feed,
        host: str = "127.0.0.1",
        port: int = 0,
        key: str | None = None,
        secret: str | None = None,
        *,
        calendar: MarketCalendar | None = None,
        epoch_ns: int | None = None,
        history: History | None = None,
        symbol_limit: int | None = None,
        connection_limit: int | None = None,
        slow_client_bytes: int | None = None,
        slow_client_grace: float = 10.0,
        auth_timeout: float | None = 10.0,
        sip_allowed: bool = True,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 60.0,
        write_limit: int = 2**18,
        yield_every: int = 16,
        trading: bool = False,
        trading_port: int = 0,
        cash: float = 100_000.0,
    ) -> None:
        self.feed = feed
        self.host = host
        self.port = port
        self.key = key
        self.secret = secret
        self.symbol_limit = symbol_limit
        self.connection_limit = connection_limit
        if slow_client_bytes is not None and not 0 < slow_client_bytes < 2**30:
            raise ValueError(f"slow_client_bytes={slow_client_bytes} must be between 1 and 2**30 (or None)")
        self.slow_client_bytes = slow_client_bytes
        self.slow_client_grace = slow_client_grace
        self.auth_timeout = auth_timeout
        self.sip_allowed = sip_allowed
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.write_limit = write_limit
        self.yield_every = yield_every
        self.sent_events = 0
        self.slow_disconnects = 0
        self.auth_failures = 0  # 402 answers
        self.connections = 0  # websocket connections accepted so far
        self.feed_done = asyncio.Event()
        self.feed_error: BaseException | None = None
        self._conns: dict[ServerConnection, _Conn] = {}
        self._server: Server | None = None
        self._feed_task: asyncio.Task | None = None
        self._sub_changed = asyncio.Condition()
        self._info: dict[str, dict] | None = None
        self._universes: dict[str, frozenset[str]] = {}
        self._clock: Clock | None = None
        self._last_t = 0
        first = feed.first_ts()
        self.epoch_ns = epoch_ns if epoch_ns is not None else (first if first is not None else time.time_ns())
        self.calendar = calendar or MarketCalendar()
        self.book = LiveBook()
        if history is None:
            history = feed_history(feed, self.calendar, self.epoch_ns, self.book)
        self.book.bars = history_uses(history, self.book)
        self.market = Market(self.universe_info(), history, self.calendar, self.data_now, self.book)
        self.rest = RestApi(self.market, key, secret, sip_allowed=sip_allowed)
        self.trading: TradingEngine | None = None
        self.trading_api: TradingApi | None = None
        self.trading_port = trading_port
        if trading:  # FastAPI is imported only for an exchange that trades
            from liu.sources.exchange.trading import TradingEngine
            from liu.sources.exchange.trading_api import TradingApi

            self.trading = TradingEngine(self.market, key, secret, cash)
            self.trading_api = TradingApi(self.trading, self.rest)

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> int:
        """Bind and listen; returns the port (an ephemeral one when port=0)."""
        if self._server is not None:
            raise RuntimeError("server already started")
        self._server = await serve(
            self._handler,
            self.host,
            self.port,
            process_request=self._process_request,
            logger=_ws_log,
            reuse_address=True,
            compression=None,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            close_timeout=2,
            # Alpaca mode never waits on a client: the backlog is measured and policed instead.
            # (uvloop takes a C int here.)
            write_limit=self.write_limit if self.slow_client_bytes is None else 2**30,
            max_size=2**20,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        if self.trading_api is not None:
            self.trading_port = await self.trading_api.start(self.host, self.trading_port)
        preload = getattr(self.market.history, "preload", None)
        if preload is not None:  # a replay file: read it off the loop before the first REST call
            asyncio.get_running_loop().run_in_executor(None, _quietly, preload)
        return self.port

    async def stop(self) -> None:
        """Stop the feed, close every connection and the listener. `start()` may follow."""
        task, self._feed_task = self._feed_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.trading_api is not None:
            await self.trading_api.stop()
        server, self._server = self._server, None
        if server is not None:
            server.close()
            try:
                # A client that stopped reading never lets its close frame out: cut it after a while.
                await asyncio.wait_for(asyncio.shield(server.wait_closed()), 3.0)
            except TimeoutError:
                for ws in list(server.all_connections):
                    ws.transport.abort()
                await server.wait_closed()
        self._conns.clear()

    @property
    def http_url(self) -> str:
        """Base URL for alpaca-py's REST clients (`url_override`): no path, no trailing slash."""
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        """Base of the stream URLs; append `/v2/iex` (etc.) or `/v1beta3/crypto/us`."""
        return f"ws://{self.host}:{self.port}"

    def stock_stream_url(self, feed: str = "iex") -> str:
        return f"{self.ws_url}/v2/{feed}"

    @property
    def trading_url(self) -> str:
        """`TradingClient(url_override=...)` (with `trading=True`): orders, positions, account, and the
        rest of the REST API too."""
        if self.trading_api is None:
            raise RuntimeError("this exchange was built without trading (trading=True)")
        return self.trading_api.url

    @property
    def trading_stream_url(self) -> str:
        """`TradingStream(url_override=...)`: the `trade_updates` stream."""
        if self.trading_api is None:
            raise RuntimeError("this exchange was built without trading (trading=True)")
        return self.trading_api.stream_url

    @property
    def crypto_stream_url(self) -> str:
        return f"{self.ws_url}{CRYPTO_PATH}"

    def universe_info(self) -> dict[str, dict]:
        """The feed's symbols → {"price", "avg_volume", "shortable"} (computed once)."""
        if self._info is None:
            self._info = self.feed.universe()
            syms = frozenset(self._info)
            crypto = frozenset(s for s in syms if is_crypto(s))
            self._universes = {STOCK: syms - crypto, CRYPTO: crypto, ANY: syms}
        return self._info

    def data_now(self) -> int:
        """Data time now: the clock's once the feed runs (the last sent event's for an unpaced clock),
        the epoch before."""
        clock = self._clock
        if clock is None:
            return self.epoch_ns
        if clock.realtime:
            return clock.now_ns()
        return max(clock.spec.data_epoch_ns, self._last_t)

    def subscribers(self) -> int:
        """Authenticated connections with a non-empty data subscription."""
        return sum(1 for c in self._conns.values() if c.route)

    async def wait_for_subscribers(self, n: int = 1) -> None:
        """Wait until at least `n` connections have subscribed to something."""
        async with self._sub_changed:
            await self._sub_changed.wait_for(lambda: self.subscribers() >= n)

    async def wait_for(self, predicate) -> None:
        """Wait until `predicate()` holds; checked whenever a connection subscribes, closes or is dropped."""
        async with self._sub_changed:
            await self._sub_changed.wait_for(predicate)

    def start_feed(self, clock: Clock) -> asyncio.Task:
        """Start streaming the feed, paced by `clock`, in a background task."""
        if self._feed_task is not None and not self._feed_task.done():
            raise RuntimeError("feed already running")
        self.feed_done.clear()
        self._clock = clock
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
            self.universe_info()
            async for frame in self.feed.frames(clock):
                if type(frame) is P.Encoded:
                    if self.trading is not None:
                        self.trading.on_market(P.decode(frame.data))
                    await self._send_encoded(frame)
                elif frame:
                    self.book.record(frame)
                    if self.trading is not None:  # orders fill on what clients are about to see
                        self.trading.on_market(frame)
                    last = frame[-1].get("t") if type(frame[-1]) is dict else None
                    if type(last) is P.Timestamp:
                        self._last_t = last.to_unix_nano()
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
        if conn.kicked:
            return False
        try:
            await conn.ws.send(data)
        except ConnectionClosed:
            self._conns.pop(conn.ws, None)
            return False
        limit = self.slow_client_bytes
        if limit is not None and conn.ws.transport.get_write_buffer_size() > limit:
            self._kick(conn)
        return True

    def _kick(self, conn: _Conn) -> None:
        """407: stop feeding `conn`, tell it why (behind its backlog) and close it."""
        conn.kicked = True
        conn.route = {}
        self.slow_disconnects += 1
        log.warning(
            "slow client %s: %d bytes unsent, more than %d; sent 407 and closing",
            conn.ws.remote_address,
            conn.ws.transport.get_write_buffer_size(),
            self.slow_client_bytes,
        )

        async def close() -> None:
            async with self._sub_changed:
                self._sub_changed.notify_all()
            conn.ws.close_timeout = self.slow_client_grace  # time to read the backlog, then the 407
            with contextlib.suppress(ConnectionClosed):
                await conn.ws.send(ERR_SLOW_CLIENT)
                await conn.ws.close(1008, "slow client")

        asyncio.get_running_loop().create_task(close(), name="liu-slow-client")

    async def _send_encoded(self, frame: P.Encoded) -> None:
        types = self.feed.types
        cls = self._feed_class()
        for conn in list(self._conns.values()):
            if conn.authed and conn.route and conn.asset in (ANY, cls) and conn.takes_all(types):
                if await self._send(conn, frame.data):
                    conn.sent += frame.count
                    self.sent_events += frame.count

    def _feed_class(self) -> str:
        """The one asset class of the feed's symbols (ANY when it mixes stocks and crypto)."""
        u = self._universes
        if not u[CRYPTO]:
            return STOCK
        return CRYPTO if not u[STOCK] else ANY

    async def _send_msgs(self, msgs: list[dict]) -> None:
        cache: dict[tuple, tuple[bytes | None, int]] = {}
        types = self.feed.types
        cls = self._feed_class()
        split: dict[str, list[dict]] | None = None
        for conn in list(self._conns.values()):
            if not conn.route:
                continue
            mine = msgs
            if conn.asset != ANY and conn.asset != cls:
                if cls != ANY:
                    continue  # a stock-only feed has nothing for a crypto connection, and back
                if split is None:
                    split = {STOCK: [], CRYPTO: []}
                    for m in msgs:
                        split[CRYPTO if is_crypto(m["S"]) else STOCK].append(m)
                mine = split[conn.asset]
            key = (conn.asset, conn.sig)
            entry = cache.get(key)
            if entry is None:
                sel = mine if conn.takes_all(types) else conn.select(mine)
                entry = (P.encode(sel), len(sel)) if sel else (None, 0)
                cache[key] = entry
            data, count = entry
            if data is not None and await self._send(conn, data):
                conn.sent += count
                self.sent_events += count

    # -- HTTP: REST, and refusing unknown stream paths ---------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if request.headers.get("Upgrade", "").lower() == "websocket":
            if stream_kind(path) is not None:
                return None  # the websocket handshake goes on
            return _response(404, {"message": "Not Found"})
        if not RestApi.serves(path):
            return _response(404, {"message": "Not Found"})
        reply = self.rest.handle(getattr(request, "method", "GET"), request.path, request.headers)
        return _response(reply.status, reply.encode())

    # -- connections -----------------------------------------------------------

    async def _handler(self, ws: ServerConnection) -> None:
        self.universe_info()
        asset, feed = stream_kind(urlsplit(ws.request.path).path) or (ANY, "liu")
        conn = _Conn(ws, asset, feed, self._universes[asset])
        self._conns[ws] = conn
        self.connections += 1
        timer = None
        if self.auth_timeout is not None:
            timer = asyncio.get_running_loop().call_later(self.auth_timeout, self._auth_expired, conn)
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
                    if reply in _CLOSING:
                        await ws.close()
                        return
                if conn.authed and timer is not None:
                    timer.cancel()
                    timer = None
        except ConnectionClosed:
            pass
        finally:
            if timer is not None:
                timer.cancel()
            self._conns.pop(ws, None)
            async with self._sub_changed:
                self._sub_changed.notify_all()

    def _auth_expired(self, conn: _Conn) -> None:
        if conn.authed or conn.ws not in self._conns:
            return

        async def close() -> None:
            with contextlib.suppress(ConnectionClosed):
                await conn.ws.send(ERR_AUTH_TIMEOUT)
                await conn.ws.close()

        asyncio.get_running_loop().create_task(close(), name="liu-auth-timeout")

    def _on_request(self, conn: _Conn, raw: bytes | str) -> bytes | None:
        try:
            req = P.decode(raw)
        except Exception:
            return P.ERR_INVALID_SYNTAX
        if not isinstance(req, dict):
            return P.ERR_INVALID_SYNTAX
        action = req.get("action")
        if action == "auth":
            return self._auth(conn, req)
        if action not in ("subscribe", "unsubscribe"):
            return P.ERR_INVALID_SYNTAX if conn.authed or action is None else P.ERR_NOT_AUTHENTICATED
        if not conn.authed:
            return P.ERR_NOT_AUTHENTICATED
        if conn.kicked:
            return None
        changes = {}
        for ch, syms in req.items():
            if ch == "action":
                continue
            if ch not in _ALL_CHANNELS or not isinstance(syms, list):
                return P.ERR_INVALID_SYNTAX
            if ch not in conn.subs:
                return ERR_INVALID_ACTION
            if not all(isinstance(s, str) and _fits(s, conn.asset) for s in syms):
                return P.ERR_INVALID_SYNTAX
            changes[ch] = syms
        if action == "subscribe":
            after = {ch: conn.subs[ch] | set(changes.get(ch, ())) for ch in conn.subs}
            if self.symbol_limit is not None and conn.symbol_count(after) > self.symbol_limit:
                return ERR_SYMBOL_LIMIT
            conn.subs = after
        else:
            for ch, syms in changes.items():
                conn.subs[ch].difference_update(syms)
        conn.update_route()
        return conn.ack()

    def _auth(self, conn: _Conn, req: dict) -> bytes:
        if conn.authed:
            return P.ERR_ALREADY_AUTHENTICATED
        key = req.get("key")
        if self.key is not None and (
            key != self.key or (self.secret is not None and req.get("secret") != self.secret)
        ):
            self.auth_failures += 1
            return P.ERR_AUTH_FAILED
        if conn.feed == "sip" and not self.sip_allowed:
            return ERR_INSUFFICIENT_SUBSCRIPTION
        if self.connection_limit is not None:
            same = sum(1 for c in self._conns.values() if c.authed and c.key == key and c.asset == conn.asset)
            if same >= self.connection_limit:
                return ERR_CONNECTION_LIMIT
        conn.authed = True
        conn.key = key if isinstance(key, str) else None
        return P.AUTHENTICATED


def _quietly(fn) -> None:
    try:
        fn()
    except Exception:
        log.exception("reading the replay file for REST history failed (REST answers 500 until fixed)")


def _fits(symbol: str, asset: str) -> bool:
    """A symbol is well-formed for the path: crypto pairs only on crypto, stock symbols only on stocks."""
    if symbol == "*" or asset == ANY:
        return True
    return is_crypto(symbol) == (asset == CRYPTO)


def _response(status: int, body: Any) -> Response:
    data = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
    headers = Headers(
        [("Content-Type", "application/json"), ("Content-Length", str(len(data))), ("Connection", "close")]
    )
    return Response(status, http.HTTPStatus(status).phrase, headers, data)


# -- process entry point -------------------------------------------------------

SERVER_KEYS = (
    "symbol_limit",
    "connection_limit",
    "slow_client_bytes",
    "auth_timeout",
    "slow_client_grace",
    "sip_allowed",
    "epoch_ns",
    "trading",
    "trading_port",
    "cash",
)


def server_from_config(cfg: dict) -> MarketDataServer:
    """A `MarketDataServer` from the plain config dict `serve_process` takes (see there)."""
    feed = make_feed(cfg)
    return MarketDataServer(
        feed,
        host=cfg.get("host", "127.0.0.1"),
        port=cfg.get("port", 0),
        key=cfg.get("key"),
        secret=cfg.get("secret"),
        calendar=MarketCalendar.from_config(cfg.get("calendar")),
        **{k: cfg[k] for k in SERVER_KEYS if k in cfg},
    )


def serve_process(feed_config: dict, conn: multiprocessing.connection.Connection) -> None:
    """Run a `MarketDataServer` in this (child) process, on uvloop, driven over `conn`.

    `feed_config` keys:
        kind: "sim" (default) or "replay".
        host, port, key, secret: passed to `MarketDataServer` (defaults 127.0.0.1, 0, None, None).
        calendar: `MarketCalendar` keyword arguments (holidays, half_days, open, close, early_close, rules).
        symbol_limit, connection_limit, slow_client_bytes, slow_client_grace, auth_timeout, sip_allowed,
        epoch_ns:
            `MarketDataServer` options (defaults: no limits, lossless, 10 s, True, see there).
        sim: symbols (int or list), rate (events/s or None), seed, batch, kinds,
            preencoded, prebuilt_frames (see `liu.sources.sim.SimFeed`).
        replay: path, symbols, start, end, speed ("clock" | float | None), batch,
            format (see `liu.sources.replay.ReplayFeed`).

    Messages on `conn` (`liu.messages`, child → parent unless noted):
        `ServerReady(port, universe, first_ts)` once listening (REST and streams on that port).
        parent → `Start(clock_spec)`: start streaming with `Clock(clock_spec)`.
        parent → `Stop()`: stop; the child answers `ServerStopped(sent_events)` and returns.
        `ServerFailed(reason)` if the feed or server cannot be built; the child returns.
    The child also stops (without answering) when the parent end of `conn` closes.
    """
    import signal

    import uvloop

    signal.signal(
        signal.SIGINT, signal.SIG_IGN
    )  # the daemon coordinates shutdown; Ctrl-C reaches the whole group
    uvloop.run(_serve_main(feed_config, conn))


async def _serve_main(cfg: dict, conn: multiprocessing.connection.Connection) -> None:
    loop = asyncio.get_running_loop()
    try:
        server = server_from_config(cfg)
        port = await server.start()
        universe = server.universe_info()
        first = server.feed.first_ts()
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
