"""The producer on Alpaca's streams, against liu's local exchange (real websockets on 127.0.0.1): one
stock and one crypto connection into the same consumers, and every stream error code doing what Alpaca's
does to a client: stop with one line (402, 409, 406), carry on (405), reconnect and back-fill (407)."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import time

import pytest

from liu.events import Assign, Backfill, Stop
from liu.messages import Reconnected, Subscribed
from liu.producer import AuthError, Producer, shard_of
from liu.sources.exchange.local import LocalExchange
from liu.sources.sim import SimFeed
from liu.stats import SharedStats
from liu.transport import BATCH, CONTROL, ChannelReader, ChannelWriter
from tests.helpers import eventually_async

SECRET = "s3cret-producer-test"
SYMBOLS = ["AAA", "BBB", "BTC/USD", "ETH/USD"]


class Run:
    """A producer task in this loop, on an exchange on its own thread, with two consumer channels."""

    def __init__(self, ex: LocalExchange, secret: str = SECRET, feed: str = "iex") -> None:
        self.ex = ex
        self.notes: list[object] = []
        self.noted_at: list[int] = []  # wall time of each note
        self.frames: list[list[tuple[int, object]]] = [[], []]
        self.stats = SharedStats(2)
        writers, self.readers = [], []
        for i in range(2):
            r, w = mp.Pipe(duplex=False)
            writers.append(ChannelWriter(w))
            reader = ChannelReader(r, lambda kind, p, i=i: self.frames[i].append((kind, p)), lambda: None)
            reader.resume()
            self.readers.append(reader)
        self.producer = Producer(
            ex.stock_stream_url(feed),
            ex.key,
            secret,
            writers,
            self.stats,
            ("trades", "quotes", "updatedBars"),
            notify=self._note,
            max_backoff=0.2,
            crypto_url=ex.crypto_stream_url,
        )
        self.task = asyncio.create_task(self.producer.run())

    def _note(self, msg: object) -> None:
        self.notes.append(msg)
        self.noted_at.append(time.time_ns())

    def events(self, i: int | None = None) -> list[tuple]:
        rows = self.frames if i is None else [self.frames[i]]
        return [ev for frames in rows for kind, p in frames if kind == BATCH for ev in p]

    def controls(self, cls: type) -> list:
        return [p for frames in self.frames for kind, p in frames if kind == CONTROL and isinstance(p, cls)]

    async def close(self) -> None:
        if not self.task.done():
            await asyncio.wait_for(self.producer.stop(Stop("test")), 10)
        await asyncio.gather(self.task, return_exceptions=True)
        for r in self.readers:
            r.close()


def exchange(**server) -> LocalExchange:
    feed = SimFeed(symbols=SYMBOLS, rate=server.pop("rate", 2000), seed=4, kinds=("t", "q"))
    return LocalExchange(feed, key="kid", secret=SECRET, **server)


async def test_stocks_and_crypto_stream_on_two_connections_into_the_same_consumers():
    with exchange() as ex:
        run = Run(ex)
        try:
            await run.producer.subscribe(Assign(tuple(SYMBOLS)))
            await eventually_async(lambda: any(isinstance(n, Subscribed) for n in run.notes), 20, "the ack")
            assert [n for n in run.notes if isinstance(n, Subscribed)] == [Subscribed(tuple(sorted(SYMBOLS)))]
            assert ex.server.subscribers() == 2  # one stock and one crypto connection
            await eventually_async(lambda: {e[1] for e in run.events()} == set(SYMBOLS), 20, "every symbol")
            for i in range(2):  # the same per-consumer routing for both asset classes
                assert {e[1] for e in run.events(i)} <= {s for s in SYMBOLS if shard_of(s, 2) == i}
            # Each consumer heard of its symbols (Assign) before their first event.
            for i in range(2):
                first_batch = next(k for k, (kind, _) in enumerate(run.frames[i]) if kind == BATCH)
                assigned = [p for kind, p in run.frames[i][:first_batch] if isinstance(p, Assign)]
                assert assigned
        finally:
            await run.close()


async def test_only_the_connections_a_plan_needs_are_opened():
    with exchange() as ex:
        run = Run(ex)
        try:
            await run.producer.subscribe(Assign(("BTC/USD",)))
            await eventually_async(lambda: run.notes, 20, "the crypto ack")
            assert ex.server.subscribers() == 1 and run.producer.links["stocks"].task is None
        finally:
            await run.close()


@pytest.mark.parametrize(
    ("server", "secret", "feed", "expect"),
    [
        (
            {},
            "not-the-secret",
            "iex",
            r"refused authentication: auth failed \(code 402\); check the API keys",
        ),
        ({"sip_allowed": False}, SECRET, "sip", r"insufficient subscription \(code 409\).*feed = \"iex\""),
    ],
    ids=["402-wrong-keys", "409-feed-not-in-plan"],
)
async def test_refusals_stop_the_producer_with_one_line(server, secret, feed, expect):
    with exchange(**server) as ex:
        run = Run(ex, secret=secret, feed=feed)
        try:
            await run.producer.subscribe(Assign(("AAA",)))
            with pytest.raises(AuthError, match=expect) as info:
                await asyncio.wait_for(asyncio.shield(run.task), 20)
            assert "\n" not in str(info.value) and SECRET not in str(info.value)
            assert secret not in str(info.value)
        finally:
            await run.close()


async def test_a_connection_limit_stops_the_second_producer_not_the_first():
    with exchange(connection_limit=1) as ex:
        first, second = Run(ex), None
        try:
            await first.producer.subscribe(Assign(("AAA",)))
            await eventually_async(lambda: first.notes, 20, "the first producer's ack")
            second = Run(ex)
            await second.producer.subscribe(Assign(("BBB",)))
            with pytest.raises(AuthError, match=r"connection limit exceeded \(code 406\): another program"):
                await asyncio.wait_for(asyncio.shield(second.task), 20)
            assert not first.task.done() and first.stats.producer()["connected"] == 1
        finally:
            await first.close()
            if second is not None:
                await second.close()


async def test_a_symbol_limit_is_reported_and_does_not_hang_the_subscription(caplog):
    caplog.set_level(logging.ERROR, logger="liu.producer")
    with exchange(symbol_limit=1) as ex:
        run = Run(ex)
        try:
            await run.producer.subscribe(Assign(("AAA",)))
            await eventually_async(lambda: run.notes, 20, "the first ack")
            await run.producer.subscribe(Assign(("BBB",)))
            await eventually_async(lambda: len(run.notes) == 2, 20, "the refused subscription answered")
            assert "symbol limit exceeded (405)" in caplog.text and "['BBB']" in caplog.text
            await eventually_async(lambda: any(e[1] == "AAA" for e in run.events()), 20, "AAA still streams")
            assert not run.task.done()
        finally:
            await run.close()


async def test_a_slow_client_gets_407_reconnects_and_asks_its_consumers_to_back_fill(caplog):
    caplog.set_level(logging.WARNING, logger="liu.producer")
    with exchange(slow_client_bytes=20_000, slow_client_grace=0.5, rate=20_000) as ex:
        run = Run(ex)
        try:
            await run.producer.subscribe(Assign(("AAA", "BBB")))
            await eventually_async(lambda: len(run.events()) > 200, 20, "events before the stall")
            before = time.time_ns()
            # The producer's loop stalls (a CPU-starved process): the server's backlog to it grows.
            deadline = time.monotonic() + 60
            while ex.server.slow_disconnects == 0:
                assert time.monotonic() < deadline, "the server never dropped the stalled client"
                time.sleep(0.05)  # blocking on purpose: this *is* the stall
            await eventually_async(
                lambda: any(isinstance(n, Reconnected) for n in run.notes), 20, "reconnect"
            )
            await eventually_async(lambda: run.controls(Backfill), 20, "a back-fill request")
            fills = run.controls(Backfill)
            assert {s for b in fills for s in b.symbols} == {"AAA", "BBB"}
            assert all("slow client (407)" in b.reason and b.since_ns <= time.time_ns() for b in fills)
            assert all(b.since_ns >= before - 10**9 for b in fills)  # the gap begins at the last frame seen
            n = len(run.events())
            await eventually_async(lambda: len(run.events()) > n + 100, 20, "events after the reconnect")
            # Each consumer gets the request after every event of the old connection and before any
            # event of the new one (the producer notes the reconnect between the two).
            reconnected = run.noted_at[next(k for k, m in enumerate(run.notes) if isinstance(m, Reconnected))]
            owners = {shard_of(s, 2) for s in ("AAA", "BBB")}
            for i in owners:
                at = next(j for j, (_, p) in enumerate(run.frames[i]) if isinstance(p, Backfill))
                old = [e for kind, p in run.frames[i][:at] if kind == BATCH for e in p]
                new = [e for kind, p in run.frames[i][at:] if kind == BATCH for e in p]
                assert old and new
                assert max(e[-1] for e in old) < reconnected < min(e[-1] for e in new)
            assert run.producer.gaps and run.producer.gaps[0] > 0
            assert run.stats.producer()["reconnects"] == 1
            assert (
                "slow client (407)" in caplog.text
                and "back-filling and resubscribed 2 symbols" in caplog.text
            )
        finally:
            await run.close()
