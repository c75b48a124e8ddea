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

import gc
import logging
import signal
from multiprocessing.connection import Connection
from typing import Any

from liu.brokers.account import Account
from liu.brokers.paper import PaperBroker
from liu.consumer import Consumer, ConsumerSetup
from liu.messages import ConsumerReady
from liu.plan import TradePlan
from liu.plugins import instantiate
from liu.risk import RiskManager
from liu.runner import Keystore, StrategyRunner
from liu.store import TradeWriter, load_keystore
from liu.strategy import Strategy
from liu.transport import ChannelReader

log = logging.getLogger(__name__)


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
) -> StrategyRunner:
    """One shard's runner: a paper broker and risk manager on `account`, the plan's strategies and models.

    `slot` is this process's place in the shared account (the consumer index; 0
    in a backtest). `models` are the plan's models already loaded
    (`liu.ml.inference.load_plan_models`, which asks the registry for serving
    versions); without them every model must be pinned. `predictions`
    receives every model output (a `PredictionWriter`).
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
    broker = PaperBroker(
        account,
        b.fee_per_share,
        b.fee_bps,
        b.slippage_bps,
        (*b.not_shortable, *not_shortable),
        b.max_participation,
    )
    risk = RiskManager(plan.risk, account, slot, {sp.label: i for i, sp in enumerate(plan.strategies)})
    runner = StrategyRunner(
        broker,
        bars_from_trades=plan.source.bars == "trades",
        order_prefix=order_prefix,
        sink=sink,
        stale_after_ns=stale_after_ns,
        portfolio_interval_ns=int(plan.session.portfolio_interval * 1e9),
        risk=risk,
        account_slot=slot,
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


def consumer_main(setup: ConsumerSetup, channel: Connection, results: Connection) -> None:
    """Consumer process entry: build the runner, say `ConsumerReady`, run; send the `ConsumerReport` at exit."""
    import uvloop

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process coordinates shutdown
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s consumer-{setup.index} %(levelname)s %(name)s: %(message)s"
    )

    async def main() -> None:
        keystores: dict[str, Keystore] = {}
        writer = predictions = models = scorer = None
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
            slot=setup.index,
            sink=writer,
            not_shortable=setup.not_shortable,
            stale_after_ns=int(setup.plan.consumers.stale_after * 1e9),
            models=models,
            predictions=predictions,
        )
        if models:
            from liu.ml.inference import scorer_of

            scorer = scorer_of(runner)
        gc.freeze()  # long-lived objects from imports and set-up: keep full collections short
        consumer = Consumer(setup, runner, keystores, models=scorer)
        results.send(ConsumerReady(setup.index))  # the daemon starts the clock once every consumer is here
        consumer.predictions = predictions
        if models:
            from liu.ml.inference import ModelWatcher

            consumer.watcher = ModelWatcher(scorer, models, setup.dsn)
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
                    await consumer.save_keystores()
                    await writer.close()
                except Exception:  # still report what happened; the runs get closed by the main process
                    log.exception("final database flush failed")
            results.send(consumer.report())

    uvloop.run(main())
