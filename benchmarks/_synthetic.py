"""Synthetic minute bars and the NumPy reference for the SMA-cross benchmark.

Pure NumPy on purpose: the peer engines' virtual environment reads the same
NPZ file, and the reference must not share code with any engine it judges.

Bars: a seeded geometric random walk per symbol, with small open gaps (so
"fill at the next open" and "fill at the signal close" give different
prices), prices rounded to 8 decimals (an exact decimal for every engine,
while exact SMA ties stay practically impossible), large volumes (so no
engine fills an all-in order in pieces).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

START_NS = 1_704_153_600_000_000_000  # 2024-01-02 00:00 UTC
MINUTE_NS = 60_000_000_000
DECIMALS = 8
FIELDS = ("open", "high", "low", "close", "volume")


def symbols(n: int) -> list[str]:
    return [f"S{i:02d}" for i in range(n)]


def make_bars(n_symbols: int, n_bars: int, seed: int = 42) -> dict[str, np.ndarray]:
    """OHLCV arrays of shape (n_symbols, n_bars) and `ts` (n_bars,), minute bars from START_NS."""
    rng = np.random.default_rng(seed)
    shape = (n_symbols, n_bars)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 1e-3, shape), axis=1))
    prev = np.concatenate([np.full((n_symbols, 1), 100.0), close[:, :-1]], axis=1)
    open_ = prev * np.exp(rng.normal(0.0, 3e-4, shape))
    close, open_ = np.round(close, DECIMALS), np.round(open_, DECIMALS)
    high = np.round(np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 5e-4, shape))), DECIMALS)
    low = np.round(np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 5e-4, shape))), DECIMALS)
    high, low = np.maximum(high, np.maximum(open_, close)), np.minimum(low, np.minimum(open_, close))
    volume = rng.integers(200_000, 1_000_000, shape).astype(np.float64)
    ts = START_NS + np.arange(n_bars, dtype=np.int64) * MINUTE_NS
    return {"ts": ts, "open": open_, "high": high, "low": low, "close": close, "volume": volume}


def save_bars(path: Path, bars: dict[str, np.ndarray]) -> None:
    np.savez(path, **bars)


def load_bars(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def sma(x: np.ndarray, period: int) -> np.ndarray:
    """Simple moving average along the last axis; NaN before the first full window."""
    out = np.full(x.shape, np.nan)
    out[..., period - 1 :] = np.lib.stride_tricks.sliding_window_view(x, period, axis=-1).mean(axis=-1)
    return out


@dataclass
class Reference:
    """What the rules say should happen (per symbol counts, and the whole account's final equity)."""

    entries: list[int]
    exits: list[int]
    final_equity: float
    near_ties: int  # bars whose SMA difference is within 1e-9 of zero (engines may round them apart)
    trades: list[tuple[int, int, str, float, float]] = field(
        default_factory=list
    )  # (bar, sym, side, qty, px)

    @property
    def total_entries(self) -> int:
        return sum(self.entries)

    @property
    def total_exits(self) -> int:
        return sum(self.exits)


def signals(close: np.ndarray, fast: int = 10, slow: int = 30) -> tuple[np.ndarray, np.ndarray, int]:
    """Boolean (cross up, cross down) arrays, vectorised; a cross needs a previous defined difference."""
    diff = sma(close, fast) - sma(close, slow)
    prev = np.concatenate([np.full(close.shape[:-1] + (1,), np.nan), diff[..., :-1]], axis=-1)
    with np.errstate(invalid="ignore"):
        up = (prev <= 0) & (diff > 0)
        down = (prev >= 0) & (diff < 0)
    ties = int(np.count_nonzero(np.abs(diff) < 1e-9))
    return up, down, ties


def reference(
    bars: dict[str, np.ndarray],
    cash: float = 100_000.0,
    *,
    fill: str = "next_open",
    shared: bool = True,
    fast: int = 10,
    slow: int = 30,
) -> Reference:
    """The SMA-cross rules, long only, all-in, no fees.

    Signals are vectorised; only the few signal bars are then walked in event
    order (bar by bar, symbols in order within a bar), because sizing depends
    on the cash left by earlier trades.

    fill="next_open": an order decided at bar t's close fills at bar t+1's open
    (liu, backtrader with cheat-on-open, backtesting.py); a buy sizes as
    floor(available / close_t), where available = cash minus what pending buys
    reserved at their signal close. fill="close": fills at the signal close
    (nautilus_trader's market orders from on_bar). fill="next_open_cut": as
    next_open, but a buy whose open gapped above what the cash pays is cut to
    floor(cash left / open) shares, so cash never goes below zero (liu's broker;
    the peers let such a fill overdraw the account).
    shared=False: each symbol trades its own account of `cash` (one engine run
    per symbol, like backtesting.py); final equity is then the sum.
    """
    o, c = bars["open"], bars["close"]
    n_sym, n = c.shape
    up, down, ties = signals(c, fast, slow)
    accounts = 1 if shared else n_sym
    bal = [cash] * accounts
    reserved = [0.0] * accounts
    held = [0.0] * n_sym
    pending: dict[int, tuple[str, float, float]] = {}  # sym -> (side, qty, reserved)
    entries, exits = [0] * n_sym, [0] * n_sym
    trades: list[tuple[int, int, str, float, float]] = []
    sig_t, sig_s = np.nonzero((up | down).T)  # time-major: bar order, then symbol order
    # Events: each signal bar, plus the bar after it (where its order fills), in (bar, symbol) order.
    events = sorted(
        {(int(t), int(s)) for t, s in zip(sig_t, sig_s, strict=True)}
        | {(int(t) + 1, int(s)) for t, s in zip(sig_t, sig_s, strict=True) if t + 1 < n}
    )
    for t, s in events:
        a = 0 if shared else s
        if s in pending:  # fill at this bar's open (next_open mode only)
            side, qty, res = pending.pop(s)
            px = o[s, t]
            if side == "buy" and fill == "next_open_cut":
                qty = min(qty, float(np.floor((bal[a] - reserved[a] + res) / px)))
            if side == "buy":
                reserved[a] -= res
                if qty > 0:
                    trades.append((t, s, side, qty, px))
                    bal[a] -= qty * px
                    held[s] += qty
                    entries[s] += 1
            else:
                trades.append((t, s, side, qty, px))
                bal[a] += qty * px
                held[s] -= qty
                exits[s] += 1
        if up[s, t] and held[s] <= 0:
            qty = float(np.floor((bal[a] - reserved[a]) / c[s, t]))
            if qty > 0:
                if fill == "close":
                    bal[a] -= qty * c[s, t]
                    held[s] += qty
                    entries[s] += 1
                    trades.append((t, s, "buy", qty, c[s, t]))
                elif t + 1 < n:
                    pending[s] = ("buy", qty, qty * c[s, t])
                    reserved[a] += qty * c[s, t]
                else:  # decided on the last bar: the order never fills, but cash stays reserved
                    reserved[a] += qty * c[s, t]
        elif down[s, t] and held[s] > 0:
            if fill == "close":
                bal[a] += held[s] * c[s, t]
                exits[s] += 1
                trades.append((t, s, "sell", held[s], c[s, t]))
                held[s] = 0.0
            elif t + 1 < n:
                pending[s] = ("sell", held[s], 0.0)
    equity = sum(bal) + float(sum(held[s] * c[s, -1] for s in range(n_sym)))
    return Reference(entries, exits, equity, ties, trades)
