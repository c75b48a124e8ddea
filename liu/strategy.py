"""The `Strategy` base class and the `Context` it trades through.

A strategy is plain Python: subclass `Strategy`, override the hooks you need,
and list the class in `tradeplan.toml`. The same class runs in the daemon's
consumer processes and in the backtester, driven by `liu.runner`.
Hooks may be plain functions or `async def`; plain functions are cheaper on
the per-event path.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict

from liu.brokers.account import AccountView
from liu.brokers.base import Broker, Position
from liu.errors import ConfigError
from liu.events import Bar, Fill, Order, Quote, Trade
from liu.features import BarHistory, Features
from liu.hooks import ModelHook
from liu.orders import OrderDesk

if TYPE_CHECKING:
    import numpy as np

OrderList = list[Order] | None


class RunnerView(Protocol):
    """What a `Context` reads from the runner that drives it (`liu.runner.StrategyRunner`)."""

    now: int
    recv_ns: int
    broker: Broker
    desk: OrderDesk
    features: Features
    last_price: dict[str, float]

    def reject(self, strategy: str, symbol: str) -> None: ...


def new_order(
    symbol: str,
    side: str,
    qty: float,
    limit: float | None = None,
    trigger: float | None = None,
    trail_percent: float | None = None,
    trail_price: float | None = None,
    stop: float | None = None,
    target: float | None = None,
    tif: str = "day",
) -> Order:
    """The order `ctx.buy`/`ctx.sell` build: its type follows from the prices given, a stop or target
    makes it a bracket."""
    if trail_percent is not None or trail_price is not None:
        kind = "trailing_stop"
    elif trigger is not None:
        kind = "stop_limit" if limit is not None else "stop"
    else:
        kind = "limit" if limit is not None else "market"
    return Order(
        symbol,
        side,
        qty,
        kind,
        limit,
        stop,
        target,
        tif=tif,
        trigger_price=trigger,
        trail_percent=trail_percent,
        trail_price=trail_price,
        order_class="bracket" if stop is not None or target is not None else "simple",
    )


class StrategyConfig(BaseModel):
    """Base for a strategy's settings (the `config` table of its tradeplan entry).

    Unknown keys are rejected and the model is frozen, so a typo in the
    tradeplan stops the start instead of silently using a default.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


