"""The execution gateway against liu's local exchange, with alpaca-py's real TradingClient and
TradingStream: orders of every class reach Alpaca once and only once, whatever the POST's answer
(late, cut, 429, 504 after creating the order), fills missed while the stream was down are made up
after the reconnect, rejections carry Alpaca's message, and the keys appear nowhere."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator

import asyncpg
import pytest
import requests
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import QueryOrderStatus
from alpaca.trading.requests import GetOrdersRequest
from alpaca.trading.stream import TradingStream

from liu.brokers.alpaca.broker import AlpacaBroker
from liu.brokers.alpaca.gateway import Gateway, trading_client
from liu.brokers.alpaca.ids import consumer_of, order_prefix
from liu.brokers.alpaca.journal import PgJournal
from liu.brokers.alpaca.wire import Cancel, Replace, Submit
from liu.events import Fill, Order, OrderUpdate
from liu.sources.exchange.local import LocalExchange
from liu.sources.sim import SimFeed
from tests.helpers import eventually_async

KEY, SECRET = "gw-test-key-7f3a", "gw-test-secret-91c4e2d0"
SYMBOLS = ["AAA", "BBB", "CCC"]


@pytest.fixture(scope="module")
def exchange() -> Iterator[LocalExchange]:
    with LocalExchange(
        SimFeed(symbols=SYMBOLS, rate=400, kinds=("t", "q"), seed=3), key=KEY, secret=SECRET, trading=True
    ) as ex:
        yield ex


def faults(ex: LocalExchange, **spec) -> dict:
    r = requests.post(
        ex.server.trading_url + "/liu/faults",
        json=spec,
        headers={"APCA-API-KEY-ID": KEY, "APCA-API-SECRET-KEY": SECRET},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return r.json()


def exchange_orders(ex: LocalExchange) -> list[dict]:
    client = TradingClient(KEY, SECRET, raw_data=True, url_override=ex.server.trading_url)
    return client.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL, limit=500, nested=False))


async def until(h: Harness, pred: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Wait for `pred`, re-checked each time the gateway routes a message, or fail naming `what`."""
    async with h.routed:
        try:
            await asyncio.wait_for(h.routed.wait_for(pred), timeout)
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


class Harness:
    """A gateway wired to in-process AlpacaBrokers (one per consumer), as the processes are."""

    def __init__(
        self, ex: LocalExchange, consumers: int = 2, timeout: float = 5.0, alpaca_retries: bool = False
    ) -> None:
        self.batch = str(uuid.uuid4())
        self.updates: dict[int, list] = {i: [] for i in range(consumers)}
        client = trading_client(KEY, SECRET, ex.server.trading_url, paper=True, timeout=timeout)
        if alpaca_retries:  # alpaca-py's own 429/504 re-POSTs (switched off by trading_client), back on
            client._retry, client._retry_wait = 3, 0
        stream = TradingStream(KEY, SECRET, raw_data=True, url_override=ex.server.trading_stream_url)
        self.gw = Gateway(client, self._route, batch_id=self.batch, stream=stream, retry_wait=0.05)
        self.outbox: list[tuple[int, object]] = []
        self.routed = asyncio.Condition()
        self.brokers = [AlpacaBroker(lambda m, i=i: self.outbox.append((i, m))) for i in range(consumers)]
        self.seq = 0

    def _route(self, consumer: int, msg: object) -> None:
        ups = self.brokers[consumer].on_message(msg)
        self.updates[consumer].extend(ups)
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self.routed:
            self.routed.notify_all()

    async def __aenter__(self) -> Harness:
        await self.gw.start()
        await asyncio.wait_for(self.gw.connected.wait(), 15)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.gw.close()

    async def pump(self) -> None:
        """Deliver what the brokers sent to the gateway, in order (the pipe's job in the processes)."""
        while self.outbox:
            i, msg = self.outbox.pop(0)
            if isinstance(msg, Submit):
                await self.gw.submit(i, msg.order)
            elif isinstance(msg, Cancel):
                await self.gw.cancel(i, msg.client_order_id, msg.reason)
            elif isinstance(msg, Replace):
                await self.gw.replace(i, msg.client_order_id, msg.new_id, msg.changes)

    async def place(self, consumer: int, order: Order, strategy: str = "s") -> Order:
        self.seq += 1
        order.strategy = strategy
        order.client_order_id = f"{order_prefix(self.batch, consumer)}{self.seq}"
        self.brokers[consumer].submit(order, None, time.time_ns())
        await self.pump()
        return order

    def fills(self, consumer: int) -> list[Fill]:
        return [u for u in self.updates[consumer] if isinstance(u, Fill)]

    def status(self, cid: str) -> str:
        return self.gw.orders[cid].order.status


