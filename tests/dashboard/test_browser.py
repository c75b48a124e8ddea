"""A real headless Chromium (Debian's chromium + chromedriver, driven by Selenium) on the dashboard of a real
`trader` session on the simulator: the figures move, positions and fills appear, Halt (click, confirm)
stops new entries in the database, and /metrics equals the end-of-session summary.

One session serves the module's tests, in file order (each also passes alone): starting `trader` and a
browser costs seconds on a shared machine. Screenshots go to the test's tmp dir and to $LIU_ARTIFACTS.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from liu.commands import CANCEL_REASON
from liu.stats import RUNNER_COUNTERS
from tests.helpers import ORDER_SEQ, STRATEGY, eventually, kill_tree, trader_command

pytestmark = [pytest.mark.slow, pytest.mark.db]

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
PASSWORD = "dsn-secret-pw-8c1f"  # the embedded server trusts local connections: the password is only carried
HALT_REASON = "risk halted: trading halted (manual)"  # liu.risk's reason for an entry refused by a halt


@dataclass
class Run:
    """The running session as the tests see it."""

    proc: subprocess.Popen
    driver: webdriver.Chrome
    base: str
    token: str
    dsn: str
    tmp: Path
    batch_id: str
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)

    def wait(self, check, what: str, timeout: float = 60):
        """Wait for `check(driver)` (Selenium polls it); fail naming `what`."""
        return WebDriverWait(
            self.driver, timeout, ignored_exceptions=(StaleElementReferenceException,)
        ).until(check, message=f"{what}: not seen within {timeout:g}s")

    def text(self, element_id: str) -> str:
        """The element's text; sections are swapped every second, so a stale element is looked up again."""
        for _ in range(20):
            try:
                return self.driver.find_element(By.ID, element_id).text
            except StaleElementReferenceException:
                continue
        raise AssertionError(f"#{element_id} kept going stale")

    def shot(self, name: str) -> Path:
        path = self.tmp / name
        self.driver.save_screenshot(str(path))
        if os.environ.get("LIU_ARTIFACTS"):
            out = Path(os.environ["LIU_ARTIFACTS"])
            out.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, out / name)
        return path

    def api(self, path: str) -> requests.Response:
        return requests.get(self.base + path, headers={"Authorization": f"Bearer {self.token}"}, timeout=30)

    def rows(self, sql: str, *args):
        async def go():
            conn = await asyncpg.connect(self.dsn)
            try:
                return await conn.fetch(sql, *args)
            finally:
                await conn.close()

        return asyncio.run(go())


def _read(stream, lines: list[str], into: queue.Queue | None) -> None:
    for line in stream:
        lines.append(line)
        if into is not None:
            into.put(line)
    if into is not None:
        into.put(None)


