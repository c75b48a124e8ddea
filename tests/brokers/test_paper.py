"""The paper broker's order types against hand-worked trades, quotes and bars, and what it refuses.

Every expected price and amount is worked out by hand in the comment next to it.
"""

from __future__ import annotations

import math

import pytest

from liu.events import Order
from tests.brokers.conftest import broker, open_ids, order, snap, stream, t


def test_nothing_fills_on_submit_and_other_symbols_do_not_touch_the_order():
    b = broker()
    ups = b.submit(order("buy", 10), 100.0, t(0))
    assert stream(ups) == [("accepted", "o1")]
    o = snap(ups, "o1")
    assert (o.status, o.filled_qty, o.updated_ts) == ("accepted", 0.0, t(0))
    assert b.on_trade("B", t(1), 100.0, 100) is None
    assert b.on_bar("B", t(1), 100.0, 101.0, 99.0, 100.0, 1_000) is None
    assert open_ids(b) == ["o1"] and b.position("s", "A").qty == 0


# -- market ------------------------------------------------------------------------------


def test_market_buy_fills_at_the_next_trade_with_slippage_and_fees():
    b = broker(fee_per_share=0.01, fee_bps=1.0, slippage_bps=10)
    b.submit(order("buy", 10), 100.0, t(0))
    # reserved at 100 * 1.001 = 100.1: 10 * 100.1 = 1001 + fee 10 * 0.01 + 1001 * 1e-4 = 0.2001
    assert b.account.reserved == pytest.approx(1001.2001)
    ups = b.on_trade("A", t(1), 101.0, 500)
    # price 101 * 1.001 = 101.101; fee 0.1 + 1011.01 * 1e-4 = 0.201101
    assert stream(ups) == [("fill", "o1", 10, pytest.approx(101.101)), ("filled", "o1")]
    assert ups[0].fee == pytest.approx(0.201101)
    o = snap(ups, "o1")
    assert (o.filled_qty, o.avg_fill_price) == (10, pytest.approx(101.101))
    # cash 10,000 - 1011.01 - 0.201101 = 8988.788899; the reservation is gone
    assert b.account.cash == pytest.approx(8988.788899)
    assert b.account.reserved == pytest.approx(0.0, abs=1e-9)
    pos = b.position("s", "A")
    assert (pos.qty, pos.avg_price) == (10, pytest.approx(101.101))
    assert b.on_trade("A", t(2), 90.0, 500) is None  # filled once, never again


def test_market_orders_on_a_quote_buy_at_the_ask_and_sell_at_the_bid():
    b = broker()
    b.submit(order("buy", 1), 10.0, t(0))
    assert stream(b.on_quote("A", t(1), 9.9, 100, 10.1, 100)) == [
        ("fill", "o1", 1, 10.1),
        ("filled", "o1"),
    ]
    b.submit(order("sell", 1, cid="o2"), 10.0, t(1))
    assert stream(b.on_quote("A", t(2), 9.9, 100, 10.1, 100)) == [
        ("fill", "o2", 1, 9.9),
        ("filled", "o2"),
    ]
    assert b.account.cash == pytest.approx(10_000 - 10.1 + 9.9)  # 9999.8


@pytest.mark.parametrize(
    ("side", "expected"),
    [
        ("buy", 50 * 1.002),  # the open 50, 20 bps against a buyer: 50.1
        ("sell", 50 * 0.998),  # and against a seller: 49.9
    ],
)
def test_market_order_on_a_bar_fills_at_the_open_with_slippage(side, expected):
    b = broker(slippage_bps=20)
    b.submit(order(side, 2), 48.0, t(0))
    ups = b.on_bar("A", t(1), 50.0, 55.0, 45.0, 52.0, 1_000)
    assert stream(ups) == [("fill", "o1", 2, pytest.approx(expected)), ("filled", "o1")]


# -- limit -------------------------------------------------------------------------------


def test_limit_orders_on_trades_fill_at_the_trade_price_once_it_reaches_the_limit():
    b = broker()
    b.submit(order("buy", 5, limit=99.0), 100.0, t(0))
    assert b.account.reserved == pytest.approx(495.0)  # 5 * 99, the limit
    assert b.on_trade("A", t(1), 99.5, 100) is None
    assert stream(b.on_trade("A", t(2), 98.7, 100)) == [("fill", "o1", 5, 98.7), ("filled", "o1")]
    assert b.account.cash == pytest.approx(10_000 - 5 * 98.7)  # 9506.5: paid the trade, not the limit
    b.submit(order("sell", 5, limit=101.0, cid="o2"), 98.7, t(2))
    assert b.on_trade("A", t(3), 100.9, 100) is None
    assert stream(b.on_trade("A", t(4), 101.0, 100)) == [("fill", "o2", 5, 101.0), ("filled", "o2")]


