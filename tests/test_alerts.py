"""Alerts: log lines mapped to kinds, grouping, real sends to a local JSON webhook, and a session that an
unreachable alert URL does not disturb.

The webhook receiver is a real HTTP server on 127.0.0.1 started by the test; apprise posts to it with
its own `json://` plugin, as it would to any JSON webhook.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from liu.alerts import AlertHandler, Alerts, Grouper, SessionAlerts, classify, shown_url
from liu.brokers.account import HALT_MANUAL, Account
from liu.errors import ConfigError
from liu.plan import AlertsPlan, parse_plan
from tests.helpers import check_session, run_trader


def rec(name: str, level: int, msg: str, *args) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


W, E = logging.WARNING, logging.ERROR


@pytest.mark.parametrize(
    ("record", "kind", "text"),
    [
        (
            rec(
                "liu.orders",
                W,
                "order %s %s %s x%g by %s rejected: %s",
                "ab-1-7",
                "sell",
                "SIM029",
                5,
                "s",
                "SIM029 is not shortable",
            ),
            "rejection",
            "order rejected: SIM029 is not shortable (s: sell SIM029)",
        ),
        (
            rec(
                "liu.risk",
                W,
                "risk %s; trading halted until the next New York day",
                "max_daily_loss: day P&L -2,100.00",
            ),
            "risk",
            None,
        ),
        (rec("liu.orders", W, "flatten: open orders cancelled, positions closed at market"), "risk", None),
        (
            rec("liu.producer", W, "market data connection to %s lost (%s); reconnecting", "ws://x", "EOF"),
            "connection",
            None,
        ),
        (
            rec(
                "liu.producer",
                W,
                "market data reconnected after a %.2fs gap; resubscribed %d symbols",
                1.5,
                3,
            ),
            "connection",
            None,
        ),
        (rec("liu.daemon", E, "consumer %d died (exit code %s); the session ends", 1, -9), "consumer", None),
        (rec("liu.daemon", W, "consumer %d restarted (pid %d) after %.1fs", 1, 4242, 0.5), "consumer", None),
        (rec("liu.daemon", W, "producer restarted (pid %d) after %.1fs", 4242, 0.6), "consumer", None),
        (
            rec("liu.daemon", E, "the Alpaca gateway died (exit code %s); trading halted", -9),
            "consumer",
            None,
        ),
        (
            rec(
                "liu.store.writer",
                E,
                "%s: cannot write %d rows to %s",
                "trade writer",
                10,
                "postgresql://u:***@h/db",
            ),
            "database",
            None,
        ),
        (
            rec(
                "liu.store.writer",
                W,
                "%s: database writes work again after %d failed flushes",
                "trade writer",
                3,
            ),
            "database",
            None,
        ),
        (
            rec(
                "liu.runner",
                E,
                "strategy %s raised in %s for symbol %s (error %d):\n%s",
                "boom",
                "on_bar",
                "SIM001",
                1,
                "Traceback ...\nZeroDivisionError: x",
            ),
            "strategy",
            None,
        ),
        (rec("liu.scanner", W, "scanner %s raised; it picked nothing this time", "vol"), "strategy", None),
        (rec("liu.somewhere", E, "something broke"), "error", None),
        (rec("tests.user_code", E, "user error"), "error", None),
    ],
)
def test_known_log_lines_become_alerts_of_their_kind(record, kind, text) -> None:
    found = classify(record)
    assert found is not None and found[0] == kind
    assert found[1] == (text or record.getMessage())


@pytest.mark.parametrize(
    "record",
    [
        rec("liu.consumer", logging.INFO, "first event processed (25 in the first batch)"),
        rec("liu.runner", W, "dropped stale trade for SIM001: 31.0s old"),  # a warning no rule names
        rec("apprise", E, "A Connection error occurred sending JSON notification"),
        rec("liu.alerts", W, "alert %r could not be sent to %s", "t", "json://h/…"),  # never alert on alerts
    ],
)
def test_other_records_are_not_alerts(record) -> None:
    assert classify(record) is None


def test_grouping_sends_the_first_counts_the_rest_and_summarises_once_per_window() -> None:
    g = Grouper(window=60, burst=3)
    text = "order rejected: SIM029 is not shortable (s: sell SIM029)"
    sent = [g.add("rejection", "warning", text, now=i * 0.5) for i in range(40)]
    assert [len(s) for s in sent] == [1] + [0] * 39
    assert sent[0][0].body == text and sent[0][0].level == "warning"
    assert g.due(now=30) == []
    (summary,) = g.due(now=61)
    assert summary.title == f"liu warning: 40× {text}"
    assert summary.body.splitlines()[0] == f"40× {text}"
    assert g.due(now=200, force=True) == []  # nothing left


def test_a_storm_of_distinct_alerts_sends_the_burst_then_one_summary_per_window() -> None:
    g = Grouper(window=60, burst=3)
    sent = []
    for i in range(500):
        sent += g.add("strategy", "error", f"strategy s raised for symbol S{i:03d}X", now=i * 0.01)
    assert len(sent) == 3  # the burst; the other 497 are only counted
    (summary,) = g.due(now=61)  # the groups whose window closed (the first 100 of the storm)
    assert summary.title == "liu error: 98 grouped alerts"
    assert "… and 78 more groups" in summary.body
    assert g.due(now=66) == []  # the others closed too, but one summary per window
    (summary,) = g.due(now=121)
    assert summary.title == "liu error: 399 grouped alerts"
    assert g.due(now=200, force=True) == []


def test_a_summary_lists_the_most_severe_groups_first() -> None:
    g = Grouper(window=10, burst=1)
    for i in range(30):
        for _ in range(2):
            g.add("fill", "info", f"buy 1 S{i:03d}X @ 10", now=0)
    for _ in range(3):
        g.add("rejection", "warning", "order rejected: SIM001 is not shortable", now=1)
    (summary,) = g.due(now=20)
    lines = summary.body.splitlines()
    assert lines[0] == "3× order rejected: SIM001 is not shortable"  # not cut behind 30 fill groups
    assert summary.title == "liu warning: 31 grouped alerts" and lines[-2] == "… and 11 more groups"


def test_levels_and_min_level_decide_what_is_sent() -> None:
    plan = AlertsPlan(min_level="warning", levels={"fill": "info", "rejection": "off", "risk": "error"})
    got: list = []

    class Keep:
        def submit(self, n):
            got.append(n)

    a = Alerts(plan, [Keep()])
    assert not a.wants("fill") and not a.wants("rejection") and a.wants("risk")
    a.notify("fill", "buy 1 X")
    a.notify("rejection", "order rejected: x")
    a.notify("risk", "trading halted (manual)")
    assert [(n.title, n.level) for n in got] == [("liu error: risk", "error")]


def test_bad_alert_settings_are_one_line_naming_the_key(monkeypatch) -> None:
    with pytest.raises(ConfigError, match=r"\[alerts\] min_level: given 'loud'"):
        parse_plan({"alerts": {"min_level": "loud"}})
    with pytest.raises(ConfigError, match=r"\[alerts.levels\] unknown key 'fills'"):
        parse_plan({"alerts": {"levels": {"fills": "info"}}})
    secret = "xoxb-SECRET-TOKEN"
    plan = parse_plan({"alerts": {"urls": [f"notaservice://{secret}@host/x"]}})
    with pytest.raises(ConfigError) as e:
        Alerts.start(plan.alerts)
    assert "[alerts] urls[0] (notaservice://host/…): apprise cannot use this URL" in str(e.value)
    assert secret not in str(e.value) and secret not in repr(plan)
    monkeypatch.delenv("LIU_TEST_ALERTS", raising=False)
    with pytest.raises(ConfigError, match="urls_env='LIU_TEST_ALERTS': that environment variable is not set"):
        AlertsPlan(urls_env="LIU_TEST_ALERTS").all_urls()
    monkeypatch.setenv("LIU_TEST_ALERTS", "json://127.0.0.1:9/a, json://127.0.0.1:9/b")
    assert AlertsPlan(urls_env="LIU_TEST_ALERTS").all_urls() == [
        "json://127.0.0.1:9/a",
        "json://127.0.0.1:9/b",
    ]


def test_shown_url_keeps_secrets_out() -> None:
    assert shown_url("tgram://123456:ABCDEF-secret/987654") == "tgram://123456/…"  # host only
    assert shown_url("mailto://user:pa55word@example.com?to=x@y.z") == "mailto://example.com/…"
    assert "secret" not in shown_url("json://u:secret@127.0.0.1:8080/hook?token=secret")


# ---------------------------------------------------------------- real sends to a local receiver


class Receiver:
    """A JSON webhook on 127.0.0.1: collects apprise's posts."""

    def __init__(self) -> None:
        self.posts: list[dict] = []
        self.cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.cond:
                    receiver.posts.append({"path": self.path, **json.loads(body)})
                    receiver.cond.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "hook") -> str:
        return f"json://127.0.0.1:{self.port}/{path}"

    def wait_for(self, n: int, timeout: float = 30) -> list[dict]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.posts) >= n, timeout), (
                f"{len(self.posts)} of {n} posts: {self.posts}"
            )
            return list(self.posts)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here now: connections are refused
    return port


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_alerts_reach_a_json_webhook_grouped_as_configured(receiver) -> None:
    plan = AlertsPlan(urls=[receiver.url()], window=30, burst=2)
    clock = Clock()
    alerts = Alerts(plan, Alerts.start(plan).senders, clock=clock)
    handler = AlertHandler(alerts)
    for i in range(40):  # what a consumer logs 40 times
        clock.now = i * 0.5
        handler.handle(
            rec(
                "liu.orders",
                W,
                "order %s %s %s x%g by %s rejected: %s",
                f"ab-0-{i}",
                "sell",
                "SIM029",
                1,
                "shorty",
                "SIM029 is not shortable",
            )
        )
    handler.handle(
        rec("liu.risk", W, "risk %s; trading halted", "max_daily_loss: day P&L -2,100.00 < limit -2,000.00")
    )
    clock.now = 31
    alerts.tick()
    alerts.close(timeout=10)
    posts = receiver.wait_for(3)
    assert [(p["type"], p["title"]) for p in posts] == [
        ("warning", "liu warning: rejection"),
        ("failure", "liu error: risk"),
        ("warning", "liu warning: 40× order rejected: SIM029 is not shortable (shorty: sell SIM029)"),
    ]
    assert posts[0]["message"] == "order rejected: SIM029 is not shortable (shorty: sell SIM029)"
    assert posts[1]["message"].startswith("risk max_daily_loss: day P&L -2,100.00")
    assert (
        posts[2]["message"].splitlines()[0]
        == "40× order rejected: SIM029 is not shortable (shorty: sell SIM029)"
    )
    assert all(p["path"] == "/hook" for p in posts)
    assert alerts.senders[0].sent == 3 and alerts.senders[0].failed == 0


