"""A flood of malformed market data: every bad message counted once, in the right place; the stream goes on.

A websocket server written here speaks Alpaca's market-data protocol on 127.0.0.1 to the real `Producer`,
which feeds two real `Consumer`s (the plan's runner, paper broker and bad-tick filter) over real pipes.
After the handshake the server sends thousands of broken messages of every kind (trades, quotes, bars,
trading statuses, things that are not messages, frames that are not msgpack or not arrays), shuffled
among good ones, then good ones only. The rules (`liu.sources.protocol.wire_event`, `Producer._read`):

* a frame that does not decode to a msgpack array: one `unroutable` at the producer (whatever it held);
* a message without a string symbol (not a map, no "S", a number or list as "S"): one `unroutable`;
* a trade, quote, bar or status of a string symbol with a missing or bad field: routed to the consumer
  that owns the symbol, which counts it `malformed`;
* a well-formed trade print that is no price (NaN, infinite, zero, negative): an event, dropped and
  counted by the consumer's bad-tick filter (`bad_ticks`, band);
* a well-formed trading status: no event, nothing counted (liu does not use them).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import random
import time
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
from websockets.asyncio.server import serve

from liu.brokers.account import Account
from liu.clock import ClockSpec
from liu.consumer import Consumer, ConsumerSetup
from liu.engine import build_runner
from liu.events import Assign, Start, Stop
from liu.messages import Subscribed
from liu.plan import TradePlan, parse_plan
from liu.producer import Producer
from liu.shard import shard_of
from liu.sources import protocol as P
from liu.stats import SharedStats
from liu.transport import ChannelReader, ChannelWriter
from tests.helpers import eventually_async

CONSUMERS = 2
SYMBOLS = ("AAA", "BBB", "DDD", "EEE")  # two on each consumer
MINUTE = 60 * 10**9

TALLY = '''
from liu.strategy import Strategy


class Tally(Strategy):
    """Records every trade, quote and bar it is shown, in order."""

    def on_start(self, ctx):
        self.seen = []

    def on_trade(self, trade, ctx):
        self.seen.append(("t", trade.symbol, trade.ts, trade.price, trade.size))

    def on_quote(self, quote, ctx):
        self.seen.append(("q", quote.symbol, quote.ts, quote.bid, quote.bid_size, quote.ask, quote.ask_size))

    def on_bar(self, bar, ctx):
        self.seen.append(("b", bar.symbol, bar.ts, bar.open, bar.high, bar.low, bar.close, bar.volume))
'''


def tally_plan(tmp_path: Path) -> TradePlan:
    (tmp_path / "tally.py").write_text(TALLY)
    text = """
