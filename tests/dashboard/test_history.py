"""`trader dashboard`: past batches from PostgreSQL and each batch's report, with no session running."""

from __future__ import annotations

import asyncio
import queue
import re
import signal
import subprocess
import threading

import requests

from liu.dashboard.history import Reports
from tests.dashboard.conftest import BATCH, write_batch
from tests.helpers import kill_tree, trader_command


def _lines(stream, into: queue.Queue) -> None:
    for line in stream:
        into.put(line)
    into.put(None)


def test_trader_dashboard_lists_batches_and_serves_their_reports(tmp_path, pg_dsn) -> None:
    asyncio.run(write_batch(pg_dsn, BATCH, env="BACKTEST"))
    (tmp_path / "tradeplan.toml").write_text(f'[database]\ndsn = "{pg_dsn}"\n')
    proc = subprocess.Popen(
        trader_command("dashboard", "--plan", str(tmp_path / "tradeplan.toml")),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    out: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, out), daemon=True).start()
    try:
        line = out.get(timeout=60)
        assert line is not None, proc.stderr.read()[-3000:]
        m = re.search(r"(http://127\.0\.0\.1:\d+)/\?token=([A-Za-z0-9_-]+)", line)
        assert m, line
        base, token = m.groups()
        assert requests.get(base + "/batches", timeout=30).status_code == 401
        s = requests.Session()
        assert s.get(f"{base}/?token={token}", timeout=30).url == base + "/batches"  # via the cookie
        listing = s.get(base + "/batches", timeout=30)
        assert listing.status_code == 200
        assert f'href="/batches/{BATCH}"' in listing.text and "BACKTEST" in listing.text
        report = s.get(f"{base}/batches/{BATCH}", timeout=60)
        assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
        assert BATCH in report.text and '<script src="/static/plotly.min.js">' in report.text
        plotly = s.get(base + "/static/plotly.min.js", timeout=30)
        assert plotly.status_code == 200 and plotly.text.startswith("/**") and len(plotly.content) > 1_000_000
        assert s.get(base + "/batches/no-such-batch", timeout=30).status_code == 404
        assert s.get(base + "/api/state", timeout=30).status_code == 404  # no live half
        assert token not in listing.text + report.text
        proc.send_signal(signal.SIGTERM)  # what a service manager sends; Ctrl-C ends it the same way
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
    rest = []
    while (item := out.get(timeout=10)) is not None:
        rest.append(item)
    stdout = line + "".join(rest)
    assert stdout.count(token) == 1
    assert token not in proc.stderr.read()


async def test_a_batch_report_is_built_once_while_its_rows_stay_the_same(pg_dsn) -> None:
    await write_batch(pg_dsn, BATCH)
    reports = Reports(pg_dsn)
    first = await reports.page(BATCH)
    assert first is await reports.page(BATCH)  # the same page object: not rebuilt
    assert [b["batch_id"] for b in await reports.batches()] == [BATCH]
