"""Paper broker: the order lifecycle and fill model, the same in the daemon and the backtester.

Fill model
- Nothing fills on the event being handled when an order is placed: an order
  is matched from the next trade, quote or bar of its symbol on. So there is
  no look-ahead.
- Prices an event offers: a trade its price; a quote the ask to buy and the
  bid to sell; a bar its open, and its range (high/low) for limits and triggers.
- **market** fills at the offered price (a bar: its open), moved against you by
  `slippage_bps`.
- **limit** fills when the offered price reaches the limit, at that price; a
  bar fills at its open when it gapped through the limit, else at the limit
  when its range touched it.
- **stop** (`trigger_price`) triggers when the offered price touches the
  trigger and then fills like a market order at that price; a bar that opens
  through the trigger fills at the (gapped) open, one that reaches it inside
  its range at the trigger. Slippage applies as for market orders; a stop
  triggered but only partly filled fills the rest like a market order.
- **stop_limit** triggers the same way, then fills like a limit order; in a
  bar it fills at the trigger point (open or trigger) only if that is within
  the limit, else it rests as a limit order from the next event.
- **trailing_stop** (`trail_percent` or `trail_price`) follows the best price
  seen since it was accepted (the high for a sell, the low for a buy; the last
  price at submission to start) and triggers like a stop at that distance. In a
  bar the stop from the previous best is tested against the open and the range
  first; only then does the bar's high (low) move the best price: inside one
  bar we cannot know the order of high and low, so we assume the unfavourable one.
- **Brackets**: `stop=` / `target=` on an entry create a stop-loss (stop) and
  a take-profit (limit) leg, held until the entry fills. Each entry fill sizes
  the legs to what has filled (a partial entry protects what filled). The legs
  are one-cancels-other: when one fills in full, the other is cancelled (a
  part-filled leg leaves the other cut to the position). When both could fill
  inside one bar, the stop-loss is assumed to fill first (the conservative
  rule), and the strategy's own orders are matched before the legs (its exit
  at a bar's open comes before a stop inside the bar's range, and then cancels
  the legs); whatever a bar's open fills comes before anything inside its
  range (a take-profit the bar opens through fills at the open). Legs
  activated by a fill are matched against the same event too; in a bar they
  start from the entry's fill price (the open came before it), and the bar's
  range can reach them. A leg never opens a position the other way: after
  every fill of the strategy in that symbol, legs are cut to the position and
  cancelled when it is flat or reversed (closed by the strategy's own exit or
  a flatten).
- **Partial fills**: with `max_participation` an order takes at most that share
  of a trade's size, of the quote's size on its side, or of a bar's volume, per
  event. Off (None) by default: orders then fill in full, once.
- **Time in force**: `day` orders expire at 16:00 New York time of the day
  they were placed, or of the next day when placed in or after the day's last
  minute (and at the session's end); `gtc` rests until filled or
  cancelled, and at the session's end is cancelled, unless the account
  persists (`persist`): then it stays open and the next session `restore`s it;
  `ioc` fills what the next event offers and cancels the rest; `fok` fills in
  full on the next event or is cancelled, never partially.
- Fees are `fee_per_share * qty + fee_bps` of the notional, per fill.

Cash: buying, and opening a short (margin equal to the notional, with the
proceeds locked too), reserves cash when the order is accepted; fills,
cancels, expiries and replaces release exactly what the order still holds. A
fill that would cost more than the cash it reserved plus what is available
(a gap past the reservation price) is cut to what the account can pay, and
the rest is cancelled (a `fok` order is cancelled whole), so cash never goes below zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from liu.brokers.account import Account
from liu.brokers.base import Position, PositionBook, Update, invalid_order
from liu.events import Fill, Order, OrderUpdate

NY = ZoneInfo("America/New_York")
_NEVER = 1 << 62


def snapshot(order: Order) -> Order:
    """A copy of `order` as it is now, for an update (cheaper than `dataclasses.replace`)."""
    new = object.__new__(Order)
    new.__dict__.update(order.__dict__)
    return new


class DayClose:
    """`day_close_ns`, remembering its last answer: every later time before that close's last minute
    has the same answer, so orders placed through one day compute it once."""

    def __init__(self) -> None:
        self._lo = self._hi = 0

    def __call__(self, ts: int) -> int:
        if self._lo <= ts < self._hi - 60_000_000_000:
            return self._hi
        self._lo, self._hi = ts, day_close_ns(ts)
        return self._hi


def day_close_ns(ts: int) -> int:
    """When a day order placed at `ts` (ns) expires: the next 16:00 New York time after its minute.

    An order placed in the day's last minute (at the close of the 15:59 bar, say) is after the close
    and so for the next session, as a day order sent after the close is at Alpaca.
    """
    minute_end = (ts // 60_000_000_000 + 1) * 60
    t = datetime.fromtimestamp(minute_end, UTC).astimezone(NY)
    close = t.replace(hour=16, minute=0, second=0, microsecond=0)
    if t >= close:
        close = (t + timedelta(days=1)).replace(hour=16, minute=0, second=0, microsecond=0)
    while close.weekday() >= 5:  # the next session is a weekday (holidays come with the market calendar)
        close = (close + timedelta(days=1)).replace(hour=16)
    return int(close.timestamp()) * 1_000_000_000


@dataclass
class _Working:
    """The broker's side of one open order."""

    order: Order
    reserved: float = 0.0  # cash still held for the unfilled part
    per_unit: float = 0.0  # reservation per unit the order opens (its closing part needs none)
    triggered: bool = False  # stop / stop_limit / trailing_stop: trigger reached
    best: float = 0.0  # trailing_stop: best price since accepted
    expires: int = _NEVER
    last: float | None = None  # the last price when it was placed (to re-check a replace)


