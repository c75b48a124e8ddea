"""Cash in the paper broker: reservations held and released exactly by cancels, replaces, partial and final
fills and the session's end; cash never below zero; shorts hold margin. And partial fills by participation."""

from __future__ import annotations

import pytest

from tests.brokers.conftest import broker, open_ids, order, snap, stream, t


def test_cancel_releases_exactly_what_the_order_holds():
    b = broker(fee_per_share=0.01, fee_bps=1.0)
    b.submit(order("buy", 10, limit=99.0), 100.0, t(0))  # 990 + fee 0.1 + 0.099 = 990.199
    b.submit(order("buy", 5, limit=50.0, cid="o2"), 100.0, t(0))  # 250 + 0.05 + 0.025 = 250.075
    assert b.account.reserved == pytest.approx(1240.274)
    ups = b.cancel("o1", t(1), "cancelled by strategy")
    assert stream(ups) == [("cancelled", "o1")]
    assert (snap(ups, "o1").reason, snap(ups, "o1").updated_ts) == ("cancelled by strategy", t(1))
    assert b.account.reserved == pytest.approx(250.075)
    assert b.cancel("o1", t(2)) == [] and b.cancel("nope", t(2)) == []
    b.cancel("o2", t(2))
    assert b.account.reserved == pytest.approx(0.0, abs=1e-9)
    assert b.account.available() == 10_000.0 and b.account.cash == 10_000.0


def test_selling_what_is_held_reserves_nothing():
    b = broker()
    b.submit(order("buy", 10), 100.0, t(0))
    b.on_trade("A", t(1), 100.0, 100)
    b.submit(order("sell", 10, limit=110.0, cid="o2"), 100.0, t(1))
    assert b.account.reserved == 0.0 and b.account.available() == pytest.approx(9_000.0)


def test_replace_releases_the_old_reservation_and_reserves_the_new():
    b = broker()
    b.submit(order("buy", 10, limit=99.0), 100.0, t(0))
    ups = b.replace("o1", t(1), "r1", qty=20.0, limit_price=98.0)
    assert stream(ups) == [("replaced", "o1"), ("accepted", "r1")]
    old, new = snap(ups, "o1"), snap(ups, "r1")
    assert (old.replaced_by, new.replaces) == ("r1", "o1")
    assert (new.qty, new.limit_price, new.submitted_ts, new.filled_qty) == (20, 98.0, t(1), 0.0)
    assert b.account.reserved == pytest.approx(1960.0)  # 20 * 98; the old 990 is free again
    assert open_ids(b) == ["r1"]
    assert b.on_trade("A", t(2), 98.5, 100) is None  # the old limit 99 would have bought here
    assert stream(b.on_trade("A", t(3), 97.5, 100)) == [("fill", "r1", 20, 97.5), ("filled", "r1")]
    assert b.account.cash == pytest.approx(8_050.0)  # 10,000 - 1,950
    assert b.account.reserved == 0.0


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"qty": 30.0}, "replace refused: insufficient cash: needs 2970.00, available 2000.00"),
        ({"limit_price": -1.0}, "replace refused: limit_price=-1.0 must be a positive number"),
    ],
)
def test_a_refused_replace_leaves_the_old_order_working_with_its_reservation(change, reason):
    b = broker(cash=2_000.0)
    b.submit(order("buy", 10, limit=99.0), 100.0, t(0))  # 990
    ups = b.replace("o1", t(1), "r1", **change)
    assert stream(ups) == [("rejected", "r1")]
    assert snap(ups, "r1").reason == reason
    assert b.account.reserved == pytest.approx(990.0)
    assert [(o.client_order_id, o.status, o.replaced_by) for o in b.open_orders()] == [("o1", "accepted", "")]
    assert stream(b.on_trade("A", t(2), 98.0, 100)) == [("fill", "o1", 10, 98.0), ("filled", "o1")]
    assert b.replace("o1", t(3), "r2", qty=1.0) == []  # no longer open


def test_replacing_a_partly_filled_order_replaces_what_is_left():
    b = broker(max_participation=0.5)
    b.submit(order("buy", 10, limit=100.0), 100.0, t(0))  # 1,000
    b.on_trade("A", t(1), 99.0, 8)  # 4 at 99: 600 still held for the other 6
    ups = b.replace("o1", t(2), "r1", limit_price=99.5)
    assert (snap(ups, "o1").filled_qty, snap(ups, "r1").qty) == (4, 6)
    assert b.account.reserved == pytest.approx(597.0)  # 6 * 99.5
    assert stream(b.on_trade("A", t(3), 99.2, 100)) == [("fill", "r1", 6, 99.2), ("filled", "r1")]
    assert b.position("s", "A").qty == 10  # not 4 + 10
    assert b.account.cash == pytest.approx(9_008.8)  # 10,000 - 396 - 595.2
    assert b.account.reserved == pytest.approx(0.0, abs=1e-9)