def test_limit_orders_on_quotes_use_the_side_they_trade_against():
    b = broker()
    b.submit(order("buy", 1, limit=10.0), 10.2, t(0))
    assert b.on_quote("A", t(1), 9.9, 100, 10.05, 100) is None  # the bid below 10 does not fill a buy
    assert stream(b.on_quote("A", t(2), 9.9, 100, 9.98, 100)) == [("fill", "o1", 1, 9.98), ("filled", "o1")]
    b.submit(order("sell", 1, limit=10.2, cid="o2"), 10.0, t(2))
    assert b.on_quote("A", t(3), 10.15, 100, 10.3, 100) is None  # the ask above 10.2 does not fill a sell
    assert stream(b.on_quote("A", t(4), 10.25, 100, 10.3, 100)) == [
        ("fill", "o2", 1, 10.25),
        ("filled", "o2"),
    ]


@pytest.mark.parametrize(
    ("side", "limit", "bar", "expected"),
    [
        ("buy", 99.0, (98.0, 98.5, 97.0, 98.0), 98.0),  # opened below the limit: the open
        ("buy", 97.5, (98.0, 99.0, 97.0, 98.5), 97.5),  # the low reached it: the limit
        ("buy", 96.0, (98.0, 99.0, 97.0, 98.5), None),  # never reached
        ("sell", 101.0, (102.0, 103.0, 101.5, 102.0), 102.0),  # opened above: the open
        ("sell", 102.5, (102.0, 103.0, 101.5, 102.0), 102.5),  # the high reached it: the limit
        ("sell", 104.0, (102.0, 103.0, 101.5, 102.0), None),
    ],
)
def test_limit_order_on_a_bar_fills_at_a_gapped_open_else_at_the_limit(side, limit, bar, expected):
    b = broker(slippage_bps=50)  # limits never slip
    b.submit(order(side, 3, limit=limit), 100.0, t(0))
    ups = b.on_bar("A", t(1), *bar, 1_000)
    want = [] if expected is None else [("fill", "o1", 3, expected), ("filled", "o1")]
    assert stream(ups) == want


# -- stop --------------------------------------------------------------------------------


def test_stop_on_trades_triggers_at_the_touch_and_fills_at_the_trade():
    b = broker()
    b.submit(order("buy", 10, trigger=101.0), 100.0, t(0))
    assert b.account.reserved == pytest.approx(1010.0)  # 10 * the trigger 101
    assert b.on_trade("A", t(1), 100.5, 100) is None
    assert stream(b.on_trade("A", t(2), 101.2, 100)) == [("fill", "o1", 10, 101.2), ("filled", "o1")]
    b.submit(order("sell", 10, trigger=99.0, cid="o2"), 101.2, t(2))
    assert stream(b.on_trade("A", t(3), 99.0, 100)) == [("fill", "o2", 10, 99.0), ("filled", "o2")]


def test_stop_on_quotes_triggers_on_the_ask_for_a_buy_and_the_bid_for_a_sell():
    b = broker()
    b.submit(order("buy", 1, trigger=101.0), 100.0, t(0))
    b.submit(order("sell", 1, trigger=99.0, cid="o2"), 100.0, t(0))
    assert b.on_quote("A", t(1), 99.05, 100, 100.95, 100) is None  # ask < 101, bid > 99
    assert stream(b.on_quote("A", t(2), 100.9, 100, 101.1, 100)) == [
        ("fill", "o1", 1, 101.1),
        ("filled", "o1"),
    ]
    assert stream(b.on_quote("A", t(3), 98.95, 100, 99.05, 100)) == [
        ("fill", "o2", 1, 98.95),
        ("filled", "o2"),
    ]


@pytest.mark.parametrize(
    ("side", "trigger", "bar", "expected"),
    [
        ("sell", 95.0, (94.0, 96.0, 93.0, 95.0), 94.0),  # gapped through: the open
        ("sell", 95.0, (97.0, 98.0, 94.0, 95.0), 95.0),  # inside the range: the trigger
        ("sell", 95.0, (97.0, 98.0, 95.5, 96.0), None),
        ("buy", 105.0, (106.0, 107.0, 105.5, 106.0), 106.0),
        ("buy", 105.0, (103.0, 106.0, 102.0, 104.0), 105.0),
        ("buy", 105.0, (103.0, 104.5, 102.0, 104.0), None),
    ],
)
def test_stop_on_a_bar_fills_at_a_gapped_open_else_at_the_trigger(side, trigger, bar, expected):
    b = broker()
    b.submit(order(side, 2, trigger=trigger), 100.0, t(0))
    want = [] if expected is None else [("fill", "o1", 2, expected), ("filled", "o1")]
    assert stream(b.on_bar("A", t(1), *bar, 1_000)) == want


