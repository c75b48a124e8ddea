"""Example ML strategy: trade on model probabilities, several models combined by a weighted vote.

Tradeplan::

    [[strategies]]
    name = "ml_vote"
    file = "strategies/ml_vote.py"
    class = "MlVote"
    models = [{ spec = "models/sma_rsi.toml" }, { spec = "models/other.toml", version = 3, weight = 0.5 }]
    [strategies.config]
    threshold = 0.6      # weighted P(up) needed to go long
    min_agree = 2        # ... and at least this many models with P(up) >= threshold on their own

The models are scored by the consumer at each bar close, before `on_bar`, so the probabilities are
those of the bar being handled. Long when the weighted probability of `up` reaches `threshold` and
at least `min_agree` models agree (the confidence gate); exit (or go short, if allowed) on the
opposite signal: the weighted probability of `down` reaching `threshold` with as many models agreeing.
For a binary model without a `down` class, P(down) = 1 - P(up).
"""

from __future__ import annotations

import math

from pydantic import Field, PositiveInt

from liu.errors import ConfigError
from liu.events import Bar
from liu.strategy import Context, OrderList, Strategy, StrategyConfig


class MlVoteConfig(StrategyConfig):
    """Settings for `MlVote`."""

    threshold: float = Field(default=0.6, gt=0, lt=1)
    min_agree: PositiveInt = 1
    up: float | str = 1
    """Class label that means "price goes up" (1 for liu's forward-return labels)."""
    down: float | str = -1
    """Class label that means "price goes down"; models without it use 1 - P(up)."""
    allocation: float = Field(default=0.1, gt=0, le=1)
    """Fraction of available cash put into each entry."""
    allow_short: bool = False
    stop_pct: float = Field(default=0.02, ge=0, lt=1)
    """Stop-loss of each entry's bracket, as a fraction of the signal bar's close (0 = none).

    The bracket is good-till-cancelled, so the stop protects the position overnight too."""


class MlVote(Strategy):
    """Weighted vote of the models in this strategy's tradeplan entry, with a confidence gate."""

    Config = MlVoteConfig

    def on_start(self, ctx: Context) -> None:
        cfg = self.config
        if not ctx.models:
            raise ConfigError(f"strategy {self.name}: MlVote needs models = [...] in its tradeplan entry")
        if cfg.min_agree > len(ctx.models):
            raise ConfigError(
                f"strategy {self.name}: min_agree={cfg.min_agree} but only {len(ctx.models)} model(s) listed"
            )
        # (name, weight, index of P(up), index of P(down) or -1 for 1 - P(up)); class order is fixed
        # for a model's lifetime (a promoted version with other classes is refused).
        self._models: list[tuple[str, float, int, int]] = []
        for name, weight in ctx.models.items():
            classes = list(ctx.model_classes(name))
            if classes == ["value"]:
                raise ConfigError(
                    f"strategy {self.name}: model {name} is a regressor; MlVote needs probabilities"
                )
            if cfg.up not in classes:
                raise ConfigError(
                    f"strategy {self.name}: model {name} has classes {classes}, no up={cfg.up!r}"
                )
            down = classes.index(cfg.down) if cfg.down in classes else -1
            self._models.append((name, weight, classes.index(cfg.up), down))
        self._total = sum(w for _, w, _, _ in self._models)

    def vote(self, symbol: str, ctx: Context) -> tuple[float, float, int, int] | None:
        """(weighted P(up), weighted P(down), models with P(up) >= threshold, with P(down) >= threshold)."""
        thr = self.config.threshold
        up = down = 0.0
        n_up = n_down = 0
        for name, weight, i_up, i_down in self._models:
            p = ctx.prediction(name, symbol)
            if p is None:  # a model still warming up: no opinion, no trade
                return None
            pu = float(p[i_up])
            pd = float(p[i_down]) if i_down >= 0 else 1.0 - pu
            up += weight * pu
            down += weight * pd
            n_up += pu >= thr
            n_down += pd >= thr
        return up / self._total, down / self._total, n_up, n_down

    def on_bar(self, bar: Bar, ctx: Context) -> OrderList:
        v = self.vote(bar.symbol, ctx)
        if v is None:
            return None
        cfg = self.config
        p_up, p_down, n_up, n_down = v
        long = p_up >= cfg.threshold and n_up >= cfg.min_agree
        short = p_down >= cfg.threshold and n_down >= cfg.min_agree
        held = ctx.position(bar.symbol)
        if long and held <= 0:
            orders = [ctx.buy(bar.symbol, -held)] if held < 0 else []
            qty = math.floor(ctx.cash * cfg.allocation / bar.close)
            if qty > 0:
                stop = bar.close * (1 - cfg.stop_pct) if cfg.stop_pct else None
                orders.append(ctx.buy(bar.symbol, qty, stop=stop, tif="gtc"))
            return orders
        if short and held >= 0:
            orders = [ctx.sell(bar.symbol, held)] if held > 0 else []
            if cfg.allow_short:
                qty = math.floor(ctx.cash * cfg.allocation / bar.close)
                if qty > 0:
                    stop = bar.close * (1 + cfg.stop_pct) if cfg.stop_pct else None
                    orders.append(ctx.sell(bar.symbol, qty, stop=stop, tif="gtc"))
            return orders or None
        return None
