"""Performance metrics from an equity curve and round trips (NumPy, vectorised).

Conventions, written down so results can be checked by hand:
- Equity curve: int64 data-time ns (UTC) + float equity, sorted by time. `start_equity`
  (the starting cash in a report; default the first sample) is the value before the
  first sample: it is the first peak for drawdowns and the base of the first return.
- Returns: daily simple returns of END-OF-DAY equity, the last sample of each New York
  calendar date present in the data (days without samples, e.g. weekends, are skipped).
  r_1 = E_1 / start_equity - 1, r_d = E_d / E_(d-1) - 1.
- Annualisation: `periods_per_year` = 252 (trading days; pass 365 for crypto).
  Risk-free rate 0.
- Volatility = std(r, ddof=1) * sqrt(252). Sharpe = mean(r) / std(r, ddof=1) * sqrt(252).
- Sortino = mean(r) / DD * sqrt(252), DD = sqrt(mean(min(r, 0)^2)) over ALL periods
  (target return 0; Sortino & Price, as in empyrical).
  Sharpe and Sortino are NaN when fewer than 2 returns or the denominator is 0.
- Total return = E_last / start_equity - 1. CAGR = (E_last / start_equity) ** (1 / years) - 1,
  years = (t_last - t_first) / 365.25 days of data time (meaningless for a period of days;
  NaN for a zero-length period).
- Drawdown on EVERY equity sample (not only end of day): dd_t = E_t / max(start, E_0..E_t) - 1,
  a fraction <= 0; max_drawdown is its minimum (e.g. -0.12). Its duration is from the
  peak sample to the first sample back at or above that peak (or the last sample if
  still under water), in seconds of data time; `longest_drawdown_s` is the longest
  such episode. Calmar = CAGR / |max_drawdown| (NaN when there was no drawdown).
- Trades (see liu.analysis.trades for what a round trip is): win = gain_value > 0.
  win_rate = wins / round trips; profit factor = sum of gains / |sum of losses|
  (inf when there is no losing trip); expectancy = mean gain_value per round trip
  (currency, net of fees); avg holding = mean(exit_ts - entry_ts); mean_r over the trips
  that have r-units.
- Exposure: fraction of [t_first, t_last] of the equity curve during which at least one
  position (any strategy, any symbol) was open: the union of the round trips'
  [entry, exit] intervals and the still-open positions' [entry, t_last].
- Fees: all fees paid in the period (open positions' entry fees included when given).
Durations are in seconds of data time; fractions are plain fractions (0.05 = 5 %).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from liu.analysis.trades import OpenPosition, RoundTrip

NY = "America/New_York"
DAY_NS = 86_400 * 10**9
YEAR_NS = 365.25 * DAY_NS
PERIODS_PER_YEAR = 252
NAN = float("nan")


# ---------------------------------------------------------------- equity curve


def ny_times(ts: np.ndarray) -> pd.DatetimeIndex:
    """int ns timestamps (UTC) as New York times (tz-aware; `.tz_localize(None)` for naive)."""
    return pd.to_datetime(np.asarray(ts, dtype=np.int64), unit="ns", utc=True).tz_convert(NY)


def ny_days(ts: np.ndarray) -> np.ndarray:
    """New York calendar day number (days since 1970-01-01, local) of each ns timestamp."""
    return ny_times(ts).tz_localize(None).as_unit("ns").asi8 // DAY_NS


def daily_equity(ts: np.ndarray, equity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ts, equity) of the last sample of each New York date."""
    ts = np.asarray(ts, dtype=np.int64)
    equity = np.asarray(equity, dtype=np.float64)
    if ts.size == 0:
        return ts, equity
    days = ny_days(ts)
    last = np.flatnonzero(np.append(days[1:] != days[:-1], True))
    return ts[last], equity[last]


def daily_returns(ts: np.ndarray, equity: np.ndarray, start_equity: float | None = None) -> np.ndarray:
    """Simple returns of end-of-day equity; the first one is measured from `start_equity`."""
    _, eod = daily_equity(ts, equity)
    if eod.size == 0:
        return eod
    base = float(equity[0]) if start_equity is None else float(start_equity)
    values = np.concatenate([[base], eod])
    return values[1:] / values[:-1] - 1.0


def drawdown(equity: np.ndarray, start_equity: float | None = None) -> np.ndarray:
    """dd_t = E_t / running peak - 1 (<= 0) for every sample; the start counts as a peak."""
    equity = np.asarray(equity, dtype=np.float64)
    if equity.size == 0:
        return equity
    start = equity[0] if start_equity is None else float(start_equity)
    peak = np.maximum.accumulate(np.concatenate([[start], equity]))[1:]
    return equity / peak - 1.0


