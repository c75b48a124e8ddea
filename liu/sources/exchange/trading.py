"""Alpaca's trading API on liu's local exchange: accounts, orders, positions and `trade_updates` events.

One account per API key, each a `PaperBroker` (its docstring is the fill model) on its own `Account`,
fed every trade, quote and bar the exchange streams, in data time. This module keeps what Alpaca adds
on top of the paper broker: UUID order ids, client order ids unique for ever, order classes
(bracket / oto as the paper broker's brackets, oco as two linked exit orders), the JSON shapes
alpaca-py 0.44 parses, and the stream events. `liu.sources.exchange.trading_api` serves it over HTTP.

Errors are `ApiError(status, code, message)`, answered as Alpaca's `{"code": .., "message": ..}`:
422 for bad requests, unknown symbols and a duplicate client order id ("client_order_id must be
unique"), 403 for insufficient buying power, 404 for an unknown order or position.

Fault switches for tests (`Faults`, one per engine; also `POST /liu/faults`, see trading_api):
`delay_post(seconds, times)` answers order POSTs late (the order exists at once), `drop_post(times)`
creates the order and cuts the connection without an answer, `fail_post(status, times)` answers 429
or 500 before creating the order and 504 after creating it (a gateway timeout), `reject_symbols` answers
422 "asset X is not tradable", `reject_after_accept` (symbols) accepts the order (200, `new`) and then
rejects it on the stream (`rejected`), `insufficient_buying_power` answers 403, and the engine's
`drop_trade_streams()` closes every `trade_updates` socket (alpaca-py reconnects; events meanwhile are
lost, as on Alpaca).
"""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from liu.brokers.account import Account
from liu.brokers.paper import PaperBroker
from liu.events import ORDER_TYPES, Fill, Order, OrderUpdate
from liu.sources.exchange.market import Market, is_crypto

NS = 1_000_000_000
TIFS = ("day", "gtc", "opg", "cls", "ioc", "fok")
CLASSES = ("simple", "bracket", "oco", "oto")
MAX_CLIENT_ID = 128
# liu order status → Alpaca order status
_STATUS = {
    "new": "new",
    "accepted": "new",
    "held": "held",
    "partially_filled": "partially_filled",
    "filled": "filled",
    "cancelled": "canceled",
    "expired": "expired",
    "rejected": "rejected",
    "replaced": "replaced",
}
_OPEN = frozenset({"new", "accepted", "held", "partially_filled"})
# liu final status → (Alpaca event, the order's timestamp field)
_FINAL_EVENT = {
    "cancelled": ("canceled", "canceled_at"),
    "expired": ("expired", "expired_at"),
    "replaced": ("replaced", "replaced_at"),
    "rejected": ("rejected", "failed_at"),
}


