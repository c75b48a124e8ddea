"""The broker interface the strategy runner trades through.

The paper broker implements it in-process; the Alpaca broker (later) will
submit over REST and report fills from the trade-updates stream. Both return
order updates and fills to the runner, which routes them to the strategies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from liu.events import ORDER_TYPES, TIFS, Fill, Order, OrderUpdate


@dataclass
class Position:
    """A strategy's position in one symbol."""

    qty: float = 0.0
    avg_price: float = 0.0
    realized: float = 0.0
    fees: float = 0.0

    def apply(self, side: str, qty: float, price: float, fee: float) -> float:
        """Apply a fill; return the realised P&L it produced."""
        signed = qty if side == "buy" else -qty
        pnl = 0.0
        if self.qty and (self.qty > 0) != (signed > 0):
            closing = min(abs(signed), abs(self.qty))
            direction = 1.0 if self.qty > 0 else -1.0
            pnl = (price - self.avg_price) * closing * direction
            self.qty += closing * -direction
            signed += closing * direction
            if abs(self.qty) < 1e-12:
                self.qty, self.avg_price = 0.0, 0.0
        if signed:
            total = self.qty + signed
            self.avg_price = (self.avg_price * self.qty + price * signed) / total
            self.qty = total
        self.realized += pnl
        self.fees += fee
        return pnl


class PositionBook:
    """Positions per (strategy, symbol), kept the same way by every broker that keeps them itself."""

    _positions: dict[tuple[str, str], Position]

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


Update = Fill | OrderUpdate  # what a broker reports: an order's status change or an execution


def invalid_order(order: Order) -> str | None:
    """What every broker refuses before anything else: a bad side, quantity, type or time in force."""
    if order.side not in ("buy", "sell"):
        return f"side {order.side!r} must be 'buy' or 'sell'"
    if not order.qty > 0 or not math.isfinite(order.qty):
        return f"qty={order.qty} must be > 0"
    if order.type not in ORDER_TYPES:
        return f"type {order.type!r} must be one of {', '.join(ORDER_TYPES)}"
    if order.tif not in TIFS:
        return f"tif {order.tif!r} must be one of {', '.join(TIFS)}"
    return None


class Broker(Protocol):
    """What the runner needs from a broker.

    Every call returns what happened (order updates and fills, in the order they
    happened) instead of calling back into the runner; market-data calls return
    None when nothing happened, which is the common case on the hot path.
    """

    def submit(self, order: Order, last_price: float | None, ts: int) -> list[Update]:
        """Accept `order` ("accepted", and "held" legs of a bracket) or reject it with a reason."""

    def cancel(self, client_order_id: str, ts: int, reason: str = "") -> list[Update]: ...

    def replace(self, client_order_id: str, ts: int, new_id: str, **changes: float | None) -> list[Update]:
        """Replace an open order by a new one (`new_id`) with `changes` (qty, limit_price, trigger_price,
        trail_percent, trail_price)."""

    def open_orders(self, strategy: str | None = None, symbol: str | None = None) -> list[Order]: ...

    def open_count(self) -> int:
        """How many orders are open (bracket legs included)."""

    def expire(self, ts: int) -> list[Update]:
        """Expire every open day order (the session's or the trading day's end)."""

    def position(self, strategy: str, symbol: str) -> Position: ...

    def positions(self, strategy: str) -> dict[str, float]: ...

    def all_positions(self) -> dict[tuple[str, str], Position]: ...

    def available_cash(self) -> float: ...

    # Market data the broker may fill against (no-ops for a remote broker).
    def on_trade(self, symbol: str, ts: int, price: float, size: float) -> list[Update] | None: ...

    def on_quote(
        self, symbol: str, ts: int, bid: float, bid_size: float, ask: float, ask_size: float
    ) -> list[Update] | None: ...

    def on_bar(
        self, symbol: str, ts: int, o: float, h: float, lo: float, c: float, v: float
    ) -> list[Update] | None: ...
