"""The execution gateway as a process: one pipe per consumer, reconciliation before the first order.

The daemon starts `gateway_main` before the consumers. It reconciles (liu.brokers.alpaca.reconcile),
sends each consumer its `Restore` as the first message on its pipe, connects the trade_updates stream,
and then says `GatewayReady` (with the reconciliation's lines) to the daemon, which starts the clock
only after that. It ends when every consumer has closed its pipe and what was in flight is settled.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from alpaca.trading.enums import QueryOrderStatus
from alpaca.trading.requests import GetOrdersRequest
from alpaca.trading.stream import TradingStream

from liu.brokers.alpaca.gateway import Gateway, RateLimiter, error_text, stream_url, trading_client
from liu.brokers.alpaca.journal import Journal, MemoryJournal, PgJournal
from liu.brokers.alpaca.reconcile import Reconciled, reconcile
from liu.brokers.alpaca.wire import Bye, Cancel, Replace, Restore, Submit
from liu.shard import shard_of

log = logging.getLogger(__name__)
SETTLE_WAIT = 30.0  # seconds the gateway waits at the end for orders still in flight


@dataclass
class GatewaySetup:
    """What the gateway process needs (picklable; no keys: it reads them from the environment)."""

    trading_url: str
    paper: bool
    timeout: float
    key_env: str
    secret_env: str
    batch_id: str
    dsn: str | None
    consumers: int
    strategies: tuple[str, ...]
    stop_on_unexplained: bool = False
    rate_per_minute: float = 200.0
    crash_lines: list[str] = field(default_factory=list)


@dataclass
class GatewayReady:
    """The gateway reconciled and listens; `error`: it could not start (the session must stop)."""

    lines: list[str]
    error: str = ""


async def start_reconciled(gw: Gateway, setup: GatewaySetup) -> Reconciled:
    """Journal, positions and open orders matched; the gateway looks after the restored orders."""
    rows = await gw.journal.rows()
    await gw.settle_journal(rows)
    missed = await gw.journal.record_missed()  # what Alpaca reported while no consumer could record it
    positions = await gw.call(gw.client.get_all_positions)
    open_orders = await gw.call(
        gw.client.get_orders, GetOrdersRequest(status=QueryOrderStatus.OPEN, limit=500, nested=False)
    )
    rec = reconcile(
        rows, positions, open_orders, lambda s: shard_of(s, setup.consumers), set(setup.strategies)
    )
    gw.adopt(rec.orders, rec.broker_ids)
    rec.lines[:0] = missed
    return rec


def gateway_main(setup: GatewaySetup, conns: list[Connection], ready: Connection) -> None:
    """Process entry point."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon coordinates shutdown
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s gateway %(levelname)s %(name)s: %(message)s")
    asyncio.run(_serve(setup, conns, ready))


async def _serve(setup: GatewaySetup, conns: list[Connection], ready: Connection) -> None:
    from liu.sources.alpaca.client import load_credentials

    loop = asyncio.get_running_loop()
    journal: Journal | None = None
    gw: Gateway | None = None
    try:
        creds = load_credentials(setup.key_env, setup.secret_env)
        client = trading_client(
            creds.key_id, creds.secret, setup.trading_url, paper=setup.paper, timeout=setup.timeout
        )
        stream = TradingStream(
            creds.key_id,
            creds.secret,
            paper=setup.paper,
            raw_data=True,
            url_override=stream_url(setup.trading_url),
        )
        del creds
        journal = await PgJournal.open(setup.dsn) if setup.dsn else MemoryJournal()

        def route(consumer: int, msg: Any) -> None:
            try:
                conns[consumer].send(msg)
            except (OSError, ValueError):  # the consumer is gone: its orders' news stays in the journal
                log.warning("consumer %d gone; update not delivered", consumer)

        gw = Gateway(
            client,
            route,
            batch_id=setup.batch_id,
            journal=journal,
            stream=stream,
            limiter=RateLimiter(setup.rate_per_minute),
        )
        gw.extra_consumers = tuple(range(setup.consumers))
        rec = await start_reconciled(gw, setup)
        if rec.unexplained and setup.stop_on_unexplained:
            ready.send(
                GatewayReady(
                    rec.lines,
                    f"positions no strategy explains: {', '.join(rec.unexplained)} "
                    '([broker] unexplained = "stop"; close them or set it to "ignore")',
                )
            )
            return
        for i, conn in enumerate(conns):
            conn.send(Restore(rec.positions.get(i, {}), rec.orders.get(i, [])))
        await gw.start()
        await asyncio.wait_for(gw.connected.wait(), max(30.0, setup.timeout))
        ready.send(GatewayReady(rec.lines))
    except Exception as e:  # noqa: BLE001 - one clear line for the daemon, no keys in it
        log.error("gateway could not start: %s", error_text(e))
        ready.send(GatewayReady([], f"Alpaca gateway could not start: {error_text(e)} ({setup.trading_url})"))
        if gw is not None:
            await gw.close()
        elif journal is not None:
            await journal.close()
        return

    open_ = set(range(len(conns)))
    done = asyncio.Event()
    work: set[asyncio.Task] = set()

    def on_read(i: int) -> None:
        conn = conns[i]
        try:
            while conn.poll():
                msg = conn.recv()
                if isinstance(msg, Submit):
                    coro = gw.submit(i, msg.order)
                elif isinstance(msg, Cancel):
                    coro = gw.cancel(i, msg.client_order_id, msg.reason)
                elif isinstance(msg, Replace):
                    coro = gw.replace(i, msg.client_order_id, msg.new_id, msg.changes)
                elif isinstance(msg, Bye):
                    raise EOFError
                else:
                    log.warning("consumer %d sent %s: ignored", i, type(msg).__name__)
                    continue
                task = gw._spawn(coro)
                work.add(task)
                task.add_done_callback(work.discard)
        except (EOFError, OSError):
            loop.remove_reader(conn.fileno())
            open_.discard(i)
            if not open_:
                done.set()

    for i, conn in enumerate(conns):
        loop.add_reader(conn.fileno(), on_read, i)
    await done.wait()
    if work:
        await asyncio.wait(list(work), timeout=SETTLE_WAIT)
    log.info("gateway done: %s", ", ".join(f"{k} {v}" for k, v in gw.counts.items()))
    await gw.close()
