"""The session's logging: children log through the main process; the live table stays in one place.

- `Repeats`/`repeat_key`: what counts as the same warning, and when its summary is due.
- `LogHub` with real child processes: records (tracebacks, unpicklable extras) reach the main
  process's handlers; a child killed mid-stream does not stop the others' records.
- `trader` under a pseudo-terminal, its output replayed through a terminal emulator (pyte): one live
  table on the screen at every moment, the consumers' log lines above it, the repeated rejection of
  a non-shortable symbol printed once per window and summarised with the right count.
"""

from __future__ import annotations

import fcntl
import json
import logging
import multiprocessing as mp
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pyte
import pytest

from liu.logs import ConsoleHandler, LogHub, Repeats, repeat_key


def record(msg: str, *args, level: int = logging.WARNING, name: str = "liu.orders") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


REJECTED = "order %s %s %s x%g by %s rejected: %s"


def test_repeat_key_masks_ids_and_quantities_but_keeps_symbols_and_reasons() -> None:
    a = record(REJECTED, "5d7ea774-1-1", "sell", "SIM001", 1, "shorty", "SIM001 is not shortable")
    b = record(REJECTED, "5d7ea774-1-60", "sell", "SIM001", 25, "shorty", "SIM001 is not shortable")
    c = record(REJECTED, "5d7ea774-1-61", "sell", "SIM002", 1, "shorty", "SIM002 is not shortable")
    assert repeat_key(a) == repeat_key(b)
    assert repeat_key(a) != repeat_key(c)
    assert "SIM001" in repeat_key(a)[2]
    assert repeat_key(record("stale %.3fs old", 1.25)) == repeat_key(record("stale %.3fs old", 31.5))
    assert repeat_key(record("x", level=logging.ERROR)) != repeat_key(record("x"))


def test_repeats_print_the_first_count_the_rest_and_summarise_when_the_window_closes() -> None:
    r = Repeats(window=10)
    recs = [
        record(REJECTED, f"b-1-{i}", "sell", "SIM001", 1, "s", "SIM001 is not shortable") for i in range(40)
    ]
    shown = [r.admit(rec, now=100 + i * 0.1) for i, rec in enumerate(recs)]
    assert shown == [[recs[0]]] + [[]] * 39
    assert r.due(now=105) == []  # window still open
    (summary,) = r.due(now=110.5)
    assert summary.getMessage() == (
        "[39 more in 10s] order b-1-39 sell SIM001 x1 by s rejected: SIM001 is not shortable"
    )
    assert summary.repeats == 39
    assert r.admit(recs[0], now=111) == [recs[0]]  # a new window: printed again
    info = record("consumer %d started", 1, level=logging.INFO)
    assert r.admit(info, now=111) == r.admit(info, now=111) == [info]  # info is never held back
    assert r.due(now=111, force=True) == []  # the one open group had no repeat: nothing to say


def test_a_repeat_after_the_window_brings_the_summary_even_before_it_was_due() -> None:
    r = Repeats(window=10)
    recs = [record("order b-1-%d rejected: SIM001 is not shortable", i) for i in range(3)]
    assert r.admit(recs[0], now=0) == [recs[0]]
    assert r.admit(recs[1], now=5) == []
    summary, again = r.admit(recs[2], now=10.1)  # the window closed, no tick came in between
    assert summary.getMessage().startswith("[1 more in 10s] order b-1-1 rejected")
    assert again is recs[2]


def test_console_handler_writes_plain_lines_to_stderr_when_not_a_terminal(capsys) -> None:
    h = ConsoleHandler(None, Repeats(window=60))
    for i in range(5):
        h.handle(record(REJECTED, f"b-0-{i}", "sell", "SIM001", 1, "s", "SIM001 is not shortable"))
    h.flush_repeats(force=True)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2, err
    assert " WARNING main liu.orders: order b-0-0 sell SIM001" in err[0]
    assert "[4 more in 1s] order b-0-4 sell SIM001" in err[1]


# ---------------------------------------------------------------- the hub with real processes


