"""The backtester: the plan's scanners and strategies over recorded data, in one process, in time order.

It is the daemon's event path without the sockets and processes. The runner
comes from `liu.engine.build_runner` (the same broker, fill model, risk checks
and settings as a consumer), the events come from the same feed the
market-data server would replay, decoded by the producer's own decode
(`liu.sources.protocol.wire_event`) into the same wire tuples. Scanners run on
their recurrence in data time. So a strategy sees in a backtest exactly the
events, in exactly the order, that it sees live.

`run_backtest` is a plain function returning a `BacktestResult`, so an
optimizer or walk-forward driver can call it in a loop; `trader backtest`
wraps it with progress, storage and the report.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from msgpack import unpackb
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from liu.brokers.account import Account
from liu.clock import NS, ClockSpec, FakeClock
from liu.engine import build_runner
from liu.errors import ConfigError
from liu.events import BAR, MALFORMED, Fill, Order
from liu.plan import TradePlan
from liu.runner import Keystore, StrategyRunner
from liu.scanner import ScannerRunner, load_scanners, symbol_infos
from liu.sources.feeds import Feed, feed_config, make_feed, sim_epoch
from liu.sources.protocol import encode, wire_event

log = logging.getLogger(__name__)


@dataclass
class BacktestResult:
    """What a backtest did: every order and fill, the equity curve, the runner's counts (`RUNNER_COUNTERS`)
    and the risk manager's refusals per rule."""

    batch_id: str
    start_cash: float
    fills: list[Fill]
    orders: list[Order]
    equity_ts: np.ndarray  # int64 ns data time: the end of each minute that had events
    equity: np.ndarray  # cash + positions marked at the last price, at those times
    last_price: dict[str, float]
    counts: dict[str, int]
    strategies: dict[str, dict]
    risk_refused: dict[str, int] = field(default_factory=dict)
    bad_ticks: dict[str, dict[str, int]] = field(default_factory=dict)  # symbol → prints dropped (liu.ticks)
    run_ids: dict[str, int] = field(default_factory=dict)
    report: Any = None  # liu.analysis Report, when the batch was stored and analysed

    @property
    def final_equity(self) -> float:
        return float(self.equity[-1]) if len(self.equity) else self.start_cash


class _RecordingSink:
    """Keeps every order the runner placed, as of its latest update (and forwards to the database writer)."""

    def __init__(self, inner: Any = None) -> None:
        self.inner = inner
        self._orders: dict[str, Order] = {}  # client order id → latest snapshot, in placing order

    @property
    def orders(self) -> list[Order]:
        return list(self._orders.values())

    def add_order(self, order: Order) -> None:
        self._orders[order.client_order_id] = order
        if self.inner is not None:
            self.inner.add_order(order)

    def update_order(self, order: Order) -> None:
        self._orders[order.client_order_id] = order
        if self.inner is not None:
            self.inner.update_order(order)

    def add_fill(self, fill: Fill) -> None:
        if self.inner is not None:
            self.inner.add_fill(fill)


# -- event sources ---------------------------------------------------------------------------


def replay_config(plan: TradePlan, data: Path | None, start: Any, end: Any) -> dict[str, Any]:
    """The feed config the daemon's server would use, with the backtest's file and date range."""
    if data is not None:
        if not data.exists():
            raise ConfigError(f"backtest --data {data}: file not found (expected a CSV or Parquet file)")
        symbols = plan.source.symbol_list
        cfg: dict[str, Any] = {
            "kind": "replay",
            "path": str(data),
            "symbols": symbols,
            "adjustment": plan.source.adjustment,
        }
    else:
        cfg = feed_config(plan)
    if cfg["kind"] == "replay":
        cfg["speed"] = None  # as fast as the runner takes it
        cfg["start"] = start if start is not None else cfg.get("start")
        cfg["end"] = end if end is not None else cfg.get("end")
    return cfg