def test_an_alert_that_cannot_be_sent_is_logged_without_secrets_and_blocks_nothing(receiver, caplog) -> None:
    dead = f"json://user:hunter2@127.0.0.1:{closed_port()}/hook?token=hunter2"
    plan = AlertsPlan(urls=[dead, receiver.url("ok")], burst=100)
    alerts = Alerts.start(plan)
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="liu.alerts"):
        for i in range(5):
            alerts.notify("risk", f"trading halted (S{i:03d})")
        notify_s = time.monotonic() - t0
        alerts.close(timeout=10)
    assert notify_s < 0.1  # notify only queues
    assert len(receiver.wait_for(5)) == 5  # the good URL got every alert
    dead_sender = alerts.senders[0]
    assert dead_sender.failed == 5 and dead_sender.sent == 0
    failures = [r.getMessage() for r in caplog.records if "could not be sent" in r.getMessage()]
    assert len(failures) == 5
    assert f"to json://127.0.0.1:{dead.split(':')[3].split('/')[0]}/…" in failures[0]
    assert "hunter2" not in caplog.text


def test_a_full_queue_drops_and_counts_instead_of_waiting() -> None:
    # A target that accepts connections and never answers: the sender thread waits on it.
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)
    try:
        plan = AlertsPlan(urls=[f"json://127.0.0.1:{hole.getsockname()[1]}/x?rto=30&cto=30"], burst=1000)
        alerts = Alerts.start(plan)
        t0 = time.monotonic()
        for i in range(300):
            alerts.notify("risk", f"halt S{i:03d}")
        assert time.monotonic() - t0 < 0.5
        sender = alerts.senders[0]
        assert sender.dropped >= 300 - 100 - 1  # the queue holds 100, the thread holds one
        t0 = time.monotonic()
        alerts.close(timeout=1)
        assert time.monotonic() - t0 < 3  # the end of a session waits a bounded time
    finally:
        hole.close()