def _chatty(n: int, tag: str) -> None:
    log = logging.getLogger("tests.chatty")
    for i in range(n):
        log.info("%s line %d", tag, i)
    log.warning("%s carries an unpicklable extra", tag, extra={"sock": lambda: None})
    try:
        _ = 1 / 0
    except ZeroDivisionError:
        log.exception("%s failed on purpose", tag)


def _crash() -> None:
    logging.getLogger("tests.crash").info("about to fail")
    raise RuntimeError("child bug")


def _hang_logging(ready) -> None:
    log = logging.getLogger("tests.hang")
    log.info("hanging")
    ready.set()
    while True:
        log.info("still here %s", "x" * 2000)
        time.sleep(0.001)


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.arrived = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self.arrived:
            self.records.append(record)
            self.arrived.notify_all()

    def wait_for(self, pred, timeout: float, what: str) -> None:
        """Block until `pred(records)` holds, woken by each arriving record; fail naming `what`."""
        with self.arrived:
            if not self.arrived.wait_for(lambda: pred(self.records), timeout):
                raise AssertionError(f"{what}: not within {timeout:g}s")


@pytest.fixture
def collected():
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    handler = Collect()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    yield handler
    root.handlers[:] = saved
    root.setLevel(level)


def test_children_records_reach_the_main_process_handlers(collected) -> None:
    ctx = mp.get_context("forkserver")
    hub = LogHub(logging.INFO).start()
    procs = []
    try:
        procs = [hub.spawn(ctx, _chatty, (50, f"c{i}"), name=f"liu-consumer-{i}") for i in range(2)]
        procs.append(hub.spawn(ctx, _crash, (), name="liu-crasher"))
        for p in procs:
            p.join(60)
        hub.drain(timeout=5)
    finally:
        hub.close()
        for p in procs:
            if p.exitcode is None:
                p.kill()
    by_proc: dict[str, list[str]] = {}
    for r in collected.records:
        by_proc.setdefault(r.processName, []).append(r.getMessage())
    for i in range(2):
        lines = by_proc[f"liu-consumer-{i}"]
        assert [m for m in lines if m.startswith(f"c{i} line ")] == [f"c{i} line {k}" for k in range(50)]
        assert f"c{i} carries an unpicklable extra" in lines  # sent without the extra
        (failed,) = [m for m in lines if "failed on purpose" in m]
        assert "ZeroDivisionError: division by zero" in failed  # the traceback travels with it
    crash = by_proc["liu-crasher"]
    assert crash[0] == "about to fail"
    assert "process liu-crasher failed" in crash[1] and "RuntimeError: child bug" in crash[1]
    assert procs[2].exitcode == 1


def test_a_child_killed_mid_stream_does_not_stop_the_others(collected) -> None:
    ctx = mp.get_context("forkserver")
    hub = LogHub(logging.INFO).start()
    procs = []
    try:
        ready = ctx.Event()
        hang = hub.spawn(ctx, _hang_logging, (ready,), name="liu-hang")
        procs.append(hang)
        assert ready.wait(60)
        collected.wait_for(  # it is streaming
            lambda rs: sum(r.processName == "liu-hang" for r in rs) >= 50, 30, "the child's records"
        )
        os.kill(hang.pid, signal.SIGKILL)  # wherever it is in a write
        hang.join(10)
        p = hub.spawn(ctx, _chatty, (20, "after"), name="liu-after")
        procs.append(p)
        p.join(60)
        hub.drain(timeout=5)
    finally:
        hub.close()
        for p in procs:
            if p.exitcode is None:
                p.kill()
    after = [r.getMessage() for r in collected.records if r.processName == "liu-after"]
    assert [m for m in after if m.startswith("after line ")] == [f"after line {k}" for k in range(20)]


# ---------------------------------------------------------------- trader in a terminal

SHORTY = """
from liu.strategy import Strategy


class Shorty(Strategy):
    \"\"\"Sells a symbol it may not short on every bar: each order is rejected, each rejection logged.\"\"\"

    def on_bar(self, bar, ctx):
        if bar.symbol == "SIM001":
            return [ctx.sell(bar.symbol, 1)]
        return None
"""

