"""The engine's assembly: the one runner factory, and the consumer process built on it.

The daemon's consumers and the backtester both build their runner with
`build_runner`, so the two run the same strategies through the same broker,
risk checks and settings, and score the same models at the same bar closes.
`consumer_main` is the consumer process's entry point: it opens what the
process needs (database writers, keystores, models), builds the runner and
runs a `liu.consumer.Consumer` around it.

Both sit in the top layer because they wire the optional parts in: the ML
scorer (`liu.ml`, imported only when the plan names models) plugs into the
runner as a `liu.hooks.ModelHook`, so the core never imports `liu.ml`.
"""

from __future__ import annotations

import collections
import gc
import logging
import signal
from multiprocessing.connection import Connection
from typing import Any

from liu.brokers.account import Account
from liu.brokers.paper import PaperBroker
from liu.consumer import LIFE_ORDERS, REPORT_FILLS, Consumer, ConsumerSetup
from liu.corporate import CorporateAction
from liu.messages import ConsumerReady
from liu.plan import TradePlan
from liu.plugins import instantiate
from liu.risk import RiskManager
from liu.runner import Keystore, StrategyRunner
from liu.shard import shard_of
from liu.store import TradeWriter, load_keystore
from liu.store.account_state import PaperAccount, load_session
from liu.store.spool import spool_dir
from liu.strategy import Strategy
from liu.ticks import TickFilter
from liu.transport import ChannelReader

log = logging.getLogger(__name__)
KEEP_BARS = 20_000  # bars of history per symbol in a daemon's consumer (two weeks of crypto minutes)


def build_runner(
    plan: TradePlan,
    account: Account,
    keystores: dict[str, Keystore],
    *,
    order_prefix: str,
    slot: int = 0,
    sink: Any = None,
    not_shortable: tuple[str, ...] = (),
    stale_after_ns: int | None = None,
    models: list | None = None,
    predictions: Any = None,
    persist: bool = False,
    actions: tuple[CorporateAction, ...] = (),
    gateway: Connection | None = None,
) -> StrategyRunner:
    """One shard's runner: a paper broker and risk manager on `account`, the plan's strategies and models.

    `slot` is this process's place in the shared account (the consumer index; 0
    in a backtest). `models` are the plan's models already loaded
    (`liu.ml.inference.load_plan_models`, which asks the registry for serving
    versions); without them every model must be pinned. `predictions`
    receives every model output (a `PredictionWriter`). `persist`: the
    paper account lives across sessions (its gtc orders outlive this one).
    `actions` are the splits and dividends of data replayed raw (`liu.corporate`). `gateway`: the pipe
    to the Alpaca execution gateway; with `[broker] kind = "alpaca"` the runner trades through it (without
    one, as in a backtest, the paper broker stands in).
    """
    # The shared account is sized when it is made, in the main process: say so here, not as an IndexError.
    if slot >= account.slots:
        raise ValueError(
            f"build_runner: slot {slot}, but the account has {account.slots} (Account(slots=...))"
        )
    if plan.risk.max_orders_per_minute is not None and account.strategies < len(plan.strategies):
        raise ValueError(
            f"build_runner: the account counts orders of {account.strategies} strategies, the plan has "
            f"{len(plan.strategies)} (Account(strategies=len(plan.strategies)))"
        )
    b = plan.broker
    broker: Any
    if b.kind == "alpaca" and gateway is not None:
        from liu.brokers.alpaca.broker import AlpacaBroker

        broker = AlpacaBroker(gateway.send, account, (*b.not_shortable, *not_shortable))
    else:
        broker = PaperBroker(
            account,
            b.fee_per_share,
            b.fee_bps,
            b.slippage_bps,
            (*b.not_shortable, *not_shortable),
            b.max_participation,
            persist=persist,
            slot=slot,
        )
    risk = RiskManager(plan.risk, account, slot, {sp.label: i for i, sp in enumerate(plan.strategies)})
    tick_options = plan.source.bad_ticks.filter_options()
    runner = StrategyRunner(
        broker,
        bars_from_trades=plan.source.bars == "trades",
        order_prefix=order_prefix,
        sink=sink,
        stale_after_ns=stale_after_ns,
        portfolio_interval_ns=int(plan.session.portfolio_interval * 1e9),
        risk=risk,
        account_slot=slot,
        ticks=TickFilter(**tick_options) if tick_options is not None else None,
        actions=actions,
    )
    for sp in plan.strategies:
        strategy = instantiate(plan.path(sp.file), sp.class_, Strategy, sp.label, sp.config)
        runner.add_strategy(
            strategy, keystores.setdefault(sp.label, Keystore()), (sp.schedule.start, sp.schedule.end)
        )
    if models is not None or any(sp.models for sp in plan.strategies):
        from liu.ml.inference import attach_models, load_plan_models_sync  # only plans with models pay for it

        attach_models(runner, models if models is not None else load_plan_models_sync(plan), predictions)
    return runner


