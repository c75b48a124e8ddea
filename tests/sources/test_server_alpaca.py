"""liu's server at Alpaca's stream paths: alpaca-py's own stream clients, crypto, and every error code.

Real websockets on 127.0.0.1; the clients are alpaca-py's `StockDataStream` / `CryptoDataStream` and bare
`websockets` clients speaking msgpack.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import msgpack
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from liu.clock import Clock, ClockSpec
from liu.sources.server import MarketDataServer
from liu.sources.sim import SimFeed, _Generator

T = 10  # seconds: bound on every awaited step
MIXED = ["AAA", "BBB", "BTC/USD", "ETH/USD"]


@contextlib.asynccontextmanager
async def running(feed, **kw):
    server = MarketDataServer(feed, **({"key": "k", "secret": "s"} | kw))
    await server.start()
    try:
        yield server
    finally:
        await asyncio.wait_for(server.stop(), T)


class Client:
    """A bare msgpack Alpaca-protocol client on one path."""

    def __init__(self, ws) -> None:
        self.ws = ws

    @classmethod
    async def open(cls, url: str, sock: socket.socket | None = None, **kw) -> Client:
        ws = await asyncio.wait_for(connect(url, compression=None, sock=sock, **kw), T)
        c = cls(ws)
        assert await c.recv() == [{"T": "success", "msg": "connected"}]
        return c

    async def recv(self) -> list:
        return msgpack.unpackb(await asyncio.wait_for(self.ws.recv(), T))

    async def request(self, obj) -> list:
        await self.ws.send(msgpack.packb(obj))
        return await self.recv()

    async def auth(self, key="k", secret="s") -> list:
        return await self.request({"action": "auth", "key": key, "secret": secret})

    async def closed(self) -> ConnectionClosed:
        """Read until the server closes the connection; the close exception."""
        try:
            while True:
                await asyncio.wait_for(self.ws.recv(), T)
        except ConnectionClosed as e:
            return e
        raise AssertionError("unreachable")


def error(code: int, msg: str) -> list:
    return [{"T": "error", "code": code, "msg": msg}]


OK = [{"T": "success", "msg": "authenticated"}]


# -- alpaca-py's own stream clients -----------------------------------------------------------------


async def test_alpaca_py_stock_and_crypto_streams_get_their_own_symbols():
    from alpaca.data.live import CryptoDataStream, StockDataStream
    from alpaca.data.models import Bar, Quote, Trade

    params = dict(symbols=MIXED, rate=4_000, batch=40, seed=5, kinds=("t", "q", "b"))
    gen = _Generator(SimFeed(**params), 1.0)
    expected = [m for _ in range(300) for m in gen.frame(40, 0)]

    def first(kind, sym):
        return next(m for m in expected if m["T"] == kind and m["S"] == sym)

    got: dict[str, list] = {}
    done = asyncio.Event()
    wanted = {("stock", k) for k in "tqb"} | {("crypto", k) for k in "tqb"}

    def make(stream: str, kind: str):
        async def handler(obj):
            got.setdefault((stream, kind), []).append(obj)
            if wanted <= set(got):
                done.set()

        return handler

    async with running(SimFeed(**params)) as server:
        stock = StockDataStream("k", "s", url_override=server.stock_stream_url("iex"))
        stock.subscribe_trades(make("stock", "t"), "AAA")
        stock.subscribe_quotes(make("stock", "q"), "BBB")
        stock.subscribe_bars(make("stock", "b"), "AAA", "BBB")
        crypto = CryptoDataStream("k", "s", url_override=server.crypto_stream_url)
        crypto.subscribe_trades(make("crypto", "t"), "BTC/USD")
        crypto.subscribe_quotes(make("crypto", "q"), "ETH/USD")
        crypto.subscribe_bars(make("crypto", "b"), "BTC/USD")
        tasks = [asyncio.create_task(s._run_forever()) for s in (stock, crypto)]
        try:
            await asyncio.wait_for(server.wait_for_subscribers(2), T)
            server.start_feed(Clock(ClockSpec.live()))
            await asyncio.wait_for(done.wait(), T)
        finally:
            for s in (stock, crypto):
                await s.stop_ws()
            await asyncio.wait_for(asyncio.gather(*tasks), T)

    assert {m.symbol for m in got["stock", "t"]} == {"AAA"}
    assert {m.symbol for m in got["stock", "q"]} == {"BBB"}
    assert {m.symbol for m in got["stock", "b"]} <= {"AAA", "BBB"}
    assert {m.symbol for m in got["crypto", "t"]} == {"BTC/USD"}
    assert {m.symbol for m in got["crypto", "q"]} == {"ETH/USD"}
    assert {m.symbol for m in got["crypto", "b"]} == {"BTC/USD"}
    tr, q = got["crypto", "t"][0], got["crypto", "q"][0]
    assert isinstance(tr, Trade) and isinstance(q, Quote)
    assert tr.price == first("t", "BTC/USD")["p"] and tr.size == first("t", "BTC/USD")["s"]
    assert tr.exchange is None and tr.tape is None  # crypto trades carry no x / z
    assert isinstance(tr.size, float) and tr.size != int(tr.size)
    assert (q.bid_price, q.ask_price) == (first("q", "ETH/USD")["bp"], first("q", "ETH/USD")["ap"])
    assert isinstance(got["crypto", "b"][0], Bar)
    st = got["stock", "t"][0]
    assert st.price == first("t", "AAA")["p"] and st.exchange == "V"


async def test_each_stock_path_serves_and_unknown_paths_get_http_404():
    feed = SimFeed(symbols=MIXED, rate=2_000, batch=20, kinds=("t",))
    async with running(feed) as server:
        for path in ("/v2/iex", "/v2/sip", "/v2/delayed_sip", "/v2/test", "/v1beta3/crypto/us", "/"):
            c = await Client.open(server.ws_url + path)
            assert await c.auth() == OK
            await c.ws.close()
        for path in ("/v2/bogus", "/v1beta3/crypto/eu", "/stream", "/v2/iex/extra"):
            with pytest.raises(InvalidStatus) as e:
                await asyncio.wait_for(connect(server.ws_url + path), T)
            assert e.value.response.status_code == 404, path


async def test_stock_path_carries_no_crypto_and_crypto_path_no_stocks():
    feed = SimFeed(symbols=MIXED, rate=10_000, batch=50, kinds=("t", "q"))
    async with running(feed) as server:
        stock = await Client.open(server.stock_stream_url("sip"))
        crypto = await Client.open(server.crypto_stream_url)
        liu = await Client.open(server.ws_url)
        for c in (stock, crypto, liu):
            assert await c.auth() == OK
            ack = await c.request({"action": "subscribe", "trades": ["*"], "quotes": ["*"]})
            assert ack[0]["T"] == "subscription"
        assert "orderbooks" in (await crypto.request({"action": "subscribe", "orderbooks": ["BTC/USD"]}))[0]
        await asyncio.wait_for(server.wait_for_subscribers(3), T)
        server.start_feed(Clock(ClockSpec.live()))
        seen: dict[str, set] = {"stock": set(), "crypto": set(), "liu": set()}
        for name, c in (("stock", stock), ("crypto", crypto), ("liu", liu)):
            while len(seen[name]) < (4 if name == "liu" else 2):
                seen[name] |= {m["S"] for m in await c.recv()}
        assert seen == {"stock": {"AAA", "BBB"}, "crypto": {"BTC/USD", "ETH/USD"}, "liu": set(MIXED)}


# -- error codes ------------------------------------------------------------------------------------


async def test_auth_errors_401_402_403_and_404_timeout():
    async with running(SimFeed(symbols=2), auth_timeout=0.5) as server:
        c = await Client.open(server.stock_stream_url())
        assert await c.request({"action": "subscribe", "trades": ["SIM000"]}) == error(
            401, "not authenticated"
        )
        assert await c.auth("k", "wrong") == error(402, "auth failed")
        assert isinstance(await c.closed(), ConnectionClosed)  # a wrong key is closed, as on Alpaca
        assert server.auth_failures == 1

        c = await Client.open(server.crypto_stream_url)
        assert await c.auth() == OK
        assert await c.auth() == error(403, "already authenticated")

        quiet = await Client.open(server.stock_stream_url())  # never authenticates
        t0 = time.monotonic()
        assert await quiet.recv() == error(404, "auth timeout")
        assert 0.4 < time.monotonic() - t0 < T
        await quiet.closed()
        # the authenticated connection outlived the timeout
        ack = await c.request({"action": "subscribe", "trades": ["BTC/USD"]})
        assert ack[0]["trades"] == ["BTC/USD"]


async def test_alpaca_py_wrong_key_keeps_retrying_with_backoff():
    """alpaca-py treats 402 as a failed connect: it logs, backs off and reconnects (never stops)."""
    from alpaca.data.live import StockDataStream

    async with running(SimFeed(symbols=["AAA"], rate=100)) as server:
        stream = StockDataStream("k", "not-the-secret", url_override=server.stock_stream_url())

        async def on_trade(t):
            pass

        stream.subscribe_trades(on_trade, "AAA")
        task = asyncio.create_task(stream._run_forever())
        try:
            await asyncio.wait_for(server.wait_for(lambda: server.auth_failures >= 2), 3 * T)
        finally:
            await stream.stop_ws()
            await asyncio.wait_for(task, T)
        assert server.subscribers() == 0


async def test_symbol_limit_405_keeps_earlier_subscriptions():
    feed = SimFeed(symbols=["AAA", "BBB", "CCC", "BTC/USD"], rate=4_000, batch=20, kinds=("t", "q"))
    async with running(feed, symbol_limit=2) as server:
        c = await Client.open(server.stock_stream_url())
        assert await c.auth() == OK
        ack = await c.request({"action": "subscribe", "trades": ["AAA"], "quotes": ["AAA", "BBB"]})
        assert ack[0]["trades"] == ["AAA"] and ack[0]["quotes"] == ["AAA", "BBB"]
        assert await c.request({"action": "subscribe", "bars": ["CCC"]}) == error(
            405, "symbol limit exceeded"
        )
        assert await c.request({"action": "subscribe", "trades": ["*"]}) == error(
            405, "symbol limit exceeded"
        )
        # earlier subscriptions stay: AAA trades and quotes, BBB quotes; nothing for CCC
        await asyncio.wait_for(server.wait_for_subscribers(1), T)
        server.start_feed(Clock(ClockSpec.live()))
        seen: set[tuple[str, str]] = set()
        for _ in range(20):
            seen |= {(m["T"], m["S"]) for m in await c.recv()}
        assert seen == {("t", "AAA"), ("q", "AAA"), ("q", "BBB")}
        # unsubscribing makes room again
        await c.ws.send(msgpack.packb({"action": "unsubscribe", "quotes": ["BBB"]}))
        while True:  # data frames may precede the acknowledgement
            frame = await c.recv()
            if frame[0]["T"] == "subscription":
                break
        await c.ws.send(msgpack.packb({"action": "subscribe", "bars": ["CCC"]}))
        while True:
            frame = await c.recv()
            if frame[0]["T"] in ("subscription", "error"):
                break
        assert frame[0]["T"] == "subscription" and frame[0]["bars"] == ["CCC"]


async def test_connection_limit_406_per_key_and_asset_class():
    async with running(SimFeed(symbols=MIXED), connection_limit=1) as server:
        first = await Client.open(server.stock_stream_url("iex"))
        assert await first.auth() == OK
        second = await Client.open(server.stock_stream_url("sip"))
        assert await second.auth() == error(406, "connection limit exceeded")
        await second.closed()
        crypto = await Client.open(server.crypto_stream_url)  # crypto counts apart, as on Alpaca
        assert await crypto.auth() == OK
        await first.ws.close()
        await asyncio.wait_for(server.wait_for(lambda: len(server._conns) == 1), T)
        third = await Client.open(server.stock_stream_url("iex"))
        assert await third.auth() == OK


async def test_sip_without_subscription_409_and_wrong_asset_class_400_410():
    async with running(SimFeed(symbols=MIXED), sip_allowed=False) as server:
        sip = await Client.open(server.stock_stream_url("sip"))
        assert await sip.auth() == error(409, "insufficient subscription")
        await sip.closed()
        iex = await Client.open(server.stock_stream_url("iex"))
        assert await iex.auth() == OK
        assert await iex.request({"action": "subscribe", "trades": ["BTC/USD"]}) == error(
            400, "invalid syntax"
        )
        assert await iex.request({"action": "subscribe", "orderbooks": ["AAA"]}) == error(
            410, "invalid subscribe action for this feed"
        )
        crypto = await Client.open(server.crypto_stream_url)
        assert await crypto.auth() == OK
        assert await crypto.request({"action": "subscribe", "trades": ["AAA"]}) == error(
            400, "invalid syntax"
        )
        assert await crypto.request({"action": "subscribe", "statuses": ["*"]}) == error(
            410, "invalid subscribe action for this feed"
        )
        ack = await iex.request({"action": "subscribe", "trades": ["AAA"]})
        assert ack[0]["trades"] == ["AAA"]


async def test_slow_client_gets_407_and_is_dropped_while_others_carry_on():
    """A client that subscribes and never reads: its backlog passes the limit, it is sent 407 and
    closed; a reading client on the same feed keeps receiving without a pause."""
    feed = SimFeed(symbols=50, rate=20_000, batch=200)
    limit = 256 * 1024
    async with running(feed, slow_client_bytes=limit) as server:
        fast = await Client.open(server.stock_stream_url())
        # A small receive buffer keeps the kernel from swallowing megabytes before the server notices.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
        slow = await Client.open(server.stock_stream_url(), sock=sock, max_queue=4)
        for c in (fast, slow):
            assert await c.auth() == OK
            await c.request({"action": "subscribe", "trades": ["*"], "quotes": ["*"]})
        await asyncio.wait_for(server.wait_for_subscribers(2), T)
        received = [0]

        async def read_fast() -> None:
            with contextlib.suppress(ConnectionClosed):
                async for _ in fast.ws:
                    received[0] += 1

        reader = asyncio.create_task(read_fast())
        server.start_feed(Clock(ClockSpec.live()))
        await asyncio.wait_for(server.wait_for(lambda: server.slow_disconnects >= 1), 3 * T)
        at_kick = received[0]
        # The slow client now reads: its backlog, then the 407, then the close.
        last = None
        try:
            while True:
                last = await asyncio.wait_for(slow.ws.recv(), T)
        except ConnectionClosed as e:
            closed = e
        assert msgpack.unpackb(last) == error(407, "slow client")
        assert closed.rcvd is not None and closed.rcvd.code == 1008
        # the reading client was never held back and keeps getting data
        deadline = time.monotonic() + T
        while received[0] < at_kick + 20:
            assert time.monotonic() < deadline, "the fast client stopped receiving after the kick"
            await asyncio.sleep(0.01)
        assert server.slow_disconnects == 1
        reader.cancel()


async def test_lossless_default_waits_for_a_slow_client_instead_of_dropping_it():
    """Without `slow_client_bytes` (the daemon's setting) nobody is dropped: the feed waits."""
    feed = SimFeed(symbols=50, rate=None, batch=200)  # unpaced: only backpressure holds it
    async with running(feed, write_limit=2**16) as server:
        slow = await Client.open(server.stock_stream_url(), max_queue=4)
        assert await slow.auth() == OK
        await slow.request({"action": "subscribe", "trades": ["*"], "quotes": ["*"]})
        await asyncio.wait_for(server.wait_for_subscribers(1), T)
        server.start_feed(Clock(ClockSpec.live()))
        first = await slow.recv()
        ids = [m["i"] for m in first if m["T"] == "t"]
        # The feed is blocked on the unread client; reading on gets every trade, in order, no gap.
        for _ in range(200):
            ids += [m["i"] for m in await slow.recv() if m["T"] == "t"]
        assert ids == list(range(ids[0], ids[0] + len(ids)))
        assert server.slow_disconnects == 0
