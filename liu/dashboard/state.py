"""What the live page shows, gathered once a second from the state the daemon already keeps.

`Hub` is the one reader: a task in the dashboard's thread samples the shared counters (`SharedStats`),
the shared `Account`, the session's end-of-run reports and the batch's rows in PostgreSQL
(`liu.dashboard.rows`), builds one JSON-safe snapshot, and wakes every open page (server-sent events)
with it. However many pages are open, the database sees one small set of queries a second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from liu.brokers.account import Account
from liu.clock import Clock
from liu.dashboard.logtail import LogTail, Scrubber
from liu.dashboard.rows import NY, BatchRows
from liu.plan import TradePlan
from liu.stats import RUNNER_COUNTERS, SharedStats

log = logging.getLogger(__name__)
MAX_POINTS = 2000  # equity samples kept; when full, every pair becomes its deeper-drawdown point


# -- what the daemon hands over -------------------------------------------------------------------------
@dataclass
class LiveSources:
    """Read-only views of the daemon's state. `session` is the daemon's `Session` (reason, reports);
    `clock` is set once the session's clock starts; `ended` once every consumer has reported."""

    plan: TradePlan
    batch_id: str
    stats: SharedStats
    account: Account
    session: Any
    dsn: str | None
    control: Path
    clock: Clock | None = None
    ended: bool = False


@dataclass
class _Equity:
    t: list[str] = field(default_factory=list)  # New York time, as plotly reads dates
    equity: list[float] = field(default_factory=list)
    drawdown: list[float] = field(default_factory=list)  # percent, <= 0
    peak: float = 0.0

    def add(self, when: str, equity: float) -> None:
        self.peak = max(self.peak, equity)
        self.t.append(when)
        self.equity.append(round(equity, 2))
        self.drawdown.append(round((equity / self.peak - 1) * 100, 4) if self.peak > 0 else 0.0)
        if len(self.t) > MAX_POINTS:
            keep = [
                k if self.drawdown[k] <= self.drawdown[k + 1] else k + 1 for k in range(0, len(self.t) - 1, 2)
            ]
            if len(self.t) % 2:
                keep.append(len(self.t) - 1)
            self.t = [self.t[k] for k in keep]
            self.equity = [self.equity[k] for k in keep]
            self.drawdown = [self.drawdown[k] for k in keep]