def drawdown_stats(
    ts: np.ndarray, equity: np.ndarray, start_equity: float | None = None
) -> tuple[float, int, int]:
    """(max drawdown, its duration in ns, longest drawdown duration in ns); see the module doc."""
    ts = np.asarray(ts, dtype=np.int64)
    equity = np.asarray(equity, dtype=np.float64)
    if equity.size == 0:
        return NAN, 0, 0
    start = equity[0] if start_equity is None else float(start_equity)
    curve = np.concatenate([[start], equity])
    times = np.concatenate([[ts[0]], ts])
    peak = np.maximum.accumulate(curve)
    dd = curve / peak - 1.0
    under = curve < peak
    if not under.any():
        return 0.0, 0, 0
    n = curve.size
    idx = np.arange(n)
    peak_idx = np.maximum.accumulate(np.where(under, 0, idx))
    run_end = np.flatnonzero(under & ~np.append(under[1:], False))  # last underwater sample of each run
    ends = np.where(run_end + 1 < n, times[np.minimum(run_end + 1, n - 1)], times[run_end])
    durations = ends - times[peak_idx[run_end]]
    worst = int(np.argmin(dd))
    worst_run = int(np.searchsorted(run_end, worst))  # the run whose last sample is at/after `worst`
    return float(dd[worst]), int(durations[worst_run]), int(durations.max())


def equity_metrics(
    ts: np.ndarray,
    equity: np.ndarray,
    start_equity: float | None = None,
    periods_per_year: int = PERIODS_PER_YEAR,
) -> dict[str, float]:
    """Return, risk and drawdown metrics of one equity curve."""
    ts = np.asarray(ts, dtype=np.int64)
    equity = np.asarray(equity, dtype=np.float64)
    if equity.size == 0:
        keys = ("total_return", "cagr", "volatility", "sharpe", "sortino", "max_drawdown", "calmar")
        out = dict.fromkeys(keys, NAN)
        out.update(
            start_equity=NAN if start_equity is None else float(start_equity),
            end_equity=NAN,
            max_drawdown_duration_s=0.0,
            longest_drawdown_s=0.0,
            trading_days=0,
        )
        return out
    start = float(equity[0]) if start_equity is None else float(start_equity)
    end = float(equity[-1])
    r = daily_returns(ts, equity, start)
    ann = math.sqrt(periods_per_year)
    if r.size >= 2:
        mean = float(r.mean())
        sd = float(r.std(ddof=1))
        down = float(np.sqrt(np.mean(np.minimum(r, 0.0) ** 2)))
        volatility = sd * ann
        sharpe = mean / sd * ann if sd > 0 else NAN
        sortino = mean / down * ann if down > 0 else NAN
    else:
        volatility = sharpe = sortino = NAN
    total = end / start - 1.0 if start else NAN
    years = (int(ts[-1]) - int(ts[0])) / YEAR_NS
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        cagr = float(np.power(end / start, 1.0 / years) - 1.0) if years > 0 and start and end > 0 else NAN
    max_dd, dd_ns, longest_ns = drawdown_stats(ts, equity, start)
    calmar = cagr / abs(max_dd) if max_dd < 0 and not math.isnan(cagr) else NAN
    return {
        "start_equity": start,
        "end_equity": end,
        "total_return": total,
        "cagr": cagr,
        "volatility": volatility,
        "sharpe": sharpe,
        "sortino": sortino,
        "max_drawdown": max_dd,
        "max_drawdown_duration_s": dd_ns / 1e9,
        "longest_drawdown_s": longest_ns / 1e9,
        "calmar": calmar,
        "trading_days": int(r.size),
    }


# ---------------------------------------------------------------- round trips


def trip_arrays(trips: Sequence[RoundTrip]) -> dict[str, np.ndarray]:
    """Column arrays of the round trips (r_units NaN where there was no stop)."""
    return {
        "gain": np.array([t.gain_value for t in trips], dtype=np.float64),
        "fees": np.array([t.fees for t in trips], dtype=np.float64),
        "entry_ts": np.array([t.entry_ts for t in trips], dtype=np.int64),
        "exit_ts": np.array([t.exit_ts for t in trips], dtype=np.int64),
        "r": np.array([NAN if t.r_units is None else t.r_units for t in trips], dtype=np.float64),
    }


