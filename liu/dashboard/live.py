"""Starting and stopping the dashboard: inside a running `trader`, and alone (`trader dashboard`).

Inside `trader` it runs in a thread of the main process with an event loop of its own: it only reads
shared memory (`SharedStats`, `Account`), the daemon's `Session` and the database, and it steers the
session through the control socket like `trader halt` does, so nothing it does can stall the daemon's
loop, and nothing the daemon does waits on a browser.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from rich.console import Console

from liu.dashboard.app import Live, create_app
from liu.dashboard.auth import Tokens, new_token
from liu.dashboard.logtail import LogTail, Scrubber, dsn_password
from liu.dashboard.metrics import SessionCollector, session_registry
from liu.dashboard.server import Address, Server, announce, listen
from liu.dashboard.state import Hub, LiveSources
from liu.plan import TradePlan

log = logging.getLogger(__name__)


def _tokens(plan: TradePlan) -> Tokens:
    d = plan.dashboard
    return Tokens(d.resolve_token() or new_token(), d.resolve_metrics_token())


def _secrets(plan: TradePlan, tokens: Tokens, dsn: str | None) -> list[str]:
    """Everything secret the process knows, scrubbed from whatever the page shows (log lines, errors)."""
    found = [tokens.dashboard, tokens.metrics or "", dsn_password(dsn) or ""]
    alpaca = getattr(plan, "alpaca", None)  # [alpaca] names the variables that hold the broker's keys
    if alpaca is not None:
        found += [os.environ.get(alpaca.key_env, ""), os.environ.get(alpaca.secret_env, "")]
    return found


def _cookie(port: int) -> str:
    return f"liu_dashboard_{port}"  # cookies ignore ports: two dashboards on one host keep theirs apart


class LiveDashboard:
    """The dashboard of one running session. Example (what the daemon does):

    dash = LiveDashboard.start(plan, console, LiveSources(...))   # prints the address
    dash.sources.clock = clock                                     # once the session's clock runs
    ...
    await dash.close(console)   # after the consumers reported: lingers if configured, then stops
    """

    def __init__(
        self, plan: TradePlan, sources: LiveSources, server: Server, tail: LogTail, address: Address
    ):
        self.plan = plan
        self.sources = sources
        self.server = server
        self.tail = tail
        self.address = address

    @classmethod
    def start(cls, plan: TradePlan, console: Console, sources: LiveSources) -> LiveDashboard:
        tokens = _tokens(plan)
        sock = listen(plan.dashboard.host, plan.dashboard.port)
        port = sock.getsockname()[1]
        tail = LogTail()
        hub = Hub(sources, tail, Scrubber(_secrets(plan, tokens, sources.dsn)))
        collector = SessionCollector(sources.stats, sources.account, ended=lambda: sources.ended)
        app = create_app(
            tokens, _cookie(port), sources.dsn, Live(hub, session_registry(collector), sources.control)
        )
        server = Server(app, sock)
        logging.getLogger().addHandler(tail)
        server.start()
        address = Address(plan.dashboard.host, port, tokens.dashboard)
        log.info("dashboard on %s (the address with its token is printed on the console)", address.base)
        announce(console, address, plan.dashboard, "dashboard")
        return cls(plan, sources, server, tail, address)

    async def close(self, console: Console) -> None:
        """The session is over: keep serving for `[dashboard] linger` (Ctrl-C ends it sooner), then stop."""
        self.sources.ended = True
        linger = self.plan.dashboard.linger
        if linger > 0:
            console.print(
                f"session over; the dashboard stays up {linger:g}s more at {self.address.base}/ (Ctrl-C ends it)",
                highlight=False,
            )
            done = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, done.set)
            try:
                await asyncio.wait_for(done.wait(), linger)
            except TimeoutError:
                pass
        await asyncio.to_thread(self.server.stop)
        logging.getLogger().removeHandler(self.tail)


def serve_history(plan: TradePlan, console: Console, dsn: str) -> None:
    """`trader dashboard`: the batch list and each batch's report from `dsn`, until Ctrl-C."""
    tokens = _tokens(plan)
    sock = listen(plan.dashboard.host, plan.dashboard.port)
    port = sock.getsockname()[1]
    server = Server(create_app(tokens, _cookie(port), dsn), sock)
    address = Address(plan.dashboard.host, port, tokens.dashboard)
    log.info("dashboard (past batches) on %s", address.base)
    announce(console, address, plan.dashboard, "dashboard (past batches; Ctrl-C stops it)")
    # uvicorn shuts down on SIGINT/SIGTERM, then raises the signal again with the handlers it found:
    # make SIGTERM end here like Ctrl-C, so the caller's cleanup (an embedded PostgreSQL) still runs.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