async def _feed_batches(feed: Feed, clock: Any, end_ns: int | None) -> AsyncIterator[list[tuple]]:
    """The feed's frames as the producer decodes them (`wire_event`), without sharding or receive times.

    Each frame goes through the wire encoding and back (`encode`, then `unpackb(timestamp=2)` as in the
    producer), so the tuples are bit-for-bit what a consumer receives from the server: malformed
    messages of a symbol become MALFORMED events, unroutable and control messages are dropped.
    """
    decode = wire_event
    async for frame in feed.frames(clock):
        batch = []
        for m in unpackb(encode(frame), timestamp=2):
            ev = decode(m, 0)
            if ev:
                batch.append(ev)
        if end_ns is not None and batch and batch[-1][2] >= end_ns:
            batch = [ev for ev in batch if ev[2] < end_ns]
            if batch:
                yield batch
            return
        if batch:
            yield batch


class _SimClock(FakeClock):
    """Data time for the simulator in a backtest: advances one frame's worth of market time per frame."""

    def __init__(self, epoch: int, speed: float, step_ns: int) -> None:
        super().__init__(epoch)
        self.spec = ClockSpec(epoch, 0, speed)
        self.step_ns = step_ns

    def now_ns(self) -> int:
        now = self.now
        self.now += self.step_ns
        return now


def _open_feed(plan: TradePlan, data: Path | None, start: Any, end: Any) -> tuple[Feed, Any, int | None]:
    """The feed, the clock to pace it with, and where to stop (simulator: the session's market time)."""
    cfg = replay_config(plan, data, start, end)
    if cfg["kind"] == "sim":
        cfg["rate"] = None  # unpaced: data time comes from the stepped clock below
    try:
        feed = make_feed(cfg)
    except (ValueError, KeyError) as e:
        raise ConfigError(f"backtest data {cfg.get('path')}: {e}") from None
    if cfg["kind"] == "replay":
        return feed, FakeClock(feed.first_ts() or 0), None
    speed = plan.session.clock_speed or 1.0
    epoch = sim_epoch(plan)
    step = int(plan.source.batch / plan.source.rate * speed * NS)
    return feed, _SimClock(epoch, speed, step), epoch + int(plan.session.seconds * speed * NS)


def _universe_of(batches: Sequence[Sequence[tuple]]) -> dict[str, dict]:
    """Each symbol's first price and mean volume (bars), as a feed's universe would give."""
    first: dict[str, float] = {}
    volume: dict[str, list[float]] = {}
    for batch in batches:
        for ev in batch:
            if ev[0] == BAR:
                first.setdefault(ev[1], ev[6])
                volume.setdefault(ev[1], []).append(ev[7])
            elif ev[0] != MALFORMED:
                first.setdefault(ev[1], ev[3])
    return {
        s: {"price": p, "avg_volume": float(np.mean(volume[s])) if s in volume else 0.0, "shortable": True}
        for s, p in first.items()
    }


async def _iter_sync(batches: Iterable[Sequence[tuple]]) -> AsyncIterator[Sequence[tuple]]:
    for batch in batches:
        yield batch


# -- the run -----------------------------------------------------------------------------------


