"""liu's local exchange on its own: `trader exchange`, and `LocalExchange` for tests.

`LocalExchange` runs a `MarketDataServer` (streams and REST on one port) on a thread with its own event
loop, so blocking clients (alpaca-py's REST clients use `requests`) can call it from the test's thread:

    with LocalExchange(SimFeed(symbols=["AAA", "BTC/USD"]), key="k", secret="s", trading=True) as ex:
        client = StockHistoricalDataClient(ex.key, ex.secret, url_override=ex.http_url)
        stream = StockDataStream(ex.key, ex.secret, url_override=ex.stock_stream_url("iex"))
        trading = TradingClient(ex.key, ex.secret, url_override=ex.trading_url)
        updates = TradingStream(ex.key, ex.secret, url_override=ex.trading_stream_url)
        ex.on_loop(ex.trading.faults.fail_post, 504)      # fault switches: see liu.sources.exchange.trading

`exchange_config(plan)` turns a tradeplan into the server config `trader exchange` runs: the plan's
simulator (or, for kind = "alpaca", a simulator of its symbols), or its replay file.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import threading
import time
from collections.abc import Coroutine
from typing import Any

from liu.clock import Clock, ClockSpec
from liu.plan import TradePlan
from liu.sources.feeds import Feed, feed_config

KEY_ENV = "LIU_EXCHANGE_KEY_ID"
SECRET_ENV = "LIU_EXCHANGE_SECRET_KEY"
DEFAULT_KEY = "liu-local"
DEFAULT_SYMBOLS: list[str] = [f"SIM{i:03d}" for i in range(20)] + ["BTC/USD", "ETH/USD"]


class LocalExchange:
    """A `MarketDataServer` on a background thread (a context manager).

    Args:
        feed: what it serves.
        key, secret: the local credentials (secret None: a random one).
        clock: the feed's clock; None: data time starts at the server's epoch and runs at wall speed.
        start_feed: start streaming at once (else call `start_feed()`).
        **server: `MarketDataServer` keyword arguments (calendar, epoch_ns, symbol_limit, ...).
    """

    def __init__(
        self,
        feed: Feed,
        key: str = DEFAULT_KEY,
        secret: str | None = None,
        *,
        clock: ClockSpec | None = None,
        start_feed: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
        **server: Any,
    ) -> None:
        self.feed = feed
        self.key = key
        self.secret = secret if secret is not None else secrets.token_hex(16)
        self.clock = clock
        self.autostart = start_feed
        self.host = host
        self.port = port
        self.server_kwargs = server
        self.server: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    # -- urls -------------------------------------------------------------------------------------

    @property
    def http_url(self) -> str:
        return self.server.http_url

    @property
    def ws_url(self) -> str:
        return self.server.ws_url

    def stock_stream_url(self, feed: str = "iex") -> str:
        return self.server.stock_stream_url(feed)

    @property
    def crypto_stream_url(self) -> str:
        return self.server.crypto_stream_url

    @property
    def trading_url(self) -> str:
        """`TradingClient(url_override=...)`; needs `trading=True`."""
        return self.server.trading_url

    @property
    def trading_stream_url(self) -> str:
        """`TradingStream(url_override=...)`; needs `trading=True`."""
        return self.server.trading_stream_url

    @property
    def trading(self) -> Any:
        """The `TradingEngine` (accounts, orders, `faults`); touch it through `call` or `on_loop`."""
        return self.server.trading

    def on_loop(self, fn, *args: Any, timeout: float = 30.0) -> Any:
        """Run `fn(*args)` on the exchange's loop and return its result (the engine is not thread-safe)."""

        async def run() -> Any:
            return fn(*args)

        return self.call(run(), timeout)

    # -- lifecycle ----------------------------------------------------------------------------------

    def __enter__(self) -> LocalExchange:
        self._thread = threading.Thread(target=self._run, name="liu-local-exchange", daemon=True)
        self._thread.start()
        if not self._ready.wait(60):
            raise TimeoutError("local exchange did not start within 60 s")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(30)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        from liu.sources.server import MarketDataServer

        try:
            self.loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self.server = MarketDataServer(
                self.feed, self.host, self.port, self.key, self.secret, **self.server_kwargs
            )
            await self.server.start()
            if self.autostart:
                self.start_feed_now()
        except BaseException as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.server.stop()

    def start_feed_now(self) -> None:
        """Start the stream (on the exchange's loop thread)."""
        spec = self.clock or ClockSpec(self.server.epoch_ns, time.time_ns(), 1.0)
        self.server.start_feed(Clock(spec))

    def start_feed(self, clock: ClockSpec | None = None) -> None:
        """Start the stream from another thread."""
        if clock is not None:
            self.clock = clock
        self.call(_call_soon(self.start_feed_now))

    def call(self, coro: Coroutine, timeout: float = 30.0) -> Any:
        """Run `coro` on the exchange's loop and return its result (from another thread)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


async def _call_soon(fn) -> None:
    fn()


# -- trader exchange ------------------------------------------------------------------------------


def exchange_config(plan: TradePlan | None) -> dict[str, Any]:
    """The server config `trader exchange` runs for `plan` (None: a default simulator)."""
    if plan is None:
        return {
            "kind": "sim",
            "symbols": DEFAULT_SYMBOLS,
            "rate": 1000.0,
            "seed": 7,
            "batch": 50,
            "kinds": ["t", "q", "b"],
        }
    src = plan.source
    if src.kind == "replay":
        cfg = feed_config(plan)
        return {k: v for k, v in cfg.items() if k not in ("host", "port", "key", "secret")}
    symbols = src.symbol_list if src.kind == "alpaca" else src.symbols
    return {
        "kind": "sim",
        "symbols": symbols or DEFAULT_SYMBOLS,
        "rate": src.rate,
        "seed": src.seed,
        "batch": src.batch,
        "kinds": ["t", "q", "b"],
    }


def local_credentials() -> tuple[str, str, bool]:
    """(key, secret, generated) for the local exchange: `LIU_EXCHANGE_KEY_ID` / `LIU_EXCHANGE_SECRET_KEY`,
    else "liu-local" and a fresh random secret. Alpaca's own variables are never read: the local exchange
    must not be handed (or print) a real Alpaca key."""
    key = os.environ.get(KEY_ENV) or DEFAULT_KEY
    secret = os.environ.get(SECRET_ENV)
    if secret:
        return key, secret, False
    return key, secrets.token_hex(16), True


async def run_exchange(
    config: dict[str, Any],
    key: str,
    secret: str,
    speed: float | None,
    announce,
    **server: Any,
) -> int:
    """Serve `config` until SIGINT / SIGTERM. A simulator runs live (data time = wall time, history
    up to now); a replay starts when the first client subscribes, at `speed`."""
    from liu.sources.exchange.calendar import MarketCalendar
    from liu.sources.feeds import make_feed
    from liu.sources.server import MarketDataServer

    feed = make_feed(config)
    sim = config.get("kind", "sim") == "sim"
    srv = MarketDataServer(
        feed,
        config.get("host", "127.0.0.1"),
        config.get("port", 0),
        key,
        secret,
        calendar=MarketCalendar.from_config(config.get("calendar")),
        **server,
    )
    await srv.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    announce(srv)
    try:
        if sim:
            srv.start_feed(Clock(ClockSpec(srv.epoch_ns, time.time_ns(), 1.0)))
        else:
            waiter = asyncio.create_task(srv.wait_for_subscribers(1))
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            for t in (waiter, stopper):
                t.cancel()
            if not stop.is_set():
                first = feed.first_ts() or srv.epoch_ns
                srv.start_feed(Clock(ClockSpec(first, time.time_ns(), speed)))
        await stop.wait()
    finally:
        await srv.stop()
    return 0


def exchange_command(
    plan: TradePlan | None,
    host: str,
    port: int,
    say,
    *,
    symbol_limit: int | None = None,
    connection_limit: int | None = None,
    slow_client_bytes: int | None = None,
    sip_allowed: bool = True,
    trading_port: int = 0,
) -> int:
    """`trader exchange`: print where to connect and with which local key, then serve until Ctrl-C.

    The trading API (orders, positions, account, `trade_updates`) listens on `trading_port`."""
    import uvloop

    config = exchange_config(plan) | {"host": host, "port": port}
    key, secret, generated = local_credentials()
    real = os.environ.get("APCA_API_SECRET_KEY")
    shown = (
        secret if secret != real else f"(the value of {SECRET_ENV}; not shown: it equals APCA_API_SECRET_KEY)"
    )
    speed = plan.session.clock_speed if plan is not None else 1.0

    def announce(srv) -> None:
        n = len(srv.universe_info())
        what = (
            "replay of " + str(config.get("path")) if config.get("kind") == "replay" else "simulated market"
        )
        say(f"liu local exchange: {what}, {n} symbols (offline; not Alpaca)")
        say(f"  REST, data, clock, assets:   {srv.http_url}")
        say(f"  stock streams:               {srv.ws_url}/v2/iex  (also /v2/sip, /v2/delayed_sip, /v2/test)")
        say(f"  crypto stream:               {srv.crypto_stream_url}")
        say(f"  trading API (orders):        {srv.trading_url}  (trade_updates: {srv.trading_stream_url})")
        say(f"  key id:                      {key}")
        origin = "generated for this run" if generated else f"from {SECRET_ENV}"
        say(f"  secret key:                  {shown}")
        say(f"  (a local test key, {origin}; it works only here, never on Alpaca)")
        say(
            f'  tradeplan: [alpaca] data_url = "{srv.http_url}", stream_url = "{srv.ws_url}", '
            f'trading_url = "{srv.trading_url}"'
        )
        say("Ctrl-C stops it.")

    server = {
        "symbol_limit": symbol_limit,
        "connection_limit": connection_limit,
        "slow_client_bytes": slow_client_bytes,
        "sip_allowed": sip_allowed,
        "trading": True,
        "trading_port": trading_port,
    }
    return uvloop.run(run_exchange(config, key, secret, speed, announce, **server))