def test_halts_and_resumes_of_the_account_are_alerts() -> None:
    got: list = []

    class Keep:
        def submit(self, n):
            got.append(n)

    account = Account(100_000)
    watch = SessionAlerts(Alerts(AlertsPlan(), [Keep()]))
    try:
        watch.watch(None, "b", account, None)
        watch._halt()
        account.halt(HALT_MANUAL)
        watch._halt()
        watch._halt()
        account.resume()
        watch._halt()
    finally:
        logging.getLogger().removeHandler(watch.handler)
    assert [n.body for n in got] == ["trading halted (manual)", "trading resumed: the halt is lifted"]


# ---------------------------------------------------------------- in a session

SHORTY = """
from liu.strategy import Strategy


class Shorty(Strategy):
    # Sells SIM001 (not shortable: rejected) on every bar; buys and sells the others in turn.

    def on_bar(self, bar, ctx):
        if bar.symbol == "SIM001":
            return [ctx.sell(bar.symbol, 1)]
        if not ctx.position(bar.symbol):
            return [ctx.buy(bar.symbol, 1)]
        return [ctx.sell(bar.symbol, 1)]

    def on_fill(self, fill, ctx):
        ctx.keystore["fills"] = ctx.keystore.get("fills", 0) + 1  # what check_session looks for
"""