async def backtest(
    plan: TradePlan,
    *,
    start: Any = None,
    end: Any = None,
    data: Path | None = None,
    from_db: bool = False,
    events: Iterable[Sequence[tuple]] | None = None,
    dsn: str | None = None,
    progress: Console | None = None,
    batch_id: str | None = None,
) -> BacktestResult:
    """Run the plan over the data; see `run_backtest` for the options."""
    batch_id = batch_id or str(uuid.uuid4())
    universe: dict[str, dict] | None = None
    total: int | None = None
    actions: tuple = ()  # splits and dividends a raw replay leaves to the runner (liu.corporate)
    if events is not None:
        if isinstance(events, Sequence):  # known up front: scanners get a universe, progress a total
            universe = _universe_of(events)
            total = sum(len(b) for b in events)
        source: AsyncIterator[Sequence[tuple]] = _iter_sync(events)
    elif from_db:
        if dsn is None:
            raise ConfigError("backtest --from-db needs a database (the plan's [database])")
        from liu.store.bars import bar_batches, bars_universe

        symbols = plan.source.symbol_list
        universe = await bars_universe(dsn, symbols, start, end)
        if not universe:
            raise ConfigError("backtest --from-db: no bars in stock_ohlc for the plan's symbols and dates")
        source = bar_batches(dsn, list(universe), start, end)
    else:
        feed, clock, end_ns = _open_feed(plan, data, start, end)
        universe = feed.universe()
        total = len(feed) if hasattr(feed, "__len__") else None
        actions = tuple(feed.actions()) if hasattr(feed, "actions") else ()
        source = _feed_batches(feed, clock, end_ns)

    writer = predictions = models = None
    run_ids: dict[str, int] = {}
    if dsn is not None:
        from liu.store import TradeWriter, create_runs, record_account

        if any(s.models for s in plan.strategies):  # the registry's serving versions, as the consumers load
            from liu.ml.inference import load_plan_models
            from liu.ml.predictions import PredictionWriter

            models = await load_plan_models(plan, dsn)
            predictions = await PredictionWriter.open(dsn, batch_id)
        entries = [(s.label, 0, dict(s.config)) for s in plan.strategies]
        ids = await create_runs(dsn, batch_id, "BACKTEST", entries)
        run_ids = {name: i for (name, _), i in ids.items()}
        await record_account(dsn, batch_id, plan.broker.cash, {"backtest": True})
        writer = await TradeWriter.open(dsn, batch_id, run_ids)

    account = Account(plan.broker.cash, strategies=len(plan.strategies))
    sink = _RecordingSink(writer)
    keystores: dict[str, Keystore] = {}
    not_shortable = tuple(s for s, v in (universe or {}).items() if not v.get("shortable", True))
    runner = build_runner(
        plan,
        account,
        keystores,
        order_prefix=f"{batch_id[:8]}-bt-",
        sink=sink,
        not_shortable=not_shortable,
        models=models,
        predictions=predictions,
        actions=actions,
    )
    scanners = ScannerRunner(load_scanners(plan), symbol_infos(universe or {}))
    reason = "backtest complete"
    try:
        store = (dsn, batch_id) if dsn is not None else None
        ts, eq = await _drive(
            runner, account, source, scanners, universe, total, progress, store, predictions
        )
    except BaseException as e:
        reason = f"error: {type(e).__name__}: {e}"
        raise
    finally:
        await runner.stop()
        if dsn is not None:
            from liu.store import close_runs

            if writer is not None:
                await writer.close()
            if predictions is not None:
                await predictions.close()
            await close_runs(dsn, batch_id, reason)
    result = BacktestResult(
        batch_id=batch_id,
        start_cash=plan.broker.cash,
        fills=runner.fill_log,
        orders=sink.orders,
        equity_ts=ts,
        equity=eq,
        last_price=dict(runner.last_price),
        counts=dict(runner.counts),
        strategies=runner.report(),
        risk_refused=dict(runner.risk.refused) if runner.risk is not None else {},
        bad_ticks=runner.ticks.report() if runner.ticks is not None else {},
        run_ids=run_ids,
    )
    if dsn is not None:
        from liu.analysis.batch import analyse_batch
        from liu.analysis.report import closes_of

        result.report = await analyse_batch(
            dsn,
            batch_id,
            start_cash=result.start_cash,
            equity=(result.equity_ts, result.equity),
            prices=closes_of(runner.features.history),  # the page draws the fills on the bars the run saw
        )
        result.report.env = "BACKTEST"
    return result