def _chrome() -> webdriver.Chrome:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    assert not missing, f"{missing} missing: apt-get install chromium chromium-driver (.ci/run does)"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,2600"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, pg_dsn_module: str) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("dashboard-live")
    dsn = pg_dsn_module.replace("postgres@", f"postgres:{PASSWORD}@", 1)
    assert PASSWORD in dsn
    plan = f"""
[session]
duration = "5m"
speed = 240
[source]
kind = "sim"
symbols = 20
rate = 2000
[database]
dsn = "{dsn}"
[consumers]
count = 1
stale_after = "10m"
[dashboard]
linger = "5m"
{STRATEGY}
"""
    (tmp / "tradeplan.toml").write_text(plan)
    proc = subprocess.Popen(
        trader_command("--plan", str(tmp / "tradeplan.toml"), "--summary-json", str(tmp / "summary.json")),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp,
    )
    stdout: list[str] = []
    stderr: list[str] = []
    lines: queue.Queue = queue.Queue()
    readers = [
        threading.Thread(target=_read, args=(proc.stdout, stdout, lines), daemon=True),
        threading.Thread(target=_read, args=(proc.stderr, stderr, None), daemon=True),
    ]
    for t in readers:
        t.start()
    driver = None
    try:
        found: dict[str, str] = {}
        deadline = time.monotonic() + 120
        while "url" not in found:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, (
                "trader exited before printing the dashboard's address:\n" + "".join(stderr)[-3000:]
            )
            if m := re.search(r"batch (\S+): ", line):
                found["batch"] = m.group(1)
            if m := re.search(
                r"dashboard: (http://127\.0\.0\.1:\d+)/\?token=([A-Za-z0-9_-]+)$", line.strip()
            ):
                found["url"], found["base"], found["token"] = m.group(0).split(": ", 1)[1], *m.groups()
        driver = _chrome()
        driver.get(found["url"])
        yield Run(proc, driver, found["base"], found["token"], dsn, tmp, found["batch"], stdout, stderr)
    finally:
        if driver is not None:
            driver.quit()
        if proc.poll() is None:
            kill_tree(proc.pid)
        proc.wait()
        for t in readers:
            t.join(10)


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def test_the_page_shows_the_session_live(run: Run) -> None:
    d = run.driver
    assert d.current_url == run.base + "/"  # the token left the address bar
    run.wait(lambda d: run.text("link-state") == "live", "the event stream connected")
    first = _number(run.text("fig-events"))
    market = run.text("fig-market-time")
    run.wait(lambda d: _number(run.text("fig-events")) > first + 1000, "the event count moving")
    run.wait(lambda d: run.text("fig-market-time") != market, "the market clock moving")
    run.wait(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#positions tbody tr:not(.empty)"),
        "a position",
        timeout=90,
    )
    run.wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#fills tbody tr:not(.empty)"), "a fill")
    run.wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#equity-chart .main-svg"), "the equity chart")
    assert d.find_element(By.ID, "batch-id").text == run.batch_id
    assert re.fullmatch(r"[\d,]+\.\d\d", run.text("fig-equity"))
    assert run.text("fig-risk-state") == "trading"
    # The log tail, filtered by level in the page.
    run.wait(lambda d: d.find_elements(By.CSS_SELECTOR, '#log-rows tr[data-level="20"]'), "an INFO log line")
    Select(d.find_element(By.ID, "log-level")).select_by_value("30")
    levels = d.execute_script(
        "return [...document.querySelectorAll('#log-rows tr[data-level]')]"
        ".map(r => [Number(r.dataset.level), r.hidden])"
    )
    assert levels and all(hidden == (level < 30) for level, hidden in levels)
    Select(d.find_element(By.ID, "log-level")).select_by_value("20")
    shot = run.shot("dashboard-live.png")
    assert shot.stat().st_size > 20_000
    source = d.page_source
    assert run.token not in source and PASSWORD not in source


def test_cancel_from_the_page_cancels_the_order_in_its_consumer(run: Run) -> None:
    d = run.driver
    for _attempt in range(20):  # the open orders are stop legs: one may fill before the cancel reaches it
        order = run.wait(  # sections are redrawn every second: a stale button is looked up again
            lambda d: (
                (b := d.find_elements(By.CSS_SELECTOR, '#orders button[data-cmd="cancel"]'))
                and b[0].get_attribute("data-order")
            ),
            "an open order",
        )
        d.execute_script("document.getElementById('result').textContent = ''")

        def click(d, o=order) -> str:  # the order may fill and leave the table before the click lands
            found = d.find_elements(By.CSS_SELECTOR, f'button[data-order="{o}"]')
            if not found:
                return "gone"
            found[0].click()
            return "clicked"

        if run.wait(click, "the cancel button clicked or its order gone") == "gone":
            continue
        assert order in run.text("confirm-text")
        d.find_element(By.ID, "confirm-yes").click()
        result = run.wait(
            lambda d: d.find_element(By.ID, "result").text or None, "the cancel's answer", timeout=30
        )
        if d.find_element(By.ID, "result").get_attribute("data-ok") == "1":
            break
        assert f"order {order} is not open" in result, result  # raced with its fill: the only other answer
    else:
        raise AssertionError("twenty cancels from the page each lost the race with a fill")

    def stored() -> list:  # the consumer's writer flushes in batches: wait for the row to show it
        rows = run.rows("SELECT status, reason FROM orders WHERE client_order_id = $1", order)
        return [(r["status"], r["reason"]) for r in rows if r["status"] != "accepted"]

    assert eventually(stored, 30, f"order {order} stored as cancelled") == [("cancelled", CANCEL_REASON)]