def _leg_rank(w: _Working) -> int:
    """Matching order within one event: the strategy's own orders, then stop-losses, then take-profits.

    The strategy's own exit at a bar's open comes before a stop inside the bar's range (and a leg is
    then cancelled with the position), and when both legs could fill inside one bar, the stop is
    assumed to come first.
    """
    leg = w.order.leg
    return 0 if not leg else (1 if leg == "stop_loss" else 2)


class PaperBroker(PositionBook):
    """In-process broker on a (possibly shared) account; one per consumer process."""

    def __init__(
        self,
        account: Account,
        fee_per_share: float = 0.0,
        fee_bps: float = 0.0,
        slippage_bps: float = 0.0,
        not_shortable: Iterable[str] = (),
        max_participation: float | None = None,
        persist: bool = False,
        slot: int = 0,
    ) -> None:
        self.account = account
        self.slot = slot  # this process's place in the shared account: its reservations are kept there
        self.persist = persist  # the account lives across sessions: gtc orders outlive this one
        self.fee_per_share = fee_per_share
        self.fee_bps = fee_bps
        self.slip = slippage_bps / 1e4
        self.not_shortable = set(not_shortable)
        self.participation = max_participation
        self._positions: dict[tuple[str, str], Position] = {}
        self._open: dict[str, _Working] = {}  # every open order (legs held for their entry too)
        self._working: dict[str, list[_Working]] = {}  # per symbol, the orders events are matched against
        self._next_expiry = _NEVER
        self._day_close = DayClose()

    # -- queries --------------------------------------------------------
    def available_cash(self) -> float:
        return self.account.available()

    def open_orders(self, strategy: str | None = None, symbol: str | None = None) -> list[Order]:
        return [
            w.order
            for w in self._open.values()
            if (strategy is None or w.order.strategy == strategy)
            and (symbol is None or w.order.symbol == symbol)
        ]

    def open_count(self) -> int:
        return len(self._open)

    def fee(self, qty: float, price: float) -> float:
        return self.fee_per_share * qty + price * qty * self.fee_bps / 1e4

    # -- placing, cancelling, replacing ------------------------------------
    def submit(self, order: Order, last_price: float | None, ts: int) -> list[Update]:
        """Accept the order (and hold its bracket legs) or reject it with the reason."""
        reason = self._invalid(order, last_price)
        w = _Working(order, last=last_price) if reason is None else None
        if w is not None:
            reason = self._reserve(w, last_price)
        if reason is not None:
            order.status, order.reason, order.updated_ts = "rejected", reason, ts
            return [OrderUpdate("rejected", snapshot(order), ts)]
        if order.type == "trailing_stop":
            w.best = last_price  # type: ignore[assignment]
        if order.tif == "day":
            w.expires = self._day_close(ts)
            self._next_expiry = min(self._next_expiry, w.expires)
        legs = self._make_legs(order, ts)
        order.status, order.updated_ts = "accepted", ts
        self._open[order.client_order_id] = w
        self._working.setdefault(order.symbol, []).append(w)
        out: list[Update] = [OrderUpdate("accepted", snapshot(order), ts)]
        for leg in legs:
            self._open[leg.client_order_id] = _Working(leg, expires=w.expires)
            out.append(OrderUpdate("held", snapshot(leg), ts))
        return out

    def _invalid(self, order: Order, last_price: float | None) -> str | None:
        reason = invalid_order(order)
        if reason is not None:
            return reason
        for name in ("limit_price", "trigger_price", "trail_percent", "trail_price", "stop", "target"):
            value = getattr(order, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                return f"{name}={value} must be a positive number"
        t = order.type
        if t in ("limit", "stop_limit") and order.limit_price is None:
            return f"{t} order needs limit_price > 0"
        if t in ("stop", "stop_limit") and order.trigger_price is None:
            return f"{t} order needs trigger_price > 0"
        if t == "trailing_stop" and (order.trail_percent is None) == (order.trail_price is None):
            return "trailing_stop order needs exactly one of trail_percent and trail_price"
        if t in ("market", "trailing_stop") and last_price is None:
            return f"no price seen yet for {order.symbol}"
        if order.order_class == "bracket":
            if order.tif not in ("day", "gtc"):
                return f"a bracket order needs tif 'day' or 'gtc', not {order.tif!r}"
            if order.stop is not None and order.target is not None:
                low, high = (order.stop, order.target) if order.side == "buy" else (order.target, order.stop)
                if not low < high:
                    return (
                        f"bracket {order.side}: stop {order.stop} must be "
                        f"{'below' if order.side == 'buy' else 'above'} target {order.target}"
                    )
        return None

    def _reference_price(self, order: Order, last_price: float | None) -> float:
        """The price cash is reserved at."""
        t = order.type
        if t in ("limit", "stop_limit"):
            return order.limit_price  # type: ignore[return-value]
        if t == "stop":
            px = order.trigger_price
        elif t == "trailing_stop":
            px = self._trail_stop(order, last_price)  # type: ignore[arg-type]
        else:
            px = last_price
        return px * (1 + self.slip) if order.side == "buy" else px  # type: ignore[operator]

    def _reserve(
        self, w: _Working, last_price: float | None, instead_of: _Working | None = None
    ) -> str | None:
        """Reserve cash for the part of the order that opens or grows a position (None = done)."""
        order = w.order
        held = self.position(order.strategy, order.symbol).qty + self._pending_qty(
            order.strategy, order.symbol, instead_of
        )
        if order.side == "buy":
            opening = order.qty - min(order.qty, max(-held, 0.0))
        else:
            opening = order.qty - min(order.qty, max(held, 0.0))
            if opening > 0 and order.symbol in self.not_shortable:
                return f"{order.symbol} is not shortable"
        if opening <= 0:
            return None
        ref = self._reference_price(order, last_price)
        reserve = opening * ref + self.fee(opening, ref)
        if not self.account.try_reserve(reserve, self.slot):
            return f"insufficient cash: needs {reserve:.2f}, available {self.account.available():.2f}"
        w.reserved = reserve
        w.per_unit = reserve / opening
        return None

    def _pending_qty(self, strategy: str, symbol: str, skip: _Working | None = None) -> float:
        return sum(
            (w.order.remaining if w.order.side == "buy" else -w.order.remaining)
            for w in self._working.get(symbol, ())
            if w.order.strategy == strategy and not w.order.leg and w is not skip
        )

    def _make_legs(self, order: Order, ts: int) -> list[Order]:
        if order.order_class != "bracket":
            return []
        exit_side = "sell" if order.side == "buy" else "buy"
        legs = []
        if order.stop is not None:
            legs.append(("stop_loss", "stop", None, order.stop))
        if order.target is not None:
            legs.append(("take_profit", "limit", order.target, None))
        made = []
        for role, kind, limit, trigger in legs:
            made.append(
                Order(
                    order.symbol,
                    exit_side,
                    order.qty,
                    kind,
                    limit_price=limit,
                    trigger_price=trigger,
                    strategy=order.strategy,
                    client_order_id=f"{order.client_order_id}-{'sl' if role == 'stop_loss' else 'tp'}",
                    submitted_ts=ts,
                    status="held",
                    tif=order.tif,
                    order_class="bracket",
                    parent_id=order.client_order_id,
                    leg=role,
                    updated_ts=ts,
                )
            )
        order.legs = tuple(leg.client_order_id for leg in made)
        return made

    def cancel(
        self, client_order_id: str, ts: int, reason: str = "", status: str = "cancelled"
    ) -> list[Update]:
        """Cancel an open order (and the held legs of an entry that never filled)."""
        w = self._open.get(client_order_id)
        return [] if w is None else self._close(w, status, reason, ts)

    def replace(self, client_order_id: str, ts: int, new_id: str, **changes: float | None) -> list[Update]:
        """Replace an open order with a copy carrying `changes`; the new order gets `new_id`.

        `qty` is the new order's whole quantity; what the old order filled stays with it.
        When the new order is refused, the old one stays as it was.
        """
        w = self._open.get(client_order_id)
        if w is None:
            return []
        old = w.order
        fields = {k: v for k, v in changes.items() if v is not None}
        fields.setdefault("qty", old.remaining)  # what the old order filled stays with it
        new = replace(
            old,
            client_order_id=new_id,
            status="new",
            reason="",
            filled_qty=0.0,
            avg_fill_price=0.0,
            replaces=old.client_order_id,
            replaced_by="",
            submitted_ts=ts,
            legs=(),
            **fields,
        )
        if "trail_percent" in fields:
            new.trail_price = None
        if "trail_price" in fields:
            new.trail_percent = None
        last = w.best if old.type == "trailing_stop" else w.last
        # The old order's reservation is free again while the new one is checked.
        self.account.apply(0.0, -w.reserved, self.slot)
        nw = _Working(new, triggered=w.triggered, best=w.best, expires=w.expires, last=last)
        reason = self._invalid(new, last) or (None if old.leg else self._reserve(nw, last, w))
        if reason is not None:
            self.account.apply(0.0, w.reserved, self.slot)
            new.status, new.reason, new.updated_ts = "rejected", f"replace refused: {reason}", ts
            return [OrderUpdate("rejected", snapshot(new), ts)]
        w.reserved = 0.0
        old.replaced_by = new_id
        held = old.status == "held"  # a held leg's replacement waits for the entry too
        out = self._close(w, "replaced", "", ts)
        new.status, new.updated_ts = ("held" if held else "accepted"), ts
        new.legs = old.legs
        self._open[new_id] = nw
        if new.status != "held":
            self._working.setdefault(new.symbol, []).append(nw)
        self._relink(old, new)
        if new.leg and new.status != "held":
            self._fit_legs(new.strategy, new.symbol, ts, out)  # a bigger leg would open the other way
        out.append(OrderUpdate(new.status, snapshot(new), ts))
        return out

    def _relink(self, old: Order, new: Order) -> None:
        """Point a bracket's entry at its replaced leg, or the legs at their replaced entry."""
        if old.parent_id:
            pw = self._open.get(old.parent_id)
            parent = pw.order if pw is not None else None
            if parent is not None:
                parent.legs = tuple(
                    new.client_order_id if x == old.client_order_id else x for x in parent.legs
                )
        for leg_id in new.legs:
            lw = self._open.get(leg_id)
            if lw is not None:
                lw.order.parent_id = new.client_order_id

    def expire(self, ts: int) -> list[Update]:
        """Expire day orders whose close has passed."""
        if ts < self._next_expiry:
            return []
        return self._expire(ts, ts)

    def _expire(self, upto: int, ts: int) -> list[Update]:
        out: list[Update] = []
        for w in [w for w in self._open.values() if w.expires <= upto]:
            if w.order.client_order_id in self._open:
                out += self._close(w, "expired", "day order expired", ts)
        self._next_expiry = min((w.expires for w in self._open.values()), default=_NEVER)
        return out

    def end_session(self, ts: int) -> list[Update]:
        """The session ends: day orders expire, and the rest are cancelled (gtc orders of a persisted
        account stay open for the next session)."""
        out = self._expire(_NEVER - 1, ts)
        for w in list(self._open.values()):
            if self.persist and w.order.tif == "gtc":
                continue
            if w.order.client_order_id in self._open:  # a held leg may have gone with its entry
                out += self._close(w, "cancelled", "session ended", ts)
        return out

    def restore(
        self,
        positions: dict[tuple[str, str], Position],
        orders: list[Order],
        prices: dict[str, float],
        ts: int,
    ) -> list[Update]:
        """Continue a persisted account (`liu.store.account_state`): its positions, then its open orders.

        Shorts hold their proceeds and margin again, and each order reserves cash as it did when placed
        (a part-filled one for its whole quantity: the excess is released when it ends). `orders` come
        entries first; a held leg waits for its entry again. An order that cannot be restored (no price
        known for a market or trailing order, not enough cash, its entry missing) is cancelled with the
        reason, which the returned updates carry.
        """
        for key, pos in positions.items():
            self._positions[key] = pos
            if pos.qty < 0:
                self.account.apply(0.0, -2 * pos.qty * pos.avg_price, self.slot)
        out: list[Update] = []
        for order in orders:
            last = prices.get(order.symbol) or self.position(order.strategy, order.symbol).avg_price or None
            w = _Working(order, last=last)
            if order.tif == "day":
                w.expires = self._day_close(order.submitted_ts)
                self._next_expiry = min(self._next_expiry, w.expires)
            if order.status == "held":
                entry = self._open.get(order.parent_id)
                reason = None if entry is not None else f"entry {order.parent_id} not restored"
            else:
                reason = self._invalid(order, last) or self._reserve(w, last)
            if reason is not None:
                order.status, order.reason, order.updated_ts = "cancelled", f"not restored: {reason}", ts
                out.append(OrderUpdate("cancelled", snapshot(order), ts))
                continue
            if order.type == "trailing_stop":
                w.best = last  # type: ignore[assignment]
            self._open[order.client_order_id] = w
            if order.status != "held":
                self._working.setdefault(order.symbol, []).append(w)
        return out

    def _close(self, w: _Working, status: str, reason: str, ts: int) -> list[Update]:
        """Finish an open order: release what it holds, take it off the books.

        An entry that ends before its legs started working takes its held legs with it.
        """
        order = w.order
        if w.reserved:
            self.account.apply(0.0, -w.reserved, self.slot)
            w.reserved = 0.0
        order.status, order.reason, order.updated_ts = status, reason, ts
        self._open.pop(order.client_order_id, None)
        self._unwork(w)
        out: list[Update] = [OrderUpdate(status, snapshot(order), ts)]
        if order.legs and status != "replaced":
            for leg_id in order.legs:
                lw = self._open.get(leg_id)
                if lw is not None and lw.order.status == "held":
                    out += self._close(lw, status, f"entry {order.client_order_id} {status}", ts)
        return out

    def _unwork(self, w: _Working) -> None:
        """Stop matching `w` against its symbol's events (a held leg never started)."""
        working = self._working.get(w.order.symbol)
        if working is not None and w in working:
            working.remove(w)
            if not working:
                del self._working[w.order.symbol]

    # -- corporate actions (data replayed raw; see liu.corporate) -----------
    def split(self, symbol: str, ratio: float, ts: int) -> list[Update]:
        """A `ratio`-for-1 split of `symbol` takes effect: positions hold `ratio` x the shares at
        1/`ratio` of the price, and open orders are resized and repriced the same way (FINRA Rule 5330),
        so a position's value, its P&L and what each order holds in cash do not change."""
        for (_, sym), pos in self._positions.items():
            if sym == symbol and pos.qty:
                pos.qty *= ratio
                pos.avg_price /= ratio
        out: list[Update] = []
        note = f"split {ratio:g}-for-1: quantity and prices adjusted"
        for w in self._open.values():
            order = w.order
            if order.symbol != symbol:
                continue
            order.qty *= ratio
            order.filled_qty *= ratio
            order.avg_fill_price /= ratio
            for name in ("limit_price", "trigger_price", "trail_price", "stop", "target"):
                value = getattr(order, name)
                if value is not None:
                    setattr(order, name, value / ratio)
            w.per_unit /= ratio  # the same cash per order: `reserved` stays as it is
            w.best /= ratio
            if w.last is not None:
                w.last /= ratio
            order.reason, order.updated_ts = note, ts
            out.append(OrderUpdate(order.status, snapshot(order), ts))
        return out

    def dividend(self, symbol: str, amount: float, ts: int) -> list[Update]:
        """A cash dividend of `amount` per share goes ex: longs are paid it, shorts pay it (the price
        drops by about as much, so equity does not jump); it counts in the position's realised P&L."""
        for (_, sym), pos in self._positions.items():
            if sym == symbol and pos.qty:
                cash = pos.qty * amount
                self.account.apply(cash, 0.0, self.slot)
                pos.realized += cash
        return []

    # -- market data ----------------------------------------------------
    def on_trade(self, symbol: str, ts: int, price: float, size: float) -> list[Update] | None:
        if symbol not in self._working:
            return None
        return self._match(symbol, ts, False, price, price, 0.0, 0.0, size, size)

    def on_quote(
        self, symbol: str, ts: int, bid: float, bid_size: float, ask: float, ask_size: float
    ) -> list[Update] | None:
        if symbol not in self._working:
            return None
        return self._match(symbol, ts, False, bid, ask, 0.0, 0.0, bid_size, ask_size)

    def on_bar(
        self, symbol: str, ts: int, o: float, h: float, lo: float, c: float, v: float
    ) -> list[Update] | None:
        if symbol not in self._working:
            return None
        return self._match(symbol, ts, True, o, o, lo, h, v, v)

    def _match(
        self,
        symbol: str,
        ts: int,
        bar: bool,
        sell_px: float,
        buy_px: float,
        low: float,
        high: float,
        sell_size: float,
        buy_size: float,
    ) -> list[Update] | None:
        """Match the symbol's working orders against one event.

        `sell_px`/`buy_px` are the prices a sell/buy gets (a bar: its open); a bar also offers
        its range `low`..`high`, while a trade or quote offers only its own price.
        """
        out: list[Update] = []
        todo = list(self._working[symbol])
        if len(todo) > 1:
            todo.sort(key=_leg_rank)
        starts: dict[str, float] | None = None  # legs activated inside a bar start from their entry's fill
        while todo:
            activated: list[_Working] = []
            # In a bar, what its open fills comes first; fills inside its range wait for them (in rank order).
            inside: list[tuple[_Working, float]] | None = [] if bar and len(todo) > 1 else None
            for w in todo:
                order = w.order
                if order.client_order_id not in self._open:  # cancelled by an earlier fill (OCO)
                    continue
                buy = order.side == "buy"
                if bar:
                    o = buy_px if starts is None else starts.get(order.client_order_id, buy_px)
                    point = self._price(w, buy, o, low, high)
                    if inside is not None and point is not None and point != o:
                        inside.append((w, point))
                        continue
                else:
                    px = buy_px if buy else sell_px
                    point = self._price(w, buy, px, px, px)
                if point is None and (order.tif == "day" or order.tif == "gtc"):
                    continue  # rests (ioc and fok are cancelled in _fill)
                legs = self._fill(w, point, buy_size if buy else sell_size, ts, out)
                if legs:
                    activated += legs
                    if bar:
                        starts = starts or {}
                        starts.update((lw.order.client_order_id, point) for lw in legs)  # type: ignore[misc]
            for w, point in inside or ():
                if w.order.client_order_id in self._open:
                    legs = self._fill(w, point, buy_size if w.order.side == "buy" else sell_size, ts, out)
                    if legs:
                        activated += legs
                        starts = starts or {}
                        starts.update((lw.order.client_order_id, point) for lw in legs)
            todo = activated
        return out or None

    def _fill(
        self, w: _Working, point: float | None, size: float, ts: int, out: list[Update]
    ) -> list[_Working]:
        """Fill what `w` takes of an event that offers `size` at `point` (None: not marketable)."""
        order = w.order
        buy = order.side == "buy"
        px = (
            point
            if point is None or order.type == "limit" or order.type == "stop_limit"
            else self._slipped(point, buy)
        )
        if px is None:
            if order.tif in ("ioc", "fok"):
                out += self._close(w, "cancelled", f"{order.tif}: not marketable on the next event", ts)
            return []
        qty = order.remaining
        if self.participation is not None:
            qty = min(qty, self.participation * size)
        if order.tif == "fok" and qty < order.remaining - 1e-9:
            out += self._close(w, "cancelled", "fok: not fillable in full on the next event", ts)
            return []
        legs = self._execute(w, qty, px, ts, out) if qty > 1e-12 else []
        if order.tif == "ioc" and order.client_order_id in self._open:
            out += self._close(w, "cancelled", "ioc: unfilled rest cancelled", ts)
        return legs

    def _price(self, w: _Working, buy: bool, px: float, low: float, high: float) -> float | None:
        """The price `w` fills at on this event before slippage, or None; moves triggers and trailing stops."""
        order = w.order
        t = order.type
        if t == "market" or (w.triggered and t != "limit" and t != "stop_limit"):
            return px  # a stop triggered earlier (and partly filled) is a market order now
        if not w.triggered and t != "limit":
            if t == "trailing_stop":
                stop = self._trail_stop(order, w.best)
            else:
                stop = order.trigger_price
            if buy:
                hit = px if px >= stop else (stop if high >= stop else None)
            else:
                hit = px if px <= stop else (stop if low <= stop else None)
            if t == "trailing_stop" and hit is None:
                w.best = max(w.best, high) if not buy else min(w.best, low)
            if hit is None:
                return None
            w.triggered = True
            if t != "stop_limit":
                return hit
            limit = order.limit_price
            return hit if (hit <= limit if buy else hit >= limit) else None
        limit = order.limit_price
        if buy:
            return px if px <= limit else (limit if low <= limit else None)
        return px if px >= limit else (limit if high >= limit else None)

    def _slipped(self, px: float, buy: bool) -> float | None:
        if not px > 0:
            return None
        return px * (1 + self.slip) if buy else px * (1 - self.slip)

    @staticmethod
    def _trail_stop(order: Order, best: float) -> float:
        buy = order.side == "buy"
        if order.trail_price is not None:
            return best + order.trail_price if buy else best - order.trail_price
        pct = order.trail_percent / 100  # type: ignore[operator]
        return best * (1 + pct) if buy else best * (1 - pct)

    # -- executions -------------------------------------------------------
    def _execute(self, w: _Working, qty: float, px: float, ts: int, out: list[Update]) -> list[_Working]:
        """Fill `qty` of `w` at `px`; append the updates to `out`; return bracket legs it activated."""
        order = w.order
        pos = self.position(order.strategy, order.symbol)
        old_qty, old_avg = pos.qty, pos.avg_price
        buy = order.side == "buy"
        closing = min(qty, max(-old_qty, 0.0) if buy else max(old_qty, 0.0))
        opening = qty - closing
        release = min(w.reserved, w.per_unit * opening) if order.remaining - qty > 1e-9 else w.reserved
        cut = False
        if opening > 0:
            per_unit = px + self.fee(1.0, px)
            affordable = (self.account.available() + w.reserved) / per_unit
            if opening > affordable + 1e-9:
                if order.tif == "fok":  # never partially
                    return self._cancel_unaffordable(w, px, ts, out)
                opening = max(0.0, math.floor(affordable) if float(order.qty).is_integer() else affordable)
                qty, release, cut = closing + opening, w.reserved, True
                if qty <= 1e-12:
                    return self._cancel_unaffordable(w, px, ts, out)
        fee = self.fee(qty, px)
        if buy:
            cash_delta = -qty * px - fee
            reserved_delta = -release - 2 * closing * old_avg
        else:
            cash_delta = qty * px - fee
            reserved_delta = -release + 2 * opening * px
        w.reserved -= release
        self.account.apply(cash_delta, reserved_delta, self.slot)
        pos.apply(order.side, qty, px, fee)
        filled = order.filled_qty + qty
        order.avg_fill_price = (order.avg_fill_price * order.filled_qty + px * qty) / filled
        order.filled_qty = filled
        done = order.remaining <= 1e-9
        order.status, order.updated_ts = ("filled" if done else "partially_filled"), ts
        fill = Fill(
            order.client_order_id,
            order.strategy,
            order.symbol,
            order.side,
            qty,
            px,
            fee,
            ts,
            order.stop,
            order.target,
            order.indicators,
        )
        out.append(fill)
        out.append(OrderUpdate(order.status, snapshot(order), ts))
        if done:
            self._open.pop(order.client_order_id, None)
            self._unwork(w)
        activated = self._activate_legs(order, ts, out) if order.legs else []
        if cut:  # cut to what the account can pay: the rest is cancelled (once the legs cover what filled)
            self._cancel_unaffordable(w, px, ts, out)
        if order.leg and done:  # a part-filled leg keeps its sibling, which _fit_legs cuts to the position
            self._oco(order, ts, out)
        self._fit_legs(order.strategy, order.symbol, ts, out)
        return activated

    def _cancel_unaffordable(self, w: _Working, px: float, ts: int, out: list[Update]) -> list[_Working]:
        reason = f"insufficient cash at fill price {px:.4f}: available {self.account.available():.2f}"
        out += self.cancel(w.order.client_order_id, ts, reason)
        return []

    def _activate_legs(self, entry: Order, ts: int, out: list[Update]) -> list[_Working]:
        """Size the entry's legs to what it has filled; the first fill makes them work."""
        activated = []
        for leg_id in entry.legs:
            lw = self._open.get(leg_id)
            if lw is None:
                continue
            leg = lw.order
            leg.qty = entry.filled_qty
            if leg.status == "held":
                leg.status, leg.updated_ts = "accepted", ts
                self._working.setdefault(leg.symbol, []).append(lw)
                out.append(OrderUpdate("accepted", snapshot(leg), ts))
                activated.append(lw)
        return activated

    def _oco(self, leg: Order, ts: int, out: list[Update]) -> None:
        """One leg filled: the other leg of the bracket is cancelled."""
        pw = self._open.get(leg.parent_id)
        siblings = pw.order.legs if pw is not None else ()
        if not siblings:
            siblings = tuple(
                w.order.client_order_id
                for w in self._open.values()
                if w.order.parent_id == leg.parent_id and w.order is not leg
            )
        for sid in siblings:
            if sid != leg.client_order_id and sid in self._open:
                out += self._close(
                    self._open[sid], "cancelled", f"OCO: {leg.leg} {leg.client_order_id} filled", ts
                )

    def _fit_legs(self, strategy: str, symbol: str, ts: int, out: list[Update]) -> None:
        """Cut working legs to the position; cancel them when it is flat or reversed."""
        held = self.position(strategy, symbol).qty
        for w in list(self._working.get(symbol, ())):
            leg = w.order
            if not leg.leg or leg.strategy != strategy:
                continue
            covers = held if leg.side == "sell" else -held
            if covers <= 1e-12:
                out += self._close(w, "cancelled", "position closed", ts)
            elif leg.remaining > covers + 1e-12:
                leg.qty = leg.filled_qty + covers