COLUMNS, LINES = 200, 50
TITLE = re.compile(r"events/s · .* events · ")
WINDOW = 10  # liu.logs.REPEAT_WINDOW: the session outlasts it, so a summary lands above the live table


def _run_in_pty(cmd: list[str], cwd: Path, timeout: float) -> tuple[int, bytes]:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", LINES, COLUMNS, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "LINES")}
    env["TERM"] = "xterm-256color"
    proc = subprocess.Popen(
        cmd, cwd=cwd, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
    )
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while True:
            assert time.monotonic() < deadline, "trader did not finish:\n" + out[-3000:].decode(
                errors="replace"
            )
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the terminal's last holder exited
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(master)
    return proc.returncode, bytes(out)


def _lines(screen: pyte.HistoryScreen) -> list[str]:
    """Every line the terminal has shown that is still there: the scrollback, then the screen."""
    history = ["".join(line[x].data for x in range(COLUMNS)).rstrip() for line in screen.history.top]
    return history + [line.rstrip() for line in screen.display]


@pytest.mark.slow
def test_trader_in_a_terminal_keeps_one_live_table_with_the_logs_above_it(tmp_path, pg_dsn) -> None:
    (tmp_path / "shorty.py").write_text(SHORTY)
    (tmp_path / "tradeplan.toml").write_text(
        f"""
[session]
duration = "{WINDOW + 4}s"
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
[[strategies]]
name = "shorty"
file = "shorty.py"
class = "Shorty"
"""
    )
    cmd = [sys.executable, "-m", "liu.cli", "--plan", "tradeplan.toml", "--summary-json", "summary.json"]
    code, out = _run_in_pty(cmd, tmp_path, timeout=240)
    (tmp_path / "pty.out").write_bytes(out)
    text = out.decode(errors="replace")
    assert code == 0, text[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    rejected = sum(c["rejected"] for c in summary["consumers"])
    assert rejected > 50

    # Drawn in place: every redraw of the table starts by moving the cursor up over the last one.
    titles = [m.start() for m in TITLE.finditer(text)]
    assert len(titles) >= 20, f"{len(titles)} table renders"
    up = "\x1b[2K\x1b[1A"  # rich's Live: erase the line, cursor up, for each line of the last render
    redraws = sum(1 for a, b in zip(titles, titles[1:], strict=False) if up in text[a:b])
    assert redraws >= len(titles) - 2

    # Replayed through a terminal emulator: at every moment there is exactly one table on the screen
    # and in the scrollback (a log line written through the table would leave a torn copy behind).
    # Checked each time a table has been drawn to its end (its bottom-right corner).
    screen = pyte.HistoryScreen(COLUMNS, LINES, history=100_000)
    stream = pyte.Stream(screen)
    fed = 0
    for end in (m.end() for m in re.finditer("┘", text) if m.start() > titles[0]):
        stream.feed(text[fed:end])
        fed = end
        shown = [line for line in _lines(screen) if TITLE.search(line)]
        assert len(shown) == 1, "\n".join(_lines(screen)[-80:])
    stream.feed(text[fed:])
    final = _lines(screen)
    table = next(i for i, line in enumerate(final) if TITLE.search(line))
    above = final[:table]

    # The consumers' log lines are above the table.
    assert any(re.search(r"INFO consumer-\d liu.consumer: first event processed", line) for line in above)
    # The repeated rejection: printed once per window, the rest counted into summary lines, one of
    # which came while the table was live (above it); together they account for every rejection.
    full = [line for line in final if "rejected: SIM001 is not shortable" in line and "more in" not in line]
    summaries = [int(m.group(1)) for line in final if (m := re.search(r"\[(\d+) more in \d+s\] order", line))]
    assert 1 <= len(full) <= 3, full
    assert len(full) + sum(summaries) == rejected
    assert any("more in" in line and "SIM001 is not shortable" in line for line in above)
