"""Round trips from fills: FIFO lot matching per (strategy, symbol).

Conventions (the same for backtest and daemon batches):
- Fills are processed in time order (stable for equal times), each (strategy, symbol)
  keeping its own FIFO queue of open lots, one lot per opening fill.
- A fill against the open side closes lots oldest first. Each closing fill makes ONE
  round trip for the quantity it closed: `entry_price` is the qty-weighted average of the
  matched lot portions, `exit_price` the fill's price, `entry_ts` the oldest matched lot's
  time (when that part of the position was opened). This is pyfolio's convention: scaling
  out in three sells gives three round trips, each priced against the lots it closed.
- A fill larger than the open position flips it: the part that closes makes a round trip,
  the rest opens a lot on the other side. The fill's fee is split pro rata by quantity.
- Fees: a lot carries its entry fee per share; a round trip is charged the entry fee of the
  shares it closed plus its share of the exit fee. `gain_value` is net of both.
- `gain_percentage` = gain_value / (entry_price * qty) * 100 (percent of the capital at risk).
- `r_units` = gain_value / initial risk, initial risk = sum over matched lots of
  qty * |lot entry price - lot stop|; for one lot this is gain per share / |entry - stop|.
  None when a matched lot's entry fill had no stop (or the stop equals the entry price).
- What is still open at the end is not a round trip: see `open_positions`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from liu.events import Fill

EPS = 1e-9  # quantities below this are treated as zero (float fills)


@dataclass(frozen=True)
class RoundTrip:
    """One closed quantity: entry lot(s) matched FIFO against one closing fill."""

    strategy: str
    symbol: str
    side: str  # "long" | "short"
    qty: float
    entry_ts: int  # ns, oldest matched lot
    exit_ts: int  # ns
    entry_price: float  # qty-weighted average of the matched lots
    exit_price: float
    gain_value: float  # net of the attributed entry and exit fees
    gain_percentage: float  # percent of entry_price * qty
    r_units: float | None
    fees: float
    entry_order_id: str = ""  # client order id of the oldest matched lot
    exit_order_id: str = ""  # client order id of the closing fill

    @property
    def holding_ns(self) -> int:
        return self.exit_ts - self.entry_ts


@dataclass(frozen=True)
class OpenPosition:
    """What is left open for one (strategy, symbol) after the last fill."""

    strategy: str
    symbol: str
    side: str  # "long" | "short"
    qty: float
    entry_ts: int  # oldest open lot
    entry_price: float  # qty-weighted average of the open lots
    entry_fees: float  # fees already paid on the open quantity


class _Lot:
    __slots__ = ("qty", "price", "fee_per_share", "ts", "stop", "order_id")

    def __init__(self, qty: float, price: float, fee_per_share: float, ts: int, stop, order_id: str) -> None:
        self.qty = qty
        self.price = price
        self.fee_per_share = fee_per_share
        self.ts = ts
        self.stop = stop
        self.order_id = order_id


def _match(fills: Iterable[Fill]) -> tuple[list[RoundTrip], dict[tuple[str, str], tuple[int, deque[_Lot]]]]:
    """Run the FIFO book; return the round trips and the open lots per (strategy, symbol)."""
    ordered = sorted(fills, key=lambda f: f.ts)  # stable: equal times keep their input order
    books: dict[tuple[str, str], tuple[int, deque[_Lot]]] = {}  # key -> (sign of the open side, lots)
    trips: list[RoundTrip] = []
    for f in ordered:
        if f.side not in ("buy", "sell"):
            raise ValueError(f"fill {f.client_order_id!r}: side {f.side!r} must be 'buy' or 'sell'")
        if not f.qty > 0:
            continue
        sign = 1 if f.side == "buy" else -1
        key = (f.strategy, f.symbol)
        open_sign, lots = books.get(key, (0, deque()))
        fee_per_share = f.fee / f.qty
        remaining = f.qty
        if open_sign == -sign and lots:
            closed = 0.0
            cost = 0.0
            entry_fees = 0.0
            risk = 0.0
            has_risk = True
            first = lots[0]
            while lots and remaining > EPS:
                lot = lots[0]
                q = min(lot.qty, remaining)
                closed += q
                cost += q * lot.price
                entry_fees += q * lot.fee_per_share
                if lot.stop is None or abs(lot.price - lot.stop) <= 0:
                    has_risk = False
                else:
                    risk += q * abs(lot.price - lot.stop)
                lot.qty -= q
                remaining -= q
                if lot.qty <= EPS:
                    lots.popleft()
            entry_price = cost / closed
            exit_fee = closed * fee_per_share
            fees = entry_fees + exit_fee
            gross = open_sign * (f.price - entry_price) * closed
            gain = gross - fees
            trips.append(
                RoundTrip(
                    strategy=f.strategy,
                    symbol=f.symbol,
                    side="long" if open_sign > 0 else "short",
                    qty=closed,
                    entry_ts=first.ts,
                    exit_ts=f.ts,
                    entry_price=entry_price,
                    exit_price=f.price,
                    gain_value=gain,
                    gain_percentage=gain / cost * 100 if cost else float("nan"),
                    r_units=gain / risk if has_risk and risk > 0 else None,
                    fees=fees,
                    entry_order_id=first.order_id,
                    exit_order_id=f.client_order_id,
                )
            )
            if not lots:
                open_sign = 0
        if remaining > EPS:
            lots.append(_Lot(remaining, f.price, fee_per_share, f.ts, f.stop, f.client_order_id))
            open_sign = sign
        books[key] = (open_sign, lots)
    return trips, books


def round_trips(fills: Iterable[Fill]) -> list[RoundTrip]:
    """Closed round trips, in the order they were closed (see the module docstring)."""
    return _match(fills)[0]


def match_fills(fills: Iterable[Fill]) -> tuple[list[RoundTrip], list[OpenPosition]]:
    """Round trips and the positions still open after the last fill, in one pass."""
    trips, books = _match(fills)
    return trips, _open_from_books(books)


def open_positions(fills: Iterable[Fill]) -> list[OpenPosition]:
    """Positions still open after the last fill, one per (strategy, symbol)."""
    return _open_from_books(_match(fills)[1])


def _open_from_books(books: dict[tuple[str, str], tuple[int, deque[_Lot]]]) -> list[OpenPosition]:
    out = []
    for (strategy, symbol), (sign, lots) in books.items():
        qty = sum(lot.qty for lot in lots)
        if sign == 0 or qty <= EPS:
            continue
        out.append(
            OpenPosition(
                strategy=strategy,
                symbol=symbol,
                side="long" if sign > 0 else "short",
                qty=qty,
                entry_ts=lots[0].ts,
                entry_price=sum(lot.qty * lot.price for lot in lots) / qty,
                entry_fees=sum(lot.qty * lot.fee_per_share for lot in lots),
            )
        )
    return out