def restore_account(runner: StrategyRunner, account: PaperAccount, index: int, consumers: int) -> None:
    """Continue the persisted paper account in this consumer: the positions and open orders of its
    symbols (the shard `shard_of` gives it) and of the plan's strategies.

    Those of strategies no longer in the plan stay in the database, untouched, for a later session.
    """
    mine = [k for k in account.positions if k[0] in runner.slots and shard_of(k[1], consumers) == index]
    orders = [
        o for o in account.orders if o.strategy in runner.slots and shard_of(o.symbol, consumers) == index
    ]
    away = {k[0] for k in account.positions} - runner.slots.keys()
    if away and index == 0:
        log.warning(
            "paper account: positions of strategies not in this plan stay as they are: %s", sorted(away)
        )
    updates = runner.broker.restore(  # type: ignore[attr-defined]
        {k: account.positions[k] for k in mine}, orders, account.prices, runner.now
    )
    runner.desk.record(updates)  # orders that could not be restored: cancelled, with the reason
    runner.desk.publish()
    if mine or orders:
        log.info(
            "paper account: %d positions and %d open orders restored%s",
            len(mine),
            len(orders) - len(updates),
            f", {len(updates)} orders could not be (cancelled)" if updates else "",
        )


async def _gateway_first(conn: Connection, timeout: float = 300.0) -> Any:
    """The gateway's first message on this consumer's pipe: its `Restore`."""
    import asyncio

    if not await asyncio.to_thread(conn.poll, timeout):
        raise RuntimeError(f"the Alpaca gateway sent nothing within {timeout:.0f}s")
    try:
        return conn.recv()
    except EOFError:
        raise RuntimeError("the Alpaca gateway stopped before reconciling (its log says why)") from None


def consumer_main(setup: ConsumerSetup, channel: Connection, results: Connection) -> None:
    """Consumer process entry: build the runner, say `ConsumerReady`, run; send the `ConsumerReport` at exit.

    `results` is duplex: the main process answers on it with a `NewChannel` when it restarts the producer.
    """
    import uvloop

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process coordinates shutdown
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s consumer-{setup.index} %(levelname)s %(name)s: %(message)s"
    )

    async def main() -> None:
        keystores: dict[str, Keystore] = {}
        writer = predictions = models = scorer = account = None
        if setup.dsn is not None:
            for sp in setup.plan.strategies:
                keystores[sp.label] = Keystore(await load_keystore(setup.dsn, sp.label))
            state_dir = setup.plan.path(setup.plan.database.data_dir).parent
            writer = await TradeWriter.open(
                setup.dsn,
                setup.batch_id,
                setup.run_ids,
                spool_dir=spool_dir(state_dir),
                name=f"consumer-{setup.index}",
            )
            backlog = setup.stats.consumer_index(setup.index, "db_backlog")
            writer.on_backlog = lambda n: setup.stats.array.__setitem__(backlog, n)
            # None: the account starts fresh. A restarted consumer continues the session's account as the
            # database has it (its rows, and those its dead predecessor left in the spool, written above).
            account = await load_session(setup.dsn, setup.batch_id, restarted=setup.life > 0)
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
            # Alpaca: the full batch id, so a client order id is unique for ever (Alpaca refuses a reused one)
            order_prefix=f"{setup.batch_id if setup.gateway is not None else setup.batch_id[:8]}-{setup.index}-",
            slot=setup.index,
            sink=writer,
            not_shortable=setup.not_shortable,
            stale_after_ns=int(setup.plan.consumers.stale_after * 1e9),
            models=models,
            predictions=predictions,
            persist=account is not None and account.persist,
            actions=setup.actions,
            gateway=setup.gateway,
        )
        if setup.gateway is not None:  # restart reconciliation: before any order, as the gateway matched them
            restore = await _gateway_first(setup.gateway)
            runner.broker.restore(restore)  # type: ignore[attr-defined]
            runner.desk.publish()
        if account is not None:
            restore_account(runner, account, setup.index, setup.stats.consumers)
        # A session's memory must not grow with its length: the report keeps the last fills (the database has
        # all), each symbol's bar history the last KEEP_BARS bars.
        runner.desk.fill_log = collections.deque(maxlen=REPORT_FILLS)
        runner.features.keep_bars = KEEP_BARS
        if setup.life:  # supervision restarted this consumer: its counts go on, its order ids never repeat
            runner.counts.update(setup.carry)
            runner.desk.number_from(setup.life * LIFE_ORDERS)
        if models:
            from liu.ml.inference import scorer_of

            scorer = scorer_of(runner)
        gc.freeze()  # long-lived objects from imports and set-up: keep full collections short
        consumer = Consumer(setup, runner, keystores, models=scorer)
        consumer.answer = results.send  # answers to CancelOrder, beside ConsumerReady / ConsumerReport
        results.send(ConsumerReady(setup.index))  # the daemon starts the clock once every consumer is here
        consumer.predictions = predictions
        if models:
            from liu.ml.inference import ModelWatcher

            consumer.watcher = ModelWatcher(scorer, models, setup.dsn)
            await consumer.watcher.start()
        if results.readable:  # the daemon's duplex pipe: a restarted producer's channel, or its own stop
            consumer.listen(results)
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
                try:  # first: rows the database cannot take now go to the spool, not lost
                    await writer.close()
                except Exception:  # still report what happened; the runs get closed by the main process
                    log.exception("final database flush failed")
                await consumer.save_keystores()  # logs (once) when the database is away
            results.send(consumer.report())

    uvloop.run(main())
