"""Restart reconciliation as a function of its inputs: journal rows, Alpaca's positions and open orders."""

from __future__ import annotations

from liu.brokers.alpaca.journal import Row
from liu.brokers.alpaca.reconcile import journal_positions, reconcile

SHARD = {"AAA": 0, "BBB": 1, "CCC": 0}.__getitem__


def row(cid: str, strategy: str, symbol: str, side: str, filled: float, price: float, **kw) -> Row:
    status = kw.pop("status", "filled")
    return Row(
        cid,
        "b",
        0,
        strategy,
        symbol,
        side,
        filled or 1.0,
        status=status,
        filled_qty=filled,
        filled_avg_price=price,
        **kw,
    )


def pos(symbol: str, qty: float) -> dict:
    return {"symbol": symbol, "qty": str(abs(qty)), "side": "long" if qty > 0 else "short"}


def test_positions_by_strategy_from_fills_legs_included():
    rows = [
        row("1", "a", "AAA", "buy", 10, 100.0),
        row("2", "b", "AAA", "buy", 5, 110.0),
        row("1-tp", "a", "AAA", "sell", 4, 120.0, parent_id="1", leg="take_profit"),
    ]
    got = journal_positions(rows)
    assert got[("a", "AAA")].qty == 6 and got[("a", "AAA")].avg_price == 100.0
    assert got[("b", "AAA")].qty == 5


def test_matching_positions_go_back_to_their_strategies_on_the_symbols_consumer():
    rows = [row("1", "a", "AAA", "buy", 10, 100.0), row("2", "b", "BBB", "sell", 3, 50.0)]
    rec = reconcile(rows, [pos("AAA", 10), pos("BBB", -3)], [], SHARD, {"a", "b"})
    assert rec.unexplained == []
    assert rec.positions[0][("a", "AAA")].qty == 10
    assert rec.positions[1][("b", "BBB")].qty == -3


def test_a_position_liu_cannot_explain_is_adopted_by_no_strategy_and_reported():
    rows = [row("1", "a", "AAA", "buy", 10, 100.0)]
    rec = reconcile(rows, [pos("AAA", 12), pos("CCC", 1)], [], SHARD, {"a"})
    assert rec.unexplained == ["AAA", "CCC"]
    assert rec.positions == {}
    assert (
        "position AAA: Alpaca holds 12, liu's orders explain 10 (a 10); adopted by no strategy" in rec.lines
    )


def test_open_orders_matched_by_client_id_and_legs_by_alpacas_id_others_left_alone():
    rows = [
        row(
            "1",
            "a",
            "AAA",
            "buy",
            0,
            0.0,
            status="accepted",
            broker_id="u1",
            request={
                "type": "limit",
                "take_profit": {"limit_price": 130.0},
                "stop_loss": {"stop_price": 90.0},
            },
        ),
        row(
            "1-sl", "a", "AAA", "sell", 0, 0.0, status="held", parent_id="1", leg="stop_loss", broker_id="u2"
        ),
    ]
    alpaca = [
        {
            "id": "u1",
            "client_order_id": "1",
            "status": "new",
            "type": "limit",
            "limit_price": "99",
            "filled_qty": "0",
            "time_in_force": "gtc",
        },
        {
            "id": "u2",
            "client_order_id": "alpaca-made",
            "status": "held",
            "type": "stop",
            "stop_price": "90",
            "filled_qty": "0",
        },
        {
            "id": "u3",
            "client_order_id": "by-hand",
            "status": "new",
            "symbol": "BBB",
            "side": "buy",
            "qty": "1",
        },
    ]
    rec = reconcile(rows, [], alpaca, SHARD, {"a"})
    got = {o.client_order_id: o for o in rec.orders[0]}
    assert set(got) == {"1", "1-sl"}
    assert got["1"].status == "accepted" and got["1"].limit_price == 99.0 and got["1"].legs == ("1-sl",)
    assert got["1"].stop == 90.0 and got["1"].target == 130.0 and got["1"].tif == "gtc"
    assert got["1-sl"].status == "held" and got["1-sl"].leg == "stop_loss"
    assert rec.broker_ids == {"1": "u1", "1-sl": "u2"}
    assert any("by-hand" in line and "left alone" in line for line in rec.lines)
