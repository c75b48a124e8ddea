"""Bracket orders in the paper broker: legs held until the entry fills, sized to what filled,
one-cancels-other, the stop first inside one bar, and a leg never opening a position the other way."""

from __future__ import annotations

import pytest

from liu.brokers.paper import PaperBroker
from tests.brokers.conftest import broker, ny, open_ids, order, snap, stream, t


def _filled_bracket(**kw: object) -> PaperBroker:
    """A bracket buy of 10 (stop 98, target 104) filled at 100: cash 9,000, both legs working."""
    b = broker(**kw)
    b.submit(order("buy", 10, stop=98.0, target=104.0), 100.0, t(0))
    assert stream(b.on_trade("A", t(1), 100.0, 100)) == [
        ("fill", "o1", 10, 100.0),
        ("filled", "o1"),
        ("accepted", "o1-sl"),
        ("accepted", "o1-tp"),
    ]
    return b


def _qty(b: PaperBroker, cid: str) -> float:
    return next(o.remaining for o in b.open_orders() if o.client_order_id == cid)


def test_legs_are_held_and_inert_until_the_entry_fills():
    b = broker()
    ups = b.submit(order("buy", 10, limit=99.0, stop=97.0, target=103.0), 100.0, t(0))
    assert stream(ups) == [("accepted", "o1"), ("held", "o1-sl"), ("held", "o1-tp")]
    entry, sl, tp = snap(ups, "o1"), snap(ups, "o1-sl"), snap(ups, "o1-tp")
    assert (entry.order_class, entry.legs) == ("bracket", ("o1-sl", "o1-tp"))
    fields = ("side", "type", "trigger_price", "limit_price", "qty", "parent_id", "leg", "tif")
    assert [getattr(sl, f) for f in fields] == ["sell", "stop", 97.0, None, 10, "o1", "stop_loss", "day"]
    assert [getattr(tp, f) for f in fields] == ["sell", "limit", None, 103.0, 10, "o1", "take_profit", "day"]
    assert b.account.reserved == pytest.approx(990.0)  # the entry's 10 * 99; legs reserve nothing
    assert open_ids(b) == ["o1", "o1-sl", "o1-tp"]
    # the take-profit would fill on each of these, and the stop on the last, were they working
    assert b.on_trade("A", t(1), 103.5, 100) is None
    assert b.on_bar("A", t(2), 101.0, 105.0, 99.5, 100.0, 1_000) is None
    assert b.on_quote("A", t(3), 96.0, 100, 99.2, 100) is None
    assert b.position("s", "A").qty == 0


def test_stop_loss_fill_cancels_the_take_profit():
    b = _filled_bracket()
    ups = b.on_trade("A", t(2), 97.9, 100)
    assert stream(ups) == [("fill", "o1-sl", 10, 97.9), ("filled", "o1-sl"), ("cancelled", "o1-tp")]
    assert snap(ups, "o1-tp").reason == "OCO: stop_loss o1-sl filled"
    pos = b.position("s", "A")
    assert (pos.qty, pos.realized) == (0, pytest.approx(-21.0))  # (97.9 - 100) * 10
    assert b.account.cash == pytest.approx(9_979.0)  # 9,000 + 979
    assert b.open_orders() == [] and b.account.reserved == 0.0
    assert b.on_trade("A", t(3), 104.5, 100) is None


def test_take_profit_fill_cancels_the_stop_loss():
    b = _filled_bracket()
    ups = b.on_trade("A", t(2), 104.2, 100)
    assert stream(ups) == [("fill", "o1-tp", 10, 104.2), ("filled", "o1-tp"), ("cancelled", "o1-sl")]
    assert snap(ups, "o1-sl").reason == "OCO: take_profit o1-tp filled"
    assert b.account.cash == pytest.approx(10_042.0)  # 9,000 + 1,042
    assert b.on_trade("A", t(3), 97.0, 100) is None and b.position("s", "A").qty == 0


@pytest.mark.parametrize(
    ("bar", "first", "price", "other"),
    [
        ((100.0, 105.0, 97.0, 101.0), "o1-sl", 98.0, "o1-tp"),  # both inside the range: the stop first
        ((105.0, 106.0, 97.0, 99.0), "o1-tp", 105.0, "o1-sl"),  # opened through the target: at the open
        ((96.0, 105.0, 95.0, 100.0), "o1-sl", 96.0, "o1-tp"),  # opened through the stop: at the open
    ],
)
def test_both_legs_reachable_in_one_bar(bar, first, price, other):
    b = _filled_bracket()
    assert stream(b.on_bar("A", t(2), *bar, 1_000)) == [
        ("fill", first, 10, price),
        ("filled", first),
        ("cancelled", other),
    ]
    assert b.account.cash == pytest.approx(9_000 + 10 * price)
    assert b.position("s", "A").qty == 0


