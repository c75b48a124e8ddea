"""Compact events that cross process boundaries, and the typed views strategies see.

On the wire (producer → consumer) a market event is a plain tuple whose first
item is its kind; plain tuples are the cheapest thing to encode in batches.
Strategies receive the `Trade`, `Quote` and `Bar` named tuples, built only
when a strategy asks for that kind of event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

# Wire kinds (first item of a wire tuple).
TRADE = 0  # (TRADE, symbol, ts_ns, price, size, recv_ns)
QUOTE = 1  # (QUOTE, symbol, ts_ns, bid, bid_size, ask, ask_size, recv_ns)
BAR = 2  # (BAR, symbol, ts_ns, open, high, low, close, volume, recv_ns)
MALFORMED = 3  # (MALFORMED, symbol, ts_ns, reason, recv_ns)
# A trade print whose sale conditions say it does not update the last price (average-price, odd-lot,
# out-of-sequence...; `liu.ticks.no_last`): shaped like TRADE, dropped by the bad-tick filter.
TRADE_NO_LAST = 4  # (TRADE_NO_LAST, symbol, ts_ns, price, size, recv_ns)

KIND_NAMES = {
    TRADE: "trade",
    QUOTE: "quote",
    BAR: "bar",
    MALFORMED: "malformed",
    TRADE_NO_LAST: "trade (no last)",
}


class Trade(NamedTuple):
    """One trade print. `ts` is data time in ns (UTC)."""

    symbol: str
    ts: int
    price: float
    size: float


class Quote(NamedTuple):
    """Top of book. `ts` is data time in ns (UTC)."""

    symbol: str
    ts: int
    bid: float
    bid_size: float
    ask: float
    ask_size: float


class Bar(NamedTuple):
    """One OHLCV bar; `ts` is the bar's start in ns (UTC), like Alpaca's bars."""

    symbol: str
    ts: int
    open: float
    high: float
    low: float
    close: float
    volume: float


# Control messages, sent on the same channels as event batches so they keep order.


@dataclass(frozen=True)
class Start:
    """Tells a consumer the shared clock and that events follow."""

    clock: object  # liu.clock.ClockSpec; typed loosely to keep this module import-light


@dataclass(frozen=True)
class Assign:
    """Symbols a scanner picked, with the strategies that should trade them (empty = all)."""

    symbols: tuple[str, ...]
    strategies: tuple[str, ...] = ()
    scanner: str = ""


@dataclass(frozen=True)
class Stop:
    """Asks the receiver to drain, flush and exit; `reason` is recorded on the runs."""

    reason: str = "stop"


@dataclass(frozen=True)
class Subscribe:
    """Scanner runner → producer: subscribe these symbols and assign them."""

    assign: Assign


@dataclass(frozen=True)
class NewChannel:
    """Main → producer (`consumer` ≥ 0): the channel to that consumer, restarted; main → a consumer
    (`consumer` = -1): its channel from the restarted producer. `conn` is the pipe end (a
    `multiprocessing` Connection, passed between processes by descriptor)."""

    consumer: int
    conn: Any


@dataclass(frozen=True)
class Backfill:
    """Producer → consumer: the market-data connection carrying `symbols` was down from `since_ns` (wall
    time, ns) for `reason`; load their missing bars before their live events go on."""

    symbols: tuple[str, ...]
    since_ns: int
    reason: str = ""


@dataclass(frozen=True)
class BarRevision:
    """Producer → consumer: the source revised a bar that already closed (Alpaca's updated bar `u`)."""

    symbol: str
    ts: int
    open: float
    high: float
    low: float
    close: float
    volume: float


@dataclass
class ConsumerReport:
    """What a consumer hands back when it exits."""

    index: int
    received: int = 0
    processed: int = 0
    stale: int = 0
    malformed: int = 0
    strategy_errors: int = 0
    orders: int = 0
    rejected: int = 0
    cancelled: int = 0
    expired: int = 0
    risk_refused: dict[str, int] = field(default_factory=dict)  # rule -> orders the risk manager refused
    bad_ticks: dict[str, dict[str, int]] = field(default_factory=dict)  # symbol -> prints dropped (liu.ticks)
    symbols: list[str] = field(default_factory=list)
    fills: list[dict] = field(default_factory=list)  # the last REPORT_FILLS fills (memory stays bounded)
    fills_total: int = 0  # every fill of the session
    strategies: dict[str, dict] = field(default_factory=dict)
    warmup: dict[str, Any] = field(default_factory=dict)  # history loaded: symbols, bars, failed, seconds
    # Supervision (filled in by the main process): events routed to this consumer that no life of it
    # received (it was dead, or died holding them), and how often it was restarted. With them
    # received = processed + stale + malformed + lost, where received counts every event routed to it.
    lost: int = 0
    restarts: int = 0


ORDER_TYPES = ("market", "limit", "stop", "stop_limit", "trailing_stop")
TIFS = ("day", "gtc", "ioc", "fok")
# Order lifecycle: new -> accepted (or held, for a bracket leg waiting on its entry) -> partially_filled
# -> filled | cancelled | expired | rejected | replaced. The last five are final.
OPEN_STATUSES = frozenset({"new", "accepted", "held", "partially_filled"})
FINAL_STATUSES = frozenset({"filled", "cancelled", "expired", "rejected", "replaced"})


@dataclass
class Order:
    """An order a strategy returns; build it with `ctx.buy(...)` / `ctx.sell(...)`.

    `type` follows from the prices given: `limit_price` (limit), `trigger_price`
    (stop), both (stop_limit), `trail_percent`/`trail_price` (trailing_stop).
    `stop` and `target` on an entry make it a bracket: once the entry fills, a
    stop-loss and a take-profit leg protect what filled and cancel each other.
    The broker keeps the lifecycle fields (`status`, `filled_qty`,
    `avg_fill_price`, `reason`, links) up to date; strategies read them.
    """

    symbol: str
    side: str  # "buy" | "sell"
    qty: float
    type: str = "market"  # one of ORDER_TYPES
    limit_price: float | None = None
    stop: float | None = None  # bracket stop-loss price (and the r-unit reference)
    target: float | None = None  # bracket take-profit price
    strategy: str = ""
    client_order_id: str = ""
    submitted_ts: int = 0  # data time, ns
    status: str = "new"  # see OPEN_STATUSES / FINAL_STATUSES
    reason: str = ""
    indicators: dict | None = None
    tif: str = "day"  # one of TIFS
    trigger_price: float | None = None  # stop / stop_limit trigger (Alpaca's stop_price)
    trail_percent: float | None = None
    trail_price: float | None = None
    filled_qty: float = 0.0
    avg_fill_price: float = 0.0
    order_class: str = "simple"  # "simple" | "bracket"
    parent_id: str = ""  # a bracket leg's entry order
    leg: str = ""  # "stop_loss" | "take_profit" for a bracket leg
    legs: tuple[str, ...] = ()  # an entry's leg ids
    replaces: str = ""  # the order this one replaced
    replaced_by: str = ""
    updated_ts: int = 0  # data time of the last status change, ns

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def remaining(self) -> float:
        return self.qty - self.filled_qty


@dataclass(frozen=True)
class OrderUpdate:
    """A status change of an order, as the broker reports it; `order` is a snapshot at that moment.

    `event` is the new status ("new" for an order the broker created itself, such as a bracket leg).
    """

    event: str
    order: Order
    ts: int  # data time, ns


@dataclass(frozen=True)
class Fill:
    """One execution of an order, as the broker reports it."""

    client_order_id: str
    strategy: str
    symbol: str
    side: str
    qty: float
    price: float
    fee: float
    ts: int  # data time, ns
    stop: float | None = None
    target: float | None = None
    indicators: dict | None = None
