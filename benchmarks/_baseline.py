"""Process entry points for benchmarks/live_path.py.

liu side (the real code, instrumented only from the outside):
* `bench_serve`: liu's `MarketDataServer` with a pre-encoded `SimFeed`, whose rate
  the benchmark changes per step.
* `bench_consumer_main`: liu's `consumer_main` (liu.engine), with `BenchConsumer` (a `Consumer`
  that hands the batch's receive time and the benchmark's step to the strategy and,
  when the plan names models, publishes the scorer's counts every 50 ms).
* the producer is liu's `producer_main`, unchanged.

Baseline (the LiuAlgoTrader design): one `multiprocessing.Queue.put` per event.
* `QueueWriter`: `ChannelWriter`'s interface over an `mp.Queue`, one `put` per event,
  so liu's `Producer` runs unchanged on it (`baseline_producer_main`).
* `baseline_consumer_main`: a blocking `Queue.get` per event in the event loop, each
  event handed to the same `StrategyRunner` on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import queue
import signal
import time
from array import array
from dataclasses import dataclass
from typing import Any

from liu.consumer import Consumer, ConsumerSetup
from liu.events import Start, Stop
from liu.transport import EOF_MARK, watch_connection


@dataclass
class BenchSetup(ConsumerSetup):
    control: Any = None  # RawArray('q'): [step id (0 = do not record), sample stride]
    ml_counts: Any = None  # RawArray('q'), ML_FIELDS per consumer: the model scorer's totals


ML_FIELDS = ("bars", "warming", "scored", "errors")


class BenchConsumer(Consumer):
    """liu's Consumer; before each batch tells the strategy the benchmark step."""

    def __init__(self, setup: BenchSetup, runner, keystores=None, models=None) -> None:
        super().__init__(setup, runner, keystores, models)
        runner.bench_step, runner.bench_stride = 0, 1
        runner.bench_clock = None
        self.transport: dict[int, array] = {}  # step → producer receive → batch start, ns
        self.gc_pauses: dict[int, list] = {0: [0, 0.0, 0.0], 1: [0, 0.0, 0.0], 2: [0, 0.0, 0.0]}
        gc_t = [0.0]

        def on_gc(phase: str, info: dict) -> None:  # count, total and longest pause per generation
            if phase == "start":
                gc_t[0] = time.perf_counter()
            else:
                d = time.perf_counter() - gc_t[0]
                g = self.gc_pauses[info["generation"]]
                g[0] += 1
                g[1] += d
                g[2] = max(g[2], d)

        gc.callbacks.append(on_gc)

    async def _batch(self, batch: tuple) -> None:
        ctl = self.setup.control
        r = self.runner
        step = r.bench_step = ctl[0]
        r.bench_stride = ctl[1] or 1
        recv = batch[0][-1]
        if step:
            t = self.transport.get(step)
            if t is None:
                t = self.transport[step] = array("q")
            t.append(time.time_ns() - recv)
        await super()._batch(batch)

    def _control(self, msg) -> None:
        super()._control(msg)
        if isinstance(msg, Start):
            self.runner.bench_clock = self.clock

    async def run(self, reader) -> None:
        """liu's run; with a model scorer, its counts are published while it runs (off the event path)."""
        if self.setup.ml_counts is None or self.models is None:
            await super().run(reader)
            return
        task = asyncio.create_task(self._publish_ml())
        try:
            await super().run(reader)
        finally:
            task.cancel()
            self._write_ml()

    async def _publish_ml(self) -> None:
        while True:
            self._write_ml()
            await asyncio.sleep(0.05)

    def _write_ml(self) -> None:
        out, base = self.setup.ml_counts, self.setup.index * len(ML_FIELDS)
        totals = [0] * len(ML_FIELDS)
        for m in self.models.models.values():
            totals[0] += m.bars
            totals[1] += m.warming
            totals[2] += sum(m.scored.values())
            totals[3] += m.errors
        out[base : base + len(ML_FIELDS)] = totals

    def report(self):
        rep = super().report()
        samples = {}
        for slot in self.runner.slots.values():
            for step, (lat, srv) in getattr(slot.strategy, "samples", {}).items():
                samples[step] = (lat.tobytes(), srv.tobytes())
        rep.bench = samples  # an extra attribute survives pickling
        rep.bench_transport = {k: v.tobytes() for k, v in self.transport.items()}
        rep.bench_gc = self.gc_pauses
        return rep


