"""Helpers for the fault tests (tests/test_faults_*.py): trading strategies to run under faults, `trader` as a
process whose output goes to files, the embedded PostgreSQL's pid and DSN, and small database reads."""

from __future__ import annotations

import asyncio
import subprocess
from collections import Counter
from pathlib import Path

import asyncpg
import psutil

from tests.helpers import alive, eventually, kill_tree, trader_command

CHURN = '''
from liu.strategy import Strategy


class Churn(Strategy):
    """Heavy trading: on every bar of every symbol, buy 1-3 shares when flat, else sell what is held."""

    def on_bar(self, bar, ctx):
        held = ctx.position(bar.symbol)
        if held > 0:
            return [ctx.sell(bar.symbol, held)]
        return [ctx.buy(bar.symbol, 1 + int(bar.close) % 3)]
'''

HOLD = '''
from liu.strategy import Strategy


class Hold(Strategy):
    """Buys 3 shares of each symbol once, then offers them far above the market, good till cancelled."""

    def on_bar(self, bar, ctx):
        if not ctx.position(bar.symbol) and not ctx.open_orders(bar.symbol):
            return [ctx.buy(bar.symbol, 3)]
        return None

    def on_fill(self, fill, ctx):
        if fill.side == "buy":
            return [ctx.sell(fill.symbol, fill.qty, limit=round(fill.price * 50, 2), tif="gtc")]
        return None
'''


CYCLE = '''
from liu.strategy import Strategy


class Cycle(Strategy):
    """Buys one share per bar up to 10, then sells them all, and again; one order at a time per symbol. So a
    symbol's position, summed over its fills in order, stays within 0..10 unless the strategy forgot it."""

    def on_bar(self, bar, ctx):
        if ctx.open_orders(bar.symbol):
            return None
        held = ctx.position(bar.symbol)
        if held >= 10:
            return [ctx.sell(bar.symbol, held)]
        return [ctx.buy(bar.symbol, 1)]
'''


def plan_text(
    tmp_path: Path,
    code: str,
    cls: str,
    duration: str,
    dsn: str | None = None,
    rate: int = 3000,
    symbols: int = 30,
    consumers: str = "",
) -> str:
    """A tradeplan on the simulator with one strategy (`code`, class `cls`), two consumers, the embedded
    database in `tmp_path/.liu/pgdata` unless `dsn` is given; `consumers`: more keys of `[consumers]`."""
    name = cls.lower()
    (tmp_path / f"{name}.py").write_text(code)
    database = f'[database]\ndsn = "{dsn}"\n' if dsn else ""
    return f"""
[session]
duration = "{duration}"
speed = 600
[source]
kind = "sim"
symbols = {symbols}
rate = {rate}
[consumers]
count = 2
stale_after = "10m"
{consumers}
[dashboard]
enabled = false
{database}
[[strategies]]
name = "{name}"
file = "{tmp_path / f"{name}.py"}"
class = "{cls}"
"""


def start_trader(tmp_path: Path, plan: str, tag: str, own_group: bool = False) -> subprocess.Popen:
    """`trader` on `plan` in `tmp_path`; its output goes to `{tag}.out`/`{tag}.err`, its summary to `{tag}.json`
    (files, not pipes: a killed daemon's children may hold a pipe open).

    `own_group`: the leader of a process group (and session) of its own, as a shell starts a foreground
    job: `os.killpg(proc.pid, sig)` reaches it and every child that stayed in its group, as a terminal's
    Ctrl-C does, and nothing of the test's own group."""
    (tmp_path / "tradeplan.toml").write_text(plan)
    out = open(tmp_path / f"{tag}.out", "w")  # noqa: SIM115 - the child holds them
    err = open(tmp_path / f"{tag}.err", "w")  # noqa: SIM115
    try:
        return subprocess.Popen(
            trader_command(
                "--plan", str(tmp_path / "tradeplan.toml"), "--summary-json", str(tmp_path / f"{tag}.json")
            ),
            stdout=out,
            stderr=err,
            cwd=tmp_path,
            start_new_session=own_group,
        )
    finally:
        out.close()
        err.close()