def test_halt_button_stops_new_entries(run: Run) -> None:
    d = run.driver
    run.wait(lambda d: run.text("fig-risk-state") == "trading", "trading before the halt")
    d.find_element(By.CSS_SELECTOR, 'header button[data-cmd="halt"]').click()
    assert run.text("confirm-text").startswith("Halt trading?")
    d.find_element(By.ID, "confirm-yes").click()
    result = run.wait(lambda d: run.text("result") or None, "the halt's answer")
    assert result.startswith("halted: orders that open or grow a position are refused"), result
    run.wait(lambda d: run.text("fig-risk-state") == "halted (manual)", "the risk state on the page")
    run.shot("dashboard-halted.png")

    def refused() -> list:
        return run.rows(
            f"SELECT {ORDER_SEQ} AS seq FROM orders WHERE batch_id = $1 AND status = 'rejected' "
            "AND reason LIKE $2 ORDER BY seq",
            run.batch_id,
            HALT_REASON + "%",
        )

    found = run.wait(lambda d: len(rows := refused()) >= 3 and rows, "three entries refused for the halt", 90)
    first_refusal = found[0]["seq"]
    # One consumer, whose order ids number its orders as placed: every entry placed from the first refusal on
    # was checked after the halt. None of them may open or grow a position (legs protect what is held).
    fills = run.rows(
        f"SELECT t.symbol, t.side, t.qty, {ORDER_SEQ} AS seq, o.parent_id FROM trades t "
        "JOIN orders o USING (client_order_id) WHERE t.batch_id = $1 ORDER BY t.filled_at, t.id",
        run.batch_id,
    )
    held: dict[str, float] = {}
    opening_before = opening_after = 0
    for f in fills:
        before = held.get(f["symbol"], 0.0)
        after = before + (f["qty"] if f["side"] == "buy" else -f["qty"])
        held[f["symbol"]] = after
        if abs(after) > abs(before) + 1e-9 and f["parent_id"] is None:
            if f["seq"] < first_refusal:
                opening_before += 1
            else:
                opening_after += 1
    assert opening_before > 0, "the strategy opened positions before the halt"
    assert opening_after == 0, "an entry submitted after the halt opened or grew a position"


def _metrics(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_equal_the_end_of_session_summary_and_no_secret_leaks(run: Run) -> None:
    run.proc.send_signal(signal.SIGINT)  # ends the session; the dashboard lingers ([dashboard] linger)
    run.wait(lambda d: run.text("fig-phase").startswith("ended"), "the page saying the session ended", 120)
    assert run.api("/api/state").json()["session"]["phase"] == "ended"
    metrics = _metrics(run.api("/metrics").text)
    run.shot("dashboard-ended.png")
    source = run.driver.page_source
    run.proc.send_signal(signal.SIGINT)  # ends the linger
    assert run.proc.wait(timeout=60) == 0, "".join(run.stderr)[-3000:]
    summary = json.loads((run.tmp / "summary.json").read_text())
    assert summary["batch_id"] == run.batch_id and summary["end_reason"] == "SIGINT"
    assert metrics[("liu_session_ended", ())] == 1
    assert metrics[("liu_producer_events_total", ())] == summary["producer"]["events"]
    assert metrics[("liu_producer_reconnects_total", ())] == summary["producer"]["reconnects"]
    for c in summary["consumers"]:
        label = (("consumer", str(c["index"])),)
        counts = {name: (c["fills_total"] if name == "fills" else c[name]) for name in RUNNER_COUNTERS}
        assert metrics[("liu_events_received_total", label)] == counts["received"] > 0
        assert metrics[("liu_events_processed_total", label)] == counts["processed"]
        assert metrics[("liu_events_sent_total", label)] == summary["sent_per_consumer"][c["index"]]
        assert metrics[("liu_fills_total", label)] == counts["fills"] > 0
        assert metrics[("liu_strategy_errors_total", label)] == counts["strategy_errors"]
        for reason in ("stale", "malformed"):
            key = ("liu_events_dropped_total", (("consumer", str(c["index"])), ("reason", reason)))
            assert metrics[key] == counts[reason]
        for status, name in (("placed", "orders"), ("rejected", "rejected"), ("cancelled", "cancelled")):
            key = ("liu_orders_total", (("consumer", str(c["index"])), ("status", status)))
            assert metrics[key] == counts[name]
        assert counts["rejected"] >= 3  # the halt's refusals are in there
    # The token is printed once, on stdout, in the address; never logged. The DSN password never shows.
    out, err = "".join(run.stdout), "".join(run.stderr)
    assert out.count(run.token) == 1
    assert run.token not in err
    assert PASSWORD not in out + err + json.dumps(summary) + source