def test_the_strategys_exit_at_a_bars_open_comes_before_a_stop_inside_the_bar():
    b = _filled_bracket()
    b.submit(order("sell", 10, cid="x"), 100.0, t(2))
    # the market exit takes the open 100; the low 97 would have reached the stop 98 only later
    assert stream(b.on_bar("A", t(3), 100.0, 101.0, 97.0, 99.0, 1_000)) == [
        ("fill", "x", 10, 100.0),
        ("filled", "x"),
        ("cancelled", "o1-sl"),
        ("cancelled", "o1-tp"),
    ]
    assert b.account.cash == pytest.approx(10_000.0)  # 9,000 + 1,000


def test_in_a_bar_what_the_open_fills_is_reported_before_what_the_range_fills():
    b = broker()
    b.submit(order("sell", 5, limit=101.0), 100.0, t(0))  # reached by the high, inside the bar
    b.submit(order("sell", 5, trigger=98.0, cid="o2"), 100.0, t(0))  # gapped through at the open
    assert stream(b.on_bar("A", t(1), 97.0, 101.5, 96.0, 100.0, 1_000)) == [
        ("fill", "o2", 5, 97.0),
        ("filled", "o2"),
        ("fill", "o1", 5, 101.0),
        ("filled", "o1"),
    ]


def test_a_partial_entry_fill_sizes_the_legs_to_what_filled():
    b = broker(max_participation=0.5)
    b.submit(order("buy", 10, limit=100.0, stop=98.0, target=104.0), 100.0, t(0))  # reserves 1,000
    ups = b.on_trade("A", t(1), 99.8, 8)  # half of 8: 4
    assert stream(ups) == [
        ("fill", "o1", 4, 99.8),
        ("partially_filled", "o1"),
        ("accepted", "o1-sl"),
        ("accepted", "o1-tp"),
    ]
    assert (snap(ups, "o1-sl").qty, snap(ups, "o1-tp").qty) == (4, 4)
    assert stream(b.on_trade("A", t(2), 99.9, 4)) == [("fill", "o1", 2, 99.9), ("partially_filled", "o1")]
    assert (_qty(b, "o1-sl"), _qty(b, "o1-tp")) == (6, 6)
    assert b.account.reserved == pytest.approx(400.0)  # 1,000 - 6 * 100
    # the entry's rest is cancelled: the legs keep protecting the 6 that filled
    assert stream(b.cancel("o1", t(3))) == [("cancelled", "o1")]
    assert open_ids(b) == ["o1-sl", "o1-tp"] and b.account.reserved == 0.0
    assert stream(b.on_trade("A", t(4), 97.9, 100)) == [
        ("fill", "o1-sl", 6, 97.9),
        ("filled", "o1-sl"),
        ("cancelled", "o1-tp"),
    ]
    assert b.position("s", "A").qty == 0
    assert b.account.cash == pytest.approx(9_988.4)  # 10,000 - 399.2 - 199.8 + 587.4


@pytest.mark.parametrize("price", [101.0, 97.5])  # 97.5 reaches the stop too: the strategy's order goes first
def test_the_strategys_own_exit_closing_the_position_cancels_the_legs(price):
    b = _filled_bracket()
    assert stream(b.submit(order("sell", 10, cid="x"), 101.0, t(2))) == [("accepted", "x")]
    ups = b.on_trade("A", t(3), price, 100)
    assert stream(ups) == [
        ("fill", "x", 10, price),
        ("filled", "x"),
        ("cancelled", "o1-sl"),
        ("cancelled", "o1-tp"),
    ]
    assert {snap(ups, c).reason for c in ("o1-sl", "o1-tp")} == {"position closed"}
    assert b.on_trade("A", t(4), 97.0, 100) is None
    assert b.position("s", "A").qty == 0


def test_a_partial_exit_cuts_the_legs_so_the_stop_never_opens_a_short():
    b = _filled_bracket()
    b.submit(order("sell", 4, cid="x"), 101.0, t(2))
    assert stream(b.on_trade("A", t(3), 101.0, 100)) == [("fill", "x", 4, 101.0), ("filled", "x")]
    assert (_qty(b, "o1-sl"), _qty(b, "o1-tp")) == (6, 6)
    assert stream(b.on_trade("A", t(4), 97.5, 100)) == [
        ("fill", "o1-sl", 6, 97.5),
        ("filled", "o1-sl"),
        ("cancelled", "o1-tp"),
    ]
    assert b.position("s", "A").qty == 0


