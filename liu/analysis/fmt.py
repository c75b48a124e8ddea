"""How the report shows numbers: the headline metrics and their formats, and chart decimation.

Shared by the terminal table (liu.analysis.report) and the page (liu.analysis.page).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

PLOT_POINTS = 4000  # charts keep each bucket's min and max, so peaks and troughs survive

HEADLINE = [
    ("start_equity", "Start equity", "money"),
    ("end_equity", "End equity", "money"),
    ("total_return", "Total return", "pct"),
    ("cagr", "CAGR", "pct"),
    ("volatility", "Volatility (ann.)", "pct"),
    ("sharpe", "Sharpe", "num"),
    ("sortino", "Sortino", "num"),
    ("calmar", "Calmar", "num"),
    ("max_drawdown", "Max drawdown", "pct"),
    ("max_drawdown_duration_s", "Max DD duration", "dur"),
    ("exposure", "Exposure", "pct"),
    ("round_trips", "Round trips", "int"),
    ("win_rate", "Win rate", "pct"),
    ("profit_factor", "Profit factor", "num"),
    ("expectancy", "Expectancy / trip", "money"),
    ("avg_holding_s", "Avg holding", "dur"),
    ("mean_r", "Mean R / trip", "num"),
    ("fees", "Fees paid", "money"),
]
GROUP_COLUMNS = [
    ("round_trips", "trips", "int"),
    ("win_rate", "win rate", "pct"),
    ("pnl", "P&L", "money"),
    ("profit_factor", "PF", "num"),
    ("expectancy", "expectancy", "money"),
    ("mean_r", "mean R", "num"),
    ("avg_holding_s", "avg hold", "dur"),
    ("fees", "fees", "money"),
]


def decimate(values: np.ndarray, max_points: int) -> np.ndarray:
    """Indices to plot: all, or the first, last, min and max of each bucket."""
    n = len(values)
    if n <= max_points:
        return np.arange(n)
    edges = np.linspace(0, n, max_points // 2 + 1, dtype=np.int64)
    keep = [0, n - 1]
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        if b > a:
            seg = values[a:b]
            keep += [a + int(np.argmin(seg)), a + int(np.argmax(seg))]
    return np.unique(keep)


def fmt(value: Any, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float) and math.isinf(value):
        return "∞" if value > 0 else "-∞"
    if kind == "pct":
        return f"{value * 100:.2f} %"
    if kind == "money":
        return f"{value:,.2f}"
    if kind == "int":
        return f"{int(value):,}"
    if kind == "dur":
        return duration(float(value))
    return f"{value:.2f}"


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes = seconds / 60
    if minutes < 60:
        return f"{minutes:.0f}m"
    hours = minutes / 60
    if hours < 48:
        return f"{int(hours)}h{int(minutes % 60):02d}m"
    return f"{hours / 24:.1f}d"
