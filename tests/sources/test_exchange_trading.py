"""liu's local exchange trades: alpaca-py's real `TradingClient` and `TradingStream` against it.

The exchange streams a simulated market (`SimFeed`, paced) and fills orders with the paper broker's
fill model on what it streams, so every fill below comes from a streamed trade or quote. Waits are on
the event itself (a stream event, an engine state) with a deadline that fails loudly.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import uuid
from collections.abc import Callable

import pytest
import requests
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, OrderStatus, QueryOrderStatus, TimeInForce
from alpaca.trading.requests import (
    ClosePositionRequest,
    GetOrdersRequest,
    LimitOrderRequest,
    MarketOrderRequest,
    ReplaceOrderRequest,
    StopLossRequest,
    TakeProfitRequest,
    TrailingStopOrderRequest,
)
from alpaca.trading.stream import TradingStream

from liu.sources.exchange.local import LocalExchange
from liu.sources.sim import SimFeed
from tests.helpers import eventually, exchange_cli

KEY, SECRET = "trade-key", "trade-s3cret-value"
SYMBOLS = ["AAA", "BBB", "CCC", "DDD", "BTC/USD"]
DEADLINE = 20.0


def until(pred: Callable[[], object], what: str, timeout: float = DEADLINE) -> object:
    """`eventually` with this file's deadline: the exchange's REST state only shows by asking."""
    return eventually(pred, timeout, what)


class Updates:
    """A `TradingStream` on a thread, collecting every trade update."""

    def __init__(self, ex: LocalExchange) -> None:
        self.ex = ex
        self.events: list = []
        self.lock = threading.Condition()  # notified by every arriving update
        self.stream = TradingStream(KEY, SECRET, url_override=ex.trading_stream_url)
        self.stream.subscribe_trade_updates(self._on)
        self.thread = threading.Thread(target=self.stream.run, daemon=True)

    async def _on(self, tu) -> None:
        with self.lock:
            self.events.append(tu)
            self.lock.notify_all()

    def start(self) -> Updates:
        before = self.ex.trading.accounts.get(KEY)
        self.thread.start()
        until(lambda: listeners(self.ex) > 0, "the trade_updates stream to listen")
        assert before is None or listeners(self.ex) == 1
        return self

    def of(self, order_id) -> list[str]:
        with self.lock:
            return [e.event for e in self.events if str(e.order.id) == str(order_id)]

    def wait(self, order_id, event: str) -> object:
        """Block until update `event` of `order_id` arrives (woken by each update); fail at the deadline."""

        def found():
            return next(
                (e for e in self.events if str(e.order.id) == str(order_id) and e.event == event), None
            )

        with self.lock:
            if self.lock.wait_for(found, DEADLINE):
                return found()
        raise AssertionError(
            f"event {event} of order {order_id} not within {DEADLINE} s; got {self.of(order_id)}"
        )

    def stop(self) -> None:
        self.stream.stop()
        self.thread.join(10)


def listeners(ex: LocalExchange) -> int:
    acct = ex.trading.accounts.get(KEY)
    return 0 if acct is None else len(acct.listeners)


@pytest.fixture(scope="module")
def ex():
    feed = SimFeed(symbols=SYMBOLS, rate=400.0, seed=5, batch=5, kinds=("t", "q"))
    with LocalExchange(feed, key=KEY, secret=SECRET, trading=True) as ex:
        client = TradingClient(KEY, SECRET, url_override=ex.trading_url)
        for sym in SYMBOLS:  # every symbol has traded once the tests start
            until(lambda s=sym: ex.on_loop(ex.trading.last_price, s), f"a first trade of {sym}")
        assert client.get_account().status == "ACTIVE"
        yield ex


@pytest.fixture(scope="module")
def updates(ex):
    up = Updates(ex).start()
    yield up
    up.stop()


@pytest.fixture
def client(ex):
    ex.on_loop(ex.trading.faults.clear)
    c = TradingClient(KEY, SECRET, url_override=ex.trading_url)
    c._retry_wait = 0  # alpaca-py sleeps 3 s before retrying a 429 / 504
    yield c
    ex.on_loop(ex.trading.faults.clear)


def price(ex: LocalExchange, symbol: str) -> float:
    return ex.on_loop(ex.trading.last_price, symbol)


def at_exchange(ex: LocalExchange, client_order_id: str) -> int:
    """How many orders the exchange holds under this client order id."""
    return ex.on_loop(lambda: len(ex.trading.accounts[KEY].orders_for(client_order_id)))


def post(ex: LocalExchange, body: dict, timeout: float = 10.0) -> requests.Response:
    headers = {"APCA-API-KEY-ID": KEY, "APCA-API-SECRET-KEY": SECRET}
    return requests.post(ex.trading_url + "/v2/orders", json=body, headers=headers, timeout=timeout)


def faults(ex: LocalExchange, spec: dict) -> dict:
    headers = {"APCA-API-KEY-ID": KEY, "APCA-API-SECRET-KEY": SECRET}
    r = requests.post(ex.trading_url + "/liu/faults", json=spec, headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def position_qty(client: TradingClient, symbol: str) -> float:
    return sum(float(p.qty) for p in client.get_all_positions() if p.symbol == symbol.replace("/", ""))


# -- orders, fills, positions ---------------------------------------------------------------------------


def test_market_order_fills_on_the_stream_and_in_rest(ex, client, updates):
    before = position_qty(client, "AAA")
    cash0 = float(client.get_account().cash)
    cid = f"mkt-{uuid.uuid4()}"
    order = client.submit_order(
        MarketOrderRequest(
            symbol="AAA", qty=3, side=OrderSide.BUY, time_in_force=TimeInForce.DAY, client_order_id=cid
        )
    )
    assert order.client_order_id == cid and order.status == OrderStatus.NEW and order.filled_qty == "0"
    fill = updates.wait(order.id, "fill")
    assert updates.of(order.id) == ["new", "fill"]
    assert fill.qty == 3 and fill.price > 0 and fill.position_qty == before + 3
    assert fill.order.filled_qty == "3" and float(fill.order.filled_avg_price) == fill.price
    got = client.get_order_by_id(order.id)
    assert got.status == OrderStatus.FILLED and float(got.filled_avg_price) == fill.price
    assert got.filled_at is not None
    assert client.get_order_by_client_id(cid).id == order.id
    closed = client.get_orders(GetOrdersRequest(status=QueryOrderStatus.CLOSED, symbols=["AAA"]))
    assert order.id in [o.id for o in closed]
    assert order.id not in [o.id for o in client.get_orders()]  # open only, by default
    pos = client.get_open_position("AAA")
    assert float(pos.qty) == before + 3 == position_qty(client, "AAA")
    assert float(client.get_account().cash) == pytest.approx(cash0 - 3 * fill.price, abs=1e-6)


def test_limit_order_rests_is_replaced_and_cancelled(ex, client, updates):
    px = price(ex, "BBB")
    low = round(px * 0.5, 2)
    order = client.submit_order(
        LimitOrderRequest(
            symbol="BBB", qty=2, side=OrderSide.BUY, time_in_force=TimeInForce.GTC, limit_price=low
        )
    )
    updates.wait(order.id, "new")
    assert order.id in [o.id for o in client.get_orders(GetOrdersRequest(status=QueryOrderStatus.OPEN))]
    new = client.replace_order_by_id(order.id, ReplaceOrderRequest(qty=5, limit_price=round(px * 0.4, 2)))
    assert new.id != order.id and new.replaces == order.id and new.qty == "5"
    assert float(new.limit_price) == round(px * 0.4, 2)
    updates.wait(order.id, "replaced")
    updates.wait(new.id, "new")
    old = client.get_order_by_id(order.id)
    assert old.status == OrderStatus.REPLACED and old.replaced_by == new.id
    client.cancel_order_by_id(new.id)
    updates.wait(new.id, "canceled")
    assert client.get_order_by_id(new.id).status == OrderStatus.CANCELED
    with pytest.raises(APIError) as e:
        client.cancel_order_by_id(new.id)
    assert e.value.status_code == 422 and "canceled" in e.value.message


def test_marketable_limit_fills_at_or_better_than_its_limit(ex, client, updates):
    px = price(ex, "CCC")
    order = client.submit_order(
        LimitOrderRequest(
            symbol="CCC",
            qty=1,
            side=OrderSide.BUY,
            time_in_force=TimeInForce.DAY,
            limit_price=round(px * 1.5, 2),
        )
    )
    fill = updates.wait(order.id, "fill")
    assert fill.price <= round(px * 1.5, 2)


def test_bracket_entry_fills_legs_work_and_closing_the_position_cancels_them(ex, client, updates):
    px = price(ex, "DDD")
    order = client.submit_order(
        MarketOrderRequest(
            symbol="DDD",
            qty=4,
            side=OrderSide.BUY,
            time_in_force=TimeInForce.GTC,
            order_class="bracket",
            take_profit=TakeProfitRequest(limit_price=round(px * 3, 2)),
            stop_loss=StopLossRequest(stop_price=round(px * 0.3, 2), limit_price=round(px * 0.25, 2)),
        )
    )
    assert order.order_class == "bracket" and len(order.legs) == 2
    tp, sl = sorted(order.legs, key=lambda leg: leg.type != "limit")
    assert (tp.type, sl.type) == ("limit", "stop_limit")
    assert tp.side == sl.side == OrderSide.SELL and tp.status == OrderStatus.HELD
    assert float(sl.stop_price) == round(px * 0.3, 2) and float(sl.limit_price) == round(px * 0.25, 2)
    updates.wait(order.id, "fill")
    updates.wait(tp.id, "new")
    updates.wait(sl.id, "new")
    nested = client.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL, nested=True, symbols=["DDD"]))
    parent = next(o for o in nested if o.id == order.id)
    assert parent.status == OrderStatus.FILLED
    assert {leg.id for leg in parent.legs} == {tp.id, sl.id}
    assert {str(leg.qty) for leg in parent.legs} == {"4"}
    flat = client.get_orders(GetOrdersRequest(status=QueryOrderStatus.OPEN, symbols=["DDD"]))
    assert {o.id for o in flat} >= {tp.id, sl.id}  # not nested: legs are rows of their own
    assert position_qty(client, "DDD") == 4
    close = client.close_position("DDD", ClosePositionRequest(qty="4"))
    fill = updates.wait(close.id, "fill")
    assert fill.position_qty == 0
    updates.wait(tp.id, "canceled")
    updates.wait(sl.id, "canceled")
    with pytest.raises(APIError) as e:
        client.get_open_position("DDD")
    assert e.value.status_code == 404 and e.value.message == "position does not exist"


def test_trailing_stop_and_cancel_all_and_close_all(ex, client, updates):
    client.submit_order(MarketOrderRequest(symbol="BTC/USD", qty=0.01, side="buy", time_in_force="gtc"))
    until(lambda: position_qty(client, "BTC/USD") >= 0.01, "the BTC/USD position")
    trail = client.submit_order(
        TrailingStopOrderRequest(
            symbol="BTC/USD", qty=0.01, side="sell", time_in_force="gtc", trail_percent=50
        )
    )
    assert trail.trail_percent == "50"
    updates.wait(trail.id, "new")
    resting = client.submit_order(
        LimitOrderRequest(
            symbol="AAA", qty=1, side="buy", time_in_force="gtc", limit_price=round(price(ex, "AAA") * 0.5, 2)
        )
    )
    cancelled = client.cancel_orders()
    assert {str(c.id) for c in cancelled} >= {str(trail.id), str(resting.id)}
    assert all(c.status == 200 for c in cancelled)
    updates.wait(trail.id, "canceled")
    assert client.get_orders() == []
    closed = client.close_all_positions(cancel_orders=True)
    assert {c.symbol for c in closed} >= {"BTCUSD"}
    until(lambda: client.get_all_positions() == [], "every position closed")


# -- errors -----------------------------------------------------------------------------------------------


def test_duplicate_client_order_id_is_422_and_one_order(ex, client):
    cid = f"dup-{uuid.uuid4()}"
    req = LimitOrderRequest(
        symbol="AAA", qty=1, side="buy", time_in_force="day", limit_price=1.0, client_order_id=cid
    )
    client.submit_order(req)
    with pytest.raises(APIError) as e:
        client.submit_order(req)
    assert e.value.status_code == 422
    assert e.value.code == 40010001 and e.value.message == "client_order_id must be unique"
    assert at_exchange(ex, cid) == 1


def test_bad_requests_unknown_symbols_and_buying_power(ex, client):
    with pytest.raises(APIError) as e:
        client.submit_order(MarketOrderRequest(symbol="NOPE", qty=1, side="buy", time_in_force="day"))
    assert e.value.status_code == 422 and e.value.message == 'asset "NOPE" not found'
    r = post(ex, {"symbol": "AAA", "qty": "x", "side": "buy", "type": "market", "time_in_force": "day"})
    assert r.status_code == 422 and r.json() == {
        "code": 40010001,
        "message": "invalid qty 'x': expected a number",
    }
    r = post(
        ex,
        {
            "symbol": "AAA",
            "qty": 1,
            "side": "buy",
            "type": "market",
            "time_in_force": "day",
            "order_class": "bracket",
        },
    )
    assert r.status_code == 422 and "take_profit" in r.json()["message"]
    with pytest.raises(APIError) as e:
        client.submit_order(MarketOrderRequest(symbol="AAA", qty=10**7, side="buy", time_in_force="day"))
    assert e.value.status_code == 403 and e.value.message == "insufficient buying power"
    assert e.value.code == 40310000


def test_keys_are_checked_and_never_echoed(ex):
    url = ex.trading_url + "/v2/account"
    assert requests.get(url, timeout=10).status_code == 401
    r = requests.get(url, headers={"APCA-API-KEY-ID": KEY, "APCA-API-SECRET-KEY": "wrong"}, timeout=10)
    assert r.status_code == 403 and r.json() == {"message": "forbidden."}
    with pytest.raises(APIError) as e:
        TradingClient(KEY, "wrong", url_override=ex.trading_url).get_all_positions()
    assert e.value.status_code == 403
    ok = requests.get(url, headers={"APCA-API-KEY-ID": KEY, "APCA-API-SECRET-KEY": SECRET}, timeout=10)
    assert ok.status_code == 200 and SECRET not in ok.text
    # the rest of the REST API (clock, assets) is served on the trading URL too
    client = TradingClient(KEY, SECRET, url_override=ex.trading_url)
    assert client.get_asset("AAA").symbol == "AAA" and client.get_clock().timestamp is not None


# -- fault switches ------------------------------------------------------------------------------------


def test_504_after_create_leaves_exactly_one_order(ex, client):
    cid = f"gw-{uuid.uuid4()}"
    ex.on_loop(ex.trading.faults.fail_post, 504)
    posts = ex.trading.order_posts
    with pytest.raises(APIError) as e:  # alpaca-py retries the 504; the retry meets the first order
        client.submit_order(
            MarketOrderRequest(symbol="AAA", qty=1, side="buy", time_in_force="day", client_order_id=cid)
        )
    assert e.value.status_code == 422 and e.value.message == "client_order_id must be unique"
    assert ex.trading.order_posts == posts + 2
    assert at_exchange(ex, cid) == 1
    assert client.get_order_by_client_id(cid).client_order_id == cid


def test_429_and_500_answer_before_creating(ex, client):
    cid = f"rl-{uuid.uuid4()}"
    ex.on_loop(ex.trading.faults.fail_post, 429)
    order = client.submit_order(
        LimitOrderRequest(
            symbol="AAA", qty=1, side="buy", time_in_force="day", limit_price=1.0, client_order_id=cid
        )
    )
    assert order.client_order_id == cid and at_exchange(ex, cid) == 1  # retried once, created once
    cid = f"ise-{uuid.uuid4()}"
    ex.on_loop(ex.trading.faults.fail_post, 500)
    with pytest.raises(APIError) as e:
        client.submit_order(
            LimitOrderRequest(
                symbol="AAA", qty=1, side="buy", time_in_force="day", limit_price=1.0, client_order_id=cid
            )
        )
    assert e.value.status_code == 500 and at_exchange(ex, cid) == 0
    client.submit_order(
        LimitOrderRequest(
            symbol="AAA", qty=1, side="buy", time_in_force="day", limit_price=1.0, client_order_id=cid
        )
    )
    assert at_exchange(ex, cid) == 1  # the switch fired once


def test_delayed_and_dropped_answers_still_create_the_order(ex, client):
    cid = f"slow-{uuid.uuid4()}"
    body = {
        "symbol": "AAA",
        "qty": 1,
        "side": "buy",
        "type": "limit",
        "time_in_force": "day",
        "limit_price": 1.0,
    }
    faults(ex, {"delay_post": {"seconds": 3, "times": 1}})
    with pytest.raises(requests.Timeout):
        post(ex, body | {"client_order_id": cid}, timeout=0.5)
    assert client.get_order_by_client_id(cid).status == OrderStatus.NEW
    cid = f"drop-{uuid.uuid4()}"
    faults(ex, {"drop_post": {"times": 1}})
    with pytest.raises(requests.ConnectionError):
        post(ex, body | {"client_order_id": cid})
    assert client.get_order_by_client_id(cid).client_order_id == cid
    assert at_exchange(ex, cid) == 1


def test_reject_symbol_and_insufficient_buying_power_switches(ex, client):
    state = faults(ex, {"reject_symbols": ["BBB"]})
    assert state["reject_symbols"] == ["BBB"]
    with pytest.raises(APIError) as e:
        client.submit_order(MarketOrderRequest(symbol="BBB", qty=1, side="buy", time_in_force="day"))
    assert e.value.status_code == 422 and e.value.message == 'asset "BBB" is not tradable'
    client.submit_order(
        LimitOrderRequest(symbol="AAA", qty=1, side="buy", time_in_force="day", limit_price=1.0)
    )
    faults(ex, {"clear": True, "insufficient_buying_power": True})
    with pytest.raises(APIError) as e:
        client.submit_order(MarketOrderRequest(symbol="BBB", qty=1, side="buy", time_in_force="day"))
    assert e.value.status_code == 403 and e.value.message == "insufficient buying power"
    headers = {"APCA-API-KEY-ID": KEY, "APCA-API-SECRET-KEY": SECRET}
    r = requests.post(ex.trading_url + "/liu/faults", json={"nonsense": 1}, headers=headers, timeout=10)
    assert r.status_code == 422 and "unknown fault 'nonsense'" in r.json()["message"]


def test_dropped_trade_stream_reconnects_and_loses_what_happened_meanwhile(ex, client, updates):
    state = faults(ex, {"drop_trade_stream": True})
    assert state["dropped_streams"] == 1
    until(lambda: listeners(ex) == 0, "the dropped stream to be gone")
    lost = client.submit_order(MarketOrderRequest(symbol="CCC", qty=1, side="buy", time_in_force="day"))
    until(lambda: client.get_order_by_id(lost.id).status == OrderStatus.FILLED, "the order to fill")
    until(lambda: listeners(ex) == 1, "alpaca-py to reconnect", timeout=40)
    seen = client.submit_order(MarketOrderRequest(symbol="CCC", qty=1, side="sell", time_in_force="day"))
    updates.wait(seen.id, "fill")
    assert "new" not in updates.of(lost.id)  # sent while no stream listened: no replay, as on Alpaca


# -- trader exchange ---------------------------------------------------------------------------------------


def test_trader_exchange_serves_trading_and_prints_its_url(tmp_path):
    env = os.environ | {"LIU_EXCHANGE_SECRET_KEY": "local-trading-secret-7"}
    with exchange_cli(tmp_path, env) as (proc, text):
        line = next(x for x in text.splitlines() if "trading API" in x)
        url = next(w for w in line.split() if w.startswith("http://"))
        assert f'trading_url = "{url}"' in text
        client = TradingClient("liu-local", "local-trading-secret-7", url_override=url)
        order = client.submit_order(
            MarketOrderRequest(symbol="SIM001", qty=1, side="buy", time_in_force="day")
        )
        until(
            lambda: client.get_order_by_id(order.id).status == OrderStatus.FILLED, "a fill at trader exchange"
        )
        assert float(client.get_open_position("SIM001").qty) == 1
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out


def test_oco_exit_one_fill_cancels_the_other(ex, client, updates):
    before = position_qty(client, "DDD")
    buy = client.submit_order(MarketOrderRequest(symbol="DDD", qty=2, side="buy", time_in_force="day"))
    updates.wait(buy.id, "fill")
    px = price(ex, "DDD")
    oco = client.submit_order(
        LimitOrderRequest(
            symbol="DDD",
            qty=2,
            side="sell",
            time_in_force="gtc",
            order_class="oco",
            take_profit=TakeProfitRequest(limit_price=round(px * 0.5, 2)),  # marketable: fills first
            stop_loss=StopLossRequest(stop_price=round(px * 0.3, 2)),
        )
    )
    assert oco.order_class == "oco" and [leg.type for leg in oco.legs] == ["stop"]
    fill = updates.wait(oco.id, "fill")
    assert fill.position_qty == before
    updates.wait(oco.legs[0].id, "canceled")
    # cancelling one order of a group cancels the rest of it
    rest = client.submit_order(
        LimitOrderRequest(
            symbol="AAA",
            qty=1,
            side="buy",
            time_in_force="gtc",
            limit_price=round(price(ex, "AAA") * 0.5, 2),
            order_class="oto",
            stop_loss=StopLossRequest(stop_price=round(price(ex, "AAA") * 0.2, 2)),
        )
    )
    assert len(rest.legs) == 1
    client.cancel_order_by_id(rest.legs[0].id)
    updates.wait(rest.id, "canceled")


def test_one_account_per_key(ex, client):
    ex.on_loop(ex.trading.add_key, "second-key", "second-secret")
    other = TradingClient("second-key", "second-secret", url_override=ex.trading_url)
    mine = client.get_account()
    assert other.get_account().id != mine.id and other.get_all_positions() == []
    order = other.submit_order(MarketOrderRequest(symbol="AAA", qty=1, side="buy", time_in_force="day"))
    until(lambda: other.get_order_by_id(order.id).status == OrderStatus.FILLED, "the second account's fill")
    assert order.id not in [o.id for o in client.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL))]
    with pytest.raises(APIError) as e:
        TradingClient("second-key", SECRET, url_override=ex.trading_url).get_account()
    assert e.value.status_code == 403


def test_reject_after_accept_reaches_the_stream(ex, client, updates):
    faults(ex, {"reject_after_accept": ["CCC"]})
    order = client.submit_order(MarketOrderRequest(symbol="CCC", qty=1, side="buy", time_in_force="day"))
    assert order.status == OrderStatus.NEW
    rejected = updates.wait(order.id, "rejected")
    assert updates.of(order.id) == ["new", "rejected"] and rejected.order.failed_at is not None
    assert client.get_order_by_id(order.id).status == OrderStatus.REJECTED


def test_stream_refuses_a_wrong_secret(ex):
    from websockets.sync.client import connect

    with connect(ex.trading_stream_url) as ws:
        ws.send(json.dumps({"action": "authenticate", "data": {"key_id": KEY, "secret_key": "nope"}}))
        reply = json.loads(ws.recv(timeout=10))
    assert reply == {"stream": "authorization", "data": {"status": "unauthorized", "action": "authenticate"}}
    with connect(ex.trading_stream_url) as ws:
        ws.send(json.dumps({"action": "authenticate", "data": {"key_id": KEY, "secret_key": SECRET}}))
        assert json.loads(ws.recv(timeout=10))["data"]["status"] == "authorized"
        ws.send(json.dumps({"action": "listen", "data": {"streams": ["trade_updates"]}}))
        assert json.loads(ws.recv(timeout=10)) == {
            "stream": "listening",
            "data": {"streams": ["trade_updates"]},
        }
