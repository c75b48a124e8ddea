"""`AlpacaBroker`: the Broker a consumer's runner trades through when `[broker] kind = "alpaca"`.

It sends orders, cancels and replaces to the execution gateway over the consumer's pipe and returns at
once: a submitted order is `new` (in flight) until the gateway reports Alpaca's answer. What the gateway
reports later (`Updates`) goes through `ingest`, which keeps this consumer's mirror of its open orders
and its strategies' positions (from the fills, as the paper broker does) and hands the updates on for
the desk to record and the runner to deliver. Market data does not fill anything here: Alpaca does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from liu.brokers.account import Account
from liu.brokers.alpaca import ids
from liu.brokers.alpaca.wire import AccountState, Cancel, Replace, Restore, Submit, Updates
from liu.brokers.base import Position, PositionBook, Update, invalid_order
from liu.events import FINAL_STATUSES, Fill, Order, OrderUpdate

log = logging.getLogger(__name__)
GATEWAY_DOWN = "the Alpaca gateway is gone: not sent (trading is halted; the next start reconciles)"
_STATE = ("status", "reason", "filled_qty", "avg_fill_price", "replaced_by", "legs", "updated_ts")  # Alpaca's


class AlpacaBroker(PositionBook):
    """The runner's view of the Alpaca account, fed by the gateway; `send` puts a message on the pipe."""

    def __init__(
        self, send: Callable[[Any], None], account: Account | None = None, not_shortable: Iterable[str] = ()
    ) -> None:
        self.send = send
        self.not_shortable = frozenset(not_shortable)  # from Alpaca's asset list: refused before any request
        self.account = account  # the shared account: its cash follows Alpaca's (risk, ctx.account)
        cash = account.cash if account is not None else 0.0
        self._open: dict[str, Order] = {}
        self._positions: dict[tuple[str, str], Position] = {}
        self.cash = cash
        self.buying_power = cash
        self.equity = cash
        self.account_ts = 0

    # -- queries --------------------------------------------------------------------------------
    def available_cash(self) -> float:
        return self.buying_power

    def open_orders(self, strategy: str | None = None, symbol: str | None = None) -> list[Order]:
        return [
            o
            for o in self._open.values()
            if (strategy is None or o.strategy == strategy) and (symbol is None or o.symbol == symbol)
        ]

    def open_count(self) -> int:
        return len(self._open)

    # -- orders ---------------------------------------------------------------------------------
    def _short_refused(self, order: Order) -> str | None:
        """A sell that would open or grow a short in a symbol Alpaca's asset list marks not shortable."""
        if order.side != "sell" or order.symbol not in self.not_shortable:
            return None
        held = self.position(order.strategy, order.symbol).qty - sum(
            o.remaining
            for o in self._open.values()
            if o.strategy == order.strategy and o.symbol == order.symbol and o.side == "sell" and not o.leg
        )
        if order.qty <= held + 1e-9:
            return None
        return f"{order.symbol} is not shortable (Alpaca's asset list): sell {order.qty:g} with {max(held, 0):g} held"

    def submit(self, order: Order, last_price: float | None, ts: int) -> list[Update]:
        """Send the order to the gateway: `new` (in flight) now, Alpaca's answer later."""
        reason = invalid_order(order) or self._short_refused(order)  # the rest is Alpaca's to say
        if reason is not None:
            order.status, order.reason, order.updated_ts = "rejected", reason, ts
            return [OrderUpdate("rejected", replace(order), ts)]
        order.status, order.updated_ts = "new", ts
        out: list[Update] = [OrderUpdate("new", replace(order), ts)]
        legs = []
        if order.stop is not None or order.target is not None:
            order.order_class = "bracket" if order.stop is not None and order.target is not None else "oto"
            for kind, price in (("stop_loss", order.stop), ("take_profit", order.target)):
                if price is None:
                    continue
                leg = Order(
                    order.symbol,
                    "sell" if order.side == "buy" else "buy",
                    order.qty,
                    type="stop" if kind == "stop_loss" else "limit",
                    limit_price=price if kind == "take_profit" else None,
                    trigger_price=price if kind == "stop_loss" else None,
                    strategy=order.strategy,
                    client_order_id=ids.leg_id(order.client_order_id, kind),
                    submitted_ts=ts,
                    status="held",
                    tif=order.tif,
                    order_class=order.order_class,
                    parent_id=order.client_order_id,
                    leg=kind,
                    updated_ts=ts,
                )
                legs.append(leg)
            order.legs = tuple(leg.client_order_id for leg in legs)
            out[0] = OrderUpdate("new", replace(order), ts)
        if not self._post(Submit(replace(order))):  # never sent, so never at Alpaca: rejected, truthfully
            order.status, order.reason = "rejected", GATEWAY_DOWN
            return [OrderUpdate("rejected", replace(order), ts)]
        self._open[order.client_order_id] = order
        for leg in legs:
            self._open[leg.client_order_id] = leg
            out.append(OrderUpdate("held", replace(leg), ts))
        return out

    def _post(self, msg: Any) -> bool:
        """Send to the gateway; False when it is gone (the daemon halts trading and says so)."""
        try:
            self.send(msg)
        except OSError:
            return False
        return True

    def cancel(self, client_order_id: str, ts: int, reason: str = "") -> list[Update]:
        """Ask for the cancel; the `cancelled` update comes from Alpaca. Returns the order as it is (the
        desk reads a non-empty answer as "it was open"), or nothing when it is no longer open."""
        order = self._open.get(client_order_id)
        if order is None:
            return []
        if not self._post(Cancel(client_order_id, reason)):
            log.error("cancel of %s not sent: %s", client_order_id, GATEWAY_DOWN)
        return [OrderUpdate(order.status, replace(order), ts)]

    def replace(self, client_order_id: str, ts: int, new_id: str, **changes: float | None) -> list[Update]:
        old = self._open.get(client_order_id)
        if old is None:
            return []
        fields = {k: v for k, v in changes.items() if v is not None}
        new = replace(
            old,
            client_order_id=new_id,
            status="new",
            reason="",
            filled_qty=0.0,
            avg_fill_price=0.0,
            replaces=client_order_id,
            replaced_by="",
            submitted_ts=ts,
            updated_ts=ts,
            legs=(),
            **fields,
        )
        if not self._post(Replace(client_order_id, new_id, dict(changes))):
            new.status, new.reason = "rejected", GATEWAY_DOWN
            return [OrderUpdate("rejected", replace(new), ts)]
        self._open[new_id] = new
        return [OrderUpdate("new", replace(new), ts)]

    def expire(self, ts: int) -> list[Update]:
        return []  # Alpaca expires day orders itself and reports it

    # -- what the gateway reports ---------------------------------------------------------------
    def on_message(self, msg: Any) -> list[Update]:
        """A message from the gateway; returns the updates to record and deliver (maybe none)."""
        if isinstance(msg, Updates):
            return self.ingest(msg.updates)
        if isinstance(msg, AccountState):
            self.cash, self.buying_power, self.equity, self.account_ts = (
                msg.cash,
                msg.buying_power,
                msg.equity,
                msg.ts,
            )
            if self.account is not None:
                self.account.apply(msg.cash - self.account.cash, 0.0)
        elif isinstance(msg, Restore):
            self.restore(msg)
        return []

    def ingest(self, updates: list[Update]) -> list[Update]:
        """Apply the gateway's updates to the mirror: the live order objects take each new state, and the
        updates handed on carry a snapshot of this consumer's order (every field the strategy set)."""
        out: list[Update] = []
        for up in updates:
            if up.__class__ is Fill:
                f: Fill = up  # type: ignore[assignment]
                self.position(f.strategy, f.symbol).apply(f.side, f.qty, f.price, f.fee)
                out.append(f)
                continue
            snap = up.order  # type: ignore[union-attr]
            live = self._open.get(snap.client_order_id)
            if live is not None:
                for k in _STATE:
                    setattr(live, k, getattr(snap, k))
                if live.status in FINAL_STATUSES:
                    del self._open[snap.client_order_id]
                out.append(OrderUpdate(up.event, replace(live), up.ts))  # type: ignore[union-attr]
                continue
            if snap.status not in FINAL_STATUSES:
                self._open[snap.client_order_id] = replace(snap)
            out.append(up)
        return out

    def restore(self, msg: Restore) -> None:
        """Restart reconciliation: this consumer's strategies' positions and open orders at Alpaca."""
        for key, pos in msg.positions.items():
            self._positions[key] = replace(pos)
        for o in msg.orders:
            self._open[o.client_order_id] = replace(o)

    # -- market data: Alpaca fills, not us ------------------------------------------------------
    def on_trade(self, symbol: str, ts: int, price: float, size: float) -> list[Update] | None:
        return None

    def on_quote(
        self, symbol: str, ts: int, bid: float, bid_size: float, ask: float, ask_size: float
    ) -> list[Update] | None:
        return None

    def on_bar(
        self, symbol: str, ts: int, o: float, h: float, lo: float, c: float, v: float
    ) -> list[Update] | None:
        return None
