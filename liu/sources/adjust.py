"""Split and dividend adjustment of recorded data files, and the corporate actions they imply.

Recorded prices are raw. A file may carry its adjustment factors:

* `split_factor`, `price_factor` (the Lean files, see ../shared/data/README.md): split-adjusted is
  `price * split_factor`, also dividend-adjusted `price * split_factor * price_factor`;
* `adjusted_close`, `split_coefficient`, `dividend_amount` (the daily AlphaVantage file): the total
  factor is `adjusted_close / close`, splits are on their ex-date rows.

`adjustment` says what to take out of the prices: "all" (splits and dividends, the default),
"split", "dividend" or "raw" (nothing). Factors are normalised per symbol to its last row in the
file (`latest_factors`), so the file's last prices are as traded (what Alpaca's `adjustment=all`
bars show on the day they are fetched) and a split inside the data gives the earlier prices / split
and volumes x split, whatever part of the file is replayed. Anything else that serves the same
file's bars (history for warm-up, training) should adjust with these functions too, or its prices
and the replay's differ by the factors' basis. What is left raw becomes corporate actions
(`liu.corporate`) at the ex-dates: the runner then adjusts positions, orders and bar history there
as a broker does, so a raw replay is P&L-continuous too. A file without factors is replayed as
recorded, whatever `adjustment` says.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
import pandas as pd

from liu.corporate import CorporateAction

ADJUSTMENTS = ("all", "split", "dividend", "raw")
NY = "America/New_York"
_TOL = 1e-6  # relative change of a factor that counts as a corporate action (the files round to 7 digits)


@dataclass
class Adjustment:
    """Per-row multipliers for prices and sizes (None: nothing to change) and the actions left raw."""

    price: np.ndarray | None = None
    volume: np.ndarray | None = None
    actions: list[CorporateAction] = field(default_factory=list)


def has_factors(columns: Any) -> bool:
    cols = set(columns)
    return bool(cols & {"split_factor", "price_factor"}) or {"adjusted_close", "close"} <= cols


def latest_factors(df: pd.DataFrame, ts: np.ndarray) -> dict[str, tuple[float, float]] | None:
    """symbol → (split factor, dividend factor) of its last row: the basis prices are adjusted to.

    None when the file has no factors. Give it the whole file (or all of a symbol's rows), not the
    replayed part, so every reader of the file adjusts to the same basis.
    """
    if not len(df):
        return None
    codes, names = pd.factorize(df["symbol"].astype(str), sort=True)
    factors = row_factors(df, codes, ts)
    if factors is None:
        return None
    order = np.lexsort((ts, codes))
    ends = order[np.flatnonzero(np.append(codes[order][1:] != codes[order][:-1], True))]
    sf, pf = factors
    return {str(names[codes[i]]): (float(sf[i]), float(pf[i])) for i in ends.tolist()}


def adjustment_of(
    df: pd.DataFrame,
    fmt: str,
    sym: np.ndarray,
    names: list[str],
    ts: np.ndarray,
    adjustment: str,
    basis: dict[str, tuple[float, float]] | None = None,
) -> Adjustment:
    """The multipliers and corporate actions of `df`'s rows (symbol codes `sym` into `names`, times `ts`).

    `basis` is `latest_factors` of the whole file; None: of `df` itself.
    """
    if adjustment not in ADJUSTMENTS:
        raise ValueError(f"adjustment {adjustment!r} must be one of {', '.join(ADJUSTMENTS)}")
    factors = row_factors(df, sym, ts)
    if factors is None or not len(df):
        return Adjustment()
    sf, pf = factors
    out = Adjustment()
    if adjustment != "raw":
        basis = basis if basis is not None else latest_factors(df, ts) or {}
        base = np.array([basis.get(name, (1.0, 1.0)) for name in names]).reshape(-1, 2)
        sf_n = _snap_all(sf / base[sym, 0])  # products of split ratios: 1/7, not 0.1428572
        pf_n = pf / base[sym, 1]
        price = {"all": sf_n * pf_n, "split": sf_n, "dividend": pf_n}[adjustment]
        volume = 1.0 / sf_n if adjustment in ("all", "split") else np.ones(len(df))
        if not (np.allclose(price, 1.0, rtol=0, atol=1e-12) and np.allclose(volume, 1.0, rtol=0, atol=1e-12)):
            out.price, out.volume = price, volume
    if adjustment != "all":
        order = np.lexsort((ts, sym))  # by symbol, then time
        out.actions = _actions(df, fmt, sym, names, ts, order, sf, pf, adjustment)
    return out


def row_factors(df: pd.DataFrame, sym: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(split factor, dividend factor) of each row as recorded, or None when the file has none.

    `sym` are integer symbol codes, `ts` the rows' times (ns): a daily file's split coefficients
    apply to every earlier row of the symbol.
    """
    n = len(df)
    if "split_factor" in df or "price_factor" in df:
        return _ones_for_nan(df, "split_factor", n), _ones_for_nan(df, "price_factor", n)
    if "adjusted_close" in df and "close" in df:
        close = df["close"].to_numpy(dtype="float64", na_value=np.nan)
        total = df["adjusted_close"].to_numpy(dtype="float64", na_value=np.nan) / close
        total[~np.isfinite(total) | (total <= 0)] = 1.0
        coef = _ones_for_nan(df, "split_coefficient", n)
        # Split-adjusted = raw / (product of the coefficients on later rows of the symbol).
        order = np.lexsort((-ts, sym))  # by symbol, newest first
        sf = np.ones(n)
        prod: dict[int, float] = {}
        for i in order.tolist():
            s = int(sym[i])
            p = prod.get(s, 1.0)
            sf[i] = 1.0 / p
            prod[s] = p * coef[i]
        return sf, total / sf
    return None


def _ones_for_nan(df: pd.DataFrame, col: str, n: int) -> np.ndarray:
    if col not in df:
        return np.ones(n)
    a = df[col].to_numpy(dtype="float64", na_value=np.nan, copy=True)
    a[~np.isfinite(a) | (a <= 0)] = 1.0  # symbols without a factor file
    return a


def _actions(
    df: pd.DataFrame,
    fmt: str,
    sym: np.ndarray,
    names: list[str],
    ts: np.ndarray,
    order: np.ndarray,
    sf: np.ndarray,
    pf: np.ndarray,
    adjustment: str,
) -> list[CorporateAction]:
    """The splits (when `adjustment` leaves them raw) and dividends (likewise) between consecutive rows."""
    splits = adjustment in ("raw", "dividend")
    dividends = adjustment in ("raw", "split")
    amounts = (
        df["dividend_amount"].to_numpy(dtype="float64", na_value=0.0) if "dividend_amount" in df else None
    )
    ref = _ffill_by_symbol(_reference_prices(df, fmt), sym, order)
    s_o, sf_o, pf_o = sym[order], sf[order], pf[order]
    same = s_o[1:] == s_o[:-1]
    split_step = same & ~np.isclose(sf_o[1:], sf_o[:-1], rtol=_TOL, atol=0)
    div_step = same & ~np.isclose(pf_o[1:], pf_o[:-1], rtol=_TOL, atol=0)
    if amounts is not None:  # the file says what was paid: no factor arithmetic
        div_step = same & (amounts[order][1:] > 0)
    out = []
    for k in np.flatnonzero(split_step | div_step).tolist():
        prev, row = int(order[k]), int(order[k + 1])
        ratio = _snap(sf[row] / sf[prev]) if split_step[k] else 1.0
        cash = 0.0
        if div_step[k]:
            if amounts is not None:
                cash = float(amounts[row])
            elif np.isfinite(ref[prev]):  # Lean: price_factor(before) = price_factor(after) * (1 - D / close)
                cash = float(ref[prev] / ratio * (1.0 - pf[prev] / pf[row]))
        split = ratio if splits else 1.0
        cash = cash if dividends else 0.0
        if split != 1.0 or cash > 0.0:
            out.append(
                CorporateAction(names[int(sym[row])], _ex_date(int(ts[row]), int(ts[prev])), split, cash)
            )
    return sorted(out, key=lambda a: (a.ts, a.symbol))


def _reference_prices(df: pd.DataFrame, fmt: str) -> np.ndarray:
    """Each row's raw price for dividend amounts: the close, else the quote's mid, else the print."""

    def col(name: str) -> np.ndarray:
        if name not in df:
            return np.full(len(df), np.nan)
        return df[name].to_numpy(dtype="float64", na_value=np.nan)

    if fmt == "trade_ticks":
        return col("price")
    out = col("close")
    mid = (col("bid_close") + col("ask_close")) / 2 if fmt == "lean_minute" else (col("bid") + col("ask")) / 2
    return np.where(np.isnan(out), mid, out)


def _ffill_by_symbol(values: np.ndarray, sym: np.ndarray, order: np.ndarray) -> np.ndarray:
    v = pd.Series(values[order]).groupby(sym[order]).ffill().to_numpy()
    out = np.empty_like(values)
    out[order] = v
    return out


def _snap_all(values: np.ndarray) -> np.ndarray:
    uniq, inverse = np.unique(values, return_inverse=True)
    return np.array([_snap(float(v)) for v in uniq])[inverse]


def _snap(ratio: float) -> float:
    """A split ratio from factors rounded to 7 digits, as the fraction it is (7.0, 1.5, 0.1)."""
    frac = Fraction(ratio).limit_denominator(1000)
    return float(frac) if abs(float(frac) / ratio - 1.0) < 1e-4 else ratio


def _ex_date(ts: int, prev_ts: int) -> int:
    """The start of the New York day of `ts` (a broker applies the action before the open), after `prev_ts`."""
    day = pd.Timestamp(ts, unit="ns", tz="UTC").tz_convert(NY).normalize()
    return max(int(day.tz_convert("UTC").value), prev_ts + 1)