# -- the hub ------------------------------------------------------------------------------------------
class Hub:
    """Builds the live snapshot every `period` seconds and hands it to every open page."""

    def __init__(self, src: LiveSources, tail: LogTail, scrub: Scrubber, period: float = 1.0) -> None:
        self.src = src
        self.tail = tail
        self.scrub = scrub
        self.period = period
        self.rows = BatchRows(src.dsn, src.batch_id) if src.dsn else None
        self.equity = _Equity()
        self.snapshot: dict[str, Any] = {}
        self.version = 0
        self._changed = asyncio.Condition()
        self._poke = asyncio.Event()
        self._asked = 0  # fresh snapshots asked for (by actions)
        self._done = 0  # of those, how many a finished tick has covered
        self._last: tuple[float, list[int], int] | None = None
        self._clock_shown: tuple[str | None, float] = (None, 0.0)  # market time and elapsed, kept at the end

    async def run(self) -> None:
        """Tick until cancelled."""
        try:
            while True:
                covers = self._asked
                try:
                    await self.tick()
                except Exception:  # the page shows stale figures rather than none
                    log.exception("dashboard: building the live snapshot failed")
                async with self._changed:
                    self._done = covers
                    self._changed.notify_all()
                try:
                    await asyncio.wait_for(self._poke.wait(), self.period)
                except TimeoutError:
                    pass
                self._poke.clear()
        finally:
            if self.rows is not None:
                await self.rows.close()

    async def fresh(self, timeout: float = 5.0) -> None:
        """Tick now and wait for a snapshot begun after this call, so that an action's answer and the
        figures the page reads next agree (a tick already under way may predate the action)."""
        self._asked += 1
        ask = self._asked
        self._poke.set()
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self._done >= ask), timeout)
            except TimeoutError:
                log.warning("dashboard: no fresh snapshot within %.0f s after an action", timeout)

    async def next(self, seen: int, timeout: float = 15.0) -> int:
        """Wait until a snapshot newer than `seen` exists (or `timeout`); return the current version."""
        async with self._changed:
            if self.version == seen:
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout)
                except TimeoutError:
                    pass
            return self.version

    async def tick(self) -> None:
        src = self.src
        if self.rows is not None:
            await self.rows.refresh()
        view = src.account.view()
        now = time.time()
        clock = src.clock
        if clock is not None and not src.ended:
            when = clock.now_ns() / 1e9 if clock.realtime else now
            self.equity.add(datetime.fromtimestamp(when, NY).strftime("%Y-%m-%d %H:%M:%S"), view.equity)
        self.snapshot = self._build(view, now)
        async with self._changed:
            self.version += 1
            self._changed.notify_all()

    def _rates(self, now: float) -> tuple[float, list[float]]:
        stats = self.src.stats
        events = stats.producer()["events"]
        processed = [stats.consumer(i)["processed"] for i in range(stats.consumers)]
        last, self._last = self._last, (now, processed, events)
        if last is None or now <= last[0]:
            return 0.0, [0.0] * len(processed)
        dt = now - last[0]
        return (events - last[2]) / dt, [(p - q) / dt for p, q in zip(processed, last[1], strict=True)]

    def _build(self, view: Any, now: float) -> dict[str, Any]:
        src = self.src
        plan = src.plan
        stats = src.stats
        rate, rates = self._rates(now)
        consumers = []
        for i in range(stats.consumers):
            c = stats.consumer(i)
            consumers.append(
                {
                    "index": i,
                    "events_per_s": rates[i],
                    "lag_ms": c["lag_us"] / 1000,
                    "queue": c["sent"] - c["received"] - c["lost"],
                    "lost": c["lost"],
                    "backlog_kb": c["backlog_bytes"] / 1024,
                    **{name: c[name] for name in RUNNER_COUNTERS},
                }
            )
        session = src.session
        reports = dict(session.reports)
        refused: dict[str, int] = {}
        for r in reports.values():
            for rule, n in r.risk_refused.items():
                refused[rule] = refused.get(rule, 0) + n
        clock = src.clock
        if src.ended:
            phase = "ended"
        elif session.reason is not None:
            phase = "ending"
        else:
            phase = "running" if clock is not None else "starting"
        if phase == "running":
            market = (
                datetime.fromtimestamp(clock.now_ns() / 1e9, NY).strftime("%Y-%m-%d %H:%M:%S")
                if clock.realtime
                else None
            )
            self._clock_shown = (market, (time.time_ns() - clock.spec.wall_epoch_ns) / 1e9)
        market, elapsed = self._clock_shown  # the session's clock stops when it ends
        rows = self.rows
        limits = {k: v for k, v in plan.risk.model_dump().items() if v is not None and k != "on_breach"}
        return {
            "session": {
                "batch_id": src.batch_id,
                "phase": phase,
                "reason": self.scrub(session.reason) if session.reason else None,
                "market_time": market,
                "elapsed_s": elapsed,
                "duration_s": plan.session.seconds,
                "source": plan.source.kind,
                "time_axis": "market time (New York)" if clock is None or clock.realtime else "wall time",
            },
            "account": {
                **_plain(view),
                "start_cash": plan.broker.cash,
                "open_orders": src.account.open_orders(),
                "flatten_generation": src.account.flatten_generation,
                "exposure_pct": view.gross_exposure / view.equity * 100 if view.equity > 0 else 0.0,
            },
            "risk": {"limits": limits, "on_breach": plan.risk.on_breach, "refused": refused},
            "producer": {**stats.producer(), "events_per_s": rate},
            "consumers": consumers,
            "positions": rows.position_rows() if rows else [],
            "orders": rows.orders if rows else [],
            "open_orders_total": rows.open_orders if rows else 0,
            "fills": list(rows.fills) if rows else [],
            "fill_count": rows.fill_count if rows else 0,
            "picks": rows.picks if rows else [],
            "models": rows.models if rows else [],
            "models_planned": sorted({m.spec for s in plan.strategies for m in s.models}),
            "db_error": self.scrub(rows.error) if rows and rows.error else None,
            "equity": {"t": self.equity.t, "equity": self.equity.equity, "drawdown": self.equity.drawdown},
            "log": [{**r, "message": self.scrub(r["message"])} for r in list(self.tail.records)],
        }


def _plain(view: Any) -> dict[str, Any]:
    return {
        "cash": view.cash,
        "equity": view.equity,
        "buying_power": view.buying_power,
        "gross_exposure": view.gross_exposure,
        "day_pnl": view.day_pnl,
        "halted": view.halted,
        "halt_reason": view.halt_reason,
    }
