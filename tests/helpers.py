"""Plain helpers shared by test modules (fixtures live in conftest.py), so test modules never import
each other: waiting on an event with a deadline that fails loudly, finding and killing every process a
test started, and running `trader` as a subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from liu.events import BAR
from liu.shard import shard_of

REPO = Path(__file__).resolve().parent.parent

# A paper order's id is `<batch[:8]>-<consumer>-<seq>`: within one consumer, seq is the order in which its
# strategies placed orders. Data time cannot order them: a minute's bars of every symbol share one time.
ORDER_SEQ = "split_part(client_order_id, '-', 3)::bigint"

# -------------------------------------------------------------------------------------- waiting


def eventually(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll `check()` until it returns something truthy and return that; fail naming `what` at the deadline.

    For state that only shows by looking (a row in a table, a file); the deadline is generous
    and the failure says what never happened, so a slow machine is never a silent pass or a hang.
    """
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= end:
            raise AssertionError(f"{what}: not seen within {timeout:g}s")
        time.sleep(interval)


async def eventually_async(
    check: Callable[[], Any | Awaitable[Any]], timeout: float, what: str, interval: float = 0.02
) -> Any:
    """`eventually` for a running event loop; `check` may be a coroutine function."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() >= end:
            raise AssertionError(f"{what}: not seen within {timeout:g}s")
        await asyncio.sleep(interval)


# ------------------------------------------------------------------------------------ processes

TAG_VAR = "LIU_TEST_PROCESS_TAG"
"""Environment variable naming the test that started a process: children inherit it, even those that
leave the process tree (a daemonised PostgreSQL postmaster, a double fork), so the reaper finds them."""


def _is_own_mp_helper(p: psutil.Process) -> bool:
    # This process's multiprocessing resource tracker / forkserver: started lazily by whichever test
    # first needs one and shared by all later tests; killing it makes multiprocessing warn and restart it.
    try:
        if p.ppid() != os.getpid():
            return False
        cmd = " ".join(p.cmdline())
    except psutil.Error:
        return False
    return "multiprocessing.resource_tracker" in cmd or "multiprocessing.forkserver" in cmd


def alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def kill_processes(procs: Iterable[psutil.Process], timeout: float = 5.0) -> list[psutil.Process]:
    """SIGKILL `procs` (PostgreSQL gets SIGQUIT first: an immediate shutdown that frees its shared
    memory) and wait until none is alive; return those that were alive. Fails if one survives."""
    procs = [p for p in procs if alive(p)]
    postgres = []
    for p in procs:
        try:
            if p.name() == "postgres":
                postgres.append(p)
                p.send_signal(signal.SIGQUIT)
            else:
                p.kill()
        except psutil.Error:
            pass
    start = time.monotonic()
    mercy, end = start + min(2.0, timeout / 2), start + timeout
    while any(alive(p) for p in procs):
        if postgres and time.monotonic() >= mercy:
            for p in postgres:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            postgres = []
        if time.monotonic() >= end:
            left = [(p.pid, p.name()) for p in procs if alive(p)]
            raise AssertionError(f"processes survived SIGKILL for {timeout:g}s: {left}")
        time.sleep(0.01)
    return procs


def process_tree(pid: int) -> list[psutil.Process]:
    """`pid` and all its descendants (empty when it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def kill_tree(pid: int, timeout: float = 5.0) -> list[psutil.Process]:
    """Kill `pid` and every descendant it has now."""
    return kill_processes(process_tree(pid), timeout)


@contextlib.contextmanager
def untagged() -> Iterator[None]:
    """Start long-lived shared processes (the session's PostgreSQL) without the current test's tag."""
    saved = os.environ.pop(TAG_VAR, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[TAG_VAR] = saved


class ProcessReaper:
    """Finds every process started while it was active: those carrying its tag in their environment
    (set in this process's environment, so subprocesses, multiprocessing children, embedded servers
    and their own children inherit it) and all their descendants; `reap()` kills them all."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex
        self._before: set[int] = set()
        self._saved: str | None = None

    def start(self) -> ProcessReaper:
        self._before = set(psutil.pids())
        self._saved = os.environ.get(TAG_VAR)
        os.environ[TAG_VAR] = self.tag
        return self

    def processes(self) -> list[psutil.Process]:
        """The live processes this reaper is responsible for (never this process or older ones)."""
        found: dict[int, psutil.Process] = {}
        for pid in set(psutil.pids()) - self._before - {os.getpid()}:
            try:
                p = psutil.Process(pid)
                if p.environ().get(TAG_VAR) == self.tag:
                    found[pid] = p
            except psutil.Error:  # gone, a zombie, or not ours to read
                continue
        # PostgreSQL's backends overwrite their environment with their process title: follow the tree.
        for p in list(found.values()):
            with contextlib.suppress(psutil.Error):
                for child in p.children(recursive=True):
                    found.setdefault(child.pid, child)
        return [p for p in found.values() if alive(p) and not _is_own_mp_helper(p)]

    def reap(self, timeout: float = 5.0, grace: float = 1.0) -> list[str]:
        """Stop tagging, kill what is left; return a description of each process that had to be killed.

        Processes get `grace` seconds to finish exiting on their own (a forkserver whose parent has just
        gone, say), so only those really left running are reported."""
        if self._saved is None:
            os.environ.pop(TAG_VAR, None)
        else:
            os.environ[TAG_VAR] = self._saved
        left = self.processes()
        if left:
            end = time.monotonic() + grace
            while any(alive(p) for p in left) and time.monotonic() < end:
                time.sleep(0.02)
            left = self.processes()
        killed = []
        for p in left:
            with contextlib.suppress(psutil.Error):
                killed.append((p, f"{p.pid} {' '.join(p.cmdline()).strip()[:100] or p.name()}"))
        kill_processes([p for p, _ in killed], timeout)
        return [d for _, d in killed]


# ---------------------------------------------------------------------------------------- trader

STRATEGY = f"""
[[strategies]]
name = "sma_cross"
file = "{REPO}/strategies/sma_cross.py"
class = "SmaCross"
[strategies.config]
fast_period = 3
slow_period = 8
allocation = 0.05
allow_short = true
"""
"""The demo strategy's tradeplan entry, trading on the simulator within seconds."""


def trader_command(*args: str) -> list[str]:
    """`trader ARGS...` as this interpreter runs it."""
    return [sys.executable, "-m", "liu.cli", *args]


def run_trader(
    tmp_path: Path, plan: str, timeout: float = 180
) -> tuple[subprocess.CompletedProcess, dict | None]:
    """Write `plan`, run `trader` on it in `tmp_path`; (the finished process, its --summary-json or None).

    On timeout the whole process tree is killed and the test fails with the tail of its log.
    """
    (tmp_path / "tradeplan.toml").write_text(plan)
    summary = tmp_path / "summary.json"
    proc = subprocess.Popen(
        trader_command("--plan", str(tmp_path / "tradeplan.toml"), "--summary-json", str(summary)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        out, err = proc.communicate()
        raise AssertionError(
            f"trader did not finish within {timeout:g}s; its log ends:\n{err[-3000:]}"
        ) from None
    finally:
        if proc.poll() is None:  # the test was interrupted (a timeout of its own, Ctrl-C)
            kill_tree(proc.pid)
            proc.wait()
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return done, (json.loads(summary.read_text()) if summary.exists() else None)


async def _db_rows(dsn: str, batch_id: str):
    conn = await asyncpg.connect(dsn)
    try:
        runs = await conn.fetch("select * from algo_run where batch_id = $1", batch_id)
        fills = await conn.fetch("select * from trades where batch_id = $1", batch_id)
        orders = await conn.fetch("select * from orders where batch_id = $1", batch_id)
        keystore = await conn.fetch("select * from keystore where algo_name = 'sma_cross'")
    finally:
        await conn.close()
    return runs, fills, orders, keystore


def check_session(summary: dict, dsn: str, consumers: int, reason: str, log: str = "") -> list:
    """Check a finished `trader` session against PostgreSQL (runs closed, events accounted for, symbols on
    their hashed consumer, fills and orders stored exactly); return the paper broker's fills."""
    runs, fills, orders, keystore = asyncio.run(_db_rows(dsn, summary["batch_id"]))
    # algo_run rows: one per strategy per consumer, all closed with the reason.
    assert len(runs) == consumers
    assert [(r["end_reason"], r["end_time"] is not None) for r in runs] == [(reason, True)] * consumers, log[
        -5000:
    ]
    # Every event is accounted for, per consumer, and nothing was lost between producer and consumer.
    for c, sent in zip(summary["consumers"], summary["sent_per_consumer"], strict=True):
        assert c["received"] == c["processed"] + c["stale"] + c["malformed"] + c["lost"]
        assert c["received"] == sent and c["lost"] == 0 and c["restarts"] == 0
    # Each symbol stayed on one consumer: the one its stable hash names.
    seen: dict[str, int] = {}
    for c in summary["consumers"]:
        for sym in c["symbols"]:
            assert sym not in seen, f"{sym} on consumers {seen[sym]} and {c['index']}"
            seen[sym] = c["index"]
            assert shard_of(sym, consumers) == c["index"]
    # The fills in PostgreSQL are exactly the paper broker's fills.
    assert all(len(c["fills"]) == c["fills_total"] for c in summary["consumers"])  # all within the report
    broker = sorted(
        (f["client_order_id"], f["symbol"], f["side"], f["qty"], round(f["price"], 6))
        for c in summary["consumers"]
        for f in c["fills"]
    )
    stored = sorted(
        (f["client_order_id"], f["symbol"], f["side"], f["qty"], round(f["price"], 6)) for f in fills
    )
    assert stored == broker
    # Every order a strategy placed is a row (bracket legs are rows too, linked to their entry), and no
    # order is left open once the session ended but the gtc orders of the persisted paper account (the
    # default `[broker] persist`), which the next session restores.
    placed = [o for o in orders if o["parent_id"] is None]
    assert len(placed) == sum(c["orders"] for c in summary["consumers"])
    assert all(o["parent_id"] in {p["client_order_id"] for p in placed} for o in orders if o["leg"])
    assert not [
        o["client_order_id"]
        for o in orders
        if o["status"] in ("new", "accepted", "held", "partially_filled") and o["tif"] != "gtc"
    ]
    if broker:  # the strategy counts its fills in its persistent keystore
        assert [r["key"] for r in keystore] == ["fills"]
    return broker


# ------------------------------------------------------------------------------------- backtests

SCRIPT = '''
from liu.strategy import Strategy, StrategyConfig


class ScriptConfig(StrategyConfig):
    orders: list[list] = []  # [bar index, side, qty, limit price (0 = market order)]


class Script(Strategy):
    """Places the given orders at the close of the given bars; records its fills."""

    Config = ScriptConfig

    def __init__(self, name, config):
        super().__init__(name, config)
        self.n = 0

    def on_bar(self, bar, ctx):
        out = []
        for i, side, qty, limit in self.config.orders:
            if i == self.n:
                make = ctx.buy if side == "buy" else ctx.sell
                out.append(make(bar.symbol, qty, limit=limit or None))
        self.n += 1
        return out
'''
"""A strategy file (class `Script`) that places `config.orders` = [[bar index, side, qty, limit or 0]]."""


def bar(i: int, o: float, h: float, lo: float, c: float, sym: str = "X") -> tuple:
    """A minute BAR wire tuple `i` minutes after 2023-11-14 22:13:20 UTC, volume 1000."""
    return (BAR, sym, 1_700_000_000 * 10**9 + i * 60 * 10**9, o, h, lo, c, 1000.0, 0)


@contextlib.contextmanager
def exchange_cli(cwd: Path, env: dict[str, str]) -> Iterator[tuple[subprocess.Popen, str]]:
    """`trader exchange --port 0` as a subprocess, yielded with its banner once that is printed (up to its
    "Ctrl-C" line); its process group is killed on the way out, also when the test fails."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "liu.cli", "exchange", "--port", "0"],
        cwd=cwd,
        env=env | {"PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while not any("Ctrl-C" in line for line in lines):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
            lines.append(proc.stdout.readline())  # type: ignore[union-attr]
        yield proc, "".join(lines)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def fill_key(f) -> tuple:
    """A backtest or summary fill (a dataclass or its dict) as a comparable tuple."""
    get = f.get if isinstance(f, dict) else lambda k: getattr(f, k)
    return (get("ts"), get("symbol"), get("side"), get("qty"), get("price"), get("fee"))