def bench_consumer_main(setup: BenchSetup, channel, results) -> None:
    """liu's consumer_main, with BenchConsumer in place of Consumer."""
    import liu.engine as le

    le.Consumer = BenchConsumer
    le.consumer_main(setup, channel, results)


# -- the market-data server ------------------------------------------------------


def bench_serve(cfg: dict, conn) -> None:
    import uvloop

    uvloop.run(_bench_serve(cfg, conn))


async def _bench_serve(cfg: dict, conn) -> None:
    import liu.sources.server as srv
    from liu.clock import Clock
    from liu.sources.sim import SimFeed

    feed = SimFeed(
        symbols=cfg["symbols"],
        rate=1.0,
        seed=cfg.get("seed", 7),
        batch=cfg["batch"],
        kinds=("t",),
        preencoded=True,
    )
    server = srv.MarketDataServer(feed, key=cfg["key"], secret=cfg["secret"], ping_interval=None)
    port = await server.start()
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue = asyncio.Queue()
    conn.send(("ready", port, feed.symbols))
    watch_connection(conn, lambda msg: inbox.put_nowait(None if msg is EOF_MARK else msg), loop)
    clock = None
    try:
        while True:
            msg = await inbox.get()
            if msg is None:
                return
            if msg[0] == "start":
                clock = Clock(msg[1])
            elif msg[0] == "rate":
                task = server._feed_task
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                if msg[1]:
                    feed.rate = float(msg[1])
                    server.start_feed(clock)
                conn.send(("ok", server.sent_events, time.monotonic()))
            elif msg[0] == "stop":
                await server.stop()
                conn.send(("stopped", server.sent_events))
                return
    finally:
        await server.stop()


# -- the baseline: one mp.Queue.put per event ---------------------------------------


class QueueWriter:
    """ChannelWriter's interface over a multiprocessing.Queue: one put per event."""

    def __init__(self, q) -> None:
        self.q = q
        self.closed = False

    @property
    def backlog_bytes(self) -> int:
        # Items the queue's feeder thread has not yet written to its pipe (a count, not bytes).
        return len(self.q._buffer)

    def send_batch(self, events: list) -> None:
        put = self.q.put
        for ev in events:
            put(ev)

    def send_control(self, obj: Any) -> None:
        self.q.put(obj)

    async def drain(self) -> None:
        while self.q._buffer:
            await asyncio.sleep(0.01)

    def close(self) -> None:
        self.q.close()
        self.closed = True


def baseline_producer_main(url, key, secret, queues, control, stats, kinds) -> None:
    """liu's producer_main, with QueueWriter in place of ChannelWriter."""
    import liu.producer as lp

    lp.ChannelWriter = QueueWriter
    lp.producer_main(url, key, secret, queues, control, stats, kinds)


def baseline_consumer_main(setup: BenchSetup, q, results) -> None:
    """LiuAlgoTrader-style consumer: a blocking Queue.get per event, each event processed on its own."""
    import uvloop

    from liu.engine import build_runner

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s baseline-consumer-{setup.index} %(levelname)s %(message)s"
    )
    log = logging.getLogger("baseline")

    async def main() -> None:
        runner = build_runner(
            setup.plan,
            setup.account,
            {},
            order_prefix=f"b{setup.index}-",
            not_shortable=setup.not_shortable,
            stale_after_ns=int(setup.plan.consumers.stale_after * 1e9),
        )
        consumer = BenchConsumer(setup, runner)
        await runner.start()
        ctl = setup.control
        process = runner.process
        get, get_nowait = q.get, q.get_nowait
        first = True
        while True:
            try:
                item = get_nowait()
            except queue.Empty:
                consumer._publish()
                try:
                    item = get(timeout=2)
                except queue.Empty:
                    continue
            if item.__class__ is tuple:
                step = runner.bench_step = ctl[0]
                runner.bench_stride = ctl[1] or 1
                if step:
                    consumer.transport.setdefault(step, array("q")).append(time.time_ns() - item[-1])
                clock = consumer.clock
                await process((item,), clock.now_ns() if clock is not None else None)
                if first:
                    first = False
                    log.info("first event processed")
            else:
                consumer._control(item)
                if isinstance(item, Stop):
                    break
        await runner.stop()
        consumer._publish()
        results.send(consumer.report())

    uvloop.run(main())


def wait(pred, timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True
