"""liu orders ↔ Alpaca: requests out, order snapshots back in as liu updates and fills.

Every piece of news about an order (a POST answer, a trade_updates event, a sweep after a reconnect,
a lookup by client id) is an Alpaca order snapshot with cumulative `filled_qty` and
`filled_avg_price`. `apply` turns the difference between what liu knew and the snapshot into a fill
(quantity and price of what filled since) and a status update, so a replayed or duplicate event
changes nothing and a missed one is made up by the next snapshot.
"""

from __future__ import annotations

import re
import time
from dataclasses import replace
from datetime import datetime
from typing import Any

from alpaca.trading.enums import OrderClass, OrderSide, TimeInForce
from alpaca.trading.requests import (
    LimitOrderRequest,
    MarketOrderRequest,
    OrderRequest,
    ReplaceOrderRequest,
    StopLimitOrderRequest,
    StopLossRequest,
    StopOrderRequest,
    TakeProfitRequest,
    TrailingStopOrderRequest,
)

from liu.brokers.base import Update
from liu.events import FINAL_STATUSES, Fill, Order, OrderUpdate

# Alpaca's order status -> liu's; None: keep liu's (a pending request changes nothing yet).
STATUS: dict[str, str | None] = {
    "new": "accepted",
    "accepted": "accepted",
    "pending_new": "accepted",
    "accepted_for_bidding": "accepted",
    "pending_review": "accepted",
    "stopped": "accepted",
    "suspended": "accepted",
    "held": "held",
    "partially_filled": "partially_filled",
    "filled": "filled",
    "canceled": "cancelled",
    "expired": "expired",
    "replaced": "replaced",
    "rejected": "rejected",
    "pending_cancel": None,
    "pending_replace": None,
    "done_for_day": None,
    "calculated": None,
}
_EPS = 1e-9
_FRACTION = re.compile(r"(\.\d{6})\d+")


def to_request(order: Order) -> OrderRequest:
    """The alpaca-py request for a liu order (its own checks raise ValueError before any HTTP call)."""
    common: dict[str, Any] = {
        "symbol": order.symbol,
        "qty": order.qty,
        "side": OrderSide(order.side),
        "time_in_force": TimeInForce(order.tif),
        "client_order_id": order.client_order_id,
    }
    if order.stop is not None or order.target is not None:
        both = order.stop is not None and order.target is not None
        common["order_class"] = OrderClass.BRACKET if both else OrderClass.OTO
        if order.target is not None:
            common["take_profit"] = TakeProfitRequest(limit_price=order.target)
        if order.stop is not None:
            common["stop_loss"] = StopLossRequest(stop_price=order.stop)
    t = order.type
    if t == "market":
        return MarketOrderRequest(**common)
    if t == "limit":
        return LimitOrderRequest(limit_price=order.limit_price, **common)
    if t == "stop":
        return StopOrderRequest(stop_price=order.trigger_price, **common)
    if t == "stop_limit":
        return StopLimitOrderRequest(stop_price=order.trigger_price, limit_price=order.limit_price, **common)
    if t == "trailing_stop":
        return TrailingStopOrderRequest(
            trail_percent=order.trail_percent, trail_price=order.trail_price, **common
        )
    raise ValueError(f"order type {t!r} has no Alpaca equivalent")


def to_replace(new_id: str, changes: dict[str, float | None]) -> ReplaceOrderRequest:
    """A PATCH body for `changes` (liu's names: qty, limit_price, trigger_price, trail_percent, trail_price)."""
    c = {k: v for k, v in changes.items() if v is not None}
    qty = c.get("qty")
    return ReplaceOrderRequest(
        qty=int(qty) if qty is not None else None,
        limit_price=c.get("limit_price"),
        stop_price=c.get("trigger_price"),
        trail=c.get("trail_percent", c.get("trail_price")),
        client_order_id=new_id,
    )


def ts_ns(value: Any) -> int:
    """An Alpaca timestamp (RFC3339, up to 9 fraction digits, or a datetime) in ns; now when missing."""
    if isinstance(value, str) and value:
        value = datetime.fromisoformat(_FRACTION.sub(r"\1", value.replace("Z", "+00:00")))
    if isinstance(value, datetime):
        return int(value.timestamp() * 1e9)
    return time.time_ns()


def _num(value: Any) -> float:
    return float(value) if value not in (None, "") else 0.0


def leg_kind(raw: dict) -> str:
    """Which leg of a bracket an Alpaca leg order is: the limit is the take-profit."""
    return "take_profit" if (raw.get("type") or raw.get("order_type")) == "limit" else "stop_loss"


def make_leg(parent: Order, raw: dict, client_order_id: str) -> Order:
    """liu's view of a bracket leg Alpaca created."""
    kind = leg_kind(raw)
    return Order(
        parent.symbol,
        raw.get("side") or ("sell" if parent.side == "buy" else "buy"),
        _num(raw.get("qty")) or parent.qty,
        type=raw.get("type") or ("limit" if kind == "take_profit" else "stop"),
        limit_price=_num(raw.get("limit_price")) or None,
        trigger_price=_num(raw.get("stop_price")) or None,
        strategy=parent.strategy,
        client_order_id=client_order_id,
        submitted_ts=parent.submitted_ts,
        status="held",
        tif=raw.get("time_in_force") or parent.tif,
        parent_id=parent.client_order_id,
        leg=kind,
    )


def apply(order: Order, raw: dict, ts: int, reason: str = "") -> list[Update]:
    """What changed between liu's `order` (updated in place) and Alpaca's snapshot `raw`."""
    out: list[Update] = []
    filled, avg = _num(raw.get("filled_qty")), _num(raw.get("filled_avg_price"))
    if filled > order.filled_qty + _EPS:
        delta = filled - order.filled_qty
        price = (avg * filled - order.avg_fill_price * order.filled_qty) / delta
        order.filled_qty, order.avg_fill_price = filled, avg
        out.append(
            Fill(
                order.client_order_id,
                order.strategy,
                order.symbol,
                order.side,
                delta,
                price,
                0.0,
                ts,
                stop=order.stop,
                target=order.target,
                indicators=order.indicators,
            )
        )
    status = STATUS.get(str(raw.get("status")), None)
    if status == "accepted" and order.filled_qty > _EPS:
        status = "partially_filled"
    changed = status is not None and status != order.status and order.status not in FINAL_STATUSES
    if changed:
        order.status = status  # type: ignore[assignment]
        if status == "rejected":
            order.reason = reason or order.reason or "rejected by Alpaca"
    if changed or out:
        order.updated_ts = ts
        out.append(OrderUpdate(order.status, replace(order), ts))
    return out
