"""The performance report: metrics, breakdowns, equity and drawdown, in four outputs.

`build_report` is the one entry point for backtests and daemon batches, so both are
measured by the same code (liu.analysis.metrics). Outputs: `to_json` (machines),
`html`/`write_html` (the page a quant studies, liu.analysis.page: self-contained, works
offline; also the dashboard's batch view), `write_png` (matplotlib Agg, no browser
needed) and `print` (a rich table in the terminal).

Without an equity curve (a daemon batch: only fills are stored) one is rebuilt from the
fills: cash from the start cash and every fill (fees included), positions marked at the
latest FILL price of each symbol, one sample per fill time. This is a fill-marked curve:
it moves only when something trades, so drawdowns between fills are not seen.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from liu.analysis import metrics as M
from liu.analysis.fmt import GROUP_COLUMNS, HEADLINE, PLOT_POINTS, decimate, fmt
from liu.analysis.trades import OpenPosition, RoundTrip, match_fills
from liu.events import Fill

# ---------------------------------------------------------------- equity from fills


def equity_from_fills(
    fills: Sequence[Fill],
    start_cash: float,
    prices: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Equity rebuilt from fills: cash + positions marked at the latest known price.

    Without `prices` this is the fill-marked curve of the module docstring (one sample per
    distinct fill time). `prices` maps symbol -> (ts ns, price), e.g. bar closes stamped
    at the bar's END; the curve then also has a sample at each of those times. At equal
    times a fill's price counts as later than a bar's.
    """
    fs = sorted(fills, key=lambda f: f.ts)
    ts_f = np.array([f.ts for f in fs], dtype=np.int64)
    px_f = np.array([f.price for f in fs], dtype=np.float64)
    sq = np.array([f.qty if f.side == "buy" else -f.qty for f in fs], dtype=np.float64)
    fee = np.array([f.fee for f in fs], dtype=np.float64)
    symbols = np.array([f.symbol for f in fs], dtype=object)
    traded = list(dict.fromkeys(f.symbol for f in fs))
    extra = [np.asarray(prices[s][0], dtype=np.int64) for s in traded if prices and s in prices]
    timeline = np.unique(np.concatenate([ts_f, *extra]))
    if timeline.size == 0:
        return timeline, np.zeros(0, np.float64)
    cash_after = start_cash - np.cumsum(sq * px_f + fee)
    k = np.searchsorted(ts_f, timeline, side="right")
    cash = np.where(k > 0, cash_after[np.maximum(k - 1, 0)], start_cash)
    value = np.zeros(timeline.size)
    for sym in traded:
        m = symbols == sym
        t_s, pos_cum = ts_f[m], np.cumsum(sq[m])
        kk = np.searchsorted(t_s, timeline, side="right")
        pos = np.where(kk > 0, pos_cum[np.maximum(kk - 1, 0)], 0.0)
        p_ts, p_px = t_s, px_f[m]
        if prices and sym in prices:
            b_ts = np.asarray(prices[sym][0], dtype=np.int64)
            b_px = np.asarray(prices[sym][1], dtype=np.float64)
            both_ts = np.concatenate([b_ts, t_s])
            order = np.lexsort((np.r_[np.zeros(b_ts.size), np.ones(t_s.size)], both_ts))
            p_ts, p_px = both_ts[order], np.concatenate([b_px, p_px])[order]
        j = np.searchsorted(p_ts, timeline, side="right") - 1
        value += pos * np.where(j >= 0, p_px[np.maximum(j, 0)], 0.0)
    return timeline, cash + value


# ---------------------------------------------------------------- the report