def per_client_id(ex: LocalExchange, batch: str) -> Counter:
    return Counter(
        o["client_order_id"] for o in exchange_orders(ex) if o["client_order_id"].startswith(batch)
    )


async def test_market_limit_bracket_two_consumers_route_to_their_owner(exchange):
    async with Harness(exchange) as h:
        m = await h.place(0, Order("AAA", "buy", 3))
        lim = await h.place(1, Order("BBB", "buy", 2, type="limit", limit_price=10_000.0))  # marketable
        far = await h.place(1, Order("CCC", "buy", 1, type="limit", limit_price=0.01))  # rests
        br = await h.place(0, Order("BBB", "buy", 4, stop=1.0, target=100_000.0))
        await until(
            h,
            lambda: all(h.status(o.client_order_id) == "filled" for o in (m, lim, br)),
            "three orders filled",
        )
        assert h.status(far.client_order_id) == "accepted"
        legs = h.gw.orders[br.client_order_id].order.legs
        assert sorted(legs) == sorted([br.client_order_id + "-sl", br.client_order_id + "-tp"])
        await until(h, lambda: all(h.status(cid) == "accepted" for cid in legs), "bracket legs active")
        # each consumer sees its own orders only
        for i in (0, 1):
            cids = {
                u.order.client_order_id if isinstance(u, OrderUpdate) else u.client_order_id
                for u in h.updates[i]
            }
            assert cids and all(consumer_of(c) == i for c in cids), cids
        # what liu holds equals what the exchange reports, order by order
        ex = {o["client_order_id"]: o for o in exchange_orders(exchange)}
        for o in (m, lim, br):
            got = h.gw.orders[o.client_order_id].order
            assert got.filled_qty == float(ex[o.client_order_id]["filled_qty"])
            assert got.avg_fill_price == pytest.approx(float(ex[o.client_order_id]["filled_avg_price"]))
        assert sum(f.qty for f in h.fills(0) if f.symbol == "AAA") == 3
        assert h.brokers[0].position("s", "AAA").qty == 3
        assert h.brokers[1].position("s", "BBB").qty == 2
        # replace the resting order, then cancel its replacement
        h.seq += 1
        new_id = f"{order_prefix(h.batch, 1)}{h.seq}"
        assert h.brokers[1].replace(far.client_order_id, time.time_ns(), new_id, limit_price=0.02)
        await h.pump()
        await until(
            h,
            lambda: h.status(far.client_order_id) == "replaced" and h.status(new_id) == "accepted",
            "replace",
        )
        assert h.gw.orders[far.client_order_id].order.replaced_by == new_id
        assert [o.client_order_id for o in h.brokers[1].open_orders(symbol="CCC")] == [new_id]
        h.brokers[1].cancel(new_id, time.time_ns())
        await h.pump()
        await until(h, lambda: h.status(new_id) == "cancelled", "cancel reported")
        assert not h.brokers[1].open_orders(symbol="CCC")
        # Alpaca's account figures reach every consumer (risk manager, ctx.account)
        acct = TradingClient(
            KEY, SECRET, raw_data=True, url_override=exchange.server.trading_url
        ).get_account()
        await until(
            h, lambda: all(b.equity > 0 and b.account_ts for b in h.brokers), "account figures routed"
        )
        assert h.brokers[0].cash == pytest.approx(float(acct["cash"]), rel=1e-3)
        assert per_client_id(exchange, h.batch).most_common(1)[0][1] == 1


@pytest.mark.parametrize(
    "fault",
    [
        {"delay_post": {"seconds": 2.5, "times": 1}},  # answer later than the client's 1 s timeout
        {"drop_post": {"times": 1}},  # order created, connection cut without an answer
        {"fail_post": {"status": 504, "times": 1}},  # order created, then a gateway timeout
        {"fail_post": {"status": 429, "times": 2}},  # refused twice before creating anything
        {"fail_post": {"status": 500, "times": 1}},
        {"fail_post": {"status": 504, "times": 1}, "alpaca_retries": True},  # its re-POST: 422 duplicate
        {
            "fail_post": {"status": 429, "times": 1},
            "alpaca_retries": True,
            "lookup": False,
        },  # its retry creates it
    ],
    ids=["delay", "drop", "504-after-create", "429", "500", "504-alpaca-py-retries", "429-alpaca-py-retries"],
)
async def test_no_duplicate_order_whatever_the_post_answer(exchange, fault):
    fault = dict(fault)
    retries = fault.pop("alpaca_retries", False)
    lookup = fault.pop("lookup", True)
    async with Harness(exchange, timeout=1.0, alpaca_retries=retries) as h:
        posts_before = h.gw.counts["posts"]
        faults(exchange, **fault)
        try:
            o = await h.place(0, Order("AAA", "buy", 2))
        finally:
            faults(exchange, clear=True)
        await until(h, lambda: h.status(o.client_order_id) == "filled", "the order filled")
        assert h.gw.counts["posts"] > posts_before + 0  # at least the one POST
        assert (h.gw.counts["lookups"] >= 1) == lookup  # an unclear answer is resolved by client id
        counts = per_client_id(exchange, h.batch)
        assert counts == {o.client_order_id: 1}
        assert h.brokers[0].position("s", "AAA").qty == 2
        assert sum(f.qty for f in h.fills(0)) == 2


