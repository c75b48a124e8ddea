"""The `trader` daemon: starts every part, supervises them, and ends the session cleanly.

Main process: database, market-data server (sim/replay), scanner runner,
progress and summary. Children: one producer and N consumers. Whatever ends
the session (its duration, the end of a replay, SIGINT/SIGTERM, a consumer
dying) goes through the same shutdown: stop the producer, let consumers drain
and flush, close the `algo_run` rows with the reason, stop the servers.
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

from liu.analysis.batch import analyse_batch
from liu.analysis.report import Report
from liu.brokers.account import Account
from liu.clock import NS, Clock, ClockSpec
from liu.consumer import ConsumerSetup
from liu.control import AccountControl, ControlServer, control_path
from liu.engine import consumer_main
from liu.errors import ConfigError
from liu.events import Assign, ConsumerReport, Start, Stop, Subscribe
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
from liu.progress import merge_strategies, progress_table, summary_tables
from liu.scanner import ScannerRunner, ScheduledScanner, SymbolInfo, load_scanners, symbol_infos
from liu.sources.feeds import feed_config, sim_epoch
from liu.stats import SharedStats
from liu.store import add_trending, close_runs, create_runs, prepare_plan_database, record_account, redact_dsn
from liu.strategy import Strategy
from liu.transport import EOF_MARK, watch_connection

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
    gaps: list[float] = field(default_factory=list)
    source_events: int | None = None

    def end(self, reason: str, exit_code: int = 0) -> None:
        if self.reason is None:
            self.reason = reason
            self.exit_code = exit_code


class Daemon:
    """One trading session on a validated plan."""

    def __init__(self, plan: TradePlan, console: Console, summary_json: Path | None = None) -> None:
        self.plan = plan
        self.console = console
        self.summary_json = summary_json
        self.ctx = mp.get_context("forkserver")
        self.ctx.set_forkserver_preload(["liu.engine", "liu.producer", "liu.sources.server"])
        self.embedded = None
        self.dsn: str | None = None
        self.server_proc = None
        self.server_conn = None
        self.producer = None
        self.control = None
        self.control_server: ControlServer | None = None  # `trader halt|resume|flatten|status`
        self.consumers: list[Any] = []
        self.results: list[Any] = []
        self.session: Session | None = None
        self.sent_by_server: int | None = None
        self.report: Report | None = None  # the batch's performance report, once the session is over
        self.stats: SharedStats | None = None
        self.not_shortable: tuple[str, ...] = ()
        self._pending_subs = 0  # Subscribe messages the producer has not acknowledged yet
        self._subscribed = asyncio.Event()  # set when none are pending, or the producer gave up
        self._ready: set[int] = set()  # consumers that have built their runner
        self._all_ready = asyncio.Event()

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
        self.server_proc = self.ctx.Process(
            target=serve_process,
            args=(feed_config(self.plan, key, secret), child),
            name="liu-marketdata",
            daemon=True,
        )
        self.server_proc.start()
        child.close()
        msg = await self._recv(parent, timeout=120, what="market-data server start")
        if not isinstance(msg, ServerReady):
            reason = msg.reason if isinstance(msg, ServerFailed) else repr(msg)
            raise ConfigError(f"market-data server failed to start: {reason}")
        return f"ws://127.0.0.1:{msg.port}", symbol_infos(msg.universe), msg.first_ts

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
    ) -> None:
        plan = self.plan
        # Keep a reference: forkserver children unpickle it after start() returns, and a
        # collected Lock unlinks its semaphore.
        account = self.account = Account(
            plan.broker.cash, shared=True, ctx=self.ctx, slots=n, strategies=len(plan.strategies)
        )
        if self.control_server is not None:
            self.control_server.handler = AccountControl(account)
        writers = []
        for i in range(n):
            r, w = self.ctx.Pipe(duplex=False)
            res_r, res_w = self.ctx.Pipe(duplex=False)
            setup = ConsumerSetup(
                i,
                plan,
                batch_id,
                {name: rid for (name, c), rid in run_ids.items() if c == i},
                self.dsn,
                account,
                stats,
                self.not_shortable,
            )
            p = self.ctx.Process(target=consumer_main, args=(setup, r, res_w), name=f"liu-consumer-{i}")
            p.start()
            log.info("consumer %d started (pid %d)", i, p.pid)
            r.close()
            res_w.close()
            writers.append(w)
            self.consumers.append(p)
            self.results.append(res_r)
        kinds = ("trades", "quotes") if plan.source.bars == "trades" else ("trades", "quotes", "bars")
        main_end, prod_end = self.ctx.Pipe()
        self.producer = self.ctx.Process(
            target=producer_main,
            args=(url, key, secret, writers, prod_end, stats, kinds),
            name="liu-producer",
        )
        self.producer.start()
        prod_end.close()
        for w in writers:
            w.close()
        self.control = main_end

    # -- the session ----------------------------------------------------
    async def run(self) -> int:
        plan = self.plan
        loop = asyncio.get_running_loop()
        session = None
        try:
            # A second trader on this plan stops here, in one line, before touching the database.
            self.control_server = ControlServer(control_path(plan))
            await self.control_server.start()
            scanners, strategies = self._plugins()
            self.dsn, self.embedded = await prepare_plan_database(plan)
            if any(s.models for s in plan.strategies):  # a bad model stops the start with one clear line
                from liu.ml.inference import load_plan_models

                await load_plan_models(plan, self.dsn)

            key, secret = "liu", secrets.token_hex(8)
            url, universe, first_ts = await self._start_server(key, secret)
            self.not_shortable = tuple(sorted(s for s, info in universe.items() if not info.shortable))
            n = plan.consumers.resolve_count()
            batch_id = str(uuid.uuid4())
            session = self.session = Session(batch_id, n)
            entries = [(s.label, i, dict(s.config)) for s in plan.strategies for i in range(n)]
            run_ids = await create_runs(self.dsn, batch_id, plan.session.env, entries)
            await record_account(self.dsn, batch_id, plan.broker.cash)
            stats = self.stats = SharedStats(n, self.ctx)
            t_spawn = time.monotonic()
            self._spawn(url, key, secret, run_ids, batch_id, n, stats)
            self.console.print(
                f"[bold]liu[/] batch [cyan]{batch_id}[/]: {len(strategies)} strategies, "
                f"{len(scanners)} scanners, {n} consumers, source {plan.source.kind} ({url})"
            )
            watch_connection(self.control, self._on_producer, loop)
            for i, conn in enumerate(self.results):
                watch_connection(conn, functools.partial(self._on_result, i), loop)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, session.end, sig.name)

            speed = plan.session.clock_speed
            data0 = (first_ts or time.time_ns()) if plan.source.kind == "replay" else sim_epoch(plan)
            scan_runner = ScannerRunner(scanners, universe)
            if not scanners:  # no scanner: every strategy trades the whole universe
                await self._subscribe(Assign(tuple(universe), (), ""))
            await self._scan(scan_runner, data0)
            await self._wait_subscribed(timeout=15)
            await self._wait_ready(timeout=120)

            spec = ClockSpec(data0, time.time_ns(), speed)
            clock = Clock(spec)
            self.control.send(Start(spec))
            self.server_conn.send(Start(spec))
            log.info(
                "clock started: data epoch %s, speed %s; %.2fs after spawning processes",
                datetime.fromtimestamp(data0 / NS, NY).isoformat(),
                speed,
                time.monotonic() - t_spawn,
            )
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
            await self._stop_servers()
        self._summary(session)
        return session.exit_code

    async def _subscribe(self, assign: Assign) -> None:
        self.control.send(Subscribe(assign))
        self._pending_subs += 1

    async def _scan(self, runner: ScannerRunner, now: int) -> None:
        for sched, symbols in await runner.run_due(now):
            await self._subscribe(Assign(tuple(symbols), sched.targets, sched.scanner.name))
            await add_trending(self.dsn, self.session.batch_id, sched.scanner.name, symbols)

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
            self.session.end("producer exited", 1)
            self._subscribed.set()
            return
        match msg:
            case Subscribed():
                self._pending_subs -= 1
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
            case ProducerStopped(gaps):
                self.session.gaps = list(gaps)

    def _on_result(self, i: int, msg: Any) -> None:
        if isinstance(msg, ConsumerReady):
            self._ready.add(i)
            if len(self._ready) == len(self.consumers):
                self._all_ready.set()
        elif isinstance(msg, ConsumerReport):
            self.session.reports[i] = msg

    async def _wait_ready(self, timeout: float) -> None:
        """Wait until every consumer has built its runner (strategies, models): the clock starts after."""
        deadline = time.monotonic() + timeout
        while not self._all_ready.is_set():
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

    async def _supervise(self, scans: ScannerRunner, clock: Clock, stats: SharedStats) -> None:
        session = self.session
        plan = self.plan
        started = time.monotonic()
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
                if now - started >= plan.session.duration:
                    session.end("session end")
                for i, p in enumerate(self.consumers):
                    if p.exitcode is not None and i not in session.reports:
                        session.end(f"consumer {i} died (exit code {p.exitcode})", 1)
                if clock.realtime:
                    await self._scan(scans, clock.now_ns())
                events = stats.producer()["events"]
                if now - last[0] >= 1.0:
                    rate = (events - last[1]) / (now - last[0])
                    last = (now, events)
                if live:
                    live.update(
                        progress_table(stats, rate, now - started, plan.session.duration), refresh=True
                    )
                elif now >= next_log:
                    next_log = now + 5
                    log.info(
                        "%.0f events/s, %d events, consumers %s",
                        rate,
                        events,
                        [stats.consumer(i)["processed"] for i in range(stats.consumers)],
                    )
        finally:
            if live:
                live.stop()

    # -- shutdown -------------------------------------------------------
    async def _shutdown(self, session: Session) -> None:
        session.end("stopped")
        deadline = time.monotonic() + 8.0
        if self.producer is not None and self.producer.is_alive():
            try:
                self.control.send(Stop(session.reason))
            except OSError:
                pass
        while time.monotonic() < deadline and any(
            p.exitcode is None and i not in session.reports for i, p in enumerate(self.consumers)
        ):
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
        if self.dsn is not None:
            for i, p in enumerate(self.consumers):
                if i not in session.reports:
                    await close_runs(
                        self.dsn, session.batch_id, f"consumer {i} died (exit code {p.exitcode})", consumer=i
                    )
            await close_runs(self.dsn, session.batch_id, session.reason)
            try:  # the same analysis as a backtest batch: gain_loss, trade_analysis, the report
                self.report = await analyse_batch(
                    self.dsn, session.batch_id, start_cash=self.plan.broker.cash
                )
            except Exception:
                log.exception("end-of-session analysis of batch %s failed", session.batch_id)

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

    def _summary(self, session: Session) -> None:
        reports = [session.reports[i] for i in sorted(session.reports)]
        for table in summary_tables(reports, session):
            self.console.print(table)
        if self.report is not None and self.report.trips:
            self.report.print(self.console)
        self.console.print(f"session ended: {session.reason}; batch_id [cyan]{session.batch_id}[/]")
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
                "server_sent_events": self.sent_by_server,
                "source_events": session.source_events,
                "database": redact_dsn(self.dsn) if self.dsn else None,
                "report": self.report.to_json() if self.report is not None else None,
            }
            self.summary_json.write_text(json.dumps(data, indent=1, default=str))


def run(plan: TradePlan, console: Console, summary_json: Path | None) -> int:
    """Run one session (the single `asyncio.run` of the main process)."""
    import uvloop

    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return uvloop.run(Daemon(plan, console, summary_json).run())
