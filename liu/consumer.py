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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from liu.brokers.account import Account
from liu.clock import Clock
from liu.commands import CANCEL_REASON, CancelAnswer, CancelOrder
from liu.corporate import CorporateAction
from liu.events import BAR, Assign, Backfill, BarRevision, ConsumerReport, NewChannel, Start, Stop
from liu.hooks import ModelHook
from liu.plan import TradePlan
from liu.runner import Keystore, StrategyRunner
from liu.sources.alpaca.history import History, HistorySource, Loaded
from liu.stats import RUNNER_COUNTERS, SharedStats
from liu.store import save_keystore
from liu.transport import BATCH, EOF_MARK, ChannelReader, watch_connection

log = logging.getLogger(__name__)
# The report's counters: the runner's, except "fills" (the report's `fills_total`; `fills` carries the
# last REPORT_FILLS fills themselves, so a consumer's memory does not grow with the session).
REPORTED_COUNTERS = tuple(name for name in RUNNER_COUNTERS if name != "fills")
REPORT_FILLS = 10_000
_MAX_QUEUED = 64  # frames held in memory before reading pauses (the backlog then shows at the producer)
_LOADED = -1  # queue item: a history load finished (applied in order with the event batches)
_GATEWAY = -2  # queue item: a message from the Alpaca gateway (order updates, fills, account)
_RELEASE = 1000  # held events are handed to the runner in batches of this size
_STOP_WAIT = 3.0  # seconds a stopping consumer waits for history still loading
_MINUTE = 60_000_000_000
_SETTLE = 5.0  # seconds after a minute ends before its bar is asked for again (late prints settle)


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
    history: HistorySource | None = None  # live sources: where warm-up and gap back-fill load bars from
    actions: tuple[CorporateAction, ...] = ()  # splits and dividends of data replayed raw
    gateway: Any = None  # [broker] kind = "alpaca": this consumer's pipe to the execution gateway
    # A restarted consumer (the daemon's supervision): its counters so far, and which life this is (its
    # order numbers start at life × LIFE_ORDERS, so no id of an earlier life is used again).
    carry: dict[str, int] = field(default_factory=dict)
    life: int = 0


