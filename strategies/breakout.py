"""Example strategy: buy a break of the recent high with a stop entry, protected by a bracket or a trailing stop.

It shows the order types a trader uses every day: a stop entry (`trigger=`)
that waits for the breakout, a bracket (`stop=`/`target=`) whose legs cancel
each other, a trailing stop placed when the entry fills, moving a stop up with
`ctx.replace`, and cancelling an entry that waited too long with `ctx.cancel`.
"""

from __future__ import annotations

from pydantic import Field, PositiveInt

from liu.events import Bar, Fill, Order
from liu.strategy import Context, OrderList, Strategy, StrategyConfig

MINUTE = 60_000_000_000


class BreakoutConfig(StrategyConfig):
    """Settings for `Breakout`."""

    lookback: PositiveInt = 20
    """Bars whose high the entry must break."""
    qty: PositiveInt = 10
    stop_pct: float = Field(default=0.01, gt=0, lt=1)
    """Stop-loss distance below the breakout level (bracket mode)."""
    target_pct: float = Field(default=0.02, gt=0)
    """Take-profit distance above the breakout level (bracket mode)."""
    trail_percent: float | None = Field(default=None, gt=0, lt=100)
    """Exit with a trailing stop this many percent below the best price instead of a bracket."""
    patience: PositiveInt = 5
    """Bars an unfilled entry may wait before it is cancelled."""


class Breakout(Strategy):
    """Stop entry at the highest high of the last `lookback` bars; bracket or trailing-stop exit."""

    Config = BreakoutConfig

    def on_bar(self, bar: Bar, ctx: Context) -> OrderList:
        cfg = self.config
        sym = bar.symbol
        for order in ctx.open_orders(sym):
            if not order.leg and order.side == "buy" and bar.ts - order.submitted_ts >= cfg.patience * MINUTE:
                ctx.cancel(order)  # the breakout did not come: stop waiting
            elif order.leg == "stop_loss" and bar.close > order.trigger_price * (1 + 2 * cfg.stop_pct):
                ctx.replace(order, trigger=bar.close * (1 - cfg.stop_pct))  # lock in part of the gain
        highs = ctx.bars(sym).high
        if len(highs) < cfg.lookback or ctx.position(sym) or ctx.open_orders(sym):
            return None
        level = float(highs[-cfg.lookback :].max())
        if cfg.trail_percent is not None:
            return [ctx.buy(sym, cfg.qty, trigger=level, tif="gtc")]
        stop, target = level * (1 - cfg.stop_pct), level * (1 + cfg.target_pct)
        return [ctx.buy(sym, cfg.qty, trigger=level, stop=stop, target=target, tif="gtc")]

    def on_fill(self, fill: Fill, ctx: Context) -> OrderList:
        if self.config.trail_percent is not None and fill.side == "buy":
            return [ctx.sell(fill.symbol, fill.qty, trail_percent=self.config.trail_percent, tif="gtc")]
        return None

    def on_order(self, order: Order, ctx: Context) -> OrderList:
        if order.status == "rejected":
            ctx.log.warning("%s %s refused: %s", order.client_order_id, order.symbol, order.reason)
        return None
