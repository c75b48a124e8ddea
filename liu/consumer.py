"""A consumer process: one symbol shard's strategies, paper broker and trade writer.

It reads its channel with `loop.add_reader` (the event loop never blocks on
the queue), drops events older than `stale_after` by the shared clock, and
hands every batch to the `StrategyRunner`. Orders and fills are written to
PostgreSQL in batches. It exits on `Stop` after draining what it was sent.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import gc
import logging
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection

from liu.brokers.account import Account
from liu.brokers.paper import PaperBroker
from liu.clock import Clock
from liu.events import Assign, ConsumerReport, Start, Stop
from liu.plan import TradePlan
from liu.plugins import instantiate
from liu.runner import Keystore, StrategyRunner
from liu.stats import SharedStats
from liu.store import TradeWriter, load_keystore, save_keystore
from liu.strategy import Strategy
from liu.transport import BATCH, ChannelReader

log = logging.getLogger(__name__)
# Runner counters mirrored into the shared stats for the live progress table.
_COUNTS = ("received", "processed", "stale", "malformed", "strategy_errors", "orders", "rejected", "fills")
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
    """Drives a `StrategyRunner` from a channel; usable in-process by tests."""

    def __init__(self, setup: ConsumerSetup, runner: StrategyRunner, keystores=None) -> None:
        self.setup = setup
        self.runner = runner
        self.keystores: dict[str, Keystore] = {} if keystores is None else keystores
        self.clock: Clock | None = None
        self._queue: collections.deque = collections.deque()
        self._wake = asyncio.Event()
        self._stop: Stop | None = None
        self._eof = False
        self._reader: ChannelReader | None = None
        a, i = setup.stats.array, setup.index
        self._a = a
        self._idx = {f: setup.stats.consumer_index(i, f) for f in (*_COUNTS, "lag_us")}
        self.watcher = None  # liu.ml.inference.ModelWatcher when the plan names models
        self.predictions = None  # liu.ml.predictions.PredictionWriter when there is a database

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
        self._a[self._idx["lag_us"]] = lag // 1000
        self._publish()

    def _control(self, msg) -> None:
        if isinstance(msg, Start):
            self.clock = Clock(msg.clock)
        elif isinstance(msg, Assign):
            self.runner.assign(msg.symbols, msg.strategies)
        elif isinstance(msg, Stop):
            self._stop = msg

    def _publish(self) -> None:
        a, idx, c = self._a, self._idx, self.runner.counts
        for name in _COUNTS:
            a[idx[name]] = c[name]

    async def _tick(self) -> None:
        """Housekeeping every 250 ms: close quiet symbols' bars (live only), save keystores,
        write predictions, follow model promotions."""
        while True:
            await asyncio.sleep(0.25)
            if self.clock is not None and self.clock.realtime:
                await self.runner.flush_bars(self.clock.now_ns())
            await self._save_keystores()
            if self.predictions is not None:
                # Shielded: a Stop cancels this task, and a COPY cut off mid-way would lose or repeat rows;
                # the final close() waits for it (same lock) and writes the rest.
                await asyncio.shield(self.predictions.flush())
            if self.watcher is not None:
                await self.watcher.poll()

    async def _save_keystores(self) -> None:
        if self.setup.dsn is None:
            return
        for name, ks in self.keystores.items():
            items = ks.take_dirty()
            if items:
                await save_keystore(self.setup.dsn, name, items)

    def report(self) -> ConsumerReport:
        c = self.runner.counts
        return ConsumerReport(
            index=self.setup.index,
            received=c["received"],
            processed=c["processed"],
            stale=c["stale"],
            malformed=c["malformed"],
            strategy_errors=c["strategy_errors"],
            orders=c["orders"],
            rejected=c["rejected"],
            symbols=sorted(self.runner.features.history.keys() | self.runner.last_price.keys()),
            strategies=self._strategy_report(),
            fills=[dataclasses.asdict(f) for f in self.runner.fill_log],
        )

    def _strategy_report(self) -> dict[str, dict]:
        """The runner's per-strategy rows; with models, each row also gets its models' scoring counts."""
        rows = self.runner.report()
        scorer = self._scorer()
        if scorer is not None:
            stats = scorer.stats()
            for label, row in rows.items():
                names = self.runner.slots[label].ctx.models
                if names:
                    row["models"] = {n: stats[n] for n in names}
        return rows

    def _scorer(self):
        from liu.ml.inference import scorer_of  # only plans with models pay for onnxruntime

        return scorer_of(self.runner) if self.runner.bar_hooks else None

    def log_models(self) -> None:
        scorer = self._scorer()
        if scorer is None:
            return
        for name, st in scorer.stats().items():
            log.info(
                "model %s: %d bars, %d warming up, scored per version %s, %d errors, refused %s",
                name,
                st["bars"],
                st["warming"],
                st["scored"],
                st["errors"],
                sorted(st["refused"]) or "none",
            )


def build_runner(
    plan: TradePlan,
    account: Account,
    keystores: dict[str, Keystore],
    *,
    order_prefix: str,
    sink=None,
    not_shortable: tuple[str, ...] = (),
    stale_after_ns: int | None = None,
    models: list | None = None,
    predictions=None,
) -> StrategyRunner:
    """One shard's runner: a paper broker on `account` and the plan's strategies (and their models).

    The consumers and the backtester both build their runner here, so the two
    run the same strategies through the same broker with the same settings,
    and score the same models at the same bar closes. `models` are the plan's
    models already loaded (`liu.ml.inference.load_plan_models`, which asks the
    registry for serving versions); without them every model must be pinned.
    `predictions` receives every model output (a `PredictionWriter`).
    """
    b = plan.broker
    broker = PaperBroker(
        account, b.fee_per_share, b.fee_bps, b.slippage_bps, (*b.not_shortable, *not_shortable)
    )
    runner = StrategyRunner(
        broker,
        bars_from_trades=plan.source.bars == "trades",
        order_prefix=order_prefix,
        sink=sink,
        stale_after_ns=stale_after_ns,
        portfolio_interval_ns=int(plan.session.portfolio_interval * 1e9),
    )
    for sp in plan.strategies:
        strategy = instantiate(plan.path(sp.file), sp.class_, Strategy, sp.label, sp.config)
        runner.add_strategy(
            strategy, keystores.setdefault(sp.label, Keystore()), (sp.schedule.start, sp.schedule.end)
        )
    if models is not None or any(sp.models for sp in plan.strategies):
        from liu.ml.inference import attach_models, load_plan_models_sync

        attach_models(runner, models if models is not None else load_plan_models_sync(plan), predictions)
    return runner


def consumer_main(setup: ConsumerSetup, channel: Connection, results: Connection) -> None:
    """Process entry point."""
    import uvloop

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process coordinates shutdown
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s consumer-{setup.index} %(levelname)s %(name)s: %(message)s"
    )

    async def main() -> None:
        keystores: dict[str, Keystore] = {}
        writer = predictions = models = None
        if setup.dsn is not None:
            for sp in setup.plan.strategies:
                keystores[sp.label] = Keystore(await load_keystore(setup.dsn, sp.label))
            writer = await TradeWriter.open(setup.dsn, setup.batch_id, setup.run_ids)
        if any(sp.models for sp in setup.plan.strategies):
            from liu.ml.inference import load_plan_models
            from liu.ml.predictions import PredictionWriter

            # The daemon checked the specs' estimators already; a consumer never imports scikit-learn.
            models = await load_plan_models(setup.plan, setup.dsn, features_only=True)
            for pm in models:
                log.info("model %s: serving version %d (%s)", pm.name, pm.loaded.version, pm.loaded.path)
            if setup.dsn is not None:
                predictions = await PredictionWriter.open(setup.dsn, setup.batch_id)
        runner = build_runner(
            setup.plan,
            setup.account,
            keystores,
            order_prefix=f"{setup.batch_id[:8]}-{setup.index}-",
            sink=writer,
            not_shortable=setup.not_shortable,
            stale_after_ns=int(setup.plan.consumers.stale_after * 1e9),
            models=models,
            predictions=predictions,
        )
        gc.freeze()  # long-lived objects from imports and set-up: keep full collections short
        consumer = Consumer(setup, runner, keystores)
        results.send(("ready", setup.index))  # the daemon starts the clock once every consumer is here
        consumer.predictions = predictions
        if models:
            from liu.ml.inference import ModelWatcher, scorer_of

            consumer.watcher = ModelWatcher(scorer_of(runner), models, setup.dsn)
            await consumer.watcher.start()
        reader = ChannelReader(channel, consumer.on_frame, consumer.on_eof)
        try:
            await consumer.run(reader)
        finally:
            consumer.log_models()
            if consumer.watcher is not None:
                await consumer.watcher.close()
            if predictions is not None:
                try:
                    await predictions.close()
                except Exception:  # still report; the rows' loss is logged
                    log.exception("final prediction flush failed")
            if writer is not None:
                try:
                    await consumer._save_keystores()
                    await writer.close()
                except Exception:  # still report what happened; the runs get closed by the main process
                    log.exception("final database flush failed")
            results.send(consumer.report())

    uvloop.run(main())
