"""Restart reconciliation: what Alpaca holds, matched to the orders liu journaled.

Before the first order of a session, the gateway reads Alpaca's positions and open orders and the
journal (`broker_orders`). Each strategy's position in a symbol is what its journaled orders filled
(legs included: a leg belongs to its entry's strategy). Where the strategies' positions add up to
Alpaca's position in a symbol, each gets its own back; where they do not (an order placed outside
liu, a manual close), the symbol is adopted by no strategy and the difference is reported. Open orders
are matched by client order id and go back to their strategy; an open order liu did not place is
reported and left alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from liu.brokers.alpaca import mapping
from liu.brokers.alpaca.journal import Row
from liu.brokers.base import Position
from liu.events import FINAL_STATUSES, Order

_EPS = 1e-9


@dataclass
class Reconciled:
    """Per consumer: the positions and open orders it gets back; `lines` report every difference."""

    positions: dict[int, dict[tuple[str, str], Position]] = field(default_factory=dict)
    orders: dict[int, list[Order]] = field(default_factory=dict)
    broker_ids: dict[str, str] = field(default_factory=dict)  # restored client id -> Alpaca id
    lines: list[str] = field(default_factory=list)
    unexplained: list[str] = field(default_factory=list)  # symbols whose position no strategy explains


def journal_positions(rows: list[Row]) -> dict[tuple[str, str], Position]:
    """Each strategy's position per symbol from what its journaled orders filled (in order)."""
    out: dict[tuple[str, str], Position] = {}
    for r in rows:
        if r.filled_qty > _EPS:
            pos = out.setdefault((r.strategy, r.symbol), Position())
            pos.apply(r.side, r.filled_qty, r.filled_avg_price or 0.0, 0.0)
    return out


def _alpaca_qty(p: dict) -> float:
    qty = float(p.get("qty") or 0)
    return -abs(qty) if p.get("side") == "short" else qty


def order_of(row: Row, raw: dict) -> Order:
    """liu's order for a journaled row and Alpaca's snapshot of it."""
    req = row.request or {}
    tp, sl = req.get("take_profit") or {}, req.get("stop_loss") or {}
    o = Order(
        row.symbol,
        row.side,
        row.qty,
        type=str(raw.get("type") or req.get("type") or "market"),
        limit_price=_f(raw.get("limit_price")),
        stop=_f(sl.get("stop_price")),
        target=_f(tp.get("limit_price")),
        strategy=row.strategy,
        client_order_id=row.client_order_id,
        tif=str(raw.get("time_in_force") or "day"),
        trigger_price=_f(raw.get("stop_price")),
        trail_percent=_f(raw.get("trail_percent")),
        trail_price=_f(raw.get("trail_price")),
        parent_id=row.parent_id,
        leg=row.leg,
        status="new",
    )
    o.filled_qty, o.avg_fill_price = row.filled_qty, row.filled_avg_price or 0.0
    mapping.apply(o, raw, mapping.ts_ns(raw.get("updated_at")))
    return o


def _f(v: object) -> float | None:
    return float(v) if v not in (None, "") else None  # type: ignore[arg-type]


def reconcile(
    rows: list[Row],
    positions: list[dict],
    open_orders: list[dict],
    shard: Callable[[str], int],
    strategies: set[str],
) -> Reconciled:
    """Match Alpaca's `positions` and `open_orders` (nested) to the journal `rows`."""
    rec = Reconciled()
    mine = journal_positions(rows)
    by_symbol: dict[str, dict[str, Position]] = {}
    for (strategy, sym), pos in mine.items():
        if abs(pos.qty) > _EPS:
            by_symbol.setdefault(sym, {})[strategy] = pos
    held = {p["symbol"]: p for p in positions}
    for sym in sorted(set(held) | set(by_symbol)):
        alpaca = _alpaca_qty(held[sym]) if sym in held else 0.0
        ours = by_symbol.get(sym, {})
        explained = sum(p.qty for p in ours.values())
        if abs(alpaca - explained) > 1e-6:
            detail = ", ".join(f"{s} {p.qty:g}" for s, p in sorted(ours.items())) or "no liu order"
            rec.unexplained.append(sym)
            rec.lines.append(
                f"position {sym}: Alpaca holds {alpaca:g}, liu's orders explain {explained:g} ({detail}); "
                f"adopted by no strategy"
            )
            continue
        for strategy, pos in ours.items():
            if strategy not in strategies:
                rec.lines.append(
                    f"position {sym} {pos.qty:g} of strategy {strategy} (not in this plan): left alone"
                )
                continue
            rec.positions.setdefault(shard(sym), {})[(strategy, sym)] = pos
            rec.lines.append(f"position {sym} {pos.qty:g} @ {pos.avg_price:.4f} back to strategy {strategy}")
    by_cid = {r.client_order_id: r for r in rows}
    by_bid = {r.broker_id: r for r in rows if r.broker_id}
    legs: dict[str, list[str]] = {}
    for r in rows:
        if r.parent_id:
            legs.setdefault(r.parent_id, []).append(r.client_order_id)
    for raw in open_orders:  # not nested: bracket legs are rows of their own
        row = by_cid.get(str(raw.get("client_order_id"))) or by_bid.get(str(raw.get("id")))
        if row is None:
            rec.lines.append(
                f"open order {raw.get('client_order_id')} ({raw.get('side')} {raw.get('qty')} {raw.get('symbol')}) "
                "was not placed by liu: left alone"
            )
            continue
        if row.strategy not in strategies:
            rec.lines.append(
                f"open order {row.client_order_id} of strategy {row.strategy} (not in this plan): left alone"
            )
            continue
        o = order_of(row, raw)
        if o.status in FINAL_STATUSES:
            continue
        o.legs = tuple(legs.get(row.client_order_id, ()))
        consumer = shard(row.symbol)
        rec.orders.setdefault(consumer, []).append(o)
        rec.broker_ids[o.client_order_id] = str(raw.get("id"))
        what = f"{row.leg} leg" if row.leg else "order"
        rec.lines.append(
            f"open {what} {row.client_order_id} ({row.side} {row.qty:g} {row.symbol}) back to {row.strategy}"
        )
    return rec