async def test_stream_dropped_mid_fill_fills_made_up_after_reconnect(exchange):
    async with Harness(exchange) as h:
        sweeps = h.gw.counts["sweeps"]
        h.gw.connected.clear()
        assert faults(exchange, drop_trade_stream=True)["dropped_streams"] >= 1
        orders = [await h.place(0, Order("CCC", "buy", 1)) for _ in range(3)]  # fill while disconnected
        await asyncio.wait_for(h.gw.connected.wait(), 20)  # reconnected, swept
        assert h.gw.counts["sweeps"] > sweeps
        await until(h, lambda: all(h.status(o.client_order_id) == "filled" for o in orders), "fills made up")
        assert h.brokers[0].position("s", "CCC").qty == 3
        ex = {o["client_order_id"]: o for o in exchange_orders(exchange)}
        assert sum(f.qty for f in h.fills(0)) == sum(
            float(ex[o.client_order_id]["filled_qty"]) for o in orders
        )
        assert per_client_id(exchange, h.batch) == {o.client_order_id: 1 for o in orders}


async def test_rejections_reach_the_strategy_with_alpacas_message(exchange, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    async with Harness(exchange) as h:
        faults(exchange, insufficient_buying_power=True)
        try:
            a = await h.place(0, Order("AAA", "buy", 1))
        finally:
            faults(exchange, clear=True)
        faults(exchange, reject_symbols=["BBB"])
        try:
            b = await h.place(0, Order("BBB", "buy", 1))
        finally:
            faults(exchange, clear=True)
        c = await h.place(0, Order("NOPE", "buy", 1))
        d = await h.place(0, Order("AAA", "buy", 1, type="trailing_stop", trail_percent=1.0, stop=1.0))
        got = {u.order.client_order_id: u.order for u in h.updates[0] if isinstance(u, OrderUpdate)}
        assert got[a.client_order_id].status == "rejected"
        assert got[a.client_order_id].reason == "403 insufficient buying power"
        assert got[b.client_order_id].reason == '422 asset "BBB" is not tradable'
        assert got[c.client_order_id].reason == '422 asset "NOPE" not found'
        assert (
            got[d.client_order_id].reason
            == "422 oto orders must be market or limit orders, not trailing_stop"
        )
        assert per_client_id(exchange, h.batch) == Counter()
    out = capsys.readouterr()
    for text in (caplog.text, out.out, out.err, repr(h.gw.orders)):
        assert KEY not in text and SECRET not in text


async def test_journal_row_written_before_the_send_and_updated_after(exchange, pg_dsn):
    journal = await PgJournal.open(pg_dsn)
    h = Harness(exchange)
    h.gw.journal = journal
    async with h:
        faults(exchange, delay_post={"seconds": 1.5, "times": 1})
        h.seq += 1
        o = Order("BBB", "buy", 1, stop=1.0, target=1_000_000.0, strategy="s")
        o.client_order_id = f"{order_prefix(h.batch, 1)}{h.seq}"
        h.brokers[1].submit(o, None, time.time_ns())
        _, msg = h.outbox.pop()
        task = asyncio.ensure_future(h.gw.submit(1, msg.order))
        conn = await asyncpg.connect(pg_dsn)
        try:
            # while the POST waits for its answer, the row is there: owner, strategy, request; no broker id
            row = await eventually_async(
                lambda: conn.fetchrow(
                    "select * from broker_orders where client_order_id = $1", o.client_order_id
                ),
                10,
                "the journal row",
            )
            assert not task.done()  # the POST's answer is still on its way
            assert (row["consumer"], row["strategy"], row["symbol"]) == (1, "s", "BBB")
            assert json.loads(row["request"])["order_class"] == "bracket"
            await task
            await until(h, lambda: h.status(o.client_order_id) == "filled", "the entry filled")

            async def updated():
                r = await conn.fetchrow(
                    "select * from broker_orders where client_order_id = $1", o.client_order_id
                )
                return r if r["status"] == "filled" else None

            row = await eventually_async(updated, 10, "the journal row updated")
            assert row["broker_id"] == h.gw.orders[o.client_order_id].broker_id and row["filled_qty"] == 1
            legs = await conn.fetch("select leg from broker_orders where parent_id = $1", o.client_order_id)
            assert sorted(r["leg"] for r in legs) == ["stop_loss", "take_profit"]
        finally:
            faults(exchange, clear=True)
            await conn.close()
