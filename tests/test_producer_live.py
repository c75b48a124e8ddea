"""The producer against liu's market-data server over a real websocket on 127.0.0.1."""

import asyncio
import multiprocessing as mp

import msgpack
import pytest

from liu.brokers.account import Account
from liu.brokers.paper import PaperBroker
from liu.clock import Clock, ClockSpec
from liu.events import MALFORMED, TRADE, Assign
from liu.producer import Producer, shard_of
from liu.runner import StrategyRunner
from liu.sources.server import MarketDataServer
from liu.sources.sim import SimFeed
from liu.stats import SharedStats
from liu.transport import BATCH, ChannelReader, ChannelWriter


class Harness:
    """A server, a producer task and two consumer channels read by the test."""

    def __init__(self, feed):
        self.feed = feed
        self.server = MarketDataServer(feed, key="k", secret="s")
        self.events: list[list[tuple]] = [[], []]
        self.changed = asyncio.Event()

    async def __aenter__(self):
        port = await self.server.start()
        self.stats = SharedStats(2)
        writers, self.readers = [], []
        for i in range(2):
            r, w = mp.Pipe(duplex=False)
            writers.append(ChannelWriter(w))
            reader = ChannelReader(r, lambda kind, p, i=i: self._on_frame(i, kind, p), lambda: None)
            reader.resume()
            self.readers.append(reader)
        self.producer = Producer(f"ws://127.0.0.1:{port}", "k", "s", writers, self.stats, max_backoff=0.2)
        self.task = asyncio.create_task(self.producer.run())
        return self

    def _on_frame(self, i, kind, payload):
        if kind == BATCH:
            self.events[i].extend(payload)
            self.changed.set()

    def count(self):
        return sum(len(e) for e in self.events)

    async def until(self, predicate, timeout=20):
        async def wait():
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(wait(), timeout)

    async def __aexit__(self, *exc):
        from liu.events import Stop

        await asyncio.wait_for(self.producer.stop(Stop("test")), 10)
        await self.task
        await self.server.stop()
        for r in self.readers:
            r.close()


async def test_reconnects_resubscribes_and_reports_the_gap():
    feed = SimFeed(symbols=8, rate=4000, seed=3, batch=20)
    async with Harness(feed) as h:
        await h.producer.subscribe(Assign(tuple(feed.symbols)))
        await h.server.wait_for_subscribers(1)
        h.server.start_feed(Clock(ClockSpec.live()))
        await h.until(lambda: h.count() >= 500)

        await h.server.stop()  # the market-data server goes away mid-stream
        before = h.count()
        await h.server.start()  # and comes back on the same port
        await h.server.wait_for_subscribers(1)  # the producer resubscribed by itself
        h.server.start_feed(Clock(ClockSpec.live()))
        await h.until(lambda: h.count() >= before + 500)

        assert len(h.producer.gaps) == 1 and h.producer.gaps[0] > 0
        assert h.stats.producer()["reconnects"] == 1
        assert h.stats.producer()["connected"] == 1
        # Every symbol still lands on its own consumer after the reconnect.
        for i, evs in enumerate(h.events):
            assert {ev[1] for ev in evs} <= {s for s in feed.symbols if shard_of(s, 2) == i}


async def test_malformed_frames_are_counted_and_the_stream_goes_on():
    feed = SimFeed(symbols=["AAA", "BBB"], rate=10, seed=1)
    async with Harness(feed) as h:
        await h.producer.subscribe(Assign(("AAA", "BBB")))
        await h.server.wait_for_subscribers(1)
        ts = msgpack.Timestamp.from_unix_nano(1_700_000_000_000_000_000)
        await h.server.broadcast_raw(b"\xc1 not msgpack")  # undecodable frame
        await h.server.broadcast_raw(msgpack.packb({"T": "t"}))  # not an array
        await h.server.broadcast_raw(
            msgpack.packb(
                [
                    {"T": "t", "S": "AAA", "p": "abc", "s": 1, "t": ts},  # bad price: routed as malformed
                    {"T": "t", "p": 1.0, "s": 1, "t": ts},  # no symbol: cannot be routed
                    {"T": "t", "S": "AAA", "p": 10.5, "s": 100, "t": ts, "i": 1, "x": "V", "c": [], "z": "C"},
                ]
            )
        )
        await h.until(lambda: h.count() >= 2)
        assert h.stats.producer()["unroutable"] == 3
        evs = h.events[shard_of("AAA", 2)]
        assert [e[0] for e in evs] == [MALFORMED, TRADE]
        assert "ValueError" in evs[0][3]
        runner = StrategyRunner(PaperBroker(Account(1.0)))
        await runner.process(evs)
        assert runner.counts == runner.counts | {"received": 2, "processed": 1, "malformed": 1}


async def test_wrong_keys_stop_the_producer_with_a_clear_error():
    from liu.producer import AuthError

    server = MarketDataServer(SimFeed(symbols=2, rate=10), key="k", secret="right")
    port = await server.start()
    r, w = mp.Pipe(duplex=False)
    producer = Producer(f"ws://127.0.0.1:{port}", "k", "wrong", [ChannelWriter(w)], SharedStats(1))
    with pytest.raises(AuthError, match="refused authentication"):
        await asyncio.wait_for(producer.run(), 10)
    await server.stop()
    r.close()


async def test_an_unhashable_symbol_is_unroutable_and_the_stream_goes_on():
    feed = SimFeed(symbols=["AAA", "BBB"], rate=10, seed=1)
    async with Harness(feed) as h:
        await h.producer.subscribe(Assign(("AAA", "BBB")))
        await h.server.wait_for_subscribers(1)
        ts = msgpack.Timestamp.from_unix_nano(1_700_000_000_000_000_000)
        good = {"T": "t", "S": "AAA", "p": 10.5, "s": 100, "t": ts, "i": 1, "x": "V", "c": [], "z": "C"}
        await h.server.broadcast_raw(msgpack.packb([{**good, "S": ["AAA"]}, {**good, "S": {"a": 1}}, good]))
        await h.until(lambda: h.count() >= 1)
        assert h.stats.producer()["unroutable"] == 2
        assert [e[0] for e in h.events[shard_of("AAA", 2)]] == [TRADE]
