"""The broker interface the strategy runner trades through.

The paper broker implements it in-process; the Alpaca broker (later) will
submit over REST and report fills from the trade-updates stream. Both report
fills through `on_fill`, which the runner sets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from liu.events import Fill, Order


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


class Broker(Protocol):
    """What the runner needs from a broker."""

    on_fill: Callable[[Fill], None]

    def submit(self, order: Order, last_price: float | None) -> str | None:
        """Accept `order` (return None) or return the reason it is rejected."""

    def position(self, strategy: str, symbol: str) -> Position: ...

    def positions(self, strategy: str) -> dict[str, float]: ...

    def all_positions(self) -> dict[tuple[str, str], Position]: ...

    def available_cash(self) -> float: ...

    # Market data the broker may fill against (no-ops for a remote broker).
    def on_trade(self, symbol: str, ts: int, price: float) -> None: ...

    def on_quote(self, symbol: str, ts: int, bid: float, ask: float) -> None: ...

    def on_bar(self, symbol: str, ts: int, o: float, h: float, lo: float) -> None: ...
