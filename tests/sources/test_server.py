"""MarketDataServer over real websockets on 127.0.0.1: protocol, feeds, alpaca-py interop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import time
from pathlib import Path

import msgpack
import numpy as np
import pandas as pd
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from liu.clock import NS, Clock, ClockSpec
from liu.events import Start, Stop
from liu.messages import ServerReady, ServerStopped
from liu.sources import protocol as P
from liu.sources.replay import ReplayFeed
from liu.sources.server import MarketDataServer, serve_process
from liu.sources.sim import SimFeed, _Generator

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("LIU_SAMPLE_DATA", ROOT.parent / "shared" / "data"))
T = 10  # seconds: bound on every awaited step


def live_clock() -> Clock:
    return Clock(ClockSpec.live())


class ManualFeed:
    """A feed the test drives: frames pushed with `push`, `close()` ends it."""

    finite = True
    types = frozenset("tqb")

    def __init__(self) -> None:
        self.q: asyncio.Queue = asyncio.Queue()
        self.events = 0

    def push(self, msgs: list[dict]) -> None:
        self.q.put_nowait(msgs)

    def close(self) -> None:
        self.q.put_nowait(None)

    def universe(self) -> dict:
        return {}

    def first_ts(self):
        return None

    async def frames(self, clock):
        while (msgs := await self.q.get()) is not None:
            self.events += len(msgs)
            yield msgs


class Client:
    """A bare msgpack (or JSON) Alpaca-protocol client."""

    def __init__(self, ws, use_json: bool = False) -> None:
        self.ws = ws
        self.use_json = use_json

    @classmethod
    async def open(cls, port: int, use_json: bool = False) -> Client:
        ws = await asyncio.wait_for(connect(f"ws://127.0.0.1:{port}", compression=None), T)
        c = cls(ws, use_json)
        assert await c.recv() == [{"T": "success", "msg": "connected"}]
        return c

    async def send(self, obj) -> None:
        await self.ws.send(json.dumps(obj) if self.use_json else msgpack.packb(obj))

    async def recv(self) -> list[dict]:
        raw = await asyncio.wait_for(self.ws.recv(), T)
        assert isinstance(raw, bytes), "server frames are msgpack binary"
        return msgpack.unpackb(raw)

    async def request(self, obj) -> list[dict]:
        await self.send(obj)
        return await self.recv()

    async def auth(self, key="k", secret="s") -> None:
        assert await self.request({"action": "auth", "key": key, "secret": secret}) == [
            {"T": "success", "msg": "authenticated"}
        ]

    async def close(self) -> None:
        await self.ws.close()


@contextlib.asynccontextmanager
async def running(feed, **kw):
    server = MarketDataServer(feed, **kw)
    await server.start()
    try:
        yield server
    finally:
        await asyncio.wait_for(server.stop(), T)


def trade(sym: str, price: float, ts: int = 1_700_000_000 * NS, i: int = 0) -> dict:
    return P.trade_msg(sym, ts, price, 100, id=i)


# -- protocol builders ----------------------------------------------------------------


def test_builders_match_alpaca_shape():
    t = P.trade_msg("AAPL", 1_700_000_000_123_456_789, 190.5, 10)
    assert list(t) == ["T", "S", "i", "x", "p", "s", "t", "c", "z"]
    q = P.quote_msg("AAPL", 1, 1.0, 2, 1.1, 3)
    assert list(q) == ["T", "S", "bx", "bp", "bs", "ax", "ap", "as", "t", "c", "z"]
    b = P.bar_msg("AAPL", 1, 1, 2, 0.5, 1.5, 100)
    assert list(b) == ["T", "S", "o", "h", "l", "c", "v", "t", "n", "vw"]
    back = msgpack.unpackb(P.encode([t]))[0]
    assert isinstance(back["t"], msgpack.Timestamp)
    assert back["t"].to_unix_nano() == 1_700_000_000_123_456_789
    # The 64-bit form is used even for whole seconds, so patching keeps frame length.
    for ns in (1_700_000_000 * NS, 1_700_000_000 * NS + 1):
        raw = P.ts64_bytes(ns)
        assert len(raw) == len(P.PLACEHOLDER_BYTES) == 10
        assert msgpack.unpackb(raw).to_unix_nano() == ns


# -- handshake --------------------------------------------------------------------------


async def test_wrong_secret_is_rejected_with_402():
    async with running(ManualFeed(), key="k", secret="s") as server:
        c = await Client.open(server.port)
        reply = await c.request({"action": "auth", "key": "k", "secret": "wrong"})
        assert reply == [{"T": "error", "code": 402, "msg": "auth failed"}]
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(c.ws.recv(), T)
        c2 = await Client.open(server.port)
        await c2.auth("k", "s")
        await c2.close()


async def test_requests_before_auth_and_bad_frames():
    async with running(ManualFeed()) as server:
        c = await Client.open(server.port)
        assert await c.request({"action": "subscribe", "trades": ["AAPL"]}) == [
            {"T": "error", "code": 401, "msg": "not authenticated"}
        ]
        await c.auth()  # key=None accepts anything
        await c.ws.send(b"\xc1\xc1garbage")
        assert await c.recv() == [{"T": "error", "code": 400, "msg": "invalid syntax"}]
        assert await c.request({"action": "dance"}) == [{"T": "error", "code": 400, "msg": "invalid syntax"}]
        assert await c.request({"action": "subscribe", "trades": "AAPL"}) == [
            {"T": "error", "code": 400, "msg": "invalid syntax"}
        ]
        assert (await c.request({"action": "auth", "key": "a", "secret": "b"}))[0]["code"] == 403
        await c.close()


async def test_subscribe_ack_filtering_and_unsubscribe():
    feed = ManualFeed()
    async with running(feed) as server:
        c = await Client.open(server.port)
        await c.auth()
        ack = await c.request(
            {"action": "subscribe", "trades": ["AAA", "BBB"], "quotes": ["AAA"], "bars": []}
        )
        assert ack[0]["T"] == "subscription"
        assert ack[0]["trades"] == ["AAA", "BBB"] and ack[0]["quotes"] == ["AAA"] and ack[0]["bars"] == []
        await asyncio.wait_for(server.wait_for_subscribers(1), T)
        server.start_feed(live_clock())

        feed.push(
            [
                trade("AAA", 1.0),
                trade("CCC", 2.0),
                P.quote_msg("BBB", 1, 1, 1, 2, 1),
                P.quote_msg("AAA", 1, 1, 1, 2, 1),
                P.bar_msg("AAA", 1, 1, 1, 1, 1, 1),
                trade("BBB", 3.0),
            ]
        )
        got = await c.recv()
        assert [(m["T"], m["S"]) for m in got] == [("t", "AAA"), ("q", "AAA"), ("t", "BBB")]

        ack = await c.request({"action": "unsubscribe", "trades": ["AAA"], "quotes": ["AAA"]})
        assert ack[0]["trades"] == ["BBB"] and ack[0]["quotes"] == []
        feed.push([trade("AAA", 4.0), P.quote_msg("AAA", 1, 1, 1, 2, 1)])  # nothing left for c
        feed.push([trade("AAA", 5.0), trade("BBB", 6.0)])
        got = await c.recv()
        assert [(m["S"], m["p"]) for m in got] == [("BBB", 6.0)]

        feed.close()
        end = await c.recv()
        assert end == [{"T": "success", "msg": "end of data", "events": 10}]
        await asyncio.wait_for(server.feed_done.wait(), T)
        assert server.sent_events == 4
        await c.close()


async def test_wildcard_json_client_and_broadcast_raw():
    feed = ManualFeed()
    async with running(feed, key="k", secret="s") as server:
        c = await Client.open(server.port, use_json=True)
        await c.auth("k", "s")
        ack = await c.request({"action": "subscribe", "trades": ["*"], "bars": ["ZZZ"]})
        assert ack[0]["trades"] == ["*"] and ack[0]["bars"] == ["ZZZ"]
        star = await Client.open(server.port)
        await star.auth("k", "s")
        await star.request({"action": "subscribe", "trades": ["*"], "quotes": ["*"], "bars": ["*"]})
        await asyncio.wait_for(server.wait_for_subscribers(2), T)
        server.start_feed(live_clock())
        msgs = [
            trade("A", 1.0),
            trade("B", 2.0),
            P.quote_msg("A", 1, 1, 1, 2, 1),
            P.bar_msg("ZZZ", 5, 1, 1, 1, 1, 1),
        ]
        feed.push(msgs)
        got = await c.recv()
        assert [(m["T"], m["S"]) for m in got] == [("t", "A"), ("t", "B"), ("b", "ZZZ")]
        assert got[0]["t"].to_unix_nano() == 1_700_000_000 * NS
        assert len(await star.recv()) == 4
        await server.broadcast_raw(b"\x92\x01\x02")
        assert await c.recv() == [1, 2] and await star.recv() == [1, 2]
        await c.close()
        await star.close()


async def test_restart_on_same_port():
    async with running(ManualFeed()) as server:
        port = server.port
        c = await Client.open(port)
        await c.auth()
        await server.stop()
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(c.ws.recv(), T)
        assert await server.start() == port
        c2 = await Client.open(port)
        await c2.auth()
        await c2.close()


# -- SimFeed ----------------------------------------------------------------------------


def test_sim_feed_is_deterministic_and_sane():
    a = SimFeed(symbols=20, seed=7, kinds=("t", "q", "b"))
    b = SimFeed(symbols=20, seed=7, kinds=("t", "q", "b"))
    assert a.universe() == b.universe()
    assert list(a.universe())[:2] == ["SIM000", "SIM001"]
    assert any(not v["shortable"] for v in SimFeed(symbols=50, seed=1).universe().values())
    ga, gb = _Generator(a, 1.0), _Generator(b, 1.0)
    fa = [ga.frame(200, 5) for _ in range(20)]
    assert fa == [gb.frame(200, 5) for _ in range(20)]
    msgs = [m for f in fa for m in f]
    kinds = {m["T"] for m in msgs}
    assert kinds == {"t", "q", "b"}
    for m in msgs:
        if m["T"] == "q":
            assert 0 < m["bp"] < m["ap"]
        elif m["T"] == "b":
            assert m["l"] <= min(m["o"], m["c"]) <= max(m["o"], m["c"]) <= m["h"]
    assert SimFeed(symbols=20, seed=8).universe() != a.universe()


async def test_sim_feed_paces_at_rate():
    """Measured in data time (a frame is stamped with the clock when it is made): at 20k events/s in
    frames of 100, frame k is never made before k * 5 ms. How closely it keeps up is for benchmarks/."""
    feed = SimFeed(symbols=5, rate=20_000, batch=100)
    clock = live_clock()
    before = clock.now_ns()
    stamps = []
    async for frame in feed.frames(clock):
        assert len(frame) == 100 and len({m["t"] for m in frame}) == 1
        stamps.append(frame[0]["t"].to_unix_nano())
        if len(stamps) == 100:  # 10k events
            break
    interval = NS * 100 // 20_000
    early = [k for k, s in enumerate(stamps) if s < before + k * interval - NS // 1000]  # 1 ms: clock skew
    assert not early, f"frames made ahead of the rate: {early[:10]}"
    assert stamps == sorted(stamps)


async def test_alpaca_py_stream_receives_sim_trades_quotes_bars():
    from alpaca.data.live import StockDataStream
    from alpaca.data.models import Bar, Quote, Trade

    params = dict(symbols=["AAA", "BBB", "CCC"], rate=5_000, batch=50, seed=3, kinds=("t", "q", "b"))
    feed = SimFeed(**params)
    # Expected stream: the feed's generator sequence (only `t` depends on the clock).
    gen = _Generator(SimFeed(**params), 1.0)
    expected = [m for _ in range(200) for m in gen.frame(50, 0)]

    def first(kind, sym):
        return next(m for m in expected if m["T"] == kind and m["S"] == sym)

    got: dict[str, list] = {"t": [], "q": [], "b": []}
    done = asyncio.Event()

    def make(kind):
        async def handler(obj):
            got[kind].append(obj)
            if all(got.values()):
                done.set()

        return handler

    async with running(feed, key="key", secret="secret") as server:
        stream = StockDataStream("key", "secret", url_override=f"ws://127.0.0.1:{server.port}")
        stream.subscribe_trades(make("t"), "AAA")
        stream.subscribe_quotes(make("q"), "BBB")
        stream.subscribe_bars(make("b"), "AAA", "CCC")
        task = asyncio.create_task(stream._run_forever())
        try:
            await asyncio.wait_for(server.wait_for_subscribers(1), T)
            t_start = time.time()
            server.start_feed(live_clock())
            await asyncio.wait_for(done.wait(), T)
        finally:
            await stream.stop_ws()
            await asyncio.wait_for(task, T)

    tr, q, b = got["t"][0], got["q"][0], got["b"][0]
    assert isinstance(tr, Trade) and tr.symbol == "AAA"
    assert tr.price == first("t", "AAA")["p"] and tr.id == first("t", "AAA")["i"]
    assert abs(tr.timestamp.timestamp() - t_start) < 5
    assert isinstance(q, Quote) and q.symbol == "BBB"
    assert (q.bid_price, q.ask_price) == (first("q", "BBB")["bp"], first("q", "BBB")["ap"])
    assert isinstance(b, Bar) and b.symbol in ("AAA", "CCC")
    assert b.close == first("b", b.symbol)["c"]
    assert {m.symbol for m in got["t"]} == {"AAA"}
    assert {m.symbol for m in got["q"]} == {"BBB"}


async def test_preencoded_sim_frames_decode_with_fresh_timestamps():
    batch = 100
    feed = SimFeed(symbols=50, rate=200_000, batch=batch, preencoded=True)
    async with running(feed) as server:
        c = await Client.open(server.port)
        await c.auth()
        await c.request({"action": "subscribe", "trades": ["*"], "quotes": ["*"]})
        partial = await Client.open(server.port)  # not "*" on quotes: gets nothing pre-encoded
        await partial.auth()
        await partial.request({"action": "subscribe", "trades": ["*"]})
        listed = await Client.open(server.port)  # every symbol listed: same as "*"
        await listed.auth()
        await listed.request({"action": "subscribe", "trades": feed.symbols, "quotes": feed.symbols})
        await asyncio.wait_for(server.wait_for_subscribers(3), T)
        listed_sizes: list[int] = []

        async def drain() -> None:
            with contextlib.suppress(ConnectionClosed):
                async for raw in listed.ws:
                    listed_sizes.append(len(msgpack.unpackb(raw)))

        drainer = asyncio.create_task(drain())
        server.start_feed(live_clock())
        received = 0
        stamps = []
        for _ in range(300):
            frame = await c.recv()
            assert len(frame) == batch
            ts = {m["t"].to_unix_nano() for m in frame}
            assert len(ts) == 1
            stamps.append(ts.pop())
            assert {m["T"] for m in frame} <= {"t", "q"}
            received += len(frame)
        now = time.time_ns()
        assert all(now - 5 * NS < s <= now for s in stamps)
        assert stamps == sorted(stamps) and stamps[0] < stamps[-1]
        await server.stop()
        await asyncio.wait_for(drainer, T)
        assert listed_sizes and set(listed_sizes) == {batch}
        assert received == 300 * batch
        assert server.sent_events >= 2 * received and server.sent_events % batch == 0
        # both "*" subscribers got every frame (the last may be cut by the stop)
        assert 2 * (feed.events - batch) <= server.sent_events <= 2 * feed.events
        got = []
        with pytest.raises(ConnectionClosed):
            while True:  # until the close
                got.append(await partial.recv())
        assert got == []  # `partial` got no market data, only the close


# -- ReplayFeed -------------------------------------------------------------------------


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


async def _collect(feed) -> list[dict]:
    out = []
    async for frame in feed.frames(Clock(ClockSpec(0, 0, None))):
        out.extend(frame)
    return out


async def test_replay_quote_ticks_best_bid_offer(tmp_path):
    p = _write(
        tmp_path,
        "q.csv",
        "symbol,timestamp,bid,bid_size,ask,ask_size,exchange,condition,suspicious\n"
        "IBM,2013-10-07 09:30:00.000-04:00,0,0,10.05,100,Q,1,False\n"
        "IBM,2013-10-07 09:30:00.001-04:00,10.00,200,0,0,P,1,False\n"
        "IBM,2013-10-07 09:30:00.002-04:00,10.01,300,0,0,Q,1,False\n"
        "IBM,2013-10-07 09:30:00.003-04:00,0,0,10.04,400,P,1,False\n"
        "IBM,2013-10-07 09:30:00.004-04:00,9.99,500,0,0,Q,1,False\n"
        "IBM,2013-10-08 09:30:00.000-04:00,11.00,500,0,0,Q,1,False\n",
    )
    feed = ReplayFeed(p)
    assert feed.format == "quote_ticks"
    got = [(m["bp"], m["bx"], m["ap"], m["ax"]) for m in await _collect(feed)]
    assert got == [
        (10.00, "P", 10.05, "Q"),
        (10.01, "Q", 10.05, "Q"),
        (10.01, "Q", 10.04, "P"),
        (10.00, "P", 10.04, "P"),  # Q's bid fell to 9.99
    ]  # the new session's lone bid has no ask yet: no quote


async def test_replay_trade_ticks_minute_end_and_filters(tmp_path):
    p = _write(
        tmp_path,
        "t.csv",
        "symbol,timestamp,price,size,exchange,condition,suspicious\n"
        "SPY,2013-10-07 09:30:00.000-04:00,1.0,100,P,2000,False\n"
        "BAC,2013-10-07 09:30:00.000-04:00,2.0,100,N,2000,False\n"
        "SPY,2013-10-07 09:30:01.000-04:00,99.0,100,P,2000,True\n"
        "SPY,2013-10-08 09:30:00.000-04:00,3.0,100,P,2000,False\n",
    )
    msgs = await _collect(ReplayFeed(p))
    assert [(m["S"], m["p"]) for m in msgs] == [("SPY", 1.0), ("BAC", 2.0), ("SPY", 3.0)]
    msgs = await _collect(ReplayFeed(p, symbols=["SPY"], start="2013-10-08"))
    assert [(m["S"], m["p"]) for m in msgs] == [("SPY", 3.0)]
    msgs = await _collect(ReplayFeed(p, end="2013-10-07"))
    assert len(msgs) == 2 and msgs[0]["x"] == "P" and msgs[0]["c"] == ["T"]  # Lean's 2000: extended hours

    p = _write(
        tmp_path,
        "m.csv",
        "symbol,timestamp,open,high,low,close,volume\nSPY,2011-01-03 21:00:00+00:00,1,2,0.5,1.5,10\n",
    )
    feed = ReplayFeed(p)
    assert feed.format == "minute_end"
    (bar,) = await _collect(feed)
    assert bar["t"].to_unix_nano() == pd.Timestamp("2011-01-03 20:59:00Z").value
    assert feed.first_ts() == bar["t"].to_unix_nano()


async def test_replay_paced_by_clock(tmp_path):
    rows = "".join(f"SPY,2011-01-03 15:{m:02d}:00+00:00,1,2,0.5,1.5,10\n" for m in range(3))
    p = _write(tmp_path, "m.csv", "symbol,timestamp,open,high,low,close,volume\n" + rows)
    feed = ReplayFeed(p)
    # 60 s of data per 0.1 s of wall time. Measured in data time: each bar goes out on its own once
    # the replay clock has reached its time, never before.
    clock = Clock(ClockSpec(feed.first_ts(), time.time_ns(), 600.0))
    seen = []
    async for frame in feed.frames(clock):
        seen.append((clock.now_ns(), [m["t"].to_unix_nano() for m in frame]))
    assert [len(ts) for _, ts in seen] == [1, 1, 1]
    assert [ts[0] for _, ts in seen] == [feed.first_ts() + k * 60 * NS for k in range(3)]
    assert all(now >= ts[0] for now, ts in seen), seen


@pytest.mark.data
async def test_replay_lean_minute_bars_over_websocket():
    path = DATA / "us_equity_minute_lean.csv.gz"
    if not path.exists():
        pytest.skip(f"sample data absent: {path} (set LIU_SAMPLE_DATA)")
    df = pd.read_csv(path)
    expect = int(df[(df.symbol == "IBM") & df.close.notna()].shape[0])
    feed = ReplayFeed(path, speed=None)
    assert feed.universe()["IBM"]["price"] > 0
    async with running(feed) as server:
        c = await Client.open(server.port)
        await c.auth()
        await c.request({"action": "subscribe", "bars": ["IBM"]})
        await asyncio.wait_for(server.wait_for_subscribers(1), T)
        server.start_feed(Clock(ClockSpec(feed.first_ts(), time.time_ns(), None)))
        bars = []
        while True:
            frame = await c.recv()
            if frame and frame[0]["T"] == "success":
                end = frame[0]
                break
            bars.extend(frame)
        assert end["msg"] == "end of data" and end["events"] == feed.events
        await asyncio.wait_for(server.feed_done.wait(), T)
    assert {(m["T"], m["S"]) for m in bars} == {("b", "IBM")}
    assert len(bars) == expect
    ts = np.array([m["t"].to_unix_nano() for m in bars])
    assert (np.diff(ts) > 0).all()


# -- process entry point ----------------------------------------------------------------


async def test_serve_process_sim():
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    cfg = {"kind": "sim", "symbols": 10, "rate": 5_000, "batch": 50, "key": "k", "secret": "s"}
    proc = ctx.Process(target=serve_process, args=(cfg, child), daemon=True)
    proc.start()
    try:
        msg = await asyncio.wait_for(asyncio.to_thread(parent.recv), 30)
        assert isinstance(msg, ServerReady) and msg.first_ts is None
        port, universe = msg.port, msg.universe
        assert set(universe) == {f"SIM{i:03d}" for i in range(10)}
        assert set(universe["SIM000"]) == {"price", "avg_volume", "shortable"}
        c = await Client.open(port)
        await c.auth("k", "s")
        await c.request({"action": "subscribe", "trades": ["*"]})
        parent.send(Start(ClockSpec.live()))
        frame = await c.recv()
        assert frame and all(m["T"] == "t" for m in frame)
        parent.send(Stop())
        msg = await asyncio.wait_for(asyncio.to_thread(parent.recv), T)
        assert isinstance(msg, ServerStopped) and msg.sent_events >= len(frame)
        await c.close()
        await asyncio.to_thread(proc.join, T)
        assert proc.exitcode == 0
    finally:
        if proc.is_alive():
            proc.kill()


async def test_serve_process_replay_reports_first_ts(tmp_path):
    rows = "".join(f"SPY,2011-01-03 15:{m:02d}:00+00:00,1,2,0.5,{m}.5,10\n" for m in range(1, 4))
    path = _write(tmp_path, "m.csv", "symbol,timestamp,open,high,low,close,volume\n" + rows)
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=serve_process, args=({"kind": "replay", "path": str(path)}, child), daemon=True)
    proc.start()
    try:
        msg = await asyncio.wait_for(asyncio.to_thread(parent.recv), 30)
        assert isinstance(msg, ServerReady)
        first = pd.Timestamp("2011-01-03 15:00:00Z").value
        assert msg.first_ts == first
        assert msg.universe == {"SPY": {"price": 1.5, "avg_volume": 30.0, "shortable": True}}
        c = await Client.open(msg.port)
        await c.auth()
        await c.request({"action": "subscribe", "bars": ["*"]})
        parent.send(Start(ClockSpec(first, time.time_ns(), None)))
        frame = await c.recv()
        assert [m["c"] for m in frame] == [1.5, 2.5, 3.5]
        assert await c.recv() == [{"T": "success", "msg": "end of data", "events": 3}]
        parent.send(Stop())
        assert await asyncio.wait_for(asyncio.to_thread(parent.recv), T) == ServerStopped(3)
        await c.close()
        await asyncio.to_thread(proc.join, T)
        assert proc.exitcode == 0
    finally:
        if proc.is_alive():
            proc.kill()