# -- partial fills -------------------------------------------------------------------------


def test_max_participation_fills_a_share_of_each_trade_and_releases_cash_per_piece():
    b = broker(max_participation=0.1)
    b.submit(order("buy", 100), 10.0, t(0))  # reserves 1,000
    first = b.on_trade("A", t(1), 10.0, 300)  # 10% of 300 = 30
    assert stream(first) == [("fill", "o1", 30, 10.0), ("partially_filled", "o1")]
    assert b.account.reserved == pytest.approx(700.0)
    ups = b.on_trade("A", t(2), 10.1, 500)  # 50 more
    o = snap(ups, "o1")
    assert (o.status, o.filled_qty, o.avg_fill_price) == (
        "partially_filled",
        80,
        pytest.approx(10.0625),
    )  # 805/80
    assert b.account.reserved == pytest.approx(200.0)
    ups = b.on_trade("A", t(3), 10.2, 1_000)  # 100 offered, 20 left
    assert stream(ups) == [("fill", "o1", 20, 10.2), ("filled", "o1")]
    assert snap(ups, "o1").avg_fill_price == pytest.approx(10.09)  # (300 + 505 + 204) / 100
    assert b.account.reserved == pytest.approx(0.0, abs=1e-9)
    assert b.account.cash == pytest.approx(8_991.0)  # 10,000 - 1,009
    # the first snapshot is what the order was then
    assert (snap(first, "o1").filled_qty, snap(first, "o1").status) == (30, "partially_filled")


@pytest.mark.parametrize(("side", "qty", "price"), [("buy", 20, 10.0), ("sell", 15, 9.9)])
def test_max_participation_on_a_quote_uses_the_size_on_the_side_it_trades_against(side, qty, price):
    b = broker(max_participation=0.1)
    b.submit(order(side, 50), 10.0, t(0))
    ups = b.on_quote("A", t(1), 9.9, 150, 10.0, 200)  # buys take 10% of the ask's 200, sells of the bid's 150
    assert stream(ups) == [("fill", "o1", qty, price), ("partially_filled", "o1")]


def test_max_participation_on_bars_takes_a_share_of_the_volume():
    b = broker(max_participation=0.05)
    b.submit(order("buy", 40, limit=20.0), 21.0, t(0))
    # 5% of 400 = 20, at the limit the low reached
    assert stream(b.on_bar("A", t(1), 20.5, 21.0, 19.5, 20.0, 400)) == [
        ("fill", "o1", 20, 20.0),
        ("partially_filled", "o1"),
    ]
    # 5% of 1,000 = 50 offered, 20 left, at the open below the limit
    ups = b.on_bar("A", t(2), 19.8, 20.2, 19.6, 20.0, 1_000)
    assert stream(ups) == [("fill", "o1", 20, 19.8), ("filled", "o1")]
    assert snap(ups, "o1").avg_fill_price == pytest.approx(19.9)  # (400 + 396) / 40


# -- cash never below zero -----------------------------------------------------------------


def test_a_market_buy_that_gaps_past_its_reservation_is_cut_to_what_cash_pays():
    b = broker(cash=1_000.0, fee_per_share=1.0)
    b.submit(order("buy", 10), 95.0, t(0))  # 10 * 95 + fee 10 = 960
    assert b.account.reserved == pytest.approx(960.0)
    ups = b.on_trade("A", t(1), 120.0, 100)
    # 1,000 pays 120 + 1 fee per share: floor(1000 / 121) = 8
    assert stream(ups) == [("fill", "o1", 8, 120.0), ("partially_filled", "o1"), ("cancelled", "o1")]
    assert snap(ups, "o1").reason.startswith("insufficient cash at fill price 120.0000")
    assert b.account.cash == pytest.approx(32.0)  # 1,000 - 960 - 8
    assert b.account.reserved == 0.0 and b.open_orders() == []


def test_a_market_buy_that_cannot_pay_for_one_share_is_cancelled_unfilled():
    b = broker(cash=100.0)
    b.submit(order("buy", 1), 95.0, t(0))
    assert stream(b.on_trade("A", t(1), 150.0, 100)) == [("cancelled", "o1")]
    assert (b.account.cash, b.account.reserved, b.position("s", "A").qty) == (100.0, 0.0, 0)


# -- shorts --------------------------------------------------------------------------------


