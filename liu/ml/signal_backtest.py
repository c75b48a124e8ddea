"""Backtest of a model's signal on a walk-forward test fold, through the real backtester.

Metrics such as ROC AUC say little about money. So `trader train` also trades each fold model's signal
on its own test bars with `liu.backtest.run_backtest`: the same runner, paper broker, fill model, fees,
slippage and cash rules as the daemon. The fold model's outputs are computed beforehand on the fold's
test rows (features from past and current bars only, as in training) and handed to `SignalReplay`, a
small strategy keyed by (symbol, bar time). It goes long at a bar's close when the signal says so and
exits at a bar's close when it no longer does; the paper broker fills those market orders at the next
bar's open. Only the fold's test bars are fed, so nothing fills outside the test window; an order placed
at the last bar's close stays unfilled, and a position still open at the end is marked at the last close.

The settings are the `[backtest]` table of a model spec (`liu.ml.spec.BacktestSettings`), e.g.::

    [backtest]
    threshold = 0.55     # classifier: long when P(up class) >= threshold (default 0.5)
                         # regressor: long when the predicted return > threshold (default 0.0)
    allocation = 0.5     # fraction of the starting cash in play, split evenly across the symbols
    # enabled = false    # skip the signal backtest

`SignalReplay` lives in this module (not in strategies/) so that it ships with the installed package;
the plan built here points the plugin loader at this file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from liu.events import BAR, Bar
from liu.ml.spec import BacktestSettings
from liu.strategy import Context, OrderList, Strategy, StrategyConfig

if TYPE_CHECKING:
    import numpy as np

    from liu.backtest import BacktestResult
    from liu.plan import BrokerPlan

__all__ = [
    "BacktestSettings",
    "SignalBacktest",
    "SignalReplay",
    "buy_and_hold",
    "signal_backtest",
    "signal_plan",
]

STRATEGY_NAME = "signal"


# ----------------------------------------------------------------------------------- strategy


class SignalReplayConfig(StrategyConfig):
    """Settings for `SignalReplay` (built by `signal_backtest`, rarely by hand)."""

    signals: dict[str, dict[int, float]]
    """symbol -> bar start time (ns) -> model output (P(up), or the predicted return)."""
    threshold: float
    strict: bool = False
    """Long when value > threshold (True) or value >= threshold (False)."""
    budget: float = Field(gt=0)
    """Cash per symbol for an entry (also capped by the cash available)."""
    fee_per_share: float = Field(default=0.0, ge=0)
    fee_bps: float = Field(default=0.0, ge=0)
    slippage_bps: float = Field(default=0.0, ge=0)
    """The broker's costs, used only to size entries so that their cash reservation fits the budget."""


class SignalReplay(Strategy):
    """Long while a precomputed signal is on, flat otherwise; bars without a signal change nothing."""

    Config = SignalReplayConfig

    def on_bar(self, bar: Bar, ctx: Context) -> OrderList:
        cfg = self.config
        value = cfg.signals.get(bar.symbol, {}).get(bar.ts)
        if value is None:
            return None
        on = value > cfg.threshold if cfg.strict else value >= cfg.threshold
        held = ctx.position(bar.symbol)
        if on and held <= 0:
            # The broker reserves qty * close * (1 + slippage) plus fees for a market buy.
            px = bar.close * (1 + cfg.slippage_bps / 1e4)
            unit = px * (1 + cfg.fee_bps / 1e4) + cfg.fee_per_share
            qty = math.floor(min(cfg.budget, ctx.cash) / unit) if unit > 0 else 0
            return [ctx.buy(bar.symbol, qty)] if qty > 0 else None
        if not on and held > 0:
            return [ctx.sell(bar.symbol, held)]
        return None


# ----------------------------------------------------------------------------------- backtest


@dataclass
class SignalBacktest:
    """One fold's signal backtest: returns as fractions, and the backtester's own result."""

    signal_return: float
    buy_hold_return: float
    round_trips: int
    bars: int
    result: BacktestResult = field(repr=False)

    def metrics(self) -> dict[str, Any]:
        """Per-fold metrics for TrainResult (percent, like the table)."""
        return {
            "signal_return_pct": 100.0 * self.signal_return,
            "buy_hold_return_pct": 100.0 * self.buy_hold_return,
            "round_trips": self.round_trips,
            "signal_fills": len(self.result.fills),
            "signal_rejected": int(self.result.counts.get("rejected", 0)),
        }


def buy_and_hold(bars: Sequence[tuple]) -> float:
    """Equal-weight return of holding every symbol from its first bar's open to its last bar's close."""
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for ev in bars:
        first.setdefault(ev[1], ev[3])
        last[ev[1]] = ev[6]
    rets = [last[s] / first[s] - 1.0 for s in first if first[s] > 0]
    return sum(rets) / len(rets) if rets else 0.0


def signal_plan(
    signals: dict[str, dict[int, float]],
    *,
    threshold: float,
    strict: bool,
    allocation: float,
    broker: BrokerPlan | None,
):
    """A one-strategy TradePlan that replays `signals` through the paper broker of `broker`."""
    from liu.plan import BrokerPlan, parse_plan

    b = broker or BrokerPlan()
    broker_raw = b.model_dump() | {"kind": "paper"}
    config = {
        "signals": signals,
        "threshold": threshold,
        "strict": strict,
        "budget": b.cash * allocation / max(1, len(signals)),
        "fee_per_share": b.fee_per_share,
        "fee_bps": b.fee_bps,
        "slippage_bps": b.slippage_bps,
    }
    raw = {
        "source": {"bars": "stream"},
        "broker": broker_raw,
        "strategies": [
            {
                "name": STRATEGY_NAME,
                "file": str(Path(__file__).resolve()),
                "class": "SignalReplay",
                "config": config,
            }
        ],
    }
    return parse_plan(raw, "signal backtest plan", Path(__file__).resolve().parent)


def signal_backtest(
    bars: Sequence[tuple],
    values: Sequence[float] | np.ndarray,
    *,
    threshold: float,
    strict: bool = False,
    allocation: float = 1.0,
    broker: BrokerPlan | None = None,
) -> SignalBacktest:
    """Trade `values` (one per bar: the signal at that bar's close) over `bars` (BAR wire tuples).

    Bars are fed to the backtester in time order (stable: equal times keep their given order). NaN
    values mean "no signal" (the position is left as it is).
    """
    from liu.analysis.trades import round_trips
    from liu.backtest import run_backtest

    if len(bars) != len(values):
        raise ValueError(f"signal_backtest: {len(bars)} bars but {len(values)} signal values")
    order = sorted(range(len(bars)), key=lambda i: bars[i][2])
    events = [bars[i] for i in order]
    if any(ev[0] != BAR for ev in events):
        raise ValueError("signal_backtest: expected BAR wire tuples (2, symbol, ts, o, h, l, c, v, recv)")
    signals: dict[str, dict[int, float]] = {}
    for i in order:
        v = float(values[i])
        if not math.isnan(v):
            signals.setdefault(bars[i][1], {})[int(bars[i][2])] = v
    for ev in events:
        signals.setdefault(ev[1], {})  # every symbol gets a budget slice, even without signals
    plan = signal_plan(signals, threshold=threshold, strict=strict, allocation=allocation, broker=broker)
    result = run_backtest(plan, events=[events])
    return SignalBacktest(
        signal_return=result.final_equity / result.start_cash - 1.0,
        buy_hold_return=buy_and_hold(events),
        round_trips=len(round_trips(result.fills)),
        bars=len(events),
        result=result,
    )
