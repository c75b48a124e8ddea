"""The live dashboard on real parts in this process: /metrics from the shared counters, the buttons through
the control channel, the batch's rows in the sections, the event stream, secrets kept off the page."""

from __future__ import annotations

import asyncio
import json
import logging

import requests
from prometheus_client.parser import text_string_to_metric_families

from liu.brokers.account import HALT_MANUAL, HALT_NONE
from liu.events import ConsumerReport
from liu.stats import RUNNER_COUNTERS
from tests.dashboard.conftest import TOKEN, LiveParts, write_batch
from tests.helpers import eventually_async

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _get(live: LiveParts, path: str) -> requests.Response:
    r = requests.get(live.base + path, headers=AUTH, timeout=30)
    r.raise_for_status()
    return r


def _metrics(live: LiveParts) -> dict[tuple[str, tuple], float]:
    text = _get(live, "/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_read_the_same_counters_as_the_terminal(live: LiveParts) -> None:
    stats, a = live.stats, live.stats.array
    for i in range(2):
        for k, name in enumerate(("sent", *RUNNER_COUNTERS)):
            a[stats.consumer_index(i, name)] = 1000 * (i + 1) + k
        a[stats.consumer_index(i, "lag_us")] = 2500 * (i + 1)
    for k, name in enumerate(("frames", "events", "unroutable", "reconnects")):
        a[stats.producer_index(name)] = 10 + k
    a[stats.producer_index("connected")] = 1
    live.account.apply(-1234.5, 0.0)
    live.account.publish(0, 2000.0, 2500.0, 3)
    live.account.halt(HALT_MANUAL)

    m = await asyncio.to_thread(_metrics, live)
    for i in range(2):
        c = stats.consumer(i)
        label = (("consumer", str(i)),)
        assert m[("liu_events_received_total", label)] == c["received"]
        assert m[("liu_events_processed_total", label)] == c["processed"]
        assert m[("liu_events_sent_total", label)] == c["sent"]
        assert m[("liu_fills_total", label)] == c["fills"]
        assert m[("liu_strategy_errors_total", label)] == c["strategy_errors"]
        assert m[("liu_consumer_lag_seconds", label)] == c["lag_us"] / 1e6
        assert m[("liu_consumer_queue_events", label)] == c["sent"] - c["received"] - c["lost"]
        for reason in ("stale", "malformed", "lost"):
            assert m[("liu_events_dropped_total", (("consumer", str(i)), ("reason", reason)))] == c[reason]
        for status, counter in (("placed", "orders"), ("rejected", "rejected"), ("cancelled", "cancelled")):
            assert m[("liu_orders_total", (("consumer", str(i)), ("status", status)))] == c[counter]
    p = stats.producer()
    assert m[("liu_events_dropped_total", (("consumer", ""), ("reason", "unroutable")))] == p["unroutable"]
    assert m[("liu_producer_events_total", ())] == p["events"]
    assert m[("liu_producer_reconnects_total", ())] == p["reconnects"]
    assert m[("liu_producer_connected", ())] == 1
    view = live.account.view()
    assert m[("liu_cash", ())] == view.cash == 100_000 - 1234.5
    assert m[("liu_equity", ())] == view.equity == 100_000 - 1234.5 + 2000
    assert m[("liu_gross_exposure", ())] == 2500
    assert m[("liu_open_orders", ())] == 3
    assert m[("liu_halted", (("reason", "manual"),))] == 1
    assert m[("liu_session_ended", ())] == 0


async def test_buttons_go_through_the_control_channel_and_show_its_answer(live: LiveParts) -> None:
    def act(body: dict) -> dict:
        r = requests.post(live.base + "/api/control", json=body, headers=AUTH, timeout=30)
        return {"status": r.status_code, **r.json()}

    halted = await asyncio.to_thread(act, {"cmd": "halt"})
    assert halted["ok"] and halted["message"].startswith("halted:")
    assert live.account.halted == HALT_MANUAL
    again = await asyncio.to_thread(act, {"cmd": "halt"})
    assert again["message"].startswith("already halted (manual)")
    flat = await asyncio.to_thread(act, {"cmd": "flatten"})
    assert flat["ok"] and live.account.flatten_generation == 1
    resumed = await asyncio.to_thread(act, {"cmd": "resume"})
    assert resumed["ok"] and live.account.halted == HALT_NONE
    # The page's figures follow at once (the action waits for a snapshot begun after it), every time.
    state = await asyncio.to_thread(lambda: _get(live, "/api/state").json())
    assert state["account"]["flatten_generation"] == 1 and not state["account"]["halted"]
    for _ in range(10):
        for cmd, halted in (("halt", True), ("resume", False)):
            assert (await asyncio.to_thread(act, {"cmd": cmd}))["ok"]
            state = await asyncio.to_thread(lambda: _get(live, "/api/state").json())
            assert bool(state["account"]["halted"]) is halted, (cmd, state["account"])
    # This control server has no cancel route (the daemon's does: liu.cancel); its answer is shown as is.
    cancel = await asyncio.to_thread(act, {"cmd": "cancel", "client_order_id": "x-0-1"})
    assert not cancel["ok"] and "not supported" in cancel["message"]
    for bad in ({"cmd": "status"}, {"cmd": "rm -rf"}, {"cmd": "cancel"}, {}):
        refused = await asyncio.to_thread(act, bad)
        assert refused["status"] == 400 and not refused["ok"]


async def test_sections_show_the_batch_rows_escaped(live: LiveParts, pg_dsn: str) -> None:
    await write_batch(pg_dsn, live.session.batch_id)

    def state() -> dict:
        return _get(live, "/api/state").json()

    s = await eventually_async(
        lambda: asyncio.to_thread(lambda: (st := state())["fill_count"] == 3 and st),
        30,
        "the three fills on the page",
    )
    aaa = next(p for p in s["positions"] if p["symbol"] == "AAA")
    assert (aaa["qty"], aaa["avg_price"], aaa["mark"], aaa["unrealized"]) == (20, 105.0, 110.0, 100.0)
    assert [o["client_order_id"] for o in s["orders"]] == ["o4"]
    assert s["open_orders_total"] == 1
    s = await eventually_async(
        lambda: asyncio.to_thread(lambda: (st := state())["picks"] and st), 30, "the picks (every 5 ticks)"
    )
    assert [(p["scanner"], p["symbols"]) for p in s["picks"]] == [("volume", ["AAA", "BBB"])]
    assert [(m["model"], m["version"], m["scores"], m["per_minute"]) for m in s["models"]] == [
        ("sma_rsi", 3, 2, 2)
    ]
    page = await asyncio.to_thread(lambda: _get(live, "/").text)
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<img src=x" not in page
    assert 'data-order="o4"' in page  # the cancel button of the open order


async def test_the_event_stream_sends_the_sections(live: LiveParts) -> None:
    live.stats.array[live.stats.producer_index("events")] = 4321

    def first_event() -> dict:
        with requests.get(live.base + "/events", headers=AUTH, stream=True, timeout=30) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            kind = None
            for line in r.iter_lines(decode_unicode=True):
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind == "state":
                    return json.loads(line[6:])
        raise AssertionError("the stream ended without a state event")

    event = await asyncio.to_thread(first_event)
    assert set(event["html"]) >= {
        "status",
        "account",
        "positions",
        "orders",
        "fills",
        "consumers",
        "log-rows",
    }
    assert '<b id="fig-events">4,321</b>' in event["html"]["status"]
    assert event["phase"] == "starting"


async def test_secrets_in_log_lines_never_reach_the_page(live: LiveParts, pg_dsn: str) -> None:
    logging.getLogger("liu.somewhere").warning("a careless line with %s inside", TOKEN)
    live.session.reports[0] = ConsumerReport(0, risk_refused={"halted": 3})
    s = await asyncio.to_thread(lambda: _get(live, "/api/state").json())
    text = json.dumps(s)
    assert TOKEN not in text
    assert any("a careless line with *** inside" == r["message"] for r in s["log"])
    assert s["risk"]["refused"] == {"halted": 3}
    page = await asyncio.to_thread(lambda: _get(live, "/").text)
    assert TOKEN not in page and "a careless line with *** inside" in page