def test_a_short_holds_margin_and_proceeds_until_it_is_covered():
    b = broker(cash=1_000.0)
    b.submit(order("sell", 5), 100.0, t(0))
    assert b.account.reserved == pytest.approx(500.0)  # margin 5 * 100
    b.on_trade("A", t(1), 100.0, 100)
    # proceeds +500 and held with the margin: cash 1,500, reserved 1,000, available 500
    assert (b.account.cash, b.account.reserved) == (pytest.approx(1_500.0), pytest.approx(1_000.0))
    ups = b.submit(order("sell", 6, cid="o2"), 100.0, t(1))
    assert ups[0].order.reason == "insufficient cash: needs 600.00, available 500.00"
    b.submit(order("buy", 5, cid="o3"), 90.0, t(1))
    assert b.account.reserved == pytest.approx(1_000.0)  # covering reserves nothing
    b.on_trade("A", t(2), 90.0, 100)
    pos = b.position("s", "A")
    assert (pos.qty, pos.realized) == (0, pytest.approx(50.0))  # (100 - 90) * 5
    assert (b.account.cash, b.account.reserved) == (pytest.approx(1_050.0), pytest.approx(0.0, abs=1e-9))


def test_a_not_shortable_symbol_can_only_sell_what_is_held():
    b = broker(not_shortable=["HTB"])
    b.submit(order("buy", 5, sym="HTB"), 10.0, t(0))
    b.on_trade("HTB", t(1), 10.0, 100)
    ups = b.submit(order("sell", 6, sym="HTB", cid="o2"), 10.0, t(1))  # 1 would open a short
    assert [(u.event, u.order.reason) for u in ups] == [("rejected", "HTB is not shortable")]
    assert stream(b.submit(order("sell", 5, sym="HTB", cid="o3"), 10.0, t(1))) == [("accepted", "o3")]
    assert stream(b.on_trade("HTB", t(2), 11.0, 100)) == [("fill", "o3", 5, 11.0), ("filled", "o3")]


def test_a_buy_that_covers_then_opens_holds_cash_for_the_part_that_opens():
    b = broker(max_participation=0.5)
    b.submit(order("sell", 5), 100.0, t(0))
    b.on_trade("A", t(1), 100.0, 100)  # short 5: cash 10,500, reserved 1,000
    b.submit(order("buy", 10, limit=100.0, cid="o2"), 100.0, t(1))  # 5 cover, 5 open: reserves 5 * 100
    assert b.account.reserved == pytest.approx(1_500.0)
    b.on_trade("A", t(2), 100.0, 10)  # 5: the cover; releases the short's 1,000, keeps the 500
    assert b.position("s", "A").qty == 0
    assert (b.account.cash, b.account.reserved) == (pytest.approx(10_000.0), pytest.approx(500.0))
    b.on_trade("A", t(3), 100.0, 10)  # 5 more: the long, paid from the 500
    assert b.position("s", "A").qty == 5
    assert (b.account.cash, b.account.reserved) == (pytest.approx(9_500.0), pytest.approx(0.0, abs=1e-9))


def test_no_reservation_survives_a_session_of_partial_fills_brackets_and_replaces():
    b = broker(max_participation=0.5, fee_per_share=0.01)
    b.submit(order("buy", 10, limit=50.0), 52.0, t(0))  # 500 + 0.1 = 500.1
    b.submit(order("buy", 4, limit=60.0, stop=45.0, target=70.0, tif="gtc", cid="o2"), 52.0, t(0))  # 240.04
    assert b.account.reserved == pytest.approx(740.14)
    # half of 8 each: o1 4 of 10 at 49 (keeps 6 * 50.01 = 300.06), o2 all 4 at 49 (its legs now work)
    b.on_trade("A", t(1), 49.0, 8)
    assert b.account.reserved == pytest.approx(300.06)
    assert b.account.cash == pytest.approx(9_607.92)  # 10,000 - 2 * (196 + 0.04)
    b.replace("o1", t(2), "r1", limit_price=48.0)  # the 6 left: 288 + 0.06
    assert b.account.reserved == pytest.approx(288.06)
    b.on_trade("A", t(3), 47.5, 4)  # r1: 2 at 47.5, releases 2 * 48.01
    assert b.account.reserved == pytest.approx(192.04)
    ups = b.end_session(t(4))
    assert stream(ups) == [("expired", "r1"), ("cancelled", "o2-sl"), ("cancelled", "o2-tp")]
    assert b.account.reserved == pytest.approx(0.0, abs=1e-9) and b.open_orders() == []
    assert b.account.cash == pytest.approx(9_512.9)  # 9,607.92 - 95 - 0.02
    assert b.position("s", "A").qty == 10