def wait_trader(proc: subprocess.Popen, tmp_path: Path, tag: str, timeout: float = 180) -> int:
    """Its exit code; at the deadline the whole tree is killed and the test fails with the log's tail."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        proc.wait()
        log = (tmp_path / f"{tag}.err").read_text()
        raise AssertionError(
            f"trader did not finish within {timeout:g}s; its log ends:\n{log[-3000:]}"
        ) from None


def postmaster(pgdata: Path) -> int | None:
    """The pid of the PostgreSQL serving `pgdata`, when one is running and ready."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        pid = int(lines[0])
        p = psutil.Process(pid)
        up = p.status() != psutil.STATUS_ZOMBIE
    except (OSError, ValueError, IndexError, psutil.Error):
        return None
    return pid if up and lines[-1].strip() == "ready" else None


def socket_dsn(pgdata: Path, database: str = "liu") -> str | None:
    """The DSN of the embedded server on `pgdata` (its socket directory is in postmaster.pid)."""
    try:
        sock = (pgdata / "postmaster.pid").read_text().splitlines()[4].strip()
    except (OSError, IndexError):
        return None
    return f"postgresql://postgres@/{database}?host={sock}"


def fetch(dsn: str, sql: str, *args: object) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(go())


def count(dsn: str, sql: str, *args: object) -> int:
    """A count, or -1 while the database does not answer (it is being killed or restarted)."""
    try:
        return fetch(dsn, sql, *args)[0][0]
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        return -1


def fill_key(f: dict) -> tuple:
    return (f["client_order_id"], f["symbol"], f["side"], float(f["qty"]), round(float(f["price"]), 6))


def summary_fills(summary: dict) -> Counter:
    """Every fill the paper brokers made, as the consumers reported them (a multiset)."""
    for c in summary["consumers"]:  # a report keeps the last 10,000: a test comparing them must stay below
        assert len(c["fills"]) == c["fills_total"], f"consumer {c['index']} reported only its last fills"
    return Counter(fill_key(f) for c in summary["consumers"] for f in c["fills"])


def stored_fills(dsn: str, batch_id: str) -> Counter:
    """Every fill row of the batch in the database (a multiset: a duplicate counts twice)."""
    return Counter(
        fill_key(dict(r)) for r in fetch(dsn, "SELECT * FROM trades WHERE batch_id = $1", batch_id)
    )


def tagged(var: str, tag: str) -> list[str]:
    """Live processes (PostgreSQL's included) whose environment has `var` = `tag`, as "pid name"."""
    out = []
    for p in psutil.process_iter():
        try:
            if p.environ().get(var) == tag and alive(p):
                out.append(f"{p.pid} {p.name()}")
        except psutil.Error:
            continue
    return out


# -- liu's local exchange as a process of its own (tests/test_faults_market.py) ----------------------


def free_port_pair() -> int:
    """A port P such that P and P + 1 are both free now (`trader exchange --port P` also takes P + 1 for its
    trading API); a process restarted on P gets the same URLs."""
    import socket

    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise AssertionError("no two consecutive free ports on 127.0.0.1 in 50 tries")


def start_exchange(
    cwd: Path, env: dict[str, str], tag: str, *args: str, timeout: float = 60
) -> subprocess.Popen:
    """`trader exchange ARGS...` as a process (and session) of its own, its output in `{tag}.out` (a file: nobody
    needs to read it for it to go on); returned once its banner's "Ctrl-C" line is out. Fails with its output
    when it exits or says nothing by the deadline; the caller kills it (`kill_tree`, also on failure)."""
    import sys

    log = cwd / f"{tag}.out"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "liu.cli", "exchange", *args],
            cwd=cwd,
            env=env | {"PYTHONUNBUFFERED": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:  # its "Ctrl-C to stop" line says it serves; an exit says it never will
        eventually(lambda: proc.poll() is not None or "Ctrl-C" in log.read_text(), timeout, "trader exchange")
    except AssertionError:
        pass
    if proc.poll() is not None or "Ctrl-C" not in log.read_text():
        kill_tree(proc.pid)
        proc.wait()
        raise AssertionError(
            f"trader exchange {' '.join(args)} did not start (exit code {proc.returncode}):\n{log.read_text()}"
        )
    return proc


def holding_connections(root_pid: int, port: int, n: int) -> psutil.Process | None:
    """The descendant of `root_pid` holding at least `n` established TCP connections to 127.0.0.1:`port` (the
    producer's websockets to a market-data server), or None."""
    try:
        children = psutil.Process(root_pid).children(recursive=True)
    except psutil.Error:
        return None
    for p in children:
        try:
            conns = p.net_connections("tcp")
        except psutil.Error:
            continue
        if (
            sum(1 for c in conns if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED)
            >= n
        ):
            return p
    return None