[source]
bars = "stream"
[consumers]
count = 2
stale_after = "10m"
[[strategies]]
name = "tally"
file = "tally.py"
class = "Tally"
"""
    return parse_plan(tomllib.loads(text), "tradeplan.toml", tmp_path)


# -- the messages -----------------------------------------------------------------------------------


def _without(m: dict, key: str) -> dict:
    return {k: v for k, v in m.items() if k != key}


@dataclass
class Flood:
    """Frames to send, and what each consumer and the producer must count for them."""

    frames: list[bytes | str] = field(default_factory=list)
    good: list[list[tuple]] = field(default_factory=lambda: [[] for _ in range(CONSUMERS)])  # seen, in order
    malformed: Counter = field(default_factory=Counter)  # consumer -> count
    events: Counter = field(default_factory=Counter)  # consumer -> events routed to it
    bad_ticks: Counter = field(default_factory=Counter)  # symbol -> trade prints the filter must drop
    unroutable: int = 0
    kinds: Counter = field(default_factory=Counter)  # bad ones per kind, to show the flood is one
    _ns: int = field(default_factory=time.time_ns)
    _bar_minute: dict[str, int] = field(default_factory=dict)

    def ts(self) -> int:
        self._ns += 1_000
        return self._ns

    # Good messages, and what the strategy must see of them.
    def good_trade(self, sym: str, i: int) -> dict:
        t, price, size = self.ts(), 100.0 + (i % 10) / 10, float(1 + i % 7)
        self._event(sym, ("t", sym, t, price, size))
        return P.trade_msg(sym, t, price, size)

    def good_quote(self, sym: str, i: int) -> dict:
        t, bid, ask = self.ts(), 99.9 - (i % 5) / 100, 100.1 + (i % 5) / 100
        self._event(sym, ("q", sym, t, bid, 1.0, ask, 2.0))
        return P.quote_msg(sym, t, bid, 1, ask, 2)

    def good_bar(self, sym: str, i: int) -> dict:
        # Each symbol's bars one minute apart (in the future: data time only grows; nothing is stale).
        n = self._bar_minute[sym] = self._bar_minute.get(sym, 0) + 1
        t = (self._ns // MINUTE + n) * MINUTE
        o, h, lo, c, v = 100.0, 101.0, 99.0, 100.0 + (i % 5) / 10, float(1000 + i)
        self._event(sym, ("b", sym, t, o, h, lo, c, v))
        return P.bar_msg(sym, t, o, h, lo, c, v)

    def status(self, sym: str) -> dict:
        return {
            "T": "s",
            "S": sym,
            "sc": "H",
            "sm": "Trading Halt",
            "rc": "T12",
            "rm": "news",
            "t": self.ts(),
        }

    def _event(self, sym: str, seen: tuple) -> None:
        i = shard_of(sym, CONSUMERS)
        self.good[i].append(seen)
        self.events[i] += 1

    # Bad ones, each with the counter it must land in.
    def bad(self, kind: str, sym: str) -> list[tuple[dict | Any, str]]:
        """Every broken variant of `kind` for `sym`: (message, "malformed" | "unroutable" | "tick")."""
        t = P.ts(self.ts())
        trade = {**P.trade_msg(sym, 0, 100.0, 5), "t": t}
        quote = {**P.quote_msg(sym, 0, 99.9, 1, 100.1, 2), "t": t}
        bar = {**P.bar_msg(sym, 0, 100, 101, 99, 100.5, 1000), "t": t}
        status = {**self.status(sym), "t": t}
        M, U = "malformed", "unroutable"
        if kind == "trade":
            return [
                ({**trade, "p": "abc"}, M),
                ({**trade, "p": None}, M),
                (_without(trade, "p"), M),
                ({**trade, "p": [100.0]}, M),
                ({**trade, "s": "x"}, M),
                (_without(trade, "s"), M),
                ({**trade, "s": {}}, M),
                ({**trade, "t": "2024-01-02T15:04:05Z"}, M),  # a string time
                ({**trade, "t": 1.7e18}, M),  # a float time
                (_without(trade, "t"), M),
                ({**trade, "t": None}, M),
                ({**trade, "c": 7}, M),  # conditions that are no list
                (_without(trade, "S"), U),
                ({**trade, "S": 42}, U),
                ({**trade, "S": [sym]}, U),
                ({**trade, "S": None}, U),
                ({**trade, "S": sym.encode()}, U),  # bytes, not a string
                ({**trade, "p": float("nan")}, "tick"),
                ({**trade, "p": float("inf")}, "tick"),
                ({**trade, "p": 0.0}, "tick"),
                ({**trade, "p": -5.0}, "tick"),
            ]
        if kind == "quote":
            return [
                ({**quote, "bp": "x"}, M),
                ({**quote, "ap": None}, M),
                (_without(quote, "bs"), M),
                ({**quote, "as": []}, M),
                (_without(quote, "ap"), M),
                ({**quote, "t": "x"}, M),
                (_without(quote, "t"), M),
                (_without(quote, "S"), U),
                ({**quote, "S": 7}, U),
            ]
        if kind == "bar":
            return [
                ({**bar, "o": "x"}, M),
                ({**bar, "h": None}, M),
                (_without(bar, "l"), M),
                ({**bar, "c": {}}, M),
                ({**bar, "v": "lots"}, M),
                ({**bar, "t": "2024-01-02T15:04:00Z"}, M),
                (_without(bar, "t"), M),
                (_without(bar, "S"), U),
                ({**bar, "S": 3.5}, U),
            ]
        if kind == "status":
            return [
                ({**status, "t": "x"}, M),
                (_without(status, "t"), M),
                ({**status, "sc": None}, M),
                (_without(status, "sc"), M),
                (_without(status, "S"), U),
                ({**status, "S": 5}, U),
                ({**status, "S": [sym]}, U),
            ]
        assert kind == "item"  # array items that are no message
        return [
            (5, U),
            ("t", U),
            (None, U),
            ([trade], U),
            (True, U),
            (1.5, U),
            (b"bytes", U),
            ({}, U),
            ({"p": 1.0, "s": 1}, U),  # no type, no symbol
            (t, U),  # a bare timestamp (an int once decoded)
            ({"S": sym, "p": 1.0}, M),  # a symbol's map without a type
        ]

    def bad_frames(self) -> list[bytes | str]:
        """Frames the producer cannot decode to an array: each is one `unroutable`, whatever it holds."""
        good = P.encode([P.trade_msg("AAA", self.ts(), 100.0, 1)])
        return [
            b"\xc1 not msgpack",
            b"",
            "a text frame, not msgpack",
            good[:-3],  # truncated
            good + b"\x00",  # extra data after the array
            P.encode(P.trade_msg("AAA", self.ts(), 100.0, 1)),  # a map, not an array
            P.encode(42),
            P.encode("a string"),
            P.encode(None),
            P.encode(b"raw bytes"),
            P.encode(msgpack.ExtType(5, b"x")),  # an unknown extension type
            P.encode([{1: 2}]),  # a map with an integer key
            b"\x91\xd5\xff\x00\x00",  # an array holding a broken timestamp extension
        ]


def build_flood(rounds: int = 100, seed: int = 7) -> Flood:
    """About 2,000 broken messages of each kind and 2,000 broken frames, shuffled among 7,000 good
    messages and a few hundred good statuses; then 600 good messages after the flood."""
    f = Flood()
    rng = random.Random(seed)
    msgs: list[Any] = []
    repeat = {
        "trade": rounds,
        "quote": 2 * rounds + 25,
        "bar": 2 * rounds + 25,
        "status": 3 * rounds,
        "item": 2 * rounds,
    }
    for kind, times in repeat.items():
        for n in range(times):
            sym = SYMBOLS[n % len(SYMBOLS)]
            for m, where in f.bad(kind, sym):
                f.kinds[kind] += 1
                if where == "unroutable":
                    f.unroutable += 1
                else:
                    i = shard_of(sym, CONSUMERS)
                    f.events[i] += 1
                    if where == "malformed":
                        f.malformed[i] += 1
                    else:
                        f.bad_ticks[sym] += 1
                msgs.append(m)
    rng.shuffle(msgs)
    # Good messages in among them, in their own order (trades, quotes and bars of every symbol).
    out: list[Any] = []
    make = (f.good_trade, f.good_quote, f.good_bar)
    for n, m in enumerate(msgs):
        out.append(m)
        if n % 3 == 0:
            sym = SYMBOLS[(n // 3) % len(SYMBOLS)]
            out.append(make[(n // 12) % 3](sym, n))
        if n % 50 == 0:
            out.append(f.status(SYMBOLS[n % len(SYMBOLS)]))  # a good status: no event
    frames: list[bytes | str] = []
    k = 0
    while k < len(out):
        size = rng.randint(1, 80)
        frames.append(P.encode(out[k : k + size]))
        k += size
    garbage = [fr for _ in range(rounds * 16 // 10) for fr in f.bad_frames()]
    f.unroutable += len(garbage)
    f.kinds["frame"] = len(garbage)
    for fr in garbage:  # each at a random place among the message frames
        frames.insert(rng.randrange(len(frames) + 1), fr)
    f.frames = frames
    # The stream after the flood: good messages only.
    after = [make[n % 3](SYMBOLS[n % len(SYMBOLS)], n) for n in range(600)]
    f.frames += [P.encode(after[k : k + 40]) for k in range(0, len(after), 40)]
    return f


# -- the server, the producer and the consumers ------------------------------------------------------


class AlpacaStub:
    """One Alpaca-protocol market-data connection on 127.0.0.1: handshake, subscription ack, then
    whatever the test sends."""

    def __init__(self) -> None:
        self.ws: Any = None
        self.ready = asyncio.Event()
        self.server: Any = None

    async def _handler(self, ws: Any) -> None:
        await ws.send(P.CONNECTED)
        auth = msgpack.unpackb(await ws.recv())
        assert auth == {"action": "auth", "key": "k", "secret": "s"}
        await ws.send(P.AUTHENTICATED)
        sub = msgpack.unpackb(await ws.recv())
        assert sub["action"] == "subscribe"
        await ws.send(P.encode([{"T": "subscription", **{k: v for k, v in sub.items() if k != "action"}}]))
        self.ws = ws
        self.ready.set()
        await ws.wait_closed()

    async def start(self) -> str:
        self.server = await serve(self._handler, "127.0.0.1", 0, max_size=None, compression=None)
        return f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()


class Session:
    """The producer on the stub, two consumers on their pipes, each running the plan's runner."""

    def __init__(self, tmp_path: Path) -> None:
        self.plan = tally_plan(tmp_path)
        self.stub = AlpacaStub()
        self.stats = SharedStats(CONSUMERS)
        self.notes: list[object] = []

    async def __aenter__(self) -> Session:
        url = await self.stub.start()
        account = Account(self.plan.broker.cash, slots=CONSUMERS, strategies=1)
        writers, self.consumers, self.readers = [], [], []
        for i in range(CONSUMERS):
            r, w = mp.Pipe(duplex=False)
            writers.append(ChannelWriter(w))
            runner = build_runner(
                self.plan,
                account,
                {},
                order_prefix=f"t-{i}-",
                slot=i,
                stale_after_ns=int(self.plan.consumers.stale_after * 1e9),
            )
            consumer = Consumer(ConsumerSetup(i, self.plan, "batch", {}, None, account, self.stats), runner)
            self.consumers.append(consumer)
            self.readers.append(ChannelReader(r, consumer.on_frame, consumer.on_eof))
        self.tasks = [
            asyncio.create_task(c.run(rd)) for c, rd in zip(self.consumers, self.readers, strict=True)
        ]
        self.producer = Producer(
            url,
            "k",
            "s",
            writers,
            self.stats,
            ("trades", "quotes", "bars"),
            self.notes.append,
            max_backoff=0.2,
        )
        self.task = asyncio.create_task(self.producer.run())
        await self.producer.subscribe(Assign(SYMBOLS))
        await eventually_async(
            lambda: any(isinstance(n, Subscribed) for n in self.notes), 20, "the subscription acknowledged"
        )
        self.producer.start(Start(ClockSpec.live()))  # a live clock: the consumers judge staleness
        return self

    async def send(self, frames: list[bytes | str]) -> None:
        for fr in frames:
            await self.stub.ws.send(fr)

    def received(self) -> list[int]:
        return [self.stats.consumer(i)["received"] for i in range(CONSUMERS)]

    async def until_received(self, expected: list[int], timeout: float) -> None:
        """Wait until the consumers have received `expected` events each (every frame sent was read);
        fail saying what they and the producer counted."""
        try:
            await eventually_async(
                lambda: all(r >= e for r, e in zip(self.received(), expected, strict=True)),
                timeout,
                f"{expected} events received by the consumers",
            )
        except AssertionError as e:
            raise AssertionError(
                f"{e}: received {self.received()}; producer {self.stats.producer()}"
            ) from None
        assert self.received() == expected, self.stats.producer()

    async def stop(self) -> None:
        await asyncio.wait_for(self.producer.stop(Stop("test over")), 20)
        await asyncio.wait_for(self.task, 20)
        await asyncio.wait_for(asyncio.gather(*self.tasks), 20)

    async def __aexit__(self, *exc: object) -> None:
        for t in [self.task, *self.tasks]:
            t.cancel()
        await asyncio.gather(self.task, *self.tasks, return_exceptions=True)
        for r in self.readers:
            r.close()
        await self.stub.close()


