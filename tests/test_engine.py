"""The runner factory and the consumer around it: the account slot, the risk manager, the counters."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from rich.console import Console

from liu.brokers.account import Account
from liu.consumer import REPORTED_COUNTERS, Consumer, ConsumerSetup
from liu.engine import build_runner
from liu.plan import TradePlan, parse_plan
from liu.progress import progress_table, report_counts, summary_tables
from liu.stats import RUNNER_COUNTERS, SharedStats
from tests.helpers import SCRIPT, bar


def script_plan(tmp_path: Path, orders: list, risk: str = "") -> TradePlan:
    (tmp_path / "script.py").write_text(SCRIPT)
    text = f"""
[source]
bars = "stream"
[broker]
cash = 10000
[risk]
{risk}
[[strategies]]
name = "script"
file = "script.py"
class = "Script"
[strategies.config]
orders = {json.dumps(orders)}
"""
    return parse_plan(tomllib.loads(text), "tradeplan.toml", tmp_path)


async def test_the_consumer_publishes_and_reports_every_runner_counter_and_each_risk_refusal(tmp_path):
    # Bar 0: 5 shares (500) pass, 50 shares (5,000) break max_order_notional; bar 1: 5 more pass.
    plan = script_plan(
        tmp_path, [[0, "buy", 5, 0], [0, "buy", 50, 0], [1, "buy", 5, 0]], "max_order_notional = 1000"
    )
    stats = SharedStats(2)
    account = Account(plan.broker.cash, slots=2, strategies=1)
    runner = build_runner(plan, account, {}, order_prefix="t-", slot=1)
    consumer = Consumer(ConsumerSetup(1, plan, "batch", {}, None, account, stats), runner)
    runner.assign(["X"])
    await runner.start()
    await consumer._batch([bar(i, 100, 100, 100, 100) for i in range(3)])

    counts = runner.counts
    assert (counts["orders"], counts["rejected"], counts["fills"]) == (3, 1, 2)
    assert {name: stats.consumer(1)[name] for name in RUNNER_COUNTERS} == counts  # every counter, live
    report = consumer.report()
    assert {name: getattr(report, name) for name in REPORTED_COUNTERS} == {
        n: counts[n] for n in REPORTED_COUNTERS
    }
    assert report_counts(report) == counts
    assert report.risk_refused == {"max_order_notional": 1}

    console = Console(width=200, record=True)
    console.print(progress_table(stats, 0.0, 1.0, 10.0))
    for table in summary_tables([report], None):
        console.print(table)
    text = console.export_text()
    for name in RUNNER_COUNTERS:
        assert name.replace("_", " ") in text or name == "strategy_errors"
    assert "risk refusals" in text and "max_order_notional" in text


def test_each_consumer_gets_its_own_account_slot_and_the_plans_risk_limits(tmp_path):
    plan = script_plan(tmp_path, [], "max_open_orders = 3")
    account = Account(1000.0, slots=3, strategies=1)
    runner = build_runner(plan, account, {}, order_prefix="t-", slot=2)
    assert runner.risk is not None
    assert (runner.risk.slot, runner.risk.plan.max_open_orders, runner.risk.strategy_index) == (
        2,
        3,
        {"script": 0},
    )
    with pytest.raises(ValueError, match="slot 3, but the account has 3"):
        build_runner(plan, account, {}, order_prefix="t-", slot=3)
    per_minute = script_plan(tmp_path, [], "max_orders_per_minute = 3")
    with pytest.raises(ValueError, match="counts orders of 0 strategies, the plan has 1"):
        build_runner(per_minute, Account(1000.0), {}, order_prefix="t-")