@dataclass
class Report:
    """Everything a reader needs about one run or batch."""

    title: str
    start_cash: float
    metrics: dict[str, float]
    per_strategy: list[dict]
    per_symbol: list[dict]
    equity_ts: np.ndarray
    equity: np.ndarray
    drawdown: np.ndarray
    trips: list[RoundTrip] = field(default_factory=list)
    open_positions: list[OpenPosition] = field(default_factory=list)
    fills: list[Fill] = field(default_factory=list)
    equity_source: str = "given"  # "given" (the caller's curve) | "fills" (fill-marked) | "bar closes"
    notes: list[str] = field(default_factory=list)
    # symbol -> (ts ns, price): the prices the page draws each symbol's entries and exits on (bar closes
    # stamped at the bar's end); a symbol without them is drawn on its fill prices.
    prices: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    batch_id: str = ""
    env: str = ""  # the batch's environment (PAPER, LIVE, BACKTEST), when known

    # ------------------------------------------------------------ machines

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (NaN and inf become None); the equity curve as end-of-day values."""
        day_ts, day_eq = M.daily_equity(self.equity_ts, self.equity)
        dates = M.ny_times(day_ts).strftime("%Y-%m-%d")
        return _json_safe(
            {
                "title": self.title,
                "start_cash": self.start_cash,
                "equity_source": self.equity_source,
                "notes": list(self.notes),
                "metrics": self.metrics,
                "per_strategy": self.per_strategy,
                "per_symbol": self.per_symbol,
                "open_positions": [asdict(p) for p in self.open_positions],
                "round_trips": [asdict(t) for t in self.trips],
                "equity_daily": [
                    {"date": d, "ts": int(t), "equity": float(v)}
                    for d, t, v in zip(dates, day_ts, day_eq, strict=True)
                ],
            }
        )

    def write_json(self, path: Path | str) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2, allow_nan=False))
        return path

    def trips_frame(self) -> pd.DataFrame:
        """The round trips as a DataFrame, times in New York time."""
        return trips_frame(self.trips)

    # ------------------------------------------------------------ charts

    def html(self, plotly_js: str = "inline") -> str:
        """The report page as one HTML document (see liu.analysis.page); `plotly_js` = "inline" embeds
        the chart library (offline), anything else is the same-origin path to load it from."""
        from liu.analysis.page import render

        return render(self, plotly_js=plotly_js)

    def write_html(self, path: Path | str) -> Path:
        """The report page, self-contained (the chart library embedded): `report.html` of `trader backtest`."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.html(), encoding="utf-8")
        return path

    def write_png(self, path: Path | str, dpi: int = 110) -> Path:
        """Equity and drawdown panels (matplotlib Agg: no display, no browser)."""
        fig = self.figure()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
        return path

    def figure(self):
        """A matplotlib Figure with the equity and drawdown panels on the trading-time axis of the page
        (liu.analysis.timeaxis: gaps collapsed, the longest marked), not tied to pyplot."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        from liu.analysis.timeaxis import trading_axis

        fig = Figure(figsize=(11, 6.5), layout="constrained")
        FigureCanvasAgg(fig)
        ax_eq, ax_dd = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
        axis = trading_axis(self.equity_ts)
        i = decimate(self.equity, PLOT_POINTS)
        j = decimate(self.drawdown, PLOT_POINTS)
        ax_eq.plot(axis.x[i], self.equity[i], lw=1.2)
        ax_eq.set_ylabel("equity")
        ax_eq.grid(alpha=0.3)
        ax_eq.set_title(self._headline(), fontsize=10)
        ax_dd.fill_between(axis.x[j], self.drawdown[j] * 100, 0, color="firebrick", alpha=0.4, lw=0)
        ax_dd.set_ylabel("drawdown %")
        ax_dd.set_xlabel("trading time (New York; gaps collapsed)")
        ax_dd.grid(alpha=0.3)
        for gap in sorted(axis.gaps, key=lambda g: -g.seconds)[:150]:
            for ax in (ax_eq, ax_dd):
                ax.axvline(gap.x, color="0.8", lw=0.6, ls=":")
        ticks, labels = axis.ticks(8)
        ax_dd.set_xticks(ticks, labels, fontsize=8)
        return fig

    def _headline(self) -> str:
        m = self.metrics
        return (
            f"{self.title or 'liu report'} — return {fmt(m.get('total_return'), 'pct')}, "
            f"Sharpe {fmt(m.get('sharpe'), 'num')}, max DD {fmt(m.get('max_drawdown'), 'pct')}, "
            f"{m.get('round_trips', 0)} round trips"
        )

    # ------------------------------------------------------------ terminal

    def print(self, console=None, max_rows: int = 25) -> None:
        """Headline metrics, then per-strategy and per-symbol tables (rich)."""
        from rich.console import Console
        from rich.table import Table

        console = console or Console()
        head = Table(title=self.title or "Performance", show_header=False, title_justify="left")
        head.add_column("metric", style="bold")
        head.add_column("value", justify="right")
        head.add_column("metric", style="bold")
        head.add_column("value", justify="right")
        cells = [(label, fmt(self.metrics.get(key), kind)) for key, label, kind in HEADLINE]
        half = (len(cells) + 1) // 2
        for left, right in zip(cells[:half], cells[half:] + [("", "")], strict=False):
            head.add_row(*left, *right)
        console.print(head)
        for rows, key in ((self.per_strategy, "strategy"), (self.per_symbol, "symbol")):
            if not rows:
                continue
            table = Table(title=f"By {key}", title_justify="left")
            table.add_column(key)
            for _, label, _kind in GROUP_COLUMNS:
                table.add_column(label, justify="right")
            for row in rows[:max_rows]:
                cells = [fmt(row.get(k), kind) for k, _, kind in GROUP_COLUMNS]
                style = "green" if row["pnl"] > 0 else "red" if row["pnl"] < 0 else None
                table.add_row(str(row[key]), *cells, style=style)
            if len(rows) > max_rows:
                table.caption = f"{len(rows) - max_rows} more {key}s in the JSON report"
            console.print(table)
        for note in self.notes:
            console.print(f"[yellow]note:[/] {note}")


def build_report(
    fills: Iterable[Fill],
    equity_ts: np.ndarray | None = None,
    equity: np.ndarray | None = None,
    start_cash: float = 100_000.0,
    *,
    title: str = "",
    notes: Iterable[str] = (),
    periods_per_year: int = M.PERIODS_PER_YEAR,
    equity_source: str = "given",
    prices: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    batch_id: str = "",
    env: str = "",
) -> Report:
    """Match the fills into round trips and measure everything.

    Without `equity_ts`/`equity` the curve is rebuilt from the fills (fill-marked). `prices`
    (symbol -> (ts ns, price)) are for the page's price charts only.
    """
    fills = sorted(fills, key=lambda f: f.ts)
    notes = list(notes)
    trips, still_open = match_fills(fills)
    if equity_ts is None or equity is None or len(equity_ts) == 0:
        equity_ts, equity = equity_from_fills(fills, start_cash)
        source = "fills"
        notes.append(
            "equity rebuilt from fills: positions marked at the latest fill price (fill-marked curve)"
        )
    else:
        equity_ts = np.asarray(equity_ts, dtype=np.int64)
        equity = np.asarray(equity, dtype=np.float64)
        source = equity_source
    fees_by: dict[str, dict[str, float]] = {"symbol": {}, "strategy": {}}
    for f in fills:
        for key in ("symbol", "strategy"):
            g = getattr(f, key)
            fees_by[key][g] = fees_by[key].get(g, 0.0) + f.fee
    metrics = M.compute_metrics(
        equity_ts,
        equity,
        trips,
        start_equity=start_cash,
        open_positions=still_open,
        fees=float(sum(f.fee for f in fills)),
        periods_per_year=periods_per_year,
    )
    metrics["fills"] = len(fills)
    metrics["open_positions"] = len(still_open)
    return Report(
        title=title,
        start_cash=float(start_cash),
        metrics=metrics,
        per_strategy=M.breakdown(trips, "strategy", fees_by["strategy"]),
        per_symbol=M.breakdown(trips, "symbol", fees_by["symbol"]),
        equity_ts=equity_ts,
        equity=equity,
        drawdown=M.drawdown(equity, start_cash),
        trips=trips,
        open_positions=still_open,
        fills=fills,
        equity_source=source,
        notes=notes,
        prices=dict(prices or {}),
        batch_id=batch_id,
        env=env,
    )


def closes_of(history: dict[str, Any]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """symbol -> (bar end ns, close) from bar histories (liu.features.BarHistory: bars stamped at their
    start), e.g. a backtest runner's `features.history`, for `build_report(prices=...)`."""
    from liu.analysis.timeaxis import bar_step

    out = {}
    for sym, h in history.items():
        ts = np.asarray(h.column("ts"), dtype=np.int64)
        if ts.size:
            out[sym] = (ts + bar_step(ts), np.array(h.column("close"), dtype=np.float64))
    return out


# ---------------------------------------------------------------- helpers


def trips_frame(trips: Sequence[RoundTrip]) -> pd.DataFrame:
    """Round trips as a DataFrame; entry/exit times converted to New York time."""
    columns = [f for f in RoundTrip.__dataclass_fields__]
    df = pd.DataFrame([asdict(t) for t in trips], columns=columns)
    for col in ("entry_ts", "exit_ts"):
        df[col.replace("_ts", "_time")] = M.ny_times(df[col].to_numpy(dtype=np.int64))
    df["holding"] = pd.to_timedelta(df["exit_ts"] - df["entry_ts"], unit="ns")
    return df


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
