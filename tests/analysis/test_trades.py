"""Round trips: FIFO matching, partial closes, flips, shorts, fees and r-units, by hand."""

from __future__ import annotations

import pytest

from liu.analysis.trades import match_fills, open_positions, round_trips
from tests.analysis.helpers import M, T, fill


def test_long_round_trip_with_fees_and_r_units() -> None:
    trips = round_trips(
        [fill("a", "buy", 10, 100, fee=2, t=0, stop=95), fill("b", "sell", 10, 110, fee=3, t=5)]
    )
    assert len(trips) == 1
    t = trips[0]
    assert (t.side, t.qty, t.entry_price, t.exit_price) == ("long", 10, 100, 110)
    assert (t.entry_ts, t.exit_ts) == (T, T + 5 * M)
    # gross 10 * (110 - 100) = 100, minus fees 2 + 3
    assert t.gain_value == pytest.approx(95.0)
    assert t.fees == pytest.approx(5.0)
    assert t.gain_percentage == pytest.approx(95.0 / 1000.0 * 100)
    # risk 10 * |100 - 95| = 50 → 95 / 50
    assert t.r_units == pytest.approx(1.9)
    assert (t.entry_order_id, t.exit_order_id) == ("a", "b")


def test_partial_closes_match_lots_fifo() -> None:
    fills = [
        fill("a", "buy", 10, 100, fee=1.0, t=0, stop=90),
        fill("b", "buy", 10, 110, fee=2.0, t=1, stop=100),
        fill("c", "sell", 15, 120, fee=1.5, t=2),
        fill("d", "sell", 5, 90, fee=0.5, t=3),
    ]
    first, second = round_trips(fills)
    # First sell: all of lot a (10 @ 100) and 5 of lot b (5 @ 110).
    assert first.qty == 15
    assert first.entry_price == pytest.approx((10 * 100 + 5 * 110) / 15)
    assert first.entry_ts == T  # the oldest matched lot
    # gross 15*120 - 1550 = 250; fees: lot a 1.0 + 5/10 of lot b's 2.0 + exit 1.5 = 3.5
    assert first.fees == pytest.approx(3.5)
    assert first.gain_value == pytest.approx(246.5)
    # risk: 10*|100-90| + 5*|110-100| = 150
    assert first.r_units == pytest.approx(246.5 / 150)
    # Second sell: the other 5 of lot b.
    assert (second.qty, second.entry_price, second.exit_price, second.entry_ts) == (5, 110, 90, T + M)
    assert second.gain_value == pytest.approx(5 * (90 - 110) - 1.0 - 0.5)
    assert second.r_units == pytest.approx(-101.5 / 50)
    assert open_positions(fills) == []


def test_flip_long_to_short_in_one_fill_splits_the_fee() -> None:
    fills = [
        fill("a", "buy", 4, 50, fee=0.4, t=0, stop=48),
        fill("b", "sell", 10, 55, fee=1.0, t=1, stop=57),  # closes 4, opens 6 short
        fill("c", "buy", 6, 52, fee=0.6, t=2),
    ]
    long_trip, short_trip = round_trips(fills)
    assert (long_trip.side, long_trip.qty) == ("long", 4)
    assert long_trip.fees == pytest.approx(0.4 + 0.4)  # 4/10 of the flip fill's fee
    assert long_trip.gain_value == pytest.approx(4 * 5 - 0.8)
    assert long_trip.r_units == pytest.approx(19.2 / (4 * 2))
    assert (short_trip.side, short_trip.qty, short_trip.entry_price, short_trip.exit_price) == (
        "short",
        6,
        55,
        52,
    )
    assert short_trip.entry_ts == T + M
    # short: gain = 6 * (55 - 52) - (6/10 * 1.0 + 0.6)
    assert short_trip.fees == pytest.approx(1.2)
    assert short_trip.gain_value == pytest.approx(18 - 1.2)
    assert short_trip.gain_percentage == pytest.approx(16.8 / (6 * 55) * 100)
    assert short_trip.r_units == pytest.approx(16.8 / (6 * 2))


def test_losing_short() -> None:
    (t,) = round_trips([fill("a", "sell", 3, 20, t=0, stop=21), fill("b", "buy", 3, 22, t=1)])
    assert t.side == "short"
    assert t.gain_value == pytest.approx(-6.0)
    assert t.r_units == pytest.approx(-6.0 / 3)


def test_no_stop_no_r_units_and_any_unstopped_lot_voids_r() -> None:
    (t,) = round_trips([fill("a", "buy", 1, 10), fill("b", "sell", 1, 11, t=1)])
    assert t.r_units is None
    fills = [fill("a", "buy", 1, 10, stop=9), fill("b", "buy", 1, 10, t=1), fill("c", "sell", 2, 11, t=2)]
    (t,) = round_trips(fills)
    assert t.r_units is None
    assert t.gain_value == pytest.approx(2.0)


def test_open_position_at_the_end_is_not_a_round_trip() -> None:
    fills = [
        fill("a", "buy", 10, 100, fee=1.0, t=0),
        fill("b", "buy", 10, 104, fee=1.0, t=1),
        fill("c", "sell", 12, 101, t=2),
    ]
    trips, still_open = match_fills(fills)
    assert [t.qty for t in trips] == [12]
    (p,) = still_open
    assert (p.side, p.qty, p.entry_price, p.entry_ts) == ("long", 8, 104, T + M)
    assert p.entry_fees == pytest.approx(0.8)
    assert open_positions(fills) == still_open


def test_strategies_and_symbols_are_matched_separately_and_fills_sorted_by_time() -> None:
    fills = [
        fill("d", "sell", 5, 12, t=3, strategy="y"),
        fill("a", "buy", 5, 10, t=0, strategy="x"),
        fill("b", "buy", 5, 11, t=1, strategy="y"),
        fill("c", "sell", 5, 9, t=2, symbol="BBB", strategy="x"),  # opens a short on BBB
    ]
    trips, still_open = match_fills(fills)
    (t,) = trips
    assert (t.strategy, t.entry_price, t.exit_price, t.gain_value) == ("y", 11, 12, 5)
    assert sorted((p.strategy, p.symbol, p.side) for p in still_open) == [
        ("x", "AAA", "long"),
        ("x", "BBB", "short"),
    ]


def test_bad_side_is_an_error() -> None:
    with pytest.raises(ValueError, match="side"):
        round_trips([fill("a", "hold", 1, 1)])