def test_two_brackets_stops_together_never_sell_more_than_the_position():
    b = broker()
    b.submit(order("buy", 5, stop=98.0), 100.0, t(0))
    b.submit(order("buy", 5, stop=98.0, cid="o2"), 100.0, t(0))
    b.on_trade("A", t(1), 100.0, 100)  # both fill: 10 long, two stops of 5
    b.submit(order("sell", 7, cid="x"), 100.0, t(1))
    b.on_trade("A", t(2), 100.0, 100)  # 3 left: each stop is cut to 3
    assert (_qty(b, "o1-sl"), _qty(b, "o2-sl")) == (3, 3)
    ups = b.on_trade("A", t(3), 97.0, 100)
    assert stream(ups) == [("fill", "o1-sl", 3, 97.0), ("filled", "o1-sl"), ("cancelled", "o2-sl")]
    assert snap(ups, "o2-sl").reason == "position closed"
    assert b.position("s", "A").qty == 0


@pytest.mark.parametrize(("end", "event"), [("cancel", "cancelled"), ("expire", "expired")])
def test_an_entry_that_ends_unfilled_takes_its_legs_with_it(end, event):
    b = broker()
    b.submit(order("buy", 10, limit=99.0, stop=97.0, target=103.0), 100.0, t(0))
    ups = b.cancel("o1", t(1), "changed my mind") if end == "cancel" else b.expire(ny(5, 16))
    assert stream(ups) == [(event, "o1"), (event, "o1-sl"), (event, "o1-tp")]
    assert snap(ups, "o1-sl").reason == f"entry o1 {event}"
    assert b.open_orders() == [] and b.account.reserved == 0.0
    assert b.cancel("o1", t(2)) == [] and b.cancel("o1-sl", t(2)) == []


@pytest.mark.parametrize(
    ("stop", "target", "bar", "leg", "price", "other"),
    [
        # the limit entry fills at 99 on the way down; the low 97 then reaches the stop 98
        (98.0, 103.0, (100.0, 100.5, 97.0, 97.5), "o1-sl", 98.0, "o1-tp"),
        # the target 99.5 lies between the entry and the open: the open (100) came before the entry
        # filled, so the take-profit fills at its limit, reached by the high 101.5
        (97.0, 99.5, (100.0, 101.5, 98.5, 100.0), "o1-tp", 99.5, "o1-sl"),
    ],
)
def test_legs_activated_by_an_entry_fill_on_a_bar_fill_in_that_same_bar(stop, target, bar, leg, price, other):
    b = broker()
    b.submit(order("buy", 10, limit=99.0, stop=stop, target=target), 100.0, t(0))
    assert stream(b.on_bar("A", t(1), *bar, 1_000)) == [
        ("fill", "o1", 10, 99.0),
        ("filled", "o1"),
        ("accepted", "o1-sl"),
        ("accepted", "o1-tp"),
        ("fill", leg, 10, price),
        ("filled", leg),
        ("cancelled", other),
    ]
    assert b.account.cash == pytest.approx(10_000 - 990 + 10 * price)
    assert b.position("s", "A").qty == 0


def test_a_short_brackets_legs_buy_it_back():
    b = broker()
    ups = b.submit(order("sell", 10, stop=103.0, target=96.0), 100.0, t(0))
    assert [(u.order.side, u.order.type) for u in ups[1:]] == [("buy", "stop"), ("buy", "limit")]
    assert b.account.reserved == pytest.approx(1_000.0)  # margin: 10 * 100
    b.on_trade("A", t(1), 100.0, 100)
    # short at 100: cash +1,000; the margin and the proceeds are held: 2,000
    assert (b.account.cash, b.account.reserved) == (pytest.approx(11_000.0), pytest.approx(2_000.0))
    assert stream(b.on_trade("A", t(2), 103.2, 100)) == [
        ("fill", "o1-sl", 10, 103.2),
        ("filled", "o1-sl"),
        ("cancelled", "o1-tp"),
    ]
    pos = b.position("s", "A")
    assert (pos.qty, pos.realized) == (0, pytest.approx(-32.0))  # (100 - 103.2) * 10
    assert b.account.cash == pytest.approx(9_968.0)  # 11,000 - 1,032
    assert b.account.reserved == pytest.approx(0.0, abs=1e-9)


# -- replacing legs and entries ------------------------------------------------------------


