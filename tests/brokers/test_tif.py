"""Time in force in the paper broker: day orders expire at 16:00 New York, gtc rests, ioc and fok act on
the next event, and the session's end leaves nothing open."""

from __future__ import annotations

import pytest

from tests.brokers.conftest import broker, ny, open_ids, order, snap, stream, t


def test_day_order_expires_at_the_close_and_releases_its_cash():
    b = broker()
    b.submit(order("buy", 10, limit=90.0), 100.0, ny(5, 10))  # Tuesday 10:00
    assert b.account.reserved == pytest.approx(900.0)
    assert b.expire(ny(5, 15, 59, 59)) == []  # before the close nothing happens
    assert b.account.reserved == pytest.approx(900.0) and open_ids(b) == ["o1"]
    ups = b.expire(ny(5, 16))
    assert stream(ups) == [("expired", "o1")]
    o = snap(ups, "o1")
    assert (o.reason, o.updated_ts, ups[0].ts) == ("day order expired", ny(5, 16), ny(5, 16))
    assert b.account.reserved == 0.0 and b.account.available() == 10_000.0
    assert b.open_orders() == [] and b.expire(ny(5, 16, 1)) == []
    assert b.on_trade("A", ny(6, 10), 80.0, 100) is None


def test_day_order_filled_in_part_expires_and_releases_only_what_is_left():
    b = broker(max_participation=0.5)
    b.submit(order("buy", 10, limit=100.0), 100.0, t(0))  # reserves 1000
    b.on_trade("A", t(1), 99.0, 8)  # 4 of 10 at 99: releases 4 * 100, 600 left
    assert b.account.reserved == pytest.approx(600.0)
    ups = b.expire(ny(5, 16))
    assert stream(ups) == [("expired", "o1")]
    assert (snap(ups, "o1").filled_qty, snap(ups, "o1").avg_fill_price) == (4, 99.0)
    assert b.account.reserved == 0.0
    assert b.account.cash == pytest.approx(10_000 - 4 * 99.0)  # 9604


def test_day_order_placed_in_the_last_minute_is_for_the_next_session():
    b = broker()
    b.submit(order("buy", 1, limit=90.0), 100.0, ny(5, 15, 59, 30))
    assert b.expire(ny(5, 16)) == []
    assert b.expire(ny(6, 15, 59)) == []
    assert stream(b.expire(ny(6, 16))) == [("expired", "o1")]


def test_day_order_placed_after_fridays_close_expires_at_mondays_close_across_the_dst_change():
    b = broker()
    b.submit(order("buy", 1, limit=90.0), 100.0, ny(8, 16, 30))  # Friday March 8, after the close
    assert b.expire(ny(9, 16)) == []  # Saturday
    # Monday March 11 is on daylight time: 16:00 New York is 20:00 UTC (21:00 the week before)
    assert b.expire(ny(11, 15, 59)) == []
    assert stream(b.expire(ny(11, 16))) == [("expired", "o1")]


def test_gtc_order_survives_the_close_and_keeps_its_reservation():
    b = broker()
    b.submit(order("buy", 10, limit=90.0, tif="gtc"), 100.0, ny(5, 10))
    assert b.expire(ny(5, 16)) == [] and b.expire(ny(7, 16)) == []
    assert open_ids(b) == ["o1"] and b.account.reserved == pytest.approx(900.0)
    assert stream(b.on_trade("A", ny(8, 10), 89.5, 100)) == [("fill", "o1", 10, 89.5), ("filled", "o1")]


# -- ioc -----------------------------------------------------------------------------------


def test_ioc_fills_what_the_next_trade_offers_and_cancels_the_rest():
    b = broker(max_participation=0.5)
    b.submit(order("buy", 10, limit=100.0, tif="ioc"), 100.0, t(0))
    assert b.on_trade("B", t(1), 50.0, 100) is None  # another symbol's event is not "the next event"
    ups = b.on_trade("A", t(1), 99.5, 8)  # half of 8: 4 at 99.5
    assert stream(ups) == [("fill", "o1", 4, 99.5), ("partially_filled", "o1"), ("cancelled", "o1")]
    o = snap(ups, "o1")
    assert (o.filled_qty, o.avg_fill_price, o.reason) == (4, 99.5, "ioc: unfilled rest cancelled")
    assert b.open_orders() == [] and b.account.reserved == 0.0
    assert b.account.cash == pytest.approx(10_000 - 4 * 99.5)  # 9602


