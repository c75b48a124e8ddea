"""Rich tables for live progress and the end-of-session summary."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from liu.events import ConsumerReport
from liu.stats import RUNNER_COUNTERS, SharedStats
from liu.ticks import merge_reports

_HEADERS = {"strategy_errors": "errors"}
# Live, "received" shows as the queue depth (sent - received) instead.
_LIVE = tuple(name for name in RUNNER_COUNTERS if name != "received")


def _header(name: str) -> str:
    return _HEADERS.get(name, name.replace("_", " "))


def report_counts(report: ConsumerReport) -> dict[str, int]:
    """A consumer report's counters by their `RUNNER_COUNTERS` name (its fills count is `fills_total`)."""
    return {
        name: report.fills_total if name == "fills" else getattr(report, name) for name in RUNNER_COUNTERS
    }


def progress_table(stats: SharedStats, rate: float, elapsed: float, duration: float) -> Table:
    """Events/s, and per consumer: lag, queue depth, and the runner's counters (drops, orders, fills...)."""
    p = stats.producer()
    title = (
        f"{rate:,.0f} events/s · {p['events']:,} events · {elapsed:,.0f}/{duration:,.0f}s · "
        f"{'connected' if p['connected'] else '[red]disconnected[/]'} · reconnects {p['reconnects']}"
    )
    warmed = [stats.consumer(i) for i in range(stats.consumers)]
    if any(c["warmed"] or c["warm_failed"] for c in warmed):
        title += (
            f" · history: {sum(c['warmed'] for c in warmed):,} symbols, {sum(c['warm_bars'] for c in warmed):,} "
            f"bars, {sum(c['warm_failed'] for c in warmed):,} not loaded"
        )
    if backlog := db_backlog_text(stats):
        title += f" · [yellow]{backlog[2:]}[/]"
    t = Table(title=title, title_justify="left")
    for col in ("consumer", "lag ms", "queue (events)", "backlog KB", *map(_header, _LIVE), "lost"):
        t.add_column(col, justify="right")
    for i in range(stats.consumers):
        c = stats.consumer(i)
        t.add_row(
            str(i),
            f"{c['lag_us'] / 1000:.1f}",
            f"{c['sent'] - c['received'] - c['lost']:,}",
            f"{c['backlog_bytes'] / 1024:.0f}",
            *(f"{c[name]:,}" for name in _LIVE),
            f"{c['lost']:,}",
        )
    return t


def db_backlog_text(stats: SharedStats) -> str:
    """`, database: N rows waiting in the spool` while the database cannot take every row, else ''."""
    n = sum(stats.consumer(i)["db_backlog"] for i in range(stats.consumers))
    return f", database: {n:,} rows waiting in the spool" if n else ""


def summary_tables(reports: list[ConsumerReport], session: Any) -> list[Table]:
    """Per strategy: trades and P&L; per consumer: where every event and order went; risk refusals."""
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
        *(name.replace("_", " ") for name in RUNNER_COUNTERS),
        "lost",
        "restarts",
    ):
        cons.add_column(col, justify="right")
    refused: dict[str, int] = {}
    for r in reports:
        counts = report_counts(r)
        cons.add_row(
            str(r.index),
            str(len(r.symbols)),
            *(f"{counts[name]:,}" for name in RUNNER_COUNTERS),
            f"{r.lost:,}",
            str(r.restarts),
        )
        for rule, n in r.risk_refused.items():
            refused[rule] = refused.get(rule, 0) + n
    tables = [strat, cons]
    if any(r.warmup.get("symbols") or r.warmup.get("failed") or r.warmup.get("backfills") for r in reports):
        tables.append(history_table(reports))
    if refused:
        risk = Table(title="risk refusals", title_justify="left")
        risk.add_column("rule")
        risk.add_column("orders refused", justify="right")
        for rule, n in sorted(refused.items()):
            risk.add_row(rule, f"{n:,}")
        tables.append(risk)
    bad = merge_reports(r.bad_ticks for r in reports)
    if bad:
        tables.append(bad_ticks_table(bad))
    return tables


def history_table(reports: list[ConsumerReport]) -> Table:
    """Per consumer: symbols warmed before their first live bar, gaps back-filled, what could not be."""
    t = Table(title="history (warm-up before the first live bar, gap back-fill)", title_justify="left")
    for col in (
        "consumer",
        "symbols warmed",
        "bars",
        "seconds",
        "not loaded",
        "back-fills",
        "bars filled",
        "not filled",
        "bars revised",
    ):
        t.add_column(col, justify="right")
    for r in reports:
        w = r.warmup
        failed = w.get("failed", {})
        t.add_row(
            str(r.index),
            f"{w.get('symbols', 0):,}",
            f"{w.get('bars', 0):,}",
            f"{w.get('seconds', 0.0):.2f}",
            ", ".join(sorted(failed)[:5]) + (f" (+{len(failed) - 5})" if len(failed) > 5 else "") or "-",
            f"{w.get('backfills', 0):,}",
            f"{w.get('filled_bars', 0):,}",
            str(len(w.get("unfilled", {}))),
            f"{w.get('revised_bars', 0) + w.get('superseded_bars', 0):,}",
        )
    return t


def bad_ticks_table(bad: dict[str, dict[str, int]]) -> Table:
    """What the bad-tick filter dropped or repaired, per symbol (`liu.ticks`)."""
    t = Table(title="bad ticks dropped", title_justify="left")
    for col in ("symbol", "prints outside band", "prints by conditions", "bars repaired", "reference moved"):
        t.add_column(col, justify="right")
    for sym, c in bad.items():
        t.add_row(sym, *(f"{c[k]:,}" for k in ("band", "conditions", "bars", "moved")))
    return t


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
