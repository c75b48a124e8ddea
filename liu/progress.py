"""Rich tables for live progress and the end-of-session summary."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from liu.events import ConsumerReport
from liu.stats import SharedStats


def progress_table(stats: SharedStats, rate: float, elapsed: float, duration: float) -> Table:
    """Events/s, and per consumer: lag, queue depth, stale and malformed drops, orders, fills."""
    p = stats.producer()
    title = (
        f"{rate:,.0f} events/s · {p['events']:,} events · {elapsed:,.0f}/{duration:,.0f}s · "
        f"{'connected' if p['connected'] else '[red]disconnected[/]'} · reconnects {p['reconnects']}"
    )
    t = Table(title=title, title_justify="left")
    for col in (
        "consumer",
        "lag ms",
        "queue (events)",
        "backlog KB",
        "processed",
        "stale",
        "malformed",
        "errors",
        "orders",
        "fills",
    ):
        t.add_column(col, justify="right")
    for i in range(stats.consumers):
        c = stats.consumer(i)
        t.add_row(
            str(i),
            f"{c['lag_us'] / 1000:.1f}",
            f"{c['sent'] - c['received']:,}",
            f"{c['backlog_bytes'] / 1024:.0f}",
            f"{c['processed']:,}",
            f"{c['stale']:,}",
            f"{c['malformed']:,}",
            f"{c['strategy_errors']:,}",
            f"{c['orders']:,}",
            f"{c['fills']:,}",
        )
    return t


def summary_tables(reports: list[ConsumerReport], session: Any) -> list[Table]:
    """Per strategy: trades and P&L; per consumer: where every event went."""
    strat = Table(title="strategies", title_justify="left")
    for col in ("strategy", "trades", "realised P&L", "unrealised P&L", "fees", "errors"):
        strat.add_column(col, justify="right")
    for name, m in merge_strategies(reports).items():
        strat.add_row(
            name,
            str(m["trades"]),
            f"{m['realized']:,.2f}",
            f"{m['unrealized']:,.2f}",
            f"{m['fees']:,.2f}",
            str(m["errors"]),
        )
    cons = Table(title="consumers", title_justify="left")
    for col in (
        "consumer",
        "symbols",
        "received",
        "processed",
        "stale",
        "malformed",
        "strategy errors",
        "orders",
        "rejected",
    ):
        cons.add_column(col, justify="right")
    for r in reports:
        cons.add_row(
            str(r.index),
            str(len(r.symbols)),
            f"{r.received:,}",
            f"{r.processed:,}",
            f"{r.stale:,}",
            f"{r.malformed:,}",
            f"{r.strategy_errors:,}",
            f"{r.orders:,}",
            f"{r.rejected:,}",
        )
    return [strat, cons]


def merge_strategies(reports: list[ConsumerReport]) -> dict[str, dict]:
    """Per-strategy totals over all consumers."""
    merged: dict[str, dict] = {}
    for r in reports:
        for name, row in r.strategies.items():
            m = merged.setdefault(
                name, {"trades": 0, "realized": 0.0, "unrealized": 0.0, "fees": 0.0, "errors": 0}
            )
            for k in m:
                m[k] += row.get(k, 0)
    return merged
