"""A consumer process: one symbol shard's strategies, paper broker and trade writer.

It reads its channel with `loop.add_reader` (the event loop never blocks on
the queue), drops events older than `stale_after` by the shared clock, and
hands every batch to the `StrategyRunner`. Orders and fills are written to
PostgreSQL in batches. It exits on `Stop` after draining what it was sent.

The process entry point (`liu.engine.consumer_main`) builds the runner and
this `Consumer` around it; the models, if any, come in as a
`liu.hooks.ModelHook`, so this module never imports `liu.ml`.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

from liu.brokers.account import Account
from liu.clock import Clock
from liu.events import Assign, ConsumerReport, Start, Stop
from liu.hooks import ModelHook
from liu.plan import TradePlan
from liu.runner import Keystore, StrategyRunner
from liu.stats import RUNNER_COUNTERS, SharedStats
from liu.store import save_keystore
from liu.transport import BATCH, ChannelReader

log = logging.getLogger(__name__)
# The report's counters: the runner's, except "fills" (the report carries the fills themselves).
REPORTED_COUNTERS = tuple(name for name in RUNNER_COUNTERS if name != "fills")
_MAX_QUEUED = 64  # frames held in memory before reading pauses (the backlog then shows at the producer)


@dataclass
class ConsumerSetup:
    """Everything a consumer process needs; picklable so it crosses the process start."""

    index: int
    plan: TradePlan
    batch_id: str
    run_ids: dict[str, int]
    dsn: str | None
    account: Account
    stats: SharedStats
    not_shortable: tuple[str, ...] = ()


class Consumer:
    """Drives a `StrategyRunner` from a channel; usable in-process by tests.

    `models` is the runner's model scorer when the plan names models (it reports their counts).
    """

    def __init__(
        self,
        setup: ConsumerSetup,
        runner: StrategyRunner,
        keystores: dict[str, Keystore] | None = None,
        models: ModelHook | None = None,
    ) -> None:
        self.setup = setup
        self.runner = runner
        self.models = models
        self.keystores: dict[str, Keystore] = {} if keystores is None else keystores
        self.clock: Clock | None = None
        self._queue: collections.deque = collections.deque()
        self._wake = asyncio.Event()
        self._stop: Stop | None = None
        self._eof = False
        self._reader: ChannelReader | None = None
        stats, i = setup.stats, setup.index
        self._a = stats.array
        self._lag = stats.consumer_index(i, "lag_us")
        self._counters = [(stats.consumer_index(i, name), name) for name in RUNNER_COUNTERS]
        self.watcher: Any = None  # liu.ml.inference.ModelWatcher when the plan names models
        self.predictions: Any = None  # liu.ml.predictions.PredictionWriter when there is a database

    def on_frame(self, kind: int, payload) -> None:
        self._queue.append((kind, payload))
        self._wake.set()
        if len(self._queue) > _MAX_QUEUED and self._reader is not None:
            self._reader.pause()

    def on_eof(self) -> None:
        self._eof = True
        self._wake.set()

    async def run(self, reader: ChannelReader) -> None:
        self._reader = reader
        reader.resume()
        await self.runner.start()
        ticker = asyncio.create_task(self._tick())
        try:
            while True:
                if not self._queue:
                    if self._stop is not None or self._eof:
                        break
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                kind, payload = self._queue.popleft()
                if not reader.reading and len(self._queue) < _MAX_QUEUED // 2 and not self._eof:
                    reader.resume()
                if kind == BATCH:
                    await self._batch(payload)
                else:
                    self._control(payload)
        finally:
            ticker.cancel()
            await self.runner.stop()
            self._publish()

    async def _batch(self, batch: tuple) -> None:
        clock = self.clock
        now = clock.now_ns() if clock is not None and clock.realtime else None
        lag = time.time_ns() - batch[0][-1]
        first = self.runner.counts["processed"] == 0
        await self.runner.process(batch, now)
        if first and self.runner.counts["processed"]:
            log.info("first event processed (%d in the first batch)", len(batch))
        self._a[self._lag] = lag // 1000
        self._publish()

    def _control(self, msg) -> None:
        if isinstance(msg, Start):
            self.clock = Clock(msg.clock)
        elif isinstance(msg, Assign):
            self.runner.assign(msg.symbols, msg.strategies)
        elif isinstance(msg, Stop):
            self._stop = msg

    def _publish(self) -> None:
        a, c = self._a, self.runner.counts
        for k, name in self._counters:
            a[k] = c[name]

    async def _tick(self) -> None:
        """Housekeeping every 250 ms: close quiet symbols' bars (live only), keep the shared account
        current (and act on a flatten even when no events arrive), save keystores, write predictions,
        follow model promotions."""
        while True:
            await asyncio.sleep(0.25)
            if self.clock is not None and self.clock.realtime:
                await self.runner.flush_bars(self.clock.now_ns())
            await self.runner.poll_account()
            await self.save_keystores()
            if self.predictions is not None:
                # Shielded: a Stop cancels this task, and a COPY cut off mid-way would lose or repeat rows;
                # the final close() waits for it (same lock) and writes the rest.
                await asyncio.shield(self.predictions.flush())
            if self.watcher is not None:
                await self.watcher.poll()

    async def save_keystores(self) -> None:
        if self.setup.dsn is None:
            return
        for name, ks in self.keystores.items():
            items = ks.take_dirty()
            if items:
                await save_keystore(self.setup.dsn, name, items)

    def report(self) -> ConsumerReport:
        runner = self.runner
        c = runner.counts
        return ConsumerReport(
            index=self.setup.index,
            **{name: c[name] for name in REPORTED_COUNTERS},
            risk_refused=dict(runner.risk.refused) if runner.risk is not None else {},
            symbols=sorted(runner.features.history.keys() | runner.last_price.keys()),
            strategies=self._strategy_report(),
            fills=[dataclasses.asdict(f) for f in runner.fill_log],
        )

    def _strategy_report(self) -> dict[str, dict]:
        """The runner's per-strategy rows; with models, each row also gets its models' scoring counts."""
        rows = self.runner.report()
        if self.models is not None:
            stats = self.models.stats()
            for label, row in rows.items():
                names = self.runner.slots[label].ctx.models
                if names:
                    row["models"] = {n: stats[n] for n in names}
        return rows

    def log_models(self) -> None:
        if self.models is None:
            return
        for name, st in self.models.stats().items():
            log.info(
                "model %s: %d bars, %d warming up, scored per version %s, %d errors, refused %s",
                name,
                st["bars"],
                st["warming"],
                st["scored"],
                st["errors"],
                sorted(st["refused"]) or "none",
            )
