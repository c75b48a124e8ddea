"""A live dashboard in the test's process, on real parts: shared-memory counters and account as the daemon
makes them, a real control channel (Unix socket) answering with `AccountControl`, real PostgreSQL, and
uvicorn on 127.0.0.1 in its own thread, exactly as `trader` starts it (`LiveDashboard.start`)."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from rich.console import Console

from liu.brokers.account import Account
from liu.control import AccountControl, ControlServer
from liu.daemon import Session
from liu.dashboard.live import LiveDashboard
from liu.dashboard.state import LiveSources
from liu.events import Fill, Order
from liu.plan import parse_plan
from liu.stats import SharedStats
from liu.store import TradeWriter, add_trending, connection, create_runs, record_account

TOKEN = "dashboard-test-token-0123456789"
BATCH = "0badc0de-1111-2222-3333-444455556666"
T0 = 1_704_724_200 * 10**9  # 2024-01-08 09:30 New York
EVIL = "<img src=x onerror=alert(1)>"


async def write_batch(dsn: str, batch_id: str, env: str = "PAPER") -> None:
    """A small batch: two AAA buys (one position), a sell of a symbol named like an XSS probe, one open
    stop order, the start cash, a scanner's picks, two model scores."""
    runs = await create_runs(dsn, batch_id, env, [("momo", 0, {})])
    w = await TradeWriter.open(dsn, batch_id, {"momo": runs[("momo", 0)]})
    fills = [
        Fill("o1", "momo", "AAA", "buy", 10, 100.0, 0.5, T0),
        Fill("o2", "momo", "AAA", "buy", 10, 110.0, 0.5, T0 + 60 * 10**9),
        Fill("o3", "momo", EVIL, "sell", 5, 20.0, 0.0, T0 + 120 * 10**9),
    ]
    for f in fills:
        w.add_order(
            Order(
                f.symbol, f.side, f.qty, strategy="momo", client_order_id=f.client_order_id, status="filled"
            )
        )
        w.add_fill(f)
    w.add_order(
        Order(
            "AAA",
            "sell",
            20,
            type="stop",
            trigger_price=95.0,
            strategy="momo",
            client_order_id="o4",
            status="accepted",
            submitted_ts=T0 + 61 * 10**9,
            tif="gtc",
        )
    )
    assert await w.close()
    await record_account(dsn, batch_id, 50_000.0)
    await add_trending(dsn, batch_id, "volume", ["AAA", "BBB"])
    async with connection(
        dsn
    ) as conn:  # two scores of model "sma_rsi" version 3 (as PredictionWriter writes)
        await conn.executemany(
            "INSERT INTO predictions (batch_id, model, version, symbol, bar_ts, outputs) "
            "VALUES ($1, 'sma_rsi', 3, 'AAA', now(), $2)",
            [(batch_id, [0.4, 0.6]), (batch_id, [0.7, 0.3])],
        )


@dataclass
class LiveParts:
    """What a test reaches: the address, the token, and the state behind the page."""

    base: str
    printed: str
    cookie: str
    stats: SharedStats
    account: Account
    session: Session
    sources: LiveSources
    dashboard: LiveDashboard

    def routes(self) -> list[tuple[str, str]]:
        """(method, path) of every route the app has, path parameters filled in."""
        fastapi_app = self.dashboard.server.server.config.app.app
        fill = {"{name}": "dashboard.js", "{batch_id}": BATCH}
        found = []
        for route in fastapi_app.routes:
            path = route.path
            for k, v in fill.items():
                path = path.replace(k, v)
            for method in sorted(getattr(route, "methods", ()) or ()):
                if method != "HEAD":
                    found.append((method, path))
        return found


@pytest.fixture
async def live(tmp_path: Path, pg_dsn: str, request: pytest.FixtureRequest) -> AsyncIterator[LiveParts]:
    """A live dashboard over two consumers' counters; `@pytest.mark.parametrize("live", [{...}],
    indirect=True)` adds [dashboard] keys."""
    extra = getattr(request, "param", {})
    plan = parse_plan({"dashboard": {"token": TOKEN, **extra}}, base_dir=tmp_path)
    stats = SharedStats(2)
    account = Account(100_000.0, slots=2)
    session = Session(BATCH, 2)
    path = tmp_path / "control.sock"
    async with ControlServer(path, AccountControl(account)):
        out = io.StringIO()
        console = Console(file=out, width=200)
        sources = LiveSources(plan, BATCH, stats, account, session, pg_dsn, path)
        dash = LiveDashboard.start(plan, console, sources)
        try:
            yield LiveParts(
                dash.address.base,
                out.getvalue(),
                f"liu_dashboard_{dash.address.port}",
                stats,
                account,
                session,
                sources,
                dash,
            )
        finally:
            await dash.close(console)
