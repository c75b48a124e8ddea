"""The `Strategy` base class and the `Context` it trades through.

A strategy is plain Python: subclass `Strategy`, override the hooks you need,
and list the class in `tradeplan.toml`. The same class runs in the daemon's
consumer processes and (later) in the backtester, driven by `liu.runner`.
Hooks may be plain functions or `async def`; plain functions are cheaper on
the per-event path.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from liu.brokers.base import Position
from liu.errors import ConfigError
from liu.events import Bar, Fill, Order, Quote, Trade
from liu.features import BarHistory

if TYPE_CHECKING:
    import numpy as np

    from liu.ml.inference import ModelScorer
    from liu.runner import StrategyRunner

OrderList = list[Order] | None


def _order(
    symbol: str, side: str, qty: float, limit: float | None, stop: float | None, target: float | None
) -> Order:
    return Order(symbol, side, qty, "limit" if limit is not None else "market", limit, stop, target)


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

    def __init__(self, strategy: str, runner: StrategyRunner, keystore: MutableMapping[str, Any]) -> None:
        self.strategy = strategy
        self._runner = runner
        self.keystore = keystore
        self.log = logging.getLogger(f"liu.strategy.{strategy}")
        self.models: dict[str, float] = {}
        """Models listed in this strategy's tradeplan entry: name → vote weight (plan order)."""
        self._scorer: ModelScorer | None = None
        self._predictions: dict[str, dict[str, np.ndarray | None]] = {}
        self._positions: dict[str, Position] = {}  # symbol → the broker's (live, mutated) Position

    def attach_models(self, scorer: ModelScorer, weights: dict[str, float]) -> None:
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
        return self._scorer.models[model].version  # type: ignore[union-attr]

    def buy(
        self,
        symbol: str,
        qty: float,
        limit: float | None = None,
        stop: float | None = None,
        target: float | None = None,
    ) -> Order:
        """A buy order (market, or limit when `limit` is given); return it from a hook to place it."""
        return _order(symbol, "buy", qty, limit, stop, target)

    def sell(
        self,
        symbol: str,
        qty: float,
        limit: float | None = None,
        stop: float | None = None,
        target: float | None = None,
    ) -> Order:
        """A sell order; selling more than you hold opens a short (if the symbol is shortable)."""
        return _order(symbol, "sell", qty, limit, stop, target)

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
        """One of this strategy's orders filled. Default: nothing."""
        return None

    def on_portfolio(self, ctx: Context) -> OrderList:
        """Runs every `session.portfolio_interval` of market time, once per consumer process,
        over the positions of that process. Default: no orders."""
        return None

    def on_stop(self, ctx: Context) -> None:
        """Runs once when the session ends. Default: nothing."""