def _trade_stats(gain: np.ndarray, hold_ns: np.ndarray, r: np.ndarray) -> dict[str, float]:
    n = int(gain.size)
    wins = gain > 0
    losses = gain < 0
    gross_win = float(gain[wins].sum())
    gross_loss = float(-gain[losses].sum())
    if gross_loss > 0:
        profit_factor = gross_win / gross_loss
    else:
        profit_factor = math.inf if gross_win > 0 else NAN
    has_r = ~np.isnan(r)
    return {
        "round_trips": n,
        "wins": int(wins.sum()),
        "losses": int(losses.sum()),
        "win_rate": float(wins.mean()) if n else NAN,
        "profit_factor": profit_factor,
        "expectancy": float(gain.mean()) if n else NAN,
        "avg_win": float(gain[wins].mean()) if wins.any() else NAN,
        "avg_loss": float(gain[losses].mean()) if losses.any() else NAN,
        "pnl": float(gain.sum()),
        "avg_holding_s": float(hold_ns.mean()) / 1e9 if n else NAN,
        "r_trips": int(has_r.sum()),
        "mean_r": float(r[has_r].mean()) if has_r.any() else NAN,
    }


def trade_metrics(trips: Sequence[RoundTrip]) -> dict[str, float]:
    """Win rate, profit factor, expectancy, holding time and r-units of a set of round trips."""
    a = trip_arrays(trips)
    return _trade_stats(a["gain"], a["exit_ts"] - a["entry_ts"], a["r"])


def exposure(starts: np.ndarray, ends: np.ndarray, period_start: int, period_end: int) -> float:
    """Fraction of [period_start, period_end] covered by the union of the [start, end] intervals."""
    span = period_end - period_start
    if span <= 0:
        return NAN
    s = np.clip(np.asarray(starts, dtype=np.int64), period_start, period_end)
    e = np.clip(np.asarray(ends, dtype=np.int64), period_start, period_end)
    if s.size == 0:
        return 0.0
    order = np.argsort(s, kind="stable")
    s, e = s[order], e[order]
    reach = np.maximum.accumulate(e)
    # An interval starts a new block when it begins after everything before it ended.
    new_block = np.concatenate([[True], s[1:] > reach[:-1]])
    block_start = s[new_block]
    block_end = reach[np.append(np.flatnonzero(new_block)[1:] - 1, s.size - 1)]
    return float((block_end - block_start).sum()) / span


def compute_metrics(
    equity_ts: np.ndarray,
    equity: np.ndarray,
    trips: Sequence[RoundTrip],
    *,
    start_equity: float | None = None,
    open_positions: Sequence[OpenPosition] = (),
    fees: float | None = None,
    periods_per_year: int = PERIODS_PER_YEAR,
) -> dict[str, float]:
    """Every headline metric of a run; `fees` defaults to the round trips' and open positions' fees."""
    equity_ts = np.asarray(equity_ts, dtype=np.int64)
    out = equity_metrics(equity_ts, equity, start_equity, periods_per_year)
    a = trip_arrays(trips)
    out.update(_trade_stats(a["gain"], a["exit_ts"] - a["entry_ts"], a["r"]))
    if equity_ts.size:
        t0, t1 = int(equity_ts[0]), int(equity_ts[-1])
        starts = np.concatenate([a["entry_ts"], [p.entry_ts for p in open_positions]]).astype(np.int64)
        ends = np.concatenate([a["exit_ts"], np.full(len(open_positions), t1, dtype=np.int64)])
        out["exposure"] = exposure(starts, ends, t0, t1)
        out["period_start_ns"] = t0
        out["period_end_ns"] = t1
    else:
        out["exposure"] = NAN
    if fees is None:
        fees = sum(t.fees for t in trips) + sum(p.entry_fees for p in open_positions)
    out["fees"] = float(fees)
    return out


def breakdown(
    trips: Sequence[RoundTrip], by: str, fees: dict[str, float] | None = None
) -> list[dict[str, float | str]]:
    """Trade metrics per group (`by` = "symbol" or "strategy"), sorted by P&L, best first.

    `fees` maps group → all fees paid by that group (open positions included); without
    it the round trips' fees are used.
    """
    if by not in ("symbol", "strategy"):
        raise ValueError(f"by={by!r} must be 'symbol' or 'strategy'")
    keys = [getattr(t, by) for t in trips]
    groups = sorted(set(keys) | set(fees or ()))
    a = trip_arrays(trips)
    hold = a["exit_ts"] - a["entry_ts"]
    position = {g: i for i, g in enumerate(groups)}
    codes = np.array([position[k] for k in keys], dtype=np.int64)
    rows = []
    for i, g in enumerate(groups):
        m = codes == i
        row: dict[str, float | str] = {by: g}
        row.update(_trade_stats(a["gain"][m], hold[m], a["r"][m]))
        row["fees"] = float(fees[g]) if fees and g in fees else float(a["fees"][m].sum())
        rows.append(row)
    rows.sort(key=lambda row: -float(row["pnl"]))
    return rows
