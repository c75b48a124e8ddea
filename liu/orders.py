"""The order desk: every order a strategy places, cancels or replaces passes here.

It gives each order its client id, puts it through the risk manager, hands it
to the broker, writes it to the sink (the database writer) and queues what
happened (order updates and fills) for the runner to deliver to the owning
strategy. Broker market-data calls return their updates to the runner, which
passes them through `record` for the same bookkeeping. The desk also keeps the
shared account's view of this process (market value, open orders) current,
and carries out a flatten.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Protocol

from liu.brokers.account import Account, AccountView
from liu.brokers.base import Broker, Update
from liu.events import Fill, Order, OrderUpdate
from liu.risk import RiskManager, with_open_orders

log = logging.getLogger(__name__)
_COUNTED = frozenset({"rejected", "cancelled", "expired"})  # order events with a runner counter


class Sink(Protocol):
    """Where orders and fills go (the consumer's database writer)."""

    def add_order(self, order: Order) -> None: ...

    def update_order(self, order: Order) -> None: ...

    def add_fill(self, fill: Fill) -> None: ...


class NullSink:
    def add_order(self, order: Order) -> None:
        pass

    def update_order(self, order: Order) -> None:
        pass

    def add_fill(self, fill: Fill) -> None:
        pass


class OrderDesk:
    """Places, cancels and replaces orders for one runner; counts and records what happened."""

    def __init__(
        self,
        broker: Broker,
        account: Account,
        counts: dict[str, int],
        last_price: dict[str, float],
        *,
        risk: RiskManager | None = None,
        sink: Sink | None = None,
        order_prefix: str = "o",
        slot: int = 0,
    ) -> None:
        self.broker = broker
        self.account = account
        self.risk = risk
        self.sink: Sink = sink or NullSink()
        self.counts = counts
        self.last_price = last_price
        self.order_prefix = order_prefix
        self.slot = slot
        self.queue: list[Update] = []  # updates waiting to reach the strategies
        self.fill_log: list[Fill] = []
        self._seq = 0
        self._flatten_seen = account.flatten_generation

    def number_from(self, seq: int) -> None:
        """Number the next orders after `seq` (a restarted consumer must not reuse an earlier life's ids)."""
        self._seq = max(self._seq, seq)

    def _next_id(self) -> str:
        self._seq += 1
        return f"{self.order_prefix}{self._seq}"

    # -- what strategies do --------------------------------------------------
    def place(self, order: Order, strategy: str, now: int, check: bool = True) -> None:
        """Give `order` its id, check it against the risk limits (unless `check` is False: a
        flatten's closing orders), and submit it."""
        order.strategy = strategy
        order.client_order_id = self._next_id()
        order.submitted_ts = now
        self.counts["orders"] += 1
        last = self.last_price.get(order.symbol)
        reason = self._risk_check(order, last, now) if check else None
        if reason is not None:
            order.status, order.reason, order.updated_ts = "rejected", reason, now
            updates: list[Update] = [OrderUpdate("rejected", replace(order), now)]
        else:
            updates = self.broker.submit(order, last, now)
        for up in updates:
            self.sink.add_order(up.order)  # the order and its bracket legs, each seen here first
        self._note(updates)

    def cancel(self, order: Order | str, now: int, reason: str = "cancelled by strategy") -> bool:
        """Cancel an open order; False when it is no longer open."""
        cid = order if isinstance(order, str) else order.client_order_id
        updates = self.broker.cancel(cid, now, reason)
        self.record(updates)
        return bool(updates)

    def replace(self, order: Order, now: int, **changes: float | None) -> Order | None:
        """Replace an open order; returns the new order, or None when the old one was not open.

        The new order goes through the risk limits like any other; refused, the old one stays.
        """
        old = self.broker.open_orders(order.strategy, order.symbol)
        current = next((o for o in old if o.client_order_id == order.client_order_id), None)
        if current is None:
            return None
        new_id = self._next_id()
        self.counts["orders"] += 1
        candidate = replace(
            current, client_order_id=new_id, status="new", qty=current.remaining, filled_qty=0.0
        )
        for k, v in changes.items():
            if v is not None:
                setattr(candidate, k, v)
        last = self.last_price.get(order.symbol)
        reason = None if current.leg else self._risk_check(candidate, last, now, current.client_order_id)
        if reason is not None:
            candidate.status, candidate.reason, candidate.updated_ts = (
                "rejected",
                f"replace refused: {reason}",
                now,
            )
            updates: list[Update] = [OrderUpdate("rejected", replace(candidate), now)]
        else:
            updates = self.broker.replace(order.client_order_id, now, new_id, **changes)
        for up in updates:
            if up.order.client_order_id == new_id:
                self.sink.add_order(up.order)
            else:
                self.sink.update_order(up.order)
        self._note(updates)
        new = next((u.order for u in updates if u.order.client_order_id == new_id), None)
        return None if new is None else self._live(new)

    def _live(self, snapshot: Order) -> Order:
        """The broker's live order for a snapshot (so a strategy sees its status change)."""
        for o in self.broker.open_orders(snapshot.strategy, snapshot.symbol):
            if o.client_order_id == snapshot.client_order_id:
                return o
        return snapshot

    def open_orders(self, strategy: str, symbol: str | None = None) -> list[Order]:
        return self.broker.open_orders(strategy, symbol)

    def open_orders_all(self) -> list[Order]:
        """Every open order of this process, of every strategy."""
        return self.broker.open_orders()

    # -- what the broker reports --------------------------------------------
    def record(self, updates: list[Update]) -> None:
        """Write updates from the broker to the sink and queue them for the strategies."""
        sink = self.sink
        for up in updates:
            if up.__class__ is Fill:
                sink.add_fill(up)  # type: ignore[arg-type]
            else:
                sink.update_order(up.order)  # type: ignore[union-attr]
        self._note(updates)

    def _note(self, updates: list[Update]) -> None:
        counts = self.counts
        filled = False
        for up in updates:
            if up.__class__ is Fill:
                counts["fills"] += 1
                self.fill_log.append(up)  # type: ignore[arg-type]
                filled = True
                continue
            event = up.event  # type: ignore[union-attr]
            if event in _COUNTED:
                counts[event] += 1
                if event == "rejected":
                    o = up.order  # type: ignore[union-attr]
                    log.warning(
                        "order %s %s %s x%g by %s rejected: %s",
                        o.client_order_id,
                        o.side,
                        o.symbol,
                        o.qty,
                        o.strategy,
                        o.reason,
                    )
        self.queue.extend(updates)
        if filled:
            self.publish()

    # -- risk, account, housekeeping ----------------------------------------
    def _risk_check(self, order: Order, last: float | None, now: int, instead_of: str = "") -> str | None:
        """The risk manager's verdict; `instead_of` is the order a replacement would take the place of."""
        if self.risk is None or not (self.risk.enabled or self.account.halted):
            return None  # no limits set and not halted: nothing to check, so nothing to gather
        open_here = [
            o for o in self.broker.open_orders(symbol=order.symbol) if o.client_order_id != instead_of
        ]
        symbol_qty = held = 0.0
        for (strategy, sym), pos in self.broker.all_positions().items():
            if sym == order.symbol:
                symbol_qty += pos.qty
                if strategy == order.strategy:
                    held = pos.qty
        mine = [o for o in open_here if o.strategy == order.strategy]
        return self.risk.check(
            order,
            last_price=last,
            held=with_open_orders(held, mine, order.side),
            symbol_position=with_open_orders(symbol_qty, open_here, order.side),
            local_gross=self._market_value()[1],
            local_open_orders=self.broker.open_count(),
            now_ns=now,
        )

    def _market_value(self) -> tuple[float, float]:
        net = gross = 0.0
        last = self.last_price
        for (_, sym), pos in self.broker.all_positions().items():
            if pos.qty:
                value = pos.qty * last.get(sym, pos.avg_price)
                net += value
                gross += abs(value)
        return net, gross

    def publish(self) -> None:
        """Put this process's market value and open orders into the shared account."""
        net, gross = self._market_value()
        self.account.publish(self.slot, net, gross, self.broker.open_count())

    def account_view(self) -> AccountView:
        self.publish()
        return self.account.view()

    def on_minute(self, now: int) -> None:
        """Once per minute of data time: expire day orders; roll the trading day and check the daily
        loss (with this process's positions published first) when the risk manager needs it."""
        expired = self.broker.expire(now)
        if expired:
            self.record(expired)
        risk = self.risk
        if risk is not None and risk.due(now):
            self.publish()
            if risk.on_minute(now) == "flatten":
                self.account.request_flatten()
                self.check_flatten(now)  # this process at once; the others at their next batch

    def check_flatten(self, now: int) -> bool:
        """Carry out a flatten requested anywhere (a risk breach, the control channel) once."""
        gen = self.account.flatten_generation
        if gen == self._flatten_seen:
            return False
        self._flatten_seen = gen
        self.flatten(now)
        return True

    def flatten(self, now: int) -> None:
        """Cancel every open order of this process and close every position at market."""
        for order in self.broker.open_orders():
            if order.status != "held":  # held legs go with their entry
                self.cancel(order, now, "flatten")
        for (strategy, sym), pos in list(self.broker.all_positions().items()):
            if pos.qty:
                side = "sell" if pos.qty > 0 else "buy"
                self.place(Order(sym, side, abs(pos.qty)), strategy, now, check=False)
        log.warning("flatten: open orders cancelled, positions closed at market")

    def end_session(self, now: int) -> None:
        """Day orders expire and nothing stays open past an in-process broker's session."""
        end = getattr(self.broker, "end_session", None)
        if end is not None:
            self.record(end(now))
