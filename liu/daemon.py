"""The `trader` daemon: starts every part, supervises them, and ends the session cleanly.

Main process: database, market-data server (sim/replay), scanner runner,
progress and summary. Children: one producer and N consumers. Whatever ends
the session (its duration, the end of a replay, SIGINT/SIGTERM) goes through
the same shutdown: stop the producer, let consumers drain and flush, close the
`algo_run` rows with the reason, stop the servers.

Supervision: a consumer or the producer that dies is started again
(`[consumers] restarts`, `restart_backoff`). A restarted consumer gets a new
channel (`NewChannel` to the producer), its symbols and the clock again, and
continues its counters, positions, open orders and keystores from the
database; what was routed to it meanwhile is counted as lost. A restarted
producer hands each consumer its new channel through the consumer's result
pipe, and subscribes again. Past the limit, trading halts and the summary
says so.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import multiprocessing as mp
import os
import secrets
import signal
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from rich.console import Console
from rich.live import Live

from liu.alerts import SessionAlerts
from liu.analysis.batch import analyse_batch
from liu.analysis.report import Report
from liu.brokers.account import HALT_FAULT, Account
from liu.cancel import ConsumerCancel
from liu.clock import NS, Clock, ClockSpec
from liu.commands import CancelAnswer
from liu.consumer import REPORTED_COUNTERS, ConsumerSetup
from liu.control import AccountControl, ControlServer, control_path
from liu.corporate import CorporateAction
from liu.engine import consumer_main
from liu.errors import ConfigError
from liu.events import Assign, ConsumerReport, NewChannel, Start, Stop, Subscribe
from liu.logs import LogHub, session_logging
from liu.messages import (
    ConsumerReady,
    ProducerFailed,
    ProducerStopped,
    Reconnected,
    ServerFailed,
    ServerReady,
    ServerStopped,
    SourceEnded,
    Subscribed,
)
from liu.plan import TradePlan
from liu.plugins import instantiate
from liu.producer import producer_main
from liu.progress import db_backlog_text, merge_strategies, progress_table, summary_tables
from liu.scanner import ScannerRunner, ScheduledScanner, SymbolInfo, load_scanners, symbol_infos
from liu.sources.feeds import feed_config, sim_epoch
from liu.sources.replay import plan_actions
from liu.stats import RUNNER_COUNTERS, SharedStats
from liu.store import SessionLock, add_trending, create_runs, prepare_plan_database, redact_dsn
from liu.store.account_state import start_account
from liu.store.recovery import DatabaseGuard, Recovery, end_runs, recover
from liu.store.spool import spool_dir
from liu.strategy import Strategy
from liu.ticks import merge_reports
from liu.transport import EOF_MARK, watch_connection
from liu.watchdog import Watchdog

log = logging.getLogger("liu.daemon")
NY = ZoneInfo("America/New_York")


@dataclass
class Session:
    """What the main process tracks while the session runs."""

    batch_id: str
    consumers: int
    reason: str | None = None
    exit_code: int = 0
    reports: dict[int, ConsumerReport] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)  # "consumer 0" / "producer" -> restarts
    gaps: list[float] = field(default_factory=list)
    source_events: int | None = None

    def end(self, reason: str, exit_code: int = 0) -> None:
        if self.reason is None:
            self.reason = reason
            self.exit_code = exit_code


class Daemon:
    """One trading session on a validated plan."""

    def __init__(
        self, plan: TradePlan, console: Console, summary_json: Path | None = None, logs: LogHub | None = None
    ) -> None:
        self.plan = plan
        self.console = console
        self.summary_json = summary_json
        self.logs = logs  # children's records come back through it (liu.logs); None: they print themselves
        self.alerts: SessionAlerts | None = None  # [alerts] (liu.alerts), when the plan names URLs
        self.ctx = mp.get_context("forkserver")
        self.ctx.set_forkserver_preload(["liu.engine", "liu.producer", "liu.sources.server", "liu.logs"])
        self.embedded = None
        self.dsn: str | None = None
        self.server_proc = None
        self.server_conn = None
        self.producer = None
        self.gateway: Any = None  # [broker] kind = "alpaca": the execution gateway process
        self.gateway_ready: Any = None  # its GatewayReady pipe
        self.gateway_ends: list[Any] = []  # per consumer, its end of the pipe to the gateway
        self.control = None
        self.control_server: ControlServer | None = None  # `trader halt|resume|flatten|status`
        self.canceller: ConsumerCancel | None = None  # the control channel's `cancel`, routed to consumers
        self.dashboard: Any = None  # liu.dashboard.live.LiveDashboard while it serves
        self.consumers: list[Any] = []
        self.results: list[Any] = []
        self.session: Session | None = None
        self.sent_by_server: int | None = None
        self.report: Report | None = None  # the batch's performance report, once the session is over
        self.stats: SharedStats | None = None
        self.not_shortable: tuple[str, ...] = ()
        self.actions: tuple[CorporateAction, ...] = ()
        self._pending_subs = 0  # Subscribe messages the producer has not acknowledged yet
        self._subscribed = asyncio.Event()  # set when none are pending, or the producer gave up
        self._ready: set[int] = set()  # consumers that have built their runner
        self._all_ready = asyncio.Event()
        self.once = False  # `trader --once`: outside market hours, exit instead of waiting for the open
        self.live: Any = None  # liu.market.LiveSource when [source] kind = "alpaca"
        self.ends_in: float | None = None  # seconds the session runs (None: until stopped)
        # [faults]: the watchdog (no process or server outlives this one), what the start recovered, the
        # paper account's cash at the start, and the guard that restarts a dead embedded PostgreSQL.
        self.watchdog: Watchdog | None = None
        self.recovery = Recovery()
        self.start_cash = plan.broker.cash
        self.guard: DatabaseGuard | None = None
        self.state_dir = plan.path(plan.database.data_dir).parent  # the spool, beside the data directory
        # Supervision: what a restart needs again, the processes down now, and a dead consumer's counters.
        self._consumer_args: dict[str, Any] = {}
        self._producer_args: tuple = ()
        self._assigns: list[Assign] = []  # every subscription, for a restarted producer
        self._spec: ClockSpec | None = None
        self._down: set[str] = set()
        self._carry: dict[int, dict[str, int]] = {}
        self._tasks: set[asyncio.Task] = set()
        self._earlier_gaps: list[float] = []  # market-data gaps before the current producer started
        self._said_all: set[int] = set()  # consumers whose current result pipe has closed

    # -- start-up -------------------------------------------------------
    def _plugins(self) -> tuple[list[ScheduledScanner], list[Strategy]]:
        plan = self.plan
        strategies = [
            instantiate(plan.path(s.file), s.class_, Strategy, s.label, s.config) for s in plan.strategies
        ]
        return load_scanners(plan), strategies

    async def _start_server(self, key: str, secret: str) -> tuple[str, dict[str, SymbolInfo], int | None]:
        from liu.sources.server import serve_process

        if self.plan.source.kind == "alpaca":
            raise ConfigError(
                "tradeplan [source] kind='alpaca': live Alpaca market data is not available yet; "
                "use 'sim' or 'replay'"
            )
        parent, child = self.ctx.Pipe()
        self.server_conn = parent
        self.server_proc = self._process(
            serve_process, (feed_config(self.plan, key, secret), child), name="liu-marketdata", daemon=True
        )
        child.close()
        msg = await self._recv(parent, timeout=120, what="market-data server start")
        if not isinstance(msg, ServerReady):
            reason = msg.reason if isinstance(msg, ServerFailed) else repr(msg)
            raise ConfigError(f"market-data server failed to start: {reason}")
        return f"ws://127.0.0.1:{msg.port}", symbol_infos(msg.universe), msg.first_ts

    def _process(self, target: Any, args: tuple, **kw: Any) -> Any:
        """Start a child process; its logging goes through the main process when there is a hub."""
        if self.logs is not None:
            return self.logs.spawn(self.ctx, target, args, **kw)
        p = self.ctx.Process(target=target, args=args, **kw)
        p.start()
        return p

    async def _recv(self, conn: Any, timeout: float, what: str) -> Any:
        def recv() -> Any:
            try:
                return conn.recv()
            except EOFError:
                return ServerFailed(f"{what}: the process exited")

        if not await asyncio.to_thread(conn.poll, timeout):
            raise ConfigError(f"{what}: no answer within {timeout:.0f}s")
        return await asyncio.to_thread(recv)

    def _spawn(
        self,
        url: str,
        key: str,
        secret: str,
        run_ids: dict[tuple[str, int], int],
        batch_id: str,
        n: int,
        stats: SharedStats,
        crypto_url: str | None = None,
        history: Any = None,
    ) -> None:
        plan = self.plan
        # Keep a reference: forkserver children unpickle it after start() returns, and a
        # collected Lock unlinks its semaphore.
        account = self.account = Account(
            self.start_cash, shared=True, ctx=self.ctx, slots=n, strategies=len(plan.strategies)
        )
        self.canceller = ConsumerCancel(batch_id, n, lambda msg: self.control.send(msg))
        if self.control_server is not None:
            self.control_server.handler = AccountControl(account, cancel=self.canceller)
        self._consumer_args = dict(batch_id=batch_id, run_ids=run_ids, stats=stats, history=history)
        writers = []
        for i in range(n):
            p, w, results = self._start_consumer(i)
            writers.append(w)
            self.consumers.append(p)
            self.results.append(results)
        kinds = ("trades", "quotes") if plan.source.bars == "trades" else ("trades", "quotes", "bars")
        if crypto_url is not None:  # Alpaca: also the crypto stream, and bars revised after they closed
            kinds = (*kinds, "updatedBars")
        self._producer_args = (url, key, secret, stats, kinds, crypto_url)
        self._start_producer(writers)

    def _start_consumer(self, i: int, carry: dict[str, int] | None = None, life: int = 0) -> tuple:
        """Start consumer `i` (again, in life `life`); return the process, the write end of its channel and
        the main process's end of its (duplex) result pipe."""
        a = self._consumer_args
        r, w = self.ctx.Pipe(duplex=False)
        results, child = self.ctx.Pipe()
        setup = ConsumerSetup(
            i,
            self.plan,
            a["batch_id"],
            {name: rid for (name, c), rid in a["run_ids"].items() if c == i},
            self.dsn,
            self.account,
            a["stats"],
            self.not_shortable,
            a["history"],
            self.actions,
            gateway=self.gateway_ends[i] if self.gateway_ends else None,
            carry=carry or {},
            life=life,
        )
        p = self._process(consumer_main, (setup, r, child), name=f"liu-consumer-{i}")
        log.info("consumer %d started (pid %d)", i, p.pid)
        r.close()
        child.close()
        if self.gateway_ends:
            self.gateway_ends[i].close()  # the consumer has it; EOF reaches the gateway when it exits
        return p, w, results

    def _start_producer(self, writers: list[Any], resumed_from: int | None = None) -> None:
        url, key, secret, stats, kinds, crypto_url = self._producer_args
        main_end, prod_end = self.ctx.Pipe()
        args: tuple = (url, key, secret, writers, prod_end, stats, kinds, crypto_url, resumed_from)
        self.producer = self._process(producer_main, args, name="liu-producer")
        log.info("producer started (pid %d)", self.producer.pid)
        prod_end.close()
        for w in writers:
            w.close()
        self.control = main_end

    def _start_gateway(self, batch_id: str, n: int) -> None:
        """The Alpaca execution gateway: one pipe per consumer (liu.brokers.alpaca.process)."""
        from liu.brokers.alpaca.process import GatewaySetup, gateway_main

        a = self.plan.alpaca
        setup = GatewaySetup(
            a.trading_base,
            a.paper,
            float(a.timeout),
            a.key_env,
            a.secret_env,
            batch_id,
            self.dsn,
            n,
            tuple(sp.label for sp in self.plan.strategies),
            stop_on_unexplained=self.plan.broker.unexplained == "stop",
        )
        pipes = [self.ctx.Pipe() for _ in range(n)]
        ready_r, ready_w = self.ctx.Pipe(duplex=False)
        self.gateway = self._process(
            gateway_main, (setup, [g for _, g in pipes], ready_w), name="liu-gateway"
        )
        log.info("Alpaca gateway started (pid %d)", self.gateway.pid)
        ready_w.close()
        for _, g in pipes:
            g.close()
        self.gateway_ends = [c for c, _ in pipes]
        self.gateway_ready = ready_r

    async def _gateway_ready(self) -> None:
        msg = await self._recv(self.gateway_ready, timeout=300, what="Alpaca gateway start")
        for line in getattr(msg, "lines", []):
            self.console.print(f"alpaca: {line}", highlight=False)
        error = msg.reason if isinstance(msg, ServerFailed) else getattr(msg, "error", "")
        if error:
            raise ConfigError(error)

    # -- the session ----------------------------------------------------
    async def run(self) -> int:
        plan = self.plan
        loop = asyncio.get_running_loop()
        session = None
        try:
            # A second trader on this plan stops here, in one line, before touching the database.
            self.control_server = ControlServer(control_path(plan))
            await self.control_server.start()
            self.alerts = SessionAlerts.start(plan.alerts)  # a bad alert URL stops the start here
            scanners, strategies = self._plugins()
            state_dir = self.state_dir
            embedded_dir = plan.path(plan.database.data_dir) if plan.database.resolve_dsn() is None else None
            self.watchdog = await asyncio.to_thread(Watchdog.start, state_dir, embedded_dir)
            self.dsn, self.embedded = await prepare_plan_database(plan)
            persist = plan.broker.persists(plan.session.env)
            self.recovery = await recover(self.dsn, state_dir, persist)
            for line in self.recovery.lines():
                self.console.print(line, highlight=False)
            if self.recovery.account is not None:
                self.start_cash = self.recovery.account.cash
            if any(s.models for s in plan.strategies):  # a bad model stops the start with one clear line
                from liu.ml.inference import load_plan_models

                await load_plan_models(plan, self.dsn)

            key, secret = "liu", secrets.token_hex(8)
            live = None
            if plan.source.kind == "alpaca":
                live = self.live = await self._live_source()
                if live is None:  # outside market hours with --once, or stopped while waiting
                    return 0
                key, secret, universe, first_ts = live.key, live.secret, live.universe, None
                url = live.endpoints.stock_stream
            else:
                url, universe, first_ts = await self._start_server(key, secret)
            self.not_shortable = tuple(sorted(s for s, info in universe.items() if not info.shortable))
            self.actions = plan_actions(plan)  # splits and dividends a raw replay leaves to the consumers
            n = plan.consumers.resolve_count()
            batch_id = str(uuid.uuid4())
            session = self.session = Session(batch_id, n)
            entries = [(s.label, i, dict(s.config)) for s in plan.strategies for i in range(n)]
            lock = SessionLock(self.dsn, batch_id)
            await lock.keep()  # before the runs exist: a daemon starting meanwhile must not call them crashed
            self.guard = DatabaseGuard(self.embedded, lock)
            run_ids = await create_runs(self.dsn, batch_id, plan.session.env, entries)
            await start_account(
                self.dsn, batch_id, self.start_cash, persist=persist, previous=self.recovery.account
            )
            stats = self.stats = SharedStats(n, self.ctx)
            t_spawn = time.monotonic()
            if plan.broker.kind == "alpaca":
                self._start_gateway(batch_id, n)
            if live is not None:
                self._spawn(
                    url, key, secret, run_ids, batch_id, n, stats, live.endpoints.crypto_stream, live.history
                )
            else:
                self._spawn(url, key, secret, run_ids, batch_id, n, stats)
            self.console.print(
                f"[bold]liu[/] batch [cyan]{batch_id}[/]: {len(strategies)} strategies, "
                f"{len(scanners)} scanners, {n} consumers, source {plan.source.kind} ({url})"
            )
            if self.gateway is not None:  # reconciled before any order: restored positions, differences
                await self._gateway_ready()
            if self.alerts is not None:
                self.alerts.watch(self.dsn, batch_id, self.account, stats)
            watch_connection(self.control, self._on_producer, loop)
            for i, conn in enumerate(self.results):
                watch_connection(conn, functools.partial(self._on_result, i, conn), loop)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, session.end, sig.name)

            speed = plan.session.clock_speed
            data0 = (first_ts or time.time_ns()) if plan.source.kind == "replay" else sim_epoch(plan)
            if live is not None:  # live market data: data time is wall time
                speed, data0 = 1.0, time.time_ns()
            scan_runner = ScannerRunner(scanners, universe, live.data.snapshots if live is not None else None)
            if live is not None:  # the plan's symbols for every strategy; scanners add more
                if live.symbols:
                    await self._subscribe(Assign(tuple(live.symbols), (), ""))
            elif not scanners:  # no scanner: every strategy trades the whole universe
                await self._subscribe(Assign(tuple(universe), (), ""))
            await self._subscribe_restored(universe)
            await self._scan(scan_runner, data0)
            await self._wait_subscribed(timeout=15)
            await self._wait_ready(timeout=120)

            spec = self._spec = ClockSpec(data0, time.time_ns(), speed)
            clock = Clock(spec)
            for conn in (self.control, self.server_conn):
                if conn is None:
                    continue
                try:
                    conn.send(Start(spec))
                except OSError:  # it exited already (say, a refused subscription): its own message says why
                    log.info("clock not started in a child that has exited")
            log.info(
                "clock started: data epoch %s, speed %s; %.2fs after spawning processes",
                datetime.fromtimestamp(data0 / NS, NY).isoformat(),
                speed,
                time.monotonic() - t_spawn,
            )
            # After the clock: importing FastAPI and binding the server must not hold up the first event.
            self._start_dashboard(batch_id, stats)
            if self.dashboard is not None:
                self.dashboard.sources.clock = clock
            await self._supervise(scan_runner, clock, stats)
        except BaseException as e:
            if session is not None:
                session.end(f"error: {type(e).__name__}: {e}", 1)
            raise
        finally:
            if self.control_server is not None:
                await self.control_server.close()
            if session is not None:
                await self._shutdown(session)
            if self.dashboard is not None:  # lingers if [dashboard] linger says so; the database is up
                await self.dashboard.close(self.console)
            await self._stop_servers()
            if self.alerts is not None:
                if self.logs is not None:
                    self.logs.drain(timeout=5.0)  # the children (all exited) may have sent alerts last
                self.alerts.close()  # the last summaries; a few seconds at most for what is queued
            if self.watchdog is not None:
                self.watchdog.close()
        if self.logs is not None:
            self.logs.drain()  # the children's last lines and the repeat summaries, before the tables
        self._summary(session)
        return session.exit_code

    def _start_dashboard(self, batch_id: str, stats: SharedStats) -> None:
        if not self.plan.dashboard.enabled:
            return
        from liu.dashboard.live import LiveDashboard, LiveSources  # FastAPI only when it is used

        sources = LiveSources(
            self.plan, batch_id, stats, self.account, self.session, self.dsn, control_path(self.plan)
        )
        self.dashboard = LiveDashboard.start(self.plan, self.console, sources)

    async def _subscribe(self, assign: Assign) -> None:
        self._assigns.append(assign)
        try:
            self.control.send(Subscribe(assign))
        except OSError:  # the producer is down: its restart subscribes everything again
            return
        self._pending_subs += 1

    async def _scan(self, runner: ScannerRunner, now: int) -> None:
        for sched, symbols in await runner.run_due(now):
            await self._subscribe(Assign(tuple(symbols), sched.targets, sched.scanner.name))
            try:
                await add_trending(self.dsn, self.session.batch_id, sched.scanner.name, symbols)
            except Exception as exc:  # noqa: BLE001 - the database is away: trading goes on without the record
                log.error(
                    "scanner %s: picks not recorded (%s: %s)", sched.scanner.name, type(exc).__name__, exc
                )

    async def _subscribe_restored(self, universe: dict[str, SymbolInfo]) -> None:
        """The restored paper account's symbols reach the strategies holding them (a stop must see prices)."""
        account = self.recovery.account
        if account is None:
            return
        held: dict[str, set[str]] = {}
        for strategy, symbol in account.positions:
            held.setdefault(strategy, set()).add(symbol)
        for o in account.orders:
            held.setdefault(o.strategy, set()).add(o.symbol)
        names = {s.label for s in self.plan.strategies}
        for strategy, symbols in sorted(held.items()):
            known = tuple(sorted(s for s in symbols if s in universe))
            if strategy in names and known:
                await self._subscribe(Assign(known, (strategy,), "restored"))

    async def _wait_subscribed(self, timeout: float) -> None:
        if not self._pending_subs:
            return
        try:
            await asyncio.wait_for(self._subscribed.wait(), timeout)
        except TimeoutError:
            raise ConfigError(
                f"producer did not subscribe within {timeout:.0f}s (is the market-data server reachable?)"
            ) from None

    def _on_producer(self, msg: Any) -> None:
        if msg is EOF_MARK:
            if self.session.reason is None and self._spec is not None:
                self._restart("producer", self.producer.exitcode)
            else:
                self.session.end("producer exited", 1)
            self._subscribed.set()
            return
        match msg:
            case Subscribed():
                self._pending_subs = max(0, self._pending_subs - 1)
                if not self._pending_subs:
                    self._subscribed.set()
            case SourceEnded(events):
                self.session.source_events = events
                self.session.end("source ended")
            case Reconnected(gap):
                self.session.gaps.append(gap)
            case ProducerFailed(reason):
                self.console.print(f"[red]producer: {reason}[/]")
                self.session.end(f"producer failed: {reason}", 1)
                self._subscribed.set()
            case ProducerStopped(gaps):  # this producer's own list; earlier lives' and restarts' come first
                self.session.gaps = [*self._earlier_gaps, *gaps]

    def _on_result(self, i: int, conn: Any, msg: Any) -> None:
        if msg is EOF_MARK:  # after everything it sent (its report, if it got that far)
            if conn is self.results[i]:
                self._said_all.add(i)
        elif isinstance(msg, ConsumerReady):
            if i in self._ready:
                log.info("consumer %d restarted and ready", i)
            self._ready.add(i)
            if len(self._ready) == len(self.consumers):
                self._all_ready.set()
        elif isinstance(msg, ConsumerReport):
            msg.restarts = self.session.restarts.get(f"consumer {i}", 0)
            self.session.reports[i] = msg
        elif isinstance(msg, CancelAnswer) and self.canceller is not None:
            self.canceller.on_answer(msg)

    async def _wait_ready(self, timeout: float) -> None:
        """Wait until every consumer has built its runner (strategies, models): the clock starts after."""
        deadline = time.monotonic() + timeout
        while not self._all_ready.is_set():
            if self.session.reason is not None:  # ended meanwhile (a refused subscription): it says why
                return
            for i, p in enumerate(self.consumers):
                if p.exitcode is not None:
                    raise ConfigError(
                        f"consumer {i} exited during start-up (exit code {p.exitcode}); its log is above"
                    )
            if time.monotonic() > deadline:
                raise ConfigError(f"consumers not ready after {timeout:.0f}s: only {sorted(self._ready)}")
            try:
                await asyncio.wait_for(self._all_ready.wait(), 0.25)
            except TimeoutError:
                pass

    def _session_seconds(self) -> float:
        """How long this session runs from now: the plan's duration, or until the market's close."""
        live, plan = self.live, self.plan
        if plan.session.duration != "market":
            return float(plan.session.duration)
        if live is None:
            return plan.session.seconds
        if live.session is None:  # crypto only: 24/7
            return float("inf")
        return max(0.0, live.seconds_until(live.session.end))

    async def _live_source(self) -> Any:
        """Alpaca: keys, universe, symbols, session, warm-up size; outside market hours say when it opens
        and wait (None: `--once`, or stopped while waiting)."""
        from liu.market import prepare, wait_for_open

        models = None
        if any(s.models for s in self.plan.strategies):
            from liu.ml.inference import plan_models

            models = plan_models(self.plan, self.dsn, features_only=True)
        live = await prepare(self.plan, self.dsn, models)
        log.info("warm-up: %d minute bars per new symbol", live.history.bars)
        if live.session is None and self.plan.session.duration == "market":
            self.console.print("crypto trades 24/7: the session runs until stopped", highlight=False)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            ok = await wait_for_open(live, self.console, self.once, stop)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        return live if ok else None

    async def _supervise(self, scans: ScannerRunner, clock: Clock, stats: SharedStats) -> None:
        session = self.session
        started = time.monotonic()
        ends_in = self.ends_in = self._session_seconds()
        last = (started, 0)
        rate = 0.0
        live = (
            Live(console=self.console, auto_refresh=False, transient=False)
            if self.console.is_terminal
            else None
        )
        next_log = started + 5
        if live:
            live.start()
        try:
            while session.reason is None:
                await asyncio.sleep(0.25)
                now = time.monotonic()
                if now - started >= ends_in:
                    session.end(
                        "market close" if self.live is not None and self.live.session else "session end"
                    )
                for i, p in enumerate(self.consumers):
                    if (
                        p.exitcode is not None
                        and i not in session.reports
                        and f"consumer {i}" not in self._down
                    ):
                        self._restart(f"consumer {i}", p.exitcode)
                gateway = self.gateway
                if gateway is not None and gateway.exitcode is not None and "gateway" not in self._down:
                    self._down.add("gateway")  # not restarted: what it had in flight is the next start's
                    self.account.halt(HALT_FAULT)
                    log.error(
                        "the Alpaca gateway died (exit code %s); trading halted: orders cannot reach Alpaca "
                        "(the next start reconciles what was in flight)",
                        gateway.exitcode,
                    )
                if self.alerts is not None:
                    await self.alerts.poll()
                if clock.realtime:
                    await self._scan(scans, clock.now_ns())
                events = stats.producer()["events"]
                if now - last[0] >= 1.0:
                    rate = (events - last[1]) / (now - last[0])
                    last = (now, events)
                    if self.guard is not None:
                        await self.guard.check()  # a dead embedded PostgreSQL is restarted
                if live:
                    live.update(progress_table(stats, rate, now - started, ends_in), refresh=True)
                elif now >= next_log:
                    next_log = now + 5
                    log.info(
                        "%.0f events/s, %d events, consumers %s%s",
                        rate,
                        events,
                        [stats.consumer(i)["processed"] for i in range(stats.consumers)],
                        db_backlog_text(stats),
                    )
        finally:
            if live:
                live.stop()

    # -- supervision ----------------------------------------------------
    def _restart(self, name: str, exitcode: int | None) -> None:
        """`name` ("consumer N" or "producer") died: start it again after the backoff, or past the limit
        halt trading (a dead producer also ends the session: there is no market data)."""
        session, c = self.session, self.plan.consumers
        self._down.add(name)
        if name != "producer":
            i = int(name.split()[1])
            self._carry[i] = {k: self.stats.consumer(i)[k] for k in RUNNER_COUNTERS}
        n = session.restarts.get(name, 0)
        why = (
            "its orders go through the Alpaca gateway, which is not restarted with it"
            if self.gateway is not None and name != "producer"
            else f"restarted {n} times already ([consumers] restarts = {c.restarts})"
            if n >= c.restarts
            else None
        )
        if why is not None:
            self.account.halt(HALT_FAULT)
            log.error("%s died (exit code %s) and is not restarted: %s; trading halted", name, exitcode, why)
            self.console.print(f"[red]{name} died and is not restarted ({why}): trading halted[/]")
            if name == "producer":
                session.end(f"producer died (exit code {exitcode}); trading halted", 1)
            return
        session.restarts[name] = n + 1
        delay = min(30.0, c.restart_backoff * 2**n)
        log.error(
            "%s died (exit code %s); restarting it in %.1fs (restart %d of %d)",
            name,
            exitcode,
            delay,
            n + 1,
            c.restarts,
        )
        task = asyncio.get_running_loop().create_task(
            self._come_back(name, delay, time.monotonic(), time.time_ns())
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _come_back(self, name: str, delay: float, died: float, died_wall: int) -> None:
        await asyncio.sleep(delay)
        session = self.session
        if session.reason is not None:
            return
        loop = asyncio.get_running_loop()
        if name == "producer":
            writers = []
            for conn in self.results:
                r, w = self.ctx.Pipe(duplex=False)
                try:
                    conn.send(NewChannel(-1, r))
                except OSError:  # that consumer is down too: its restart sends the producer its channel
                    pass
                r.close()
                writers.append(w)
            # The dead producer's gaps; the new one reports its own, this gap first (`resumed_from`).
            self._earlier_gaps = list(session.gaps)
            self._start_producer(writers, resumed_from=died_wall)
            watch_connection(self.control, self._on_producer, loop)
            for assign in self._assigns:
                self.control.send(Subscribe(assign))
            self.control.send(Start(self._spec))
            log.warning("producer restarted (pid %d) after %.1fs", self.producer.pid, time.monotonic() - died)
        else:
            i = int(name.split()[1])
            self.account.clear_slot(i)  # its successor reserves again for what it restores
            p, w, results = self._start_consumer(i, self._carry[i], session.restarts[name])
            try:
                self.control.send(NewChannel(i, w))
            except OSError:  # the producer is down: its restart gives every consumer a channel
                pass
            w.close()
            self.consumers[i], self.results[i] = p, results
            self._said_all.discard(i)
            watch_connection(results, functools.partial(self._on_result, i, results), loop)
            log.warning("consumer %d restarted (pid %d) after %.1fs", i, p.pid, time.monotonic() - died)
        self._down.discard(name)

    # -- shutdown -------------------------------------------------------
    async def _shutdown(self, session: Session) -> None:
        session.end("stopped")
        for task in self._tasks:
            task.cancel()
        deadline = time.monotonic() + 8.0
        if self.producer is not None and self.producer.is_alive():
            try:
                self.control.send(Stop(session.reason))
            except OSError:
                pass
        elif self.producer is not None:  # no producer to pass the stop on: tell the consumers directly
            for conn in self.results:
                try:
                    conn.send(Stop(session.reason))
                except OSError:
                    pass

        def pending(i: int, p: Any) -> bool:  # an exited consumer's report may still be on its way
            return i not in session.reports and (p.exitcode is None or i not in self._said_all)

        while time.monotonic() < deadline and any(pending(i, p) for i, p in enumerate(self.consumers)):
            await asyncio.sleep(0.05)
        for i, p in enumerate(self.consumers):
            if i not in session.reports and p.exitcode is None:
                log.error("consumer %d did not finish in time; terminating it", i)
                p.terminate()
        for p in [*self.consumers, self.producer]:
            if p is not None:
                await asyncio.to_thread(p.join, 2)
                if p.exitcode is None:
                    p.kill()
        if self.gateway is not None:  # it settles what is still in flight once every consumer has gone
            await asyncio.to_thread(self.gateway.join, 40)
            if self.gateway.exitcode is None:
                log.error("the Alpaca gateway did not finish in time; killing it")
                self.gateway.kill()
        if self.dsn is not None:
            state_dir = self.state_dir
            for i, p in enumerate(self.consumers):
                if i not in session.reports:
                    await end_runs(
                        self.dsn,
                        state_dir,
                        session.batch_id,
                        f"consumer {i} died (exit code {p.exitcode})",
                        consumer=i,
                    )
            # The database away: the end is kept in the spool, and so is the analysis (the next start).
            if await end_runs(self.dsn, state_dir, session.batch_id, session.reason):
                try:  # the same analysis as a backtest batch: gain_loss, trade_analysis, the report
                    self.report = await analyse_batch(self.dsn, session.batch_id, start_cash=self.start_cash)
                except Exception:
                    log.exception("end-of-session analysis of batch %s failed", session.batch_id)
        if self.guard is not None:
            await self.guard.close()  # the session lock goes before the server stops

    async def _stop_servers(self) -> None:
        if self.server_proc is not None and self.server_proc.is_alive():
            try:
                self.server_conn.send(Stop("session over"))
                msg = await self._recv(self.server_conn, timeout=3, what="market-data server stop")
                if isinstance(msg, ServerStopped):
                    self.sent_by_server = msg.sent_events
            except (OSError, ConfigError):
                pass
            await asyncio.to_thread(self.server_proc.join, 2)
            if self.server_proc.exitcode is None:
                self.server_proc.kill()
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)

    def _final_reports(self, session: Session) -> list[ConsumerReport]:
        """Every consumer's report, a dead one's from its last published counters; `received` is what was
        routed to it, and `lost` what no life of it received (received = processed + stale + malformed
        + lost)."""
        out = []
        for i in range(session.consumers):
            r = session.reports.get(i)
            if r is None:
                if self.stats is None:
                    continue
                counts = self._carry.get(i) or {k: self.stats.consumer(i)[k] for k in RUNNER_COUNTERS}
                r = ConsumerReport(
                    i, **{k: counts[k] for k in REPORTED_COUNTERS}, fills_total=counts["fills"]
                )
                r.restarts = session.restarts.get(f"consumer {i}", 0)
            if self.stats is not None:
                sent = self.stats.consumer(i)["sent"]
                r.lost, r.received = max(0, sent - r.received), max(sent, r.received)
            out.append(r)
        return out

    def _summary(self, session: Session) -> None:
        reports = self._final_reports(session)
        for table in summary_tables(reports, session):
            self.console.print(table)
        if self.report is not None and self.report.trips:
            self.report.print(self.console)
        self.console.print(f"session ended: {session.reason}; batch_id [cyan]{session.batch_id}[/]")
        backlog = (
            [self.stats.consumer(i)["db_backlog"] for i in range(session.consumers)] if self.stats else []
        )
        if any(backlog):
            self.console.print(
                f"[yellow]{sum(backlog):,} rows could not reach the database; they wait in "
                f"{spool_dir(self.state_dir)} and the next start writes them[/]"
            )
        if self.summary_json:
            data = {
                "batch_id": session.batch_id,
                "end_reason": session.reason,
                "consumers": [asdict(r) for r in reports],
                "strategies": merge_strategies(reports),
                "producer": self.stats.producer() if self.stats else None,
                "sent_per_consumer": [self.stats.consumer(i)["sent"] for i in range(session.consumers)]
                if self.stats
                else None,
                "gaps": session.gaps,
                "restarts": session.restarts,
                "bad_ticks": merge_reports(r.bad_ticks for r in reports),
                "server_sent_events": self.sent_by_server,
                "source_events": session.source_events,
                "database": redact_dsn(self.dsn) if self.dsn else None,
                "report": self.report.to_json() if self.report is not None else None,
                "recovery": self.recovery.to_json(),  # what the start replayed, closed and restored
                "db_backlog": backlog,  # per consumer: rows left in the spool at the end
                "db_restarts": self.guard.restarts if self.guard is not None else 0,
            }
            self.summary_json.write_text(json.dumps(data, indent=1, default=str))


def run(plan: TradePlan, console: Console, summary_json: Path | None, once: bool = False) -> int:
    """Run one session (the single `asyncio.run` of the main process).

    `once`: with `[session] duration = "market"` outside market hours, say when it opens and exit.
    """
    import uvloop

    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    with session_logging(console) as logs:
        daemon = Daemon(plan, console, summary_json, logs)
        daemon.once = once
        return uvloop.run(daemon.run())