def test_stop_fills_slip_like_market_orders():
    b = broker(slippage_bps=10)
    b.submit(order("sell", 1, trigger=95.0), 100.0, t(0))
    b.submit(order("buy", 1, trigger=105.0, cid="o2"), 100.0, t(0))
    # the sell triggers inside the range: 95 * 0.999 = 94.905
    assert stream(b.on_bar("A", t(1), 97.0, 98.0, 94.0, 95.0, 1_000)) == [
        ("fill", "o1", 1, pytest.approx(94.905)),
        ("filled", "o1"),
    ]
    # the buy gaps through at the open: 106 * 1.001 = 106.106
    assert stream(b.on_bar("A", t(2), 106.0, 107.0, 105.5, 106.0, 1_000)) == [
        ("fill", "o2", 1, pytest.approx(106.106)),
        ("filled", "o2"),
    ]


def test_a_triggered_stop_filled_in_part_fills_the_rest_like_a_market_order():
    b = broker(max_participation=0.5)
    b.submit(order("buy", 10, trigger=101.0), 100.0, t(0))
    assert stream(b.on_trade("A", t(1), 101.0, 10)) == [("fill", "o1", 5, 101.0), ("partially_filled", "o1")]
    # 100.5 is below the trigger: only a triggered stop buys there
    assert stream(b.on_trade("A", t(2), 100.5, 100)) == [("fill", "o1", 5, 100.5), ("filled", "o1")]
    assert b.position("s", "A").avg_price == pytest.approx(100.75)  # (5 * 101 + 5 * 100.5) / 10


# -- stop_limit --------------------------------------------------------------------------


def test_stop_limit_triggered_inside_a_bar_within_its_limit_fills_at_the_trigger_without_slippage():
    b = broker(slippage_bps=10)
    b.submit(order("sell", 4, trigger=95.0, limit=94.5), 100.0, t(0))
    assert b.on_bar("A", t(1), 97.0, 98.0, 95.5, 96.0, 1_000) is None  # not triggered
    # triggered at 95 (inside the range), 95 >= 94.5: a limit fill at 95, no slippage
    assert stream(b.on_bar("A", t(2), 97.0, 98.0, 94.0, 95.0, 1_000)) == [
        ("fill", "o1", 4, 95.0),
        ("filled", "o1"),
    ]


def test_stop_limit_triggered_beyond_its_limit_rests_as_a_limit_and_fills_later():
    b = broker()
    b.submit(order("sell", 4, trigger=95.0, limit=94.5), 100.0, t(0))
    # gapped through the trigger at 94, below the limit 94.5: triggered, rests (the high 94.4 < 94.5)
    assert b.on_bar("A", t(1), 94.0, 94.4, 93.0, 94.0, 1_000) is None
    assert [(o.client_order_id, o.status) for o in b.open_orders()] == [("o1", "accepted")]
    # never back at the trigger 95, but the high 94.8 reaches the limit: a limit fill at 94.5
    assert stream(b.on_bar("A", t(2), 94.2, 94.8, 94.0, 94.6, 1_000)) == [
        ("fill", "o1", 4, 94.5),
        ("filled", "o1"),
    ]


def test_stop_limit_on_trades_once_triggered_fills_below_the_trigger_as_a_limit():
    b = broker()
    b.submit(order("buy", 2, trigger=101.0, limit=101.5), 100.0, t(0))
    assert b.account.reserved == pytest.approx(203.0)  # 2 * the limit 101.5
    assert b.on_trade("A", t(1), 100.5, 100) is None  # not triggered
    assert b.on_trade("A", t(2), 102.0, 100) is None  # triggered, but 102 > the limit 101.5
    # 100.9 is below the trigger: only the triggered order (now a limit at 101.5) buys there
    assert stream(b.on_trade("A", t(3), 100.9, 100)) == [("fill", "o1", 2, 100.9), ("filled", "o1")]


# -- trailing_stop -----------------------------------------------------------------------


