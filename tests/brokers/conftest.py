"""Helpers for the paper broker's tests: New York times, orders built as `ctx.buy`/`ctx.sell` build them,
and the update stream read as (event, client id) pairs."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from liu.brokers.account import Account
from liu.brokers.paper import PaperBroker
from liu.events import Fill, Order, OrderUpdate
from liu.strategy import new_order

NY = ZoneInfo("America/New_York")
MIN = 60 * 10**9


def ny(day: int, hour: int, minute: int = 0, second: int = 0, month: int = 3) -> int:
    """ns of a New York wall time in 2024 (March 5 is a Tuesday; DST starts Sunday March 10)."""
    return int(datetime(2024, month, day, hour, minute, second, tzinfo=NY).timestamp()) * 10**9


T0 = ny(5, 10)  # Tuesday 10:00 New York


def t(i: int) -> int:
    """Minute `i` after T0."""
    return T0 + i * MIN


def broker(cash: float = 10_000.0, **kw: object) -> PaperBroker:
    return PaperBroker(Account(cash), **kw)  # type: ignore[arg-type]


def order(
    side: str,
    qty: float,
    *,
    limit: float | None = None,
    trigger: float | None = None,
    trail_percent: float | None = None,
    trail_price: float | None = None,
    stop: float | None = None,
    target: float | None = None,
    tif: str = "day",
    cid: str = "o1",
    sym: str = "A",
) -> Order:
    """An order of strategy "s", built as `ctx.buy` / `ctx.sell` build it."""
    o = new_order(sym, side, qty, limit, trigger, trail_percent, trail_price, stop, target, tif)
    o.strategy, o.client_order_id = "s", cid
    return o


def stream(updates: list | None) -> list[tuple]:
    """What happened, in order: ("fill", id, qty, price) for a fill, (event, id) for an order update."""
    out: list[tuple] = []
    for u in updates or ():
        if isinstance(u, Fill):
            out.append(("fill", u.client_order_id, u.qty, u.price))
        else:
            assert isinstance(u, OrderUpdate) and u.order.status == u.event
            out.append((u.event, u.order.client_order_id))
    return out


def snap(updates: list | None, cid: str) -> Order:
    """The last snapshot of order `cid` in `updates`."""
    return [u.order for u in updates or () if isinstance(u, OrderUpdate) and u.order.client_order_id == cid][
        -1
    ]


def open_ids(b: PaperBroker) -> list[str]:
    return sorted(o.client_order_id for o in b.open_orders())