@pytest.mark.slow
def test_session_alerts_reach_the_webhook_and_an_unreachable_url_does_not_disturb_it(
    tmp_path, pg_dsn, receiver
):
    (tmp_path / "shorty.py").write_text(SHORTY)
    hole = socket.socket()  # accepts and never answers
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)
    try:
        plan = f"""
[session]
duration = "8s"
speed = 600
[source]
symbols = 6
rate = 2000
[broker]
not_shortable = ["SIM001"]
[database]
dsn = "{pg_dsn}"
[consumers]
count = 2
[dashboard]
enabled = false
[alerts]
urls = ["{receiver.url()}", "json://127.0.0.1:{closed_port()}/refused", "json://127.0.0.1:{hole.getsockname()[1]}/hole?rto=2&cto=2"]
min_level = "info"
window = "3s"
burst = 2
[alerts.levels]
fill = "info"
[[strategies]]
# named like the demo strategy: check_session reads that name's keystore
name = "sma_cross"
file = "{tmp_path}/shorty.py"
class = "Shorty"
"""
        proc, summary = run_trader(tmp_path, plan)
    finally:
        hole.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert summary["end_reason"] == "session end"
    check_session(summary, pg_dsn, 2, "session end", proc.stderr)  # every event, order and fill stored
    assert "could not be sent to json://127.0.0.1:" in proc.stderr  # the failures are logged
    posts = receiver.posts
    (tmp_path / "posts.json").write_text(json.dumps(posts, indent=1))  # for a failure's post-mortem
    (tmp_path / "stderr.txt").write_text(proc.stderr)
    rejected = sum(c["rejected"] for c in summary["consumers"])
    fills = sum(len(c["fills"]) for c in summary["consumers"])
    assert rejected > 20 and fills > 20
    text = "order rejected: SIM001 is not shortable (sma_cross: sell SIM001)"
    at_once = [p for p in posts if p["message"] == text]
    grouped = [
        int(line.split("×")[0])
        for p in posts
        if p["title"] != "liu warning: rejection"
        for line in p["message"].splitlines()
        if line.endswith(text) and "×" in line
    ]
    # Each window: the first sent at once, then one "N× …" line counting all N of that window.
    assert at_once and grouped
    assert sum(grouped) + len(at_once) - len(grouped) == rejected, (posts, proc.stderr[-4000:])
    assert len(posts) < rejected / 2  # never one message per rejection
    fill_posts = [p for p in posts if p["title"] == "liu info: fill"]
    assert fill_posts and all(" @ " in p["message"] for p in fill_posts)