LIFE_ORDERS = 1_000_000_000


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
        self.answer: Callable[[CancelAnswer], None] | None = None  # replies to the main process
        self.models = models
        self.keystores: dict[str, Keystore] = {} if keystores is None else keystores
        self.clock: Clock | None = None
        self._queue: collections.deque = collections.deque()
        self._wake = asyncio.Event()
        self._stop: Stop | None = None
        self._eof = False
        self._reader: ChannelReader | None = None
        self.supervised = False  # `listen`ing to the main process: a closed channel waits for a new one
        stats, i = setup.stats, setup.index
        self._a = stats.array
        self._lag = stats.consumer_index(i, "lag_us")
        self._counters = [(stats.consumer_index(i, name), name) for name in RUNNER_COUNTERS]
        self.watcher: Any = None  # liu.ml.inference.ModelWatcher when the plan names models
        self.predictions: Any = None  # liu.ml.predictions.PredictionWriter when there is a database
        self.warmer = Warmer(self, History(setup.history) if setup.history is not None else None)
        self._keystore_failing = False  # a keystore save failed (the database is away): logged once

    def on_frame(self, kind: int, payload) -> None:
        self._queue.append((kind, payload))
        self._wake.set()
        if len(self._queue) > _MAX_QUEUED and self._reader is not None:
            self._reader.pause()

    def on_eof(self) -> None:
        self._eof = True
        self._wake.set()

    def listen(self, conn: Any) -> None:
        """Take messages from the main process on `conn`: a `NewChannel` (the producer was restarted),
        a `Stop` (the session ends while there is no producer to say so), its end (the main process is
        gone: stop). Until then a channel that closes without a `Stop` means the producer died."""
        self.supervised = True
        watch_connection(conn, self._on_main, asyncio.get_running_loop(), name="liu-consumer-main")

    def _on_main(self, msg: Any) -> None:
        if isinstance(msg, NewChannel):
            if self._reader is not None:
                self._reader.close()
            self._eof = False
            self._reader = ChannelReader(msg.conn, self.on_frame, self.on_eof)
            self._reader.resume()
            log.info("reading the restarted producer's channel")
        elif isinstance(msg, Stop) or msg is EOF_MARK:
            self._stop = self._stop or (msg if isinstance(msg, Stop) else Stop("main process exited"))
        self._wake.set()

    async def run(self, reader: ChannelReader) -> None:
        self._reader = reader
        reader.resume()
        waiting = False  # for the restarted producer's channel
        gateway = self.setup.gateway
        if gateway is not None:  # in the queue with the batches, so updates and events keep their order
            asyncio.get_running_loop().add_reader(gateway.fileno(), self._on_gateway)
        await self.runner.start()
        ticker = asyncio.create_task(self._tick())
        try:
            while True:
                if not self._queue:
                    if self._stop is not None or (self._eof and not self.supervised):
                        if self.warmer.pending():
                            await self.warmer.finish(_STOP_WAIT)
                            continue
                        break
                    if self._eof and not waiting:
                        log.warning("the producer's channel closed without a stop: waiting for its restart")
                    waiting = self._eof
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                kind, payload = self._queue.popleft()
                reader = self._reader
                if not reader.reading and len(self._queue) < _MAX_QUEUED // 2 and not self._eof:
                    reader.resume()
                if kind == BATCH:
                    await self._batch(payload)
                elif kind == _LOADED:
                    await self.warmer.apply(*payload)
                elif kind == _GATEWAY:
                    await self.runner.broker_updates(self.runner.broker.on_message(payload))  # type: ignore[attr-defined]
                elif isinstance(payload, CancelOrder):
                    await self._cancel(payload)
                else:
                    self._control(payload)
        finally:
            ticker.cancel()
            self.warmer.cancel_repairs()
            await self.runner.stop()
            self._publish()
            if gateway is not None:
                asyncio.get_running_loop().remove_reader(gateway.fileno())

    def _on_gateway(self) -> None:
        gateway = self.setup.gateway
        try:
            while gateway.poll():
                self._queue.append((_GATEWAY, gateway.recv()))
        except (EOFError, OSError):  # the gateway is gone: no more updates (the daemon reports why)
            asyncio.get_running_loop().remove_reader(gateway.fileno())
            log.error("the Alpaca gateway closed its pipe")
        self._wake.set()

    async def _batch(self, batch: tuple) -> None:
        if self.warmer.holding:  # symbols still loading history keep their events until it is in
            batch = self.warmer.hold(batch)
            if not batch:
                return
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
            self.warmer.warm(msg.symbols)
        elif isinstance(msg, Backfill):
            self.warmer.backfill(msg)
        elif isinstance(msg, BarRevision):
            self.warmer.revise(msg)
        elif isinstance(msg, Stop):
            self._stop = msg

    async def _cancel(self, msg: CancelOrder) -> None:
        """Cancel one order for the control channel (the dashboard's cancel button) and answer once."""
        runner, cid = self.runner, msg.client_order_id
        order = next((o for o in runner.desk.open_orders_all() if o.client_order_id == cid), None)
        if order is None:
            ok, text = (
                False,
                f"order {cid} is not open in consumer {self.setup.index} (filled, cancelled or unknown)",
            )
        else:
            ok = runner.desk.cancel(order, runner.now, CANCEL_REASON)
            text = f"cancelled {cid} ({order.side} {order.qty:g} {order.symbol} of {order.strategy})"
            await runner.deliver()  # the strategy hears it in on_order, as for its own ctx.cancel
        if self.answer is not None:
            self.answer(CancelAnswer(msg.request, cid, ok, text))

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
                try:
                    await save_keystore(self.setup.dsn, name, items)
                except Exception as exc:  # noqa: BLE001 - the database is away: the next tick tries again
                    ks.dirty.update(items)
                    if not self._keystore_failing:
                        log.error("keystore %s not saved (%s: %s); retrying", name, type(exc).__name__, exc)
                    self._keystore_failing = True
                    return
        self._keystore_failing = False

    def report(self) -> ConsumerReport:
        runner = self.runner
        c = runner.counts
        return ConsumerReport(
            index=self.setup.index,
            **{name: c[name] for name in REPORTED_COUNTERS},
            risk_refused=dict(runner.risk.refused) if runner.risk is not None else {},
            bad_ticks=runner.ticks.report() if runner.ticks is not None else {},
            symbols=sorted(runner.features.history.keys() | runner.last_price.keys()),
            strategies=self._strategy_report(),
            fills=[dataclasses.asdict(f) for f in runner.fill_log],
            fills_total=c["fills"],
            warmup=self.warmer.report(),
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


class Warmer:
    """History for one consumer's symbols: warm-up when a symbol arrives, back-fill after a gap.

    While a symbol's bars load (REST in a worker thread), its live events wait in `holding`; the loaded
    bars go into the runner's history, indicators and model features (`StrategyRunner.warm`), then the
    waiting events follow in order. So the first live bar a strategy sees has warm indicators, and a
    reconnect leaves no hole in bar history. A symbol whose history cannot be loaded says so once and
    warms up on live bars. Consumers of sources without history (sim, replay) never hold anything.
    """

    def __init__(self, consumer: Consumer, history: History | None) -> None:
        self.consumer = consumer
        self.history = history
        self.holding: dict[str, list] = {}
        self._known: set[str] = set()
        self._tasks: set[asyncio.Task] = set()
        self._repairs: set[asyncio.Task] = set()
        stats, i = consumer.setup.stats, consumer.setup.index
        self._a = stats.array
        self._i = {f: stats.consumer_index(i, f) for f in ("warmed", "warm_bars", "warm_failed")}
        self.symbols = 0
        self.bars = 0
        self.failed: dict[str, str] = {}
        self.seconds = 0.0
        self.backfills = 0
        self.filled_bars = 0
        self.unfilled: dict[str, str] = {}
        self.revised = 0
        self.superseded = 0  # held stream bars for minutes the history already had

    def pending(self) -> bool:
        return bool(self._tasks)

    # -- requests ---------------------------------------------------------------------------------
    def warm(self, symbols: tuple[str, ...]) -> None:
        if self.history is None:
            return
        new = [s for s in symbols if s not in self._known]
        if not new:
            return
        self._known.update(new)
        for s in new:
            self.holding.setdefault(s, [])
        self._start("warm", new, self.history.warm(new, time.time_ns()))

    def backfill(self, msg: Backfill) -> None:
        if self.history is None:
            return
        features = self.consumer.runner.features
        since: dict[str, int] = {}
        for s in msg.symbols:
            if s in self.holding or s not in self._known:
                continue  # still warming up: that load reaches up to now anyway
            # From the minute the gap began (seen only in part live), or an older hole in the bars.
            hist = features.history.get(s)
            last = int(hist.ts[-1]) + _MINUTE if hist is not None and hist.n else msg.since_ns
            since[s] = min(last, msg.since_ns)
        if not since:
            return
        self.backfills += 1
        for s in since:
            self.holding.setdefault(s, [])
        log.info(
            "back-filling %d symbols after a market-data gap (%s)", len(since), msg.reason or "reconnect"
        )
        self._start("fill", list(since), self.history.fill(since, time.time_ns()))

    def revise(self, msg: BarRevision) -> None:
        if self.consumer.runner.features.revise_bar(
            msg.symbol, msg.ts, msg.open, msg.high, msg.low, msg.close, msg.volume
        ):
            self.revised += 1

    def _repair_later(self, symbols: list[str], minute: int) -> None:
        """The minute the stream came back in was seen only in part live: once it is over, ask for its bar
        and revise the one built live."""

        async def load() -> Loaded:
            await asyncio.sleep(max(0.0, (minute + _MINUTE - time.time_ns()) / 1e9) + _SETTLE)
            assert self.history is not None
            return await self.history.fill(dict.fromkeys(symbols, minute), time.time_ns())

        self._start("repair", symbols, load())

    def _start(self, kind: str, symbols: list[str], load: Any) -> None:
        async def run() -> None:
            try:
                loaded = await load
            except asyncio.CancelledError:
                loaded = Loaded(failed=dict.fromkeys(symbols, "the session ended first"))
            except Exception as e:  # noqa: BLE001 - whatever failed, these symbols warm up live
                loaded = Loaded(failed=dict.fromkeys(symbols, f"{type(e).__name__}: {e}"))
            consumer = self.consumer
            consumer._queue.append((_LOADED, (kind, symbols, loaded)))
            consumer._wake.set()

        task = asyncio.get_running_loop().create_task(run())
        tasks = self._repairs if kind == "repair" else self._tasks  # a stop waits for loads, not repairs
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def cancel_repairs(self) -> None:
        for task in self._repairs:
            task.cancel()

    async def finish(self, timeout: float) -> None:
        """Stopping: give loads in flight `timeout` seconds, then let their symbols go on without."""
        tasks = list(self._tasks)
        _, late = await asyncio.wait(tasks, timeout=timeout)
        for t in late:
            t.cancel()
        if late:
            await asyncio.wait(late)

    # -- on the consumer's loop, in order with the event batches ----------------------------------
    def hold(self, batch: tuple) -> list:
        holding = self.holding
        keep = []
        for ev in batch:
            q = holding.get(ev[1])
            if q is None:
                keep.append(ev)
            else:
                q.append(ev)
        return keep

    async def apply(self, kind: str, symbols: list[str], loaded: Loaded) -> None:
        runner = self.consumer.runner
        if kind == "repair":
            self._revise(symbols, loaded, only_known=True)
            return
        added = 0
        if kind == "fill":  # bars the history has already (a minute seen in part live): revise them
            self._revise(symbols, loaded, only_known=False)
        for s in symbols:
            rows = loaded.bars.get(s)
            n = runner.warm(s, rows) if rows else 0
            added += n
            if kind == "warm":
                if n:
                    self.symbols += 1
                else:
                    reason = loaded.failed.get(s, "no bars returned")
                    self.failed[s] = reason
                    log.warning("%s: history not loaded (%s); its indicators warm up on live bars", s, reason)
            elif s in loaded.failed:
                self.unfilled[s] = loaded.failed[s]
                log.warning("%s: gap not back-filled (%s); bar history has a hole there", s, loaded.failed[s])
        if kind == "warm":
            self.bars += added
            self.seconds += loaded.seconds
            log.info(
                "warm-up: %d of %d symbols loaded, %d bars in %.2fs%s",
                sum(1 for s in symbols if s not in self.failed),
                len(symbols),
                added,
                loaded.seconds,
                f" ({len(loaded.from_db)} from stock_ohlc)" if loaded.from_db else "",
            )
        else:
            self.filled_bars += added
            log.info("back-fill: %d bars for %d symbols in %.2fs", added, len(symbols), loaded.seconds)
            self._repair_later(symbols, time.time_ns() // _MINUTE * _MINUTE)
        a, i = self._a, self._i
        a[i["warmed"]] = self.symbols
        a[i["warm_bars"]] = self.bars + self.filled_bars
        a[i["warm_failed"]] = len(self.failed)
        await self._release(symbols)

    def _revise(self, symbols: list[str], loaded: Loaded, only_known: bool) -> None:
        """Loaded bars of minutes the history has: overwrite them (indicators reopen on the result)."""
        features = self.consumer.runner.features
        for s in symbols:
            hist = features.history.get(s)
            last = hist.ts[-1] if hist is not None and hist.n else -1
            for row in loaded.bars.get(s, ()):
                if row[0] <= last and features.revise_bar(s, *row):
                    self.revised += 1
        if only_known and loaded.failed:
            log.info("the bar of the minute the stream came back in was not re-read: %s", loaded.failed)

    async def _release(self, symbols: list[str]) -> None:
        """Hand the symbols' held events to the runner, in arrival order."""
        held = []
        for s in symbols:
            held.extend(self.holding.pop(s, ()))
        if not held:
            return
        held.sort(key=lambda ev: ev[-1])  # receive time: the order they arrived in
        features = self.consumer.runner.features
        events = []
        superseded = 0
        for ev in held:
            if ev[0] == BAR:  # a stream bar for a minute history already has: revise, do not repeat
                hist = features.history.get(ev[1])
                if hist is not None and hist.n and ev[2] <= hist.ts[-1]:
                    features.revise_bar(ev[1], *ev[2:8])
                    superseded += 1
                    continue
            events.append(ev)
        if superseded:
            counts = self.consumer.runner.counts
            counts["received"] += superseded
            counts["processed"] += superseded
            self.superseded += superseded
        for i in range(0, len(events), _RELEASE):
            await self.consumer._batch(tuple(events[i : i + _RELEASE]))

    def report(self) -> dict[str, Any]:
        return {
            "symbols": self.symbols,
            "bars": self.bars,
            "failed": dict(sorted(self.failed.items())),
            "seconds": round(self.seconds, 3),
            "backfills": self.backfills,
            "filled_bars": self.filled_bars,
            "unfilled": dict(sorted(self.unfilled.items())),
            "revised_bars": self.revised,
            "superseded_bars": self.superseded,
        }
