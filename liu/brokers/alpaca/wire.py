"""Typed messages between consumers and the execution gateway (over one pipe per consumer)."""

from __future__ import annotations

from dataclasses import dataclass, field

from liu.brokers.base import Position, Update
from liu.events import Order


@dataclass
class Submit:
    """Send `order` (its id, strategy and bracket fields set; legs named `<id>-sl` / `<id>-tp`)."""

    order: Order


@dataclass
class Cancel:
    client_order_id: str
    reason: str = ""


@dataclass
class Replace:
    client_order_id: str
    new_id: str
    changes: dict[str, float | None] = field(default_factory=dict)


@dataclass
class Updates:
    """Order updates and fills of this consumer's orders, in the order Alpaca reported them."""

    updates: list[Update]


@dataclass
class AccountState:
    """Alpaca's account figures (refreshed after fills and periodically)."""

    cash: float
    buying_power: float
    equity: float
    ts: int


@dataclass
class Restore:
    """Restart reconciliation: this consumer's strategies' positions and open orders, before any order."""

    positions: dict[tuple[str, str], Position]
    orders: list[Order]


@dataclass
class Bye:
    """The consumer is done; the gateway stops routing to it."""