async def _drive(
    runner: StrategyRunner,
    account: Account,
    source: AsyncIterator[Sequence[tuple]],
    scanners: ScannerRunner,
    universe: dict[str, dict] | None,
    total: int | None,
    console: Console | None,
    store: tuple[str, str] | None,
    predictions: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Feed the runner batch by batch (split where a scanner is due); sample equity at each minute's end."""
    await runner.start()
    if not scanners.scanners and universe is not None:
        runner.assign(universe)  # no scanner: every strategy trades the whole universe (as in the daemon)
    assigned: set[str] = set(universe or ())
    eq_ts: list[int] = []
    eq: list[float] = []
    positions = runner.broker.all_positions()
    last = runner.last_price

    def sample(minute_end: int) -> None:
        total = account.cash
        for key, pos in positions.items():
            if pos.qty:
                total += pos.qty * last.get(key[1], pos.avg_price)
        eq_ts.append(minute_end)
        eq.append(total)

    runner.sample_minutes(sample)
    next_scan = scanners.next_due()
    bar = None
    if console is not None:
        bar = Progress(
            TextColumn("backtest"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("events · {task.fields[fills]} fills"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        task = bar.add_task("backtest", total=total, fills=0)
        bar.start()
    process = runner.process
    done = 0
    try:
        async for batch in source:
            if universe is None and not scanners.scanners:  # events of unknown symbols: route as they come
                new = {ev[1] for ev in batch} - assigned
                if new:
                    assigned |= new
                    runner.assign(sorted(new))
            i = 0
            while next_scan is not None and batch and batch[-1][2] >= next_scan:
                j = next(k for k in range(i, len(batch)) if batch[k][2] >= next_scan)
                if j > i:
                    await process(batch[i:j])
                next_scan = await _scan(scanners, runner, batch[j][2], store)
                i = j
            await process(batch[i:] if i else batch)
            if predictions is not None and predictions.pending >= 50_000:
                await predictions.flush()  # a long backtest does not hold every prediction in memory
            done += len(batch)
            if bar is not None:
                bar.update(task, completed=done, fills=runner.counts["fills"])
        runner.end_minute()
    finally:
        if bar is not None:
            bar.stop()
    return np.asarray(eq_ts, dtype=np.int64), np.asarray(eq, dtype=np.float64)


async def _scan(
    scanners: ScannerRunner, runner: StrategyRunner, now: int, store: tuple[str, str] | None
) -> int | None:
    """Run the scanners that are due and route what they picked; return when the next one is due."""
    for sched, symbols in await scanners.run_due(now):
        runner.assign(symbols, sched.targets)
        if store is not None:
            from liu.store import add_trending

            await add_trending(store[0], store[1], sched.scanner.name, symbols)
    return scanners.next_due()


def run_backtest(plan: TradePlan, **options: Any) -> BacktestResult:
    """Backtest `plan` and return what happened (`backtest`'s keyword options, from sync code).

    Data: `events` (batches of wire tuples, in time order), else bars stored in
    PostgreSQL (`from_db`), else the file `data`, else the plan's own source
    (replay file, or the simulator for the session's market time). `start` and
    `end` bound a replay (New York dates, `end` inclusive). With `dsn`, the
    batch is stored (algo_run rows with env BACKTEST, orders, fills) and
    analysed (gain_loss, trade_analysis; `result.report`).
    """
    return asyncio.run(backtest(plan, **options))


def backtest_command(args: Any, console: Console) -> int:
    """`trader backtest`: run on the plan's database, store the batch, print and write the report."""
    from liu.plan import load_plan
    from liu.store import plan_database

    plan = load_plan(args.plan)
    if not args.from_db:  # a missing data file: say so before starting anything
        replay_config(plan, args.data, args.start, args.end)
    with plan_database(plan) as dsn:
        result = run_backtest(
            plan,
            start=args.start,
            end=args.end,
            data=args.data,
            from_db=args.from_db,
            dsn=dsn,
            progress=console,
        )
    report = result.report
    report.print(console)
    out: Path = args.out / result.batch_id
    out.mkdir(parents=True, exist_ok=True)
    report.write_html(out / "report.html")
    report.write_png(out / "equity.png")
    if args.json is not None:
        report.write_json(args.json)
    c = result.counts
    refused = ", ".join(f"{rule} {n}" for rule, n in sorted(result.risk_refused.items()))
    console.print(
        f"backtest batch [cyan]{result.batch_id}[/]: {c['processed']} events, {c['orders']} orders "
        f"({c['rejected']} rejected{f': risk {refused}' if refused else ''}, {c['cancelled']} cancelled, "
        f"{c['expired']} expired), {c['fills']} fills; report in {out}/"
    )
    if result.bad_ticks:
        from liu.progress import bad_ticks_table

        console.print(bad_ticks_table(result.bad_ticks))
    return 0