@pytest.mark.parametrize(
    ("cid", "change", "miss", "hit", "filled"),
    [
        ("o1-tp", {"limit_price": 105.0}, 104.5, 97.5, "o1-sl"),  # the stop still cancels the new target
        ("o1-sl", {"trigger_price": 96.0}, 97.5, 104.0, "o1-tp"),  # the target still cancels the new stop
    ],
)
def test_replacing_a_working_leg_keeps_the_bracket_linked(cid, change, miss, hit, filled):
    b = _filled_bracket()
    ups = b.replace(cid, t(2), "r1", **change)
    assert stream(ups) == [("replaced", cid), ("accepted", "r1")]
    old, new = snap(ups, cid), snap(ups, "r1")
    assert old.replaced_by == "r1"
    assert (new.parent_id, new.leg, new.replaces, new.qty) == ("o1", old.leg, cid, 10)
    assert b.on_trade("A", t(3), miss, 100) is None  # the old leg would have filled here
    ups = b.on_trade("A", t(4), hit, 100)
    assert stream(ups) == [("fill", filled, 10, hit), ("filled", filled), ("cancelled", "r1")]
    assert snap(ups, "r1").reason.startswith("OCO: ")


def test_a_held_leg_replaced_before_the_entry_fills_is_the_one_that_works():
    b = broker()
    b.submit(order("buy", 10, limit=99.0, stop=97.0, target=103.0), 100.0, t(0))
    assert stream(b.replace("o1-sl", t(1), "r1", trigger_price=96.0)) == [
        ("replaced", "o1-sl"),
        ("held", "r1"),
    ]
    assert next(o for o in b.open_orders() if o.client_order_id == "o1").legs == ("r1", "o1-tp")
    assert stream(b.on_trade("A", t(2), 99.0, 100)) == [
        ("fill", "o1", 10, 99.0),
        ("filled", "o1"),
        ("accepted", "r1"),
        ("accepted", "o1-tp"),
    ]
    assert b.on_trade("A", t(3), 96.5, 100) is None  # the old stop 97 would have sold here
    assert stream(b.on_trade("A", t(4), 95.9, 100)) == [
        ("fill", "r1", 10, 95.9),
        ("filled", "r1"),
        ("cancelled", "o1-tp"),
    ]


def test_a_replaced_held_leg_never_works_before_its_entry_fills():
    b = broker()
    b.submit(order("buy", 10, limit=90.0, stop=97.0), 100.0, t(0))
    b.replace("o1-sl", t(1), "r1", trigger_price=96.0)
    assert b.on_trade("A", t(2), 95.0, 100) is None  # a working stop at 96 would sell 10 short here
    assert b.position("s", "A").qty == 0
    assert [(o.client_order_id, o.status) for o in b.open_orders() if o.leg] == [("r1", "held")]


def test_replacing_the_entry_moves_its_held_legs_to_the_new_entry():
    b = broker()
    b.submit(order("buy", 10, limit=99.0, stop=97.0), 100.0, t(0))
    assert stream(b.replace("o1", t(1), "r1", limit_price=99.5)) == [("replaced", "o1"), ("accepted", "r1")]
    assert [o.parent_id for o in b.open_orders() if o.leg] == ["r1"]
    assert b.account.reserved == pytest.approx(995.0)  # 10 * 99.5
    assert stream(b.on_trade("A", t(2), 99.4, 100)) == [
        ("fill", "r1", 10, 99.4),
        ("filled", "r1"),
        ("accepted", "o1-sl"),
    ]
    assert _qty(b, "o1-sl") == 10


def test_a_leg_replaced_with_more_than_the_position_is_cut_to_it():
    b = _filled_bracket()
    ups = b.replace("o1-sl", t(2), "r1", qty=20.0)
    assert snap(ups, "r1").qty == 10
    assert stream(b.on_trade("A", t(3), 97.0, 100)) == [
        ("fill", "r1", 10, 97.0),
        ("filled", "r1"),
        ("cancelled", "o1-tp"),
    ]
    assert b.position("s", "A").qty == 0


def test_a_bracket_entry_cut_by_cash_keeps_legs_for_what_it_bought():
    b = broker(cash=1_000.0)
    b.submit(order("buy", 10, stop=90.0), 95.0, t(0))  # reserves 950
    ups = b.on_trade("A", t(1), 120.0, 100)  # 1,000 pays floor(1000 / 120) = 8
    assert stream(ups) == [
        ("fill", "o1", 8, 120.0),
        ("partially_filled", "o1"),
        ("accepted", "o1-sl"),
        ("cancelled", "o1"),
    ]
    assert snap(ups, "o1-sl").qty == 8
    assert open_ids(b) == ["o1-sl"]
    assert (b.account.cash, b.account.reserved) == (pytest.approx(40.0), 0.0)  # 1,000 - 960
    assert stream(b.on_trade("A", t(2), 89.0, 100)) == [("fill", "o1-sl", 8, 89.0), ("filled", "o1-sl")]
    assert b.position("s", "A").qty == 0
