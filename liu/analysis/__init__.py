"""Performance analysis: round trips, metrics, the report, and stored-batch analysis.

The same code measures a backtest (`trader backtest`) and a daemon batch (end of
session), so both are analysed alike. See `metrics` for the written-down conventions.
"""

from liu.analysis.batch import (
    BatchNotFound,
    analyse_batch,
    bar_closes,
    batch_page,
    batch_report,
    latest_batch,
    list_batches,
    load_bars,
    load_fills,
    load_start_cash,
    save_analysis,
)
from liu.analysis.metrics import compute_metrics, daily_returns, drawdown
from liu.analysis.report import Report, build_report, equity_from_fills, trips_frame
from liu.analysis.trades import OpenPosition, RoundTrip, match_fills, open_positions, round_trips

__all__ = [
    "BatchNotFound",
    "OpenPosition",
    "Report",
    "RoundTrip",
    "analyse_batch",
    "bar_closes",
    "batch_page",
    "batch_report",
    "build_report",
    "compute_metrics",
    "daily_returns",
    "drawdown",
    "equity_from_fills",
    "latest_batch",
    "list_batches",
    "load_bars",
    "load_fills",
    "load_start_cash",
    "match_fills",
    "open_positions",
    "round_trips",
    "save_analysis",
    "trips_frame",
]