def test_trailing_stop_percent_follows_the_best_trade_and_triggers_on_the_way_down():
    b = broker()
    b.submit(order("sell", 10, trail_percent=5.0), 100.0, t(0))
    assert b.account.reserved == pytest.approx(950.0)  # a short at the stop 100 * 0.95 = 95
    assert b.on_trade("A", t(1), 104.0, 100) is None  # best 104, stop 98.8
    assert b.on_trade("A", t(2), 110.0, 100) is None  # best 110, stop 104.5
    assert b.on_trade("A", t(3), 105.0, 100) is None  # 105 > 104.5
    assert b.on_trade("A", t(4), 108.0, 100) is None  # below the best: the stop stays 104.5
    assert stream(b.on_trade("A", t(5), 104.4, 100)) == [("fill", "o1", 10, 104.4), ("filled", "o1")]


def test_trailing_stop_price_on_bars_follows_the_low_for_a_buy():
    b = broker()
    b.submit(order("buy", 3, trail_price=2.0), 50.0, t(0))  # stop 52
    # stop 52 not reached (high 51.5); then the low 48 moves the best: stop 50
    assert b.on_bar("A", t(1), 49.5, 51.5, 48.0, 49.0, 1_000) is None
    # open 49 < 50, high 50.5 >= 50: fills at the stop 50
    assert stream(b.on_bar("A", t(2), 49.0, 50.5, 48.5, 50.2, 1_000)) == [
        ("fill", "o1", 3, 50.0),
        ("filled", "o1"),
    ]


@pytest.mark.parametrize(
    ("second_bar", "expected"),
    [
        ((115.0, 116.0, 113.0, 114.0), 114.0),  # the low reaches the stop 114
        ((112.0, 113.0, 111.0, 112.0), 112.0),  # opened through the stop: the open
    ],
)
def test_trailing_stop_in_a_bar_tests_the_old_stop_before_the_high_moves_it(second_bar, expected):
    b = broker()
    b.submit(order("sell", 1, trail_percent=5.0), 100.0, t(0))  # stop 95
    # the stop 95 is not reached (low 96); only then does the high move it: 120 * 0.95 = 114.
    # Had the high moved it first, the low 96 would have filled at 114.
    assert b.on_bar("A", t(1), 100.0, 120.0, 96.0, 110.0, 1_000) is None
    assert stream(b.on_bar("A", t(2), *second_bar, 1_000)) == [("fill", "o1", 1, expected), ("filled", "o1")]


# -- refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("o", "last", "reason"),
    [
        (Order("A", "hold", 1, strategy="s", client_order_id="o1"), 10.0, "side 'hold' must be"),
        (order("buy", 0), 10.0, "qty=0 must be > 0"),
        (order("buy", math.nan), 10.0, "qty=nan must be > 0"),
        (Order("A", "buy", 1, "iceberg", strategy="s", client_order_id="o1"), 10.0, "type 'iceberg' must be"),
        (order("buy", 1, tif="opg"), 10.0, "tif 'opg' must be one of"),
        (order("buy", 1, limit=-1.0), 10.0, "limit_price=-1.0 must be a positive number"),
        (
            Order("A", "buy", 1, "limit", strategy="s", client_order_id="o1"),
            10.0,
            "limit order needs limit_price",
        ),
        (
            Order("A", "buy", 1, "stop", strategy="s", client_order_id="o1"),
            10.0,
            "stop order needs trigger_price",
        ),
        (
            Order("A", "buy", 1, "trailing_stop", trail_percent=1.0, trail_price=1.0, strategy="s"),
            10.0,
            "exactly one of trail_percent and trail_price",
        ),
        (order("buy", 1), None, "no price seen yet for A"),
        (order("sell", 1, trail_percent=2.0), None, "no price seen yet for A"),
        (order("buy", 1, stop=9.0, tif="ioc"), 10.0, "a bracket order needs tif 'day' or 'gtc'"),
        (order("buy", 1, stop=11.0, target=10.5), 10.0, "bracket buy: stop 11.0 must be below target 10.5"),
        (order("sell", 1, stop=9.0, target=9.5), 10.0, "bracket sell: stop 9.0 must be above target 9.5"),
        (order("buy", 2, limit=10.0), 10.0, "insufficient cash: needs 20.00, available 15.00"),
        (order("sell", 1, sym="HTB"), 10.0, "HTB is not shortable"),
    ],
)
def test_invalid_or_unaffordable_orders_are_rejected_with_the_reason_and_hold_nothing(o, last, reason):
    b = broker(cash=15.0, not_shortable=["HTB"])
    ups = b.submit(o, last, t(0))
    assert [u.event for u in ups] == ["rejected"]
    assert reason in ups[0].order.reason
    assert (o.status, ups[0].ts) == ("rejected", t(0))
    assert b.open_orders() == [] and b.account.reserved == 0.0
    assert b.on_trade(o.symbol, t(1), 10.0, 100) is None
