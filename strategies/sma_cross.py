"""Example strategy: simple-moving-average crossover, long (and optionally short)."""

from __future__ import annotations

import math
from typing import Self

from pydantic import Field, PositiveInt, model_validator

from liu.events import Bar, Fill
from liu.strategy import Context, OrderList, Strategy, StrategyConfig


class SmaCrossConfig(StrategyConfig):
    """Settings for `SmaCross`."""

    fast_period: PositiveInt = 10
    slow_period: PositiveInt = 30
    allocation: float = Field(default=1.0, gt=0, le=1)
    """Fraction of available cash to put into each entry."""
    allow_short: bool = False
    stop_pct: float = Field(default=0.02, ge=0, lt=1)
    """Stop-loss of each entry's bracket, as a fraction of the signal bar's close (0 = none).

    The bracket is good-till-cancelled, so the stop protects the position overnight too."""

    @model_validator(mode="after")
    def _periods_ordered(self) -> Self:
        if self.fast_period >= self.slow_period:
            raise ValueError(f"fast_period={self.fast_period} must be below slow_period={self.slow_period}")
        return self


class SmaCross(Strategy):
    """Buys when the fast SMA of closes crosses above the slow one, exits (or shorts) on the cross down.

    Orders are market orders placed at a bar's close; the paper broker fills
    them at the next event (the next bar's open when trading on bars). Each
    entry is a bracket with a stop-loss `stop_pct` away from the signal close.
    """

    Config = SmaCrossConfig

    def __init__(self, name: str, config: SmaCrossConfig) -> None:
        super().__init__(name, config)
        self._prev: dict[str, float] = {}  # last (fast - slow) per symbol
        self._sma: dict[
            str, tuple
        ] = {}  # per symbol: the two streaming SMA objects (kept: no lookup per bar)

    def on_bar(self, bar: Bar, ctx: Context) -> OrderList:
        cfg = self.config
        sma = self._sma.get(bar.symbol)
        if sma is None:
            sma = self._sma[bar.symbol] = (
                ctx.indicator(bar.symbol, "SMA", timeperiod=cfg.fast_period),
                ctx.indicator(bar.symbol, "SMA", timeperiod=cfg.slow_period),
            )
        fast, slow = sma[0].value, sma[1].value
        if fast is None or slow is None:
            return None
        diff, prev = fast - slow, self._prev.get(bar.symbol)
        self._prev[bar.symbol] = diff
        if prev is None:
            return None
        held = ctx.position(bar.symbol)
        if prev <= 0 < diff and held <= 0:
            qty = math.floor(ctx.cash * cfg.allocation / bar.close)
            orders = [ctx.buy(bar.symbol, -held)] if held < 0 else []
            if qty > 0:
                stop = bar.close * (1 - cfg.stop_pct) if cfg.stop_pct else None
                orders.append(ctx.buy(bar.symbol, qty, stop=stop, tif="gtc"))
            return orders
        if prev >= 0 > diff and held >= 0:
            orders = [ctx.sell(bar.symbol, held)] if held > 0 else []
            if cfg.allow_short:
                qty = math.floor(ctx.cash * cfg.allocation / bar.close)
                if qty > 0:
                    stop = bar.close * (1 + cfg.stop_pct) if cfg.stop_pct else None
                    orders.append(ctx.sell(bar.symbol, qty, stop=stop, tif="gtc"))
            return orders
        return None

    def on_fill(self, fill: Fill, ctx: Context) -> OrderList:
        ctx.keystore["fills"] = ctx.keystore.get("fills", 0) + 1
        return None