class Context:
    """What a strategy sees and does: prices, bars, indicators, positions, cash, orders.

    One `Context` per strategy per consumer process. Positions and fills are
    the strategy's own; cash is the account's (shared by all strategies).
    """

    def __init__(self, strategy: str, runner: RunnerView, keystore: MutableMapping[str, Any]) -> None:
        self.strategy = strategy
        self._runner = runner
        self.keystore = keystore
        self.log = logging.getLogger(f"liu.strategy.{strategy}")
        self.models: dict[str, float] = {}
        """Models listed in this strategy's tradeplan entry: name → vote weight (plan order)."""
        self._scorer: ModelHook | None = None
        self._predictions: dict[str, dict[str, np.ndarray | None]] = {}
        self._positions: dict[str, Position] = {}  # symbol → the broker's (live, mutated) Position

    def attach_models(self, scorer: ModelHook, weights: dict[str, float]) -> None:
        """Give this strategy its models' outputs (done by `build_runner` from the tradeplan)."""
        self._scorer = scorer
        self.models = dict(weights)
        self._predictions = {name: scorer.latest(name) for name in weights}

    @property
    def now(self) -> int:
        """Data time of the event being handled, in ns since the epoch (UTC)."""
        return self._runner.now

    @property
    def received_ns(self) -> int:
        """Wall time (ns) at which the producer received the trade being handled (for latency)."""
        return self._runner.recv_ns

    @property
    def cash(self) -> float:
        """Cash available for new positions (account cash minus reservations and margin)."""
        return self._runner.broker.available_cash()

    def position(self, symbol: str) -> float:
        """Signed quantity this strategy holds in `symbol` (negative = short)."""
        pos = self._positions.get(symbol)  # the broker keeps one Position object per (strategy, symbol)
        if pos is None:
            pos = self._positions[symbol] = self._runner.broker.position(self.strategy, symbol)
        return pos.qty

    def positions(self) -> dict[str, float]:
        """Every non-zero position of this strategy in this process."""
        return self._runner.broker.positions(self.strategy)

    def last_price(self, symbol: str) -> float | None:
        """Price of the last trade (or bar close) seen for `symbol`."""
        return self._runner.last_price.get(symbol)

    def bars(self, symbol: str) -> BarHistory:
        """Closed minute bars of `symbol`, oldest first, as numpy arrays."""
        return self._runner.features.bars(symbol)

    def ta(self, symbol: str, name: str, **params: Any) -> Any:
        """Current value of TA-Lib function `name` on `symbol`'s closed bars, or None while warming up.

        Example:
            ctx.ta("AAPL", "SMA", timeperiod=10)   # float
            ctx.ta("AAPL", "MACD")                  # (macd, signal, hist)
        """
        return self._runner.features.indicator(symbol, name, **params).value

    def indicator(self, symbol: str, name: str, **params: Any):
        """The streaming indicator object itself (`.value`, `.peek(x)`)."""
        return self._runner.features.indicator(symbol, name, **params)

    def prediction(self, model: str, symbol: str) -> np.ndarray | None:
        """Outputs of `model` at `symbol`'s latest closed bar, or None while its features warm up.

        A classifier gives its probabilities in `model_classes(model)` order, a regressor a
        one-element array. In `on_bar` they belong to the bar being handled.
        """
        try:
            return self._predictions[model].get(symbol)
        except KeyError:
            raise ConfigError(
                f"strategy {self.strategy}: no model {model!r} in its tradeplan entry (it has {list(self.models)})"
            ) from None

    def model_classes(self, model: str) -> tuple:
        """Class labels in probability order (e.g. (-1, 0, 1)), or ("value",) for a regressor."""
        if self._scorer is None or model not in self.models:
            raise ConfigError(
                f"strategy {self.strategy}: no model {model!r} in its tradeplan entry (it has {list(self.models)})"
            )
        return self._scorer.classes(model)

    def model_version(self, model: str) -> int:
        """The version of `model` scoring now (changes when a new version is promoted)."""
        self.model_classes(model)  # same check
        return self._scorer.version(model)  # type: ignore[union-attr]

    def buy(
        self,
        symbol: str,
        qty: float,
        limit: float | None = None,
        stop: float | None = None,
        target: float | None = None,
        *,
        trigger: float | None = None,
        trail_percent: float | None = None,
        trail_price: float | None = None,
        tif: str = "day",
    ) -> Order:
        """A buy order; return it from a hook to place it.

        Market by default; `limit=` makes it a limit order, `trigger=` a stop (with `limit=`, a
        stop-limit), `trail_percent=`/`trail_price=` a trailing stop. `stop=`/`target=` make it a
        bracket: once it fills, a stop-loss and a take-profit protect the position and cancel
        each other. `tif` is "day" (expires at the close), "gtc", "ioc" or "fok".
        """
        return new_order(symbol, "buy", qty, limit, trigger, trail_percent, trail_price, stop, target, tif)

    def sell(
        self,
        symbol: str,
        qty: float,
        limit: float | None = None,
        stop: float | None = None,
        target: float | None = None,
        *,
        trigger: float | None = None,
        trail_percent: float | None = None,
        trail_price: float | None = None,
        tif: str = "day",
    ) -> Order:
        """A sell order (the same options as `buy`); selling more than you hold opens a short
        (if the symbol is shortable)."""
        return new_order(symbol, "sell", qty, limit, trigger, trail_percent, trail_price, stop, target, tif)

    def cancel(self, order: Order) -> bool:
        """Cancel an open order now; False when it was no longer open. `on_order` reports it."""
        return self._runner.desk.cancel(order, self._runner.now)

    def replace(
        self,
        order: Order,
        *,
        qty: float | None = None,
        limit: float | None = None,
        trigger: float | None = None,
        trail_percent: float | None = None,
        trail_price: float | None = None,
    ) -> Order | None:
        """Replace an open order (new quantity or prices); returns the new order, or None when the
        old one was no longer open. A refused replacement leaves the old order working."""
        return self._runner.desk.replace(
            order,
            self._runner.now,
            qty=qty,
            limit_price=limit,
            trigger_price=trigger,
            trail_percent=trail_percent,
            trail_price=trail_price,
        )

    def open_orders(self, symbol: str | None = None) -> list[Order]:
        """This strategy's open orders (in `symbol`, or all), bracket legs included."""
        return self._runner.desk.open_orders(self.strategy, symbol)

    @property
    def account(self) -> AccountView:
        """The whole account (all strategies, all consumers): cash, equity, buying power, gross
        exposure, day P&L and whether trading is halted."""
        return self._runner.desk.account_view()

    def reject(self, symbol: str) -> None:
        """Stop sending `symbol`'s events to this strategy."""
        self._runner.reject(self.strategy, symbol)


class Strategy:
    """Base class for strategies. Subclass it and override the hooks you need.

    Hooks run in a consumer process, for the symbols that process owns. Each
    may return a list of orders (built with `ctx.buy` / `ctx.sell`) or None.
    Do not block in a hook: it holds up every symbol of that consumer.

    Example:
        class Dip(Strategy):
            def on_bar(self, bar, ctx):
                rsi = ctx.ta(bar.symbol, "RSI", timeperiod=14)
                if rsi is not None and rsi < 30 and not ctx.position(bar.symbol):
                    return [ctx.buy(bar.symbol, 10)]
                return None
    """

    Config: ClassVar[type[StrategyConfig]] = StrategyConfig

    def __init__(self, name: str, config: StrategyConfig) -> None:
        self.name = name
        self.config = config

    def on_start(self, ctx: Context) -> None:
        """Runs once per consumer process before the first event. Default: nothing."""

    def on_bar(self, bar: Bar, ctx: Context) -> OrderList:
        """A minute bar of `bar.symbol` closed. Runs once per bar per symbol. Default: no orders."""
        return None

    def on_trade(self, trade: Trade, ctx: Context) -> OrderList:
        """Every trade print of a symbol this strategy trades. Default: no orders.

        Only called when overridden, because it runs per event.
        """
        return None

    def on_quote(self, quote: Quote, ctx: Context) -> OrderList:
        """Every quote update. Only called when overridden. Default: no orders."""
        return None

    def on_fill(self, fill: Fill, ctx: Context) -> OrderList:
        """One of this strategy's orders filled (in part or in full). Default: nothing."""
        return None

    def on_order(self, order: Order, ctx: Context) -> OrderList:
        """One of this strategy's orders changed status: accepted, held (a bracket leg), partially_filled,
        filled, cancelled, expired, rejected (`order.reason` says why) or replaced. `order` is a
        snapshot at that change. Only called when overridden. Default: nothing."""
        return None

    def on_portfolio(self, ctx: Context) -> OrderList:
        """Runs every `session.portfolio_interval` of market time, once per consumer process,
        over the positions of that process. Default: no orders."""
        return None

    def on_stop(self, ctx: Context) -> None:
        """Runs once when the session ends. Default: nothing."""