def test_ioc_on_a_bar_takes_its_share_of_the_volume_at_the_open():
    b = broker(max_participation=0.01)
    b.submit(order("buy", 10, tif="ioc"), 20.0, t(0))
    # 1% of 500 = 5 at the open 21
    assert stream(b.on_bar("A", t(1), 21.0, 22.0, 20.0, 21.5, 500)) == [
        ("fill", "o1", 5, 21.0),
        ("partially_filled", "o1"),
        ("cancelled", "o1"),
    ]
    assert b.position("s", "A").qty == 5 and b.account.reserved == 0.0


def test_ioc_filled_in_full_is_not_cancelled_and_unmarketable_is_cancelled_unfilled():
    b = broker()
    b.submit(order("buy", 2, tif="ioc"), 10.0, t(0))
    assert stream(b.on_trade("A", t(1), 10.0, 1)) == [("fill", "o1", 2, 10.0), ("filled", "o1")]
    b.submit(order("buy", 2, limit=9.0, tif="ioc", cid="o2"), 10.0, t(1))
    ups = b.on_trade("A", t(2), 9.5, 100)
    assert stream(ups) == [("cancelled", "o2")]
    assert snap(ups, "o2").reason == "ioc: not marketable on the next event"
    assert b.account.reserved == 0.0 and b.position("s", "A").qty == 2


# -- fok -----------------------------------------------------------------------------------


def test_fok_fills_in_full_when_the_next_event_allows_it():
    b = broker(max_participation=0.5)
    b.submit(order("buy", 10, tif="fok"), 10.0, t(0))
    assert stream(b.on_trade("A", t(1), 10.2, 30)) == [("fill", "o1", 10, 10.2), ("filled", "o1")]  # 15 >= 10


@pytest.mark.parametrize(
    ("o", "size", "reason"),
    [
        (order("buy", 10, tif="fok"), 10, "fok: not fillable in full on the next event"),  # 5 of 10
        (order("buy", 10, limit=9.0, tif="fok"), 1_000, "fok: not marketable on the next event"),
    ],
)
def test_fok_is_cancelled_never_partially_filled(o, size, reason):
    b = broker(max_participation=0.5)
    b.submit(o, 10.0, t(0))
    ups = b.on_trade("A", t(1), 10.0, size)
    assert stream(ups) == [("cancelled", "o1")]
    assert (snap(ups, "o1").reason, snap(ups, "o1").filled_qty) == (reason, 0.0)
    assert b.position("s", "A").qty == 0 and b.account.reserved == 0.0 and b.account.cash == 10_000.0


def test_fok_that_gaps_past_the_cash_is_cancelled_whole_not_cut():
    b = broker(cash=1_000.0)
    b.submit(order("buy", 10, tif="fok"), 95.0, t(0))  # reserves 950
    ups = b.on_trade("A", t(1), 120.0, 100)  # 10 * 120 = 1200 > 1000: a plain order would buy 8
    assert stream(ups) == [("cancelled", "o1")]
    assert snap(ups, "o1").reason.startswith("insufficient cash at fill price 120.0000")
    assert b.position("s", "A").qty == 0
    assert (b.account.cash, b.account.reserved) == (1_000.0, 0.0)


# -- the session's end ---------------------------------------------------------------------


def test_end_session_expires_day_orders_cancels_the_rest_once_each_at_its_time():
    b = broker()
    b.submit(order("buy", 1, limit=90.0), 100.0, t(0))
    b.submit(order("buy", 1, limit=91.0, tif="gtc", cid="o2"), 100.0, t(0))
    b.submit(order("buy", 1, limit=92.0, stop=85.0, tif="gtc", cid="o3"), 100.0, t(0))
    assert b.account.reserved == pytest.approx(273.0)  # 90 + 91 + 92
    ups = b.end_session(t(5))
    assert stream(ups) == [
        ("expired", "o1"),
        ("cancelled", "o2"),
        ("cancelled", "o3"),
        ("cancelled", "o3-sl"),
    ]
    assert [u.order.reason for u in ups] == [
        "day order expired",
        "session ended",
        "session ended",
        "entry o3 cancelled",
    ]
    assert {u.ts for u in ups} == {t(5)} and {u.order.updated_ts for u in ups} == {t(5)}
    assert b.open_orders() == [] and b.account.reserved == 0.0 and b.account.cash == 10_000.0
    assert b.end_session(t(6)) == []


def test_a_day_brackets_working_legs_expire_with_the_day():
    b = broker()
    b.submit(order("buy", 10, stop=98.0), 100.0, t(0))
    b.on_trade("A", t(1), 100.0, 100)  # the entry fills; the stop-loss works
    assert stream(b.expire(ny(5, 16))) == [("expired", "o1-sl")]
    assert b.position("s", "A").qty == 10 and b.open_orders() == []