# -- the test ---------------------------------------------------------------------------------------


async def test_a_flood_of_malformed_messages_of_every_kind_is_counted_once_and_the_stream_goes_on(
    tmp_path: Path,
) -> None:
    flood = build_flood()
    assert min(flood.kinds.values()) >= 2000, flood.kinds  # a flood of each kind
    async with Session(tmp_path) as s:
        await s.send(flood.frames)
        expected = [flood.events[i] for i in range(CONSUMERS)]
        await s.until_received(expected, 60)
        producer = s.stats.producer()
        assert producer["connected"] == 1 and producer["reconnects"] == 0  # the connection held
        await s.stop()

        # The producer: every frame read, each undecodable frame and unroutable message counted once.
        producer = s.stats.producer()
        assert producer["frames"] == len(flood.frames) + 1  # and the subscription ack
        assert producer["unroutable"] == flood.unroutable
        assert producer["events"] == sum(flood.events.values())
        assert [s.stats.consumer(i)["sent"] for i in range(CONSUMERS)] == expected

        for i, consumer in enumerate(s.consumers):
            report = consumer.report()
            # Each malformed message once, at the consumer owning its symbol; nothing stale, nothing lost.
            assert report.received == expected[i]
            assert report.malformed == flood.malformed[i]
            assert report.stale == 0
            assert report.received == report.processed + report.stale + report.malformed
            assert report.processed == len(flood.good[i]) + sum(
                n for sym, n in flood.bad_ticks.items() if shard_of(sym, CONSUMERS) == i
            )
            # The trade prints that are no price: dropped by the bad-tick filter, each counted once.
            assert report.bad_ticks == {
                sym: {"band": n, "conditions": 0, "bars": 0, "moved": 0}
                for sym, n in sorted(flood.bad_ticks.items())
                if shard_of(sym, CONSUMERS) == i
            }
            # The strategy saw every good event, in order, the ones after the flood included; nothing else.
            assert consumer.runner.slots["tally"].strategy.seen == flood.good[i]
            assert report.strategy_errors == 0


async def test_malformed_subscription_acks_are_counted_and_the_stream_goes_on(tmp_path: Path) -> None:
    """Control messages are messages too: a subscription ack whose channel lists are no lists of symbols
    is one `unroutable` (like any message the producer cannot use), never the end of the stream."""
    f = Flood()
    bad = [{"T": "subscription", "trades": 5}, {"T": "subscription", "trades": [["AAA"]], "quotes": []}]
    frames, n_bad = [], 0
    for n in range(1000):
        goods = [
            (f.good_trade, f.good_quote, f.good_bar)[k % 3](SYMBOLS[(n + k) % len(SYMBOLS)], n)
            for k in range(3)
        ]
        frames.append(P.encode([goods[0], bad[n % 2], *goods[1:]]))
        n_bad += 1
    async with Session(tmp_path) as s:
        await s.send(frames)
        expected = [f.events[i] for i in range(CONSUMERS)]
        await s.until_received(expected, 30)
        await s.stop()
        producer = s.stats.producer()
        assert (producer["unroutable"], producer["reconnects"]) == (n_bad, 0)
        for i, consumer in enumerate(s.consumers):
            assert consumer.runner.slots["tally"].strategy.seen == f.good[i]