class ApiError(Exception):
    """An answer other than 2xx, with Alpaca's error body."""

    def __init__(self, status: int, message: str, code: int | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = ({} if code is None else {"code": code}) | {"message": message} | extra


def bad(message: str) -> ApiError:
    return ApiError(422, message, 40010001)


@dataclass
class Faults:
    """Fault switches for tests; each `times` counts order POSTs (None: until `clear()`)."""

    delay_seconds: float = 0.0
    delay_times: int | None = 0
    drop_times: int | None = 0
    fail_status: int = 0
    fail_times: int | None = 0
    reject_symbols: set[str] = field(default_factory=set)
    reject_after_accept: set[str] = field(default_factory=set)
    insufficient_buying_power: bool = False

    def delay_post(self, seconds: float, times: int | None = 1) -> None:
        self.delay_seconds, self.delay_times = seconds, times

    def drop_post(self, times: int | None = 1) -> None:
        self.drop_times = times

    def fail_post(self, status: int, times: int | None = 1) -> None:
        if status not in (429, 500, 504):
            raise ValueError(f"fail_post status {status}: expected 429, 500 or 504")
        self.fail_status, self.fail_times = status, times

    def clear(self) -> None:
        self.delay_times = self.drop_times = self.fail_times = 0
        self.reject_symbols = set()
        self.reject_after_accept = set()
        self.insufficient_buying_power = False

    def take(self) -> tuple[str, float] | None:
        """The fault for this order POST, if any: ("fail", status), ("drop", 0) or ("delay", seconds)."""
        for kind, attr in (("fail", "fail_times"), ("drop", "drop_times"), ("delay", "delay_times")):
            left = getattr(self, attr)
            if left is None or left > 0:
                if left is not None:
                    setattr(self, attr, left - 1)
                value = {"fail": self.fail_status, "drop": 0.0, "delay": self.delay_seconds}[kind]
                return kind, float(value)
        return None

    def set(self, spec: dict[str, Any]) -> None:
        """Apply the JSON form (the admin endpoint's body); unknown keys raise `ValueError`."""
        for key, value in spec.items():
            if key == "clear":
                if value:
                    self.clear()
            elif key == "delay_post":
                self.delay_post(float(value["seconds"]), value.get("times", 1))
            elif key == "drop_post":
                self.drop_post(value.get("times", 1) if isinstance(value, dict) else value)
            elif key == "fail_post":
                self.fail_post(int(value["status"]), value.get("times", 1))
            elif key == "reject_symbols":
                self.reject_symbols = set(value)
            elif key == "reject_after_accept":
                self.reject_after_accept = set(value)
            elif key == "insufficient_buying_power":
                self.insufficient_buying_power = bool(value)
            elif key != "drop_trade_stream":
                raise ValueError(
                    f"unknown fault {key!r} (expected clear, delay_post, drop_post, fail_post, "
                    "reject_symbols, reject_after_accept, insufficient_buying_power, drop_trade_stream)"
                )


@dataclass
class OrderRecord:
    """What Alpaca knows of one order beyond the paper broker's `Order` (`order`, the latest state)."""

    id: str  # Alpaca's order id (a UUID); also the paper broker's order id for entries
    client_order_id: str
    internal: str  # the paper broker's id for it
    symbol: str
    side: str
    type: str
    tif: str
    order_class: str
    created_ns: int
    order: Order  # the paper broker's own object: it keeps it up to date
    notional: float | None = None
    extended_hours: bool = False
    parent: str | None = None  # a leg's parent record id
    legs: list[str] = field(default_factory=list)
    replaces: str | None = None
    replaced_by: str | None = None
    times: dict[str, int] = field(default_factory=dict)  # filled_at, canceled_at, ... → ns

    @property
    def is_open(self) -> bool:
        return self.order.status in _OPEN


class TradeAccount:
    """One key's account: a paper broker, its orders by id and client id, and its stream listeners."""

    def __init__(self, key: str, cash: float, broker_kwargs: dict[str, Any]) -> None:
        self.key = key
        self.id = str(uuid.uuid5(uuid.NAMESPACE_URL, "liu-account:" + key))
        self.number = "PA" + self.id.replace("-", "")[:10].upper()
        self.start_cash = cash
        self.broker = PaperBroker(Account(cash), **broker_kwargs)
        self.orders: dict[str, OrderRecord] = {}  # by Alpaca id, in creation order
        self.by_client: dict[str, str] = {}  # client order id → Alpaca id (unique for ever)
        self.by_internal: dict[str, OrderRecord] = {}
        self.listeners: set[Callable[[bytes | None], None]] = set()
        self.events: deque[dict] = deque(maxlen=100_000)  # every trade_updates payload, for tests
        self.positions: dict[str, float] = {}  # signed qty per symbol, as the fills stream it

    def orders_for(self, client_order_id: str) -> list[OrderRecord]:
        """Every order with this client order id (exactly one or none, by the uniqueness rule)."""
        return [r for r in self.orders.values() if r.client_order_id == client_order_id]


def iso(ns: int) -> str:
    """RFC 3339 UTC with nanoseconds, as Alpaca writes timestamps."""
    s, frac = divmod(ns, NS)
    return datetime.fromtimestamp(s, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"


def num(x: float | None) -> str | None:
    """A decimal as Alpaca sends it (a string), without float noise."""
    if x is None:
        return None
    text = f"{x:.9f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _float(body: dict, name: str, required: bool = False) -> float | None:
    value = body.get(name)
    if value is None or value == "":
        if required:
            raise bad(f"{name} is required")
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise bad(f"invalid {name} {value!r}: expected a number") from None
    if not (math.isfinite(x) and x > 0):
        raise bad(f"{name} must be a positive number, not {value!r}")
    return x


class TradingEngine:
    """Alpaca's trading semantics over paper brokers, one per API key.

    Args:
        market: the exchange's market (assets, last prices, data time `market.now()`).
        key, secret: the exchange's credentials (None: any key, each its own account).
        cash: starting cash of each account.
        **broker: `PaperBroker` options (fee_per_share, fee_bps, slippage_bps, max_participation).
    """

    def __init__(
        self,
        market: Market,
        key: str | None = None,
        secret: str | None = None,
        cash: float = 100_000.0,
        **broker: Any,
    ) -> None:
        self.market = market
        self.key = key
        self.secret = secret
        self.keys: dict[str, str | None] = {} if key is None else {key: secret}  # see add_key
        self.cash = cash
        self.broker_kwargs = broker
        self.faults = Faults()
        self.accounts: dict[str, TradeAccount] = {}
        self.order_posts = 0  # POST /v2/orders received (retries included)
        self._last: dict[str, float] = {}

    # -- accounts --------------------------------------------------------------------------------------

    def add_key(self, key: str, secret: str | None) -> TradeAccount:
        """Another API key, with an account of its own (one account per key)."""
        self.keys[key] = secret
        return self.account(key)

    def account(self, key: str) -> TradeAccount:
        acct = self.accounts.get(key)
        if acct is None:
            not_shortable = [a["symbol"] for a in self.market.assets() if not a["shortable"]]
            kwargs = {"not_shortable": not_shortable} | self.broker_kwargs
            acct = self.accounts[key] = TradeAccount(key, self.cash, kwargs)
        return acct

    def now(self) -> int:
        return self.market.now()

    def last_price(self, symbol: str) -> float | None:
        px = self._last.get(symbol)
        if px is None:
            trade = self.market.latest_trade(symbol)
            px = None if trade is None else float(trade["p"])
        return px

    # -- market data ---------------------------------------------------------------------------------

    def on_market(self, msgs: list[dict]) -> None:
        """One frame the exchange streamed: every account's paper broker matches its orders on it."""
        last = self._last
        accounts = list(self.accounts.values())
        ts = 0
        for m in msgs:
            try:
                kind, sym = m["T"], m["S"]
                ts = m["t"].to_unix_nano()
                if kind == "t":
                    last[sym] = m["p"]
                    for a in accounts:
                        if (ups := a.broker.on_trade(sym, ts, m["p"], m["s"])) is not None:
                            self._apply(a, ups, ts)
                elif kind == "q":
                    for a in accounts:
                        ups = a.broker.on_quote(sym, ts, m["bp"], m["bs"], m["ap"], m["as"])
                        if ups is not None:
                            self._apply(a, ups, ts)
                elif kind == "b":
                    for a in accounts:
                        ups = a.broker.on_bar(sym, ts, m["o"], m["h"], m["l"], m["c"], m["v"])
                        if ups is not None:
                            self._apply(a, ups, ts)
            except (KeyError, TypeError, AttributeError):
                continue
        if ts:
            for a in accounts:
                if ups := a.broker.expire(ts):
                    self._apply(a, ups, ts)

    # -- orders --------------------------------------------------------------------------------------

    def submit(self, acct: TradeAccount, body: Any) -> OrderRecord:
        """POST /v2/orders: create the order or raise `ApiError` (nothing is created then)."""
        if not isinstance(body, dict):
            raise bad("request body must be a JSON object")
        cid = body.get("client_order_id") or str(uuid.uuid4())
        if not isinstance(cid, str) or len(cid) > MAX_CLIENT_ID:
            raise bad(f"client_order_id must be a string of at most {MAX_CLIENT_ID} characters")
        if cid in acct.by_client:
            raise bad("client_order_id must be unique")
        symbol = body.get("symbol")
        if not isinstance(symbol, str) or not symbol:
            raise bad("symbol is required")
        asset = self.market.asset(symbol)
        if asset is None:
            raise bad(f'asset "{symbol}" not found')
        symbol = asset["symbol"]
        if symbol in self.faults.reject_symbols:
            raise ApiError(422, f'asset "{symbol}" is not tradable', 42210000)
        side = body.get("side")
        if side not in ("buy", "sell"):
            raise bad(f"invalid side {side!r}: expected buy or sell")
        typ = body.get("type") or body.get("order_type")
        if typ not in ORDER_TYPES:
            raise bad(f"invalid order type {typ!r}: expected one of {', '.join(ORDER_TYPES)}")
        tif = body.get("time_in_force")
        if tif not in TIFS:
            raise bad(f"invalid time_in_force {tif!r}: expected one of {', '.join(TIFS)}")
        if tif in ("opg", "cls"):
            raise bad(f"time_in_force {tif} is not supported by liu's local exchange")
        cls = body.get("order_class") or "simple"
        if cls not in CLASSES:
            raise bad(f"invalid order_class {cls!r}: expected one of {', '.join(CLASSES)}")
        qty, notional = _float(body, "qty"), _float(body, "notional")
        if (qty is None) == (notional is None):
            raise bad("exactly one of qty and notional is required")
        last = self.last_price(symbol)
        if notional is not None:
            if typ != "market" or cls != "simple":
                raise bad("notional orders must be simple market orders")
            if last is None:
                raise bad(f"no price for {symbol} yet: cannot size a notional order")
            qty = notional / last
        elif not asset["fractionable"] and not float(qty).is_integer():
            raise bad(f"fractional orders are not supported for {symbol}")
        limit = _float(body, "limit_price")
        stop_px = _float(body, "stop_price")
        trail_pct, trail_px = _float(body, "trail_percent"), _float(body, "trail_price")
        tp = body.get("take_profit") or {}
        sl = body.get("stop_loss") or {}
        if not isinstance(tp, dict) or not isinstance(sl, dict):
            raise bad("take_profit and stop_loss must be objects")
        target = _float(tp, "limit_price")
        stop = _float(sl, "stop_price")
        stop_limit = _float(sl, "limit_price")
        if cls == "bracket" and (target is None or stop is None):
            raise bad("bracket orders need take_profit.limit_price and stop_loss.stop_price")
        if cls == "oco" and (target is None or stop is None):
            raise bad("oco orders need take_profit.limit_price and stop_loss.stop_price")
        if cls == "oto" and (target is None) == (stop is None):
            raise bad("oto orders need exactly one of take_profit and stop_loss")
        if cls in ("bracket", "oto") and typ not in ("market", "limit"):
            raise bad(f"{cls} orders must be market or limit orders, not {typ}")
        if cls == "oco" and typ != "limit":
            raise bad("oco orders must be of type limit")
        if cls == "simple" and (tp or sl):
            raise bad("take_profit and stop_loss need order_class bracket, oco or oto")
        if self.faults.insufficient_buying_power:
            raise ApiError(403, "insufficient buying power", 40310000)
        ts = self.now()
        rid = str(uuid.uuid4())
        if cls == "oco":
            return self._submit_oco(
                acct, rid, cid, symbol, side, qty, tif, target, stop, stop_limit, last, ts
            )
        order = Order(
            symbol,
            side,
            qty,  # type: ignore[arg-type]
            typ,
            limit_price=limit,
            trigger_price=stop_px,
            trail_percent=trail_pct,
            trail_price=trail_px,
            tif=tif,
            client_order_id=rid,
            submitted_ts=ts,
            order_class="bracket" if cls in ("bracket", "oto") else "simple",
            stop=stop,
            target=target,
        )
        ups = acct.broker.submit(order, last, ts)
        _raise_rejected(ups)
        rec = self._record(acct, rid, cid, rid, order, cls, ts, notional, bool(body.get("extended_hours")))
        for u in ups[1:]:  # the bracket's held legs
            if isinstance(u, OrderUpdate):
                leg = self._record(acct, str(uuid.uuid4()), None, u.order.client_order_id, u.order, cls, ts)
                leg.parent = rec.id
                rec.legs.append(leg.id)
                leg.order = _live(acct, u.order.client_order_id) or u.order
                if u.order.leg == "stop_loss" and stop_limit is not None:
                    leg.order.type, leg.order.limit_price = "stop_limit", stop_limit
                    leg.type = "stop_limit"
        self._apply(acct, ups[:1], ts)
        if symbol in self.faults.reject_after_accept:  # after the POST's answer, as Alpaca rejects late
            asyncio.get_running_loop().call_soon(self._reject, acct, rec)
        return rec

    def _reject(self, acct: TradeAccount, rec: OrderRecord) -> None:
        ts = self.now()
        reason = f'asset "{rec.symbol}" is not tradable'
        self._apply(acct, acct.broker.cancel(rec.internal, ts, reason, status="rejected"), ts)

    def _submit_oco(self, acct, rid, cid, symbol, side, qty, tif, target, stop, stop_limit, last, ts):
        """An OCO exit: the take-profit limit is the parent, the stop-loss its leg; one fill cancels the other."""
        group = "oco:" + rid
        sl_id = rid + "-sl"
        tp_order = Order(symbol, side, qty, "limit", limit_price=target, tif=tif, client_order_id=rid)
        sl_order = Order(
            symbol,
            side,
            qty,
            "stop" if stop_limit is None else "stop_limit",
            trigger_price=stop,
            limit_price=stop_limit,
            tif=tif,
            client_order_id=sl_id,
        )
        for o, leg in ((tp_order, "take_profit"), (sl_order, "stop_loss")):
            o.submitted_ts, o.order_class, o.parent_id, o.leg = ts, "bracket", group, leg
        ups = acct.broker.submit(tp_order, last, ts)
        _raise_rejected(ups)
        ups2 = acct.broker.submit(sl_order, last, ts)
        if ups2 and ups2[0].order.status == "rejected":
            acct.broker.cancel(rid, ts, "oco leg rejected")
            _raise_rejected(ups2)
        rec = self._record(acct, rid, cid, rid, tp_order, "oco", ts)
        leg = self._record(acct, str(uuid.uuid4()), None, sl_id, sl_order, "oco", ts)
        leg.parent = rec.id
        rec.legs.append(leg.id)
        self._apply(acct, ups + ups2, ts)
        return rec

    def _record(self, acct, rid, cid, internal, order, cls, ts, notional=None, ext=False) -> OrderRecord:
        cid = cid or str(uuid.uuid4())
        rec = OrderRecord(
            rid, cid, internal, order.symbol, order.side, order.type, order.tif, cls, ts, order, notional, ext
        )
        acct.orders[rid] = rec
        acct.by_client[cid] = rid
        acct.by_internal[internal] = rec
        return rec

    def cancel(self, acct: TradeAccount, rec: OrderRecord) -> None:
        """DELETE /v2/orders/{id}: 422 when the order is no longer open."""
        if not rec.is_open:
            raise ApiError(422, f'order is already in "{_STATUS[rec.order.status]}" state', 42210000)
        ts = self.now()
        self._apply(acct, acct.broker.cancel(rec.internal, ts, "canceled by request"), ts)
        # Cancelling one order of a bracket / oco / oto group cancels the group's open orders.
        group = [rec.parent] if rec.parent is not None else []
        group += acct.orders[rec.parent].legs if rec.parent is not None else rec.legs
        for rid in group:
            other = acct.orders.get(rid)
            if other is not None and other is not rec and other.is_open:
                self._apply(acct, acct.broker.cancel(other.internal, ts, "group canceled"), ts)

    def cancel_all(self, acct: TradeAccount) -> list[dict]:
        """DELETE /v2/orders: every open order, entries first (their held legs go with them)."""
        out = []
        for rec in [r for r in acct.orders.values() if r.is_open]:
            if rec.is_open:
                self.cancel(acct, rec)
                out.append({"id": rec.id, "status": 200})
        return out

    def replace(self, acct: TradeAccount, rec: OrderRecord, body: Any) -> OrderRecord:
        """PATCH /v2/orders/{id}: a new order (new id, `replaces` the old) or `ApiError`."""
        if not isinstance(body, dict):
            raise bad("request body must be a JSON object")
        if not rec.is_open:
            raise ApiError(422, f'order is already in "{_STATUS[rec.order.status]}" state', 42210000)
        if rec.notional is not None:
            raise bad("notional orders cannot be replaced")
        cid = body.get("client_order_id") or str(uuid.uuid4())
        if cid in acct.by_client:
            raise bad("client_order_id must be unique")
        changes: dict[str, Any] = {}
        qty = _float(body, "qty")
        if qty is not None:
            changes["qty"] = qty
        tif = body.get("time_in_force")
        if tif is not None:
            if tif not in ("day", "gtc", "ioc", "fok"):
                raise bad(f"invalid time_in_force {tif!r}")
            changes["tif"] = tif
        if (lp := _float(body, "limit_price")) is not None:
            changes["limit_price"] = lp
        if (sp := _float(body, "stop_price")) is not None:
            changes["trigger_price"] = sp
        if (trail := _float(body, "trail")) is not None:
            changes["trail_price" if rec.order.trail_price is not None else "trail_percent"] = trail
        if not changes:
            raise bad("nothing to replace: give qty, time_in_force, limit_price, stop_price or trail")
        ts = self.now()
        rid = str(uuid.uuid4())
        internal = rid if rec.parent is None else f"{rid}-leg"
        ups = acct.broker.replace(rec.internal, ts, internal, **changes)
        if not ups:
            raise ApiError(422, "order is not open", 42210000)
        _raise_rejected(ups)
        new_order = _live(acct, internal) or ups[-1].order
        new = self._record(acct, rid, cid, internal, new_order, rec.order_class, ts, None, rec.extended_hours)
        new.type, new.parent, new.legs, new.replaces = rec.type, rec.parent, rec.legs, rec.id
        rec.replaced_by = rid
        if rec.parent is not None:
            parent = acct.orders[rec.parent]
            parent.legs = [rid if x == rec.id else x for x in parent.legs]
        for leg_id in rec.legs:
            acct.orders[leg_id].parent = rid
        self._apply(acct, ups, ts)
        return new

    def close_position(
        self, acct: TradeAccount, symbol: str, qty: str | None, pct: str | None
    ) -> OrderRecord:
        """DELETE /v2/positions/{symbol}: a market order that closes all (or `qty` / `percentage`) of it."""
        asset = self.market.asset(symbol)
        held = acct.broker.position("", asset["symbol"]).qty if asset is not None else 0.0
        if asset is None or abs(held) < 1e-12:
            raise ApiError(404, "position does not exist", 40410000)
        if qty is not None and pct is not None:
            raise bad("give qty or percentage, not both")
        amount = abs(held)
        if qty is not None:
            amount = min(amount, _float({"qty": qty}, "qty") or 0.0)
        elif pct is not None:
            p = _float({"percentage": pct}, "percentage") or 0.0
            if p > 100:
                raise bad(f"percentage {pct} must be at most 100")
            amount = amount * p / 100
        body = {
            "symbol": asset["symbol"],
            "qty": amount,
            "side": "sell" if held > 0 else "buy",
            "type": "market",
            "time_in_force": "gtc" if is_crypto(asset["symbol"]) else "day",
        }
        return self.submit(acct, body)

    def close_all(self, acct: TradeAccount, cancel_orders: bool) -> list[dict]:
        if cancel_orders:
            self.cancel_all(acct)
        out = []
        for (_, sym), pos in sorted(acct.broker.all_positions().items()):
            if abs(pos.qty) < 1e-12:
                continue
            try:
                rec = self.close_position(acct, sym, None, None)
                out.append(
                    {"symbol": _position_symbol(sym), "status": 200, "body": self.order_json(acct, rec)}
                )
            except ApiError as e:
                out.append({"symbol": _position_symbol(sym), "status": e.status, "body": e.body})
        return out

    # -- events --------------------------------------------------------------------------------------

    def _apply(self, acct: TradeAccount, updates: list, ts: int) -> None:
        """Turn the paper broker's updates into records' state and `trade_updates` events."""
        fill: Fill | None = None
        for u in updates:
            if isinstance(u, Fill):
                fill = u
                continue
            rec = acct.by_internal.get(u.order.client_order_id)
            if rec is None:
                continue
            status = u.order.status
            if status in ("filled", "partially_filled"):
                if fill is None or fill.client_order_id != rec.internal:
                    continue
                signed = fill.qty if fill.side == "buy" else -fill.qty
                pos = acct.positions[rec.symbol] = acct.positions.get(rec.symbol, 0.0) + signed
                if status == "filled":
                    rec.times["filled_at"] = ts
                self._emit(
                    acct, "fill" if status == "filled" else "partial_fill", rec, u.order, ts, fill, pos
                )
                fill = None
            elif status == "accepted":
                if "new_sent" in rec.times:
                    continue  # a leg's re-sizing, not a new order
                rec.times["new_sent"] = ts
                self._emit(acct, "new", rec, u.order, ts)
            elif status in _FINAL_EVENT:
                event, stamp = _FINAL_EVENT[status]
                rec.times[stamp] = ts
                self._emit(acct, event, rec, u.order, ts)

    def _emit(self, acct, event, rec, order, ts, fill: Fill | None = None, pos: float | None = None) -> None:
        data = {
            "event": event,
            "execution_id": str(uuid.uuid4()) if fill is not None else None,
            "timestamp": iso(ts),
            "price": num(fill.price) if fill is not None else None,
            "qty": num(fill.qty) if fill is not None else None,
            "position_qty": num(pos) if fill is not None else None,
            "order": self.order_json(acct, rec, order, nested=False),
        }
        acct.events.append(data)
        if acct.listeners:
            raw = json.dumps({"stream": "trade_updates", "data": data}, separators=(",", ":")).encode()
            for send in list(acct.listeners):
                send(raw)

    def drop_trade_streams(self) -> int:
        """Close every `trade_updates` connection (a fault for tests); returns how many were open."""
        n = 0
        for acct in self.accounts.values():
            for send in list(acct.listeners):
                send(None)
                n += 1
        return n

    # -- JSON ----------------------------------------------------------------------------------------

    def order_json(
        self, acct: TradeAccount, rec: OrderRecord, order: Order | None = None, nested: bool = True
    ) -> dict:
        """`rec` as alpaca-py's `Order` parses it (`order`: a snapshot to show instead of the live state)."""
        o = order if order is not None else rec.order
        asset = self.market.asset(rec.symbol) or {}
        created = iso(rec.created_ns)
        status = _STATUS.get(o.status, o.status)
        out = {
            "id": rec.id,
            "client_order_id": rec.client_order_id,
            "created_at": created,
            "updated_at": iso(o.updated_ts or rec.created_ns),
            "submitted_at": created,
            "filled_at": _at(rec, "filled_at"),
            "expired_at": _at(rec, "expired_at"),
            "canceled_at": _at(rec, "canceled_at"),
            "failed_at": _at(rec, "failed_at"),
            "replaced_at": _at(rec, "replaced_at"),
            "replaced_by": rec.replaced_by,
            "replaces": rec.replaces,
            "asset_id": asset.get("id"),
            "symbol": rec.symbol,
            "asset_class": asset.get("class"),
            "notional": num(rec.notional),
            "qty": None if rec.notional is not None else num(o.qty),
            "filled_qty": num(o.filled_qty),
            "filled_avg_price": num(o.avg_fill_price) if o.filled_qty > 0 else None,
            "order_class": rec.order_class,
            "order_type": o.type,
            "type": o.type,
            "side": o.side,
            "position_intent": None,
            "time_in_force": o.tif,
            "limit_price": num(o.limit_price),
            "stop_price": num(o.trigger_price),
            "status": status,
            "extended_hours": rec.extended_hours,
            "legs": None,
            "trail_percent": num(o.trail_percent),
            "trail_price": num(o.trail_price),
            "hwm": None,
        }
        if nested and rec.legs:
            out["legs"] = [self.order_json(acct, acct.orders[leg], nested=False) for leg in rec.legs]
        return out

    def position_json(self, sym: str, qty: float, avg: float) -> dict:
        asset = self.market.asset(sym) or {}
        px = self.last_price(sym) or avg
        cost = qty * avg
        value = qty * px
        return {
            "asset_id": asset.get("id"),
            "symbol": _position_symbol(sym),
            "exchange": asset.get("exchange", ""),
            "asset_class": asset.get("class", "us_equity"),
            "asset_marginable": bool(asset.get("marginable", False)),
            "avg_entry_price": num(avg),
            "qty": num(qty),
            "qty_available": num(qty),
            "side": "long" if qty > 0 else "short",
            "market_value": num(value) if value >= 0 else "-" + num(-value),  # type: ignore[operator]
            "cost_basis": num(cost) if cost >= 0 else "-" + num(-cost),  # type: ignore[operator]
            "unrealized_pl": _signed(value - cost),
            "unrealized_plpc": _signed((value - cost) / abs(cost)) if cost else "0",
            "unrealized_intraday_pl": _signed(value - cost),
            "unrealized_intraday_plpc": _signed((value - cost) / abs(cost)) if cost else "0",
            "current_price": num(px),
            "lastday_price": num(px),
            "change_today": "0",
        }

    def positions_json(self, acct: TradeAccount) -> list[dict]:
        return [
            self.position_json(sym, p.qty, p.avg_price)
            for (_, sym), p in sorted(acct.broker.all_positions().items())
            if abs(p.qty) > 1e-12
        ]

    def account_json(self, acct: TradeAccount) -> dict:
        a = acct.broker.account
        cash = a.cash
        long_mv = short_mv = 0.0
        for (_, sym), p in acct.broker.all_positions().items():
            if p.qty:
                v = p.qty * (self.last_price(sym) or p.avg_price)
                if v > 0:
                    long_mv += v
                else:
                    short_mv += v
        equity = cash + long_mv + short_mv
        bp = _signed(a.available())
        return {
            "id": acct.id,
            "account_number": acct.number,
            "status": "ACTIVE",
            "crypto_status": "ACTIVE",
            "currency": "USD",
            "cash": _signed(cash),
            "buying_power": bp,
            "regt_buying_power": bp,
            "daytrading_buying_power": bp,
            "non_marginable_buying_power": bp,
            "equity": _signed(equity),
            "last_equity": _signed(acct.start_cash),
            "portfolio_value": _signed(equity),
            "long_market_value": _signed(long_mv),
            "short_market_value": _signed(short_mv),
            "initial_margin": "0",
            "maintenance_margin": "0",
            "last_maintenance_margin": "0",
            "sma": "0",
            "multiplier": "1",
            "pattern_day_trader": False,
            "trading_blocked": False,
            "transfers_blocked": False,
            "account_blocked": False,
            "trade_suspended_by_user": False,
            "shorting_enabled": True,
            "daytrade_count": 0,
            "created_at": iso(self.market.now()),
        }


def _signed(x: float) -> str:
    return num(x) if x >= 0 else "-" + num(-x)  # type: ignore[operator]


def _position_symbol(sym: str) -> str:
    """Alpaca writes crypto positions without the slash (BTCUSD)."""
    return sym.replace("/", "")


def _at(rec: OrderRecord, name: str) -> str | None:
    ns = rec.times.get(name)
    return None if ns is None else iso(ns)


def _live(acct: TradeAccount, internal: str) -> Order | None:
    """The paper broker's own (live) object for an open order it created itself (legs, replacements)."""
    for o in acct.broker.open_orders():
        if o.client_order_id == internal:
            return o
    return None


def _raise_rejected(ups: list) -> None:
    if not ups or not isinstance(ups[0], OrderUpdate) or ups[0].order.status != "rejected":
        return
    reason = ups[0].order.reason
    if reason.startswith("insufficient cash") or "replace refused: insufficient cash" in reason:
        raise ApiError(403, "insufficient buying power", 40310000)
    if "not shortable" in reason:
        raise ApiError(403, f"asset {ups[0].order.symbol} cannot be sold short", 40310000)
    raise bad(reason)
