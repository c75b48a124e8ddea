"""Paper broker: fills orders against the market events that follow them.

Fill model (the same in the daemon and the backtester):
- market orders fill at the next trade price, the next quote (ask to buy,
  bid to sell) or the next bar's open, moved against you by `slippage_bps`;
- limit orders fill when the market reaches the limit: at the trade or quote
  price, or at a bar's open if it gapped through the limit, else at the limit;
- fees are `fee_per_share * qty + fee_bps` of the notional;
- an order is filled in full, once. Orders never fill on the event that was
  being handled when they were placed, so there is no look-ahead.
Buying needs available cash; opening a short needs a shortable symbol and
margin equal to the notional.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from liu.brokers.account import Account
from liu.brokers.base import Position
from liu.events import Fill, Order


@dataclass
class _Pending:
    order: Order
    reserved: float


class PaperBroker:
    """In-process broker with shared cash; one per consumer process."""

    def __init__(
        self,
        account: Account,
        fee_per_share: float = 0.0,
        fee_bps: float = 0.0,
        slippage_bps: float = 0.0,
        not_shortable: Iterable[str] = (),
    ) -> None:
        self.account = account
        self.fee_per_share = fee_per_share
        self.fee_bps = fee_bps
        self.slip = slippage_bps / 1e4
        self.not_shortable = set(not_shortable)
        self._positions: dict[tuple[str, str], Position] = {}
        self._pending: dict[str, list[_Pending]] = {}
        self.on_fill: Callable[[Fill], None] = lambda fill: None

    # -- queries --------------------------------------------------------
    def position(self, strategy: str, symbol: str) -> Position:
        key = (strategy, symbol)
        pos = self._positions.get(key)
        if pos is None:
            pos = self._positions[key] = Position()
        return pos

    def positions(self, strategy: str) -> dict[str, float]:
        return {sym: p.qty for (st, sym), p in self._positions.items() if st == strategy and p.qty}

    def all_positions(self) -> dict[tuple[str, str], Position]:
        return self._positions

    def available_cash(self) -> float:
        return self.account.available()

    def fee(self, qty: float, price: float) -> float:
        return self.fee_per_share * qty + price * qty * self.fee_bps / 1e4

    # -- orders ---------------------------------------------------------
    def submit(self, order: Order, last_price: float | None) -> str | None:
        """Accept the order (None) or say why not."""
        if order.side not in ("buy", "sell"):
            return f"side {order.side!r} must be 'buy' or 'sell'"
        if not order.qty > 0:
            return f"qty={order.qty} must be > 0"
        if order.type == "limit":
            if not (order.limit_price and order.limit_price > 0):
                return f"limit order needs limit_price > 0 (given {order.limit_price})"
            ref = order.limit_price
        elif order.type == "market":
            if last_price is None:
                return f"no price seen yet for {order.symbol}"
            ref = last_price * (1 + self.slip)
        else:
            return f"type {order.type!r} must be 'market' or 'limit'"
        held = self.position(order.strategy, order.symbol).qty + self._pending_qty(
            order.strategy, order.symbol
        )
        if order.side == "buy":
            opening = order.qty - min(order.qty, max(-held, 0.0))
        else:
            opening = order.qty - min(order.qty, max(held, 0.0))
            if opening > 0 and order.symbol in self.not_shortable:
                return f"{order.symbol} is not shortable"
        reserve = opening * ref + self.fee(opening, ref) if opening > 0 else 0.0
        if reserve and not self.account.try_reserve(reserve):
            return f"insufficient cash: needs {reserve:.2f}, available {self.account.available():.2f}"
        self._pending.setdefault(order.symbol, []).append(_Pending(order, reserve))
        return None

    def _pending_qty(self, strategy: str, symbol: str) -> float:
        return sum(
            (p.order.qty if p.order.side == "buy" else -p.order.qty)
            for p in self._pending.get(symbol, ())
            if p.order.strategy == strategy
        )

    # -- market data ----------------------------------------------------
    def on_trade(self, symbol: str, ts: int, price: float) -> None:
        if symbol in self._pending:
            self._match(symbol, ts, lambda o: self._at_price(o, price))

    def on_quote(self, symbol: str, ts: int, bid: float, ask: float) -> None:
        if symbol in self._pending:
            self._match(symbol, ts, lambda o: self._at_price(o, ask if o.side == "buy" else bid))

    def on_bar(self, symbol: str, ts: int, o: float, h: float, lo: float) -> None:
        if symbol in self._pending:
            self._match(symbol, ts, lambda order: self._in_bar(order, o, h, lo))

    def _at_price(self, order: Order, px: float) -> float | None:
        if not px > 0:
            return None
        if order.type == "market":
            return px * (1 + self.slip) if order.side == "buy" else px * (1 - self.slip)
        limit = order.limit_price
        if order.side == "buy":
            return px if px <= limit else None
        return px if px >= limit else None

    def _in_bar(self, order: Order, o: float, h: float, lo: float) -> float | None:
        if order.type == "market":
            return self._at_price(order, o)
        limit = order.limit_price
        if order.side == "buy":
            return o if o <= limit else (limit if lo <= limit else None)
        return o if o >= limit else (limit if h >= limit else None)

    def _match(self, symbol: str, ts: int, price_for: Callable[[Order], float | None]) -> None:
        pending = self._pending[symbol]
        keep = []
        fills = []
        for p in pending:
            px = price_for(p.order)
            if px is None:
                keep.append(p)
            else:
                fills.append(self._fill(p, px, ts))
        if keep:
            self._pending[symbol] = keep
        else:
            del self._pending[symbol]
        for fill in fills:
            self.on_fill(fill)

    def _fill(self, p: _Pending, px: float, ts: int) -> Fill:
        order = p.order
        pos = self.position(order.strategy, order.symbol)
        old_qty, old_avg = pos.qty, pos.avg_price
        fee = self.fee(order.qty, px)
        if order.side == "buy":
            covered = min(order.qty, max(-old_qty, 0.0))
            opened_short = 0.0
            cash_delta = -order.qty * px - fee
        else:
            covered = 0.0
            opened_short = max(0.0, order.qty - max(old_qty, 0.0))
            cash_delta = order.qty * px - fee
        # Short proceeds are credited to cash but locked twice over (proceeds + margin).
        reserved_delta = -p.reserved + 2 * opened_short * px - 2 * covered * old_avg
        self.account.apply(cash_delta, reserved_delta)
        pos.apply(order.side, order.qty, px, fee)
        order.status = "filled"
        return Fill(
            order.client_order_id,
            order.strategy,
            order.symbol,
            order.side,
            order.qty,
            px,
            fee,
            ts,
            order.stop,
            order.target,
            order.indicators,
        )
