"""Soak: memory of every `trader` process over a long session at a steady 50k events/s with a trading strategy.

Reproduce:  .venv/bin/python benchmarks/soak.py [--minutes 20] [--interval 10] [--rate 50000]
                [--consumers 2] [--symbols 500] [--order-every 250] [--json PATH] [--keep]

What runs: the real `trader` (`.venv/bin/trader --plan P --summary-json S`), as live_path.py's cold
start runs it, on a plan written to a temporary directory: `[source] kind = "sim"` at `rate` events/s
(trades, `--symbols` symbols), `[consumers] count = --consumers`, the embedded PostgreSQL in the temp
directory, `[session] duration` = `--minutes`, speed 1; everything else at its default (dashboard on,
`stale_after` 15 s, bad-tick filter on, paper broker). The strategy,
`SoakChurn` (written to the temp directory), is benchmarks/bench_strategy.py's `LiveBench` (minute bars,
SMA(10) and RSI(14) peeks on every trade, history seeded) plus orders: on every `--order-every`-th trade
of a consumer it sells the symbol's position if it holds one, else buys 1 share at market, and every 4th
such turn cancels the symbol's open orders and rests a day limit buy 10 % below the price instead. So
orders, fills, cancels and their database rows run all session long (~160 orders/s at the defaults).

Processes, found with psutil: the trader's tree (main process, the liu watchdog, multiprocessing's
resource tracker and forkserver, and the forkserver's children: liu-consumer-N by the pid the daemon
logs, liu-marketdata by its listening socket, liu-producer by its connection to that socket), plus, as a
separate group, the embedded PostgreSQL (its postmaster is not in the tree: pg_ctl detaches it; found by
`-D <data dir>`) and its children. Every `--interval` seconds from the clock start: RSS, USS and RssAnon
(anonymous memory, i.e. heap) of each, its open fds and CPU time.

Figures: per process, a least-squares slope of RSS (and USS) in MiB per hour over the samples after a
warm-up of min(2 minutes, 10 % of the session), its standard error, RSS at the first sample after the
warm-up and at the last sample of the session, CPU share; a process "grows" when its RSS slope is
above 3 standard errors *and* the fitted rise over the window is at least 1 MiB, otherwise it is "flat"
(within noise). PostgreSQL's RSS includes the shared buffers each process has touched (RssShmem), which
rises as the tables fill: for that group the verdict is on the RssAnon slope. Also: events produced and processed,
stale drops, orders and fills, and the sustained rate (events / session seconds, and the lowest 5-s rate
the daemon logged), from the session's summary JSON and log.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from live_path import REPO, STRATEGY, loadavg  # noqa: E402

MIB = 1024 * 1024

# The churning strategy: LiveBench's per-trade work (the other live benchmarks' workload) plus orders.
CHURN = '''"""Written by benchmarks/soak.py: LiveBench (bench_strategy.py) plus orders all session long."""

from pathlib import Path

from liu.plugins import load_class
from liu.strategy import Strategy

_BENCH = Path({bench!r})
LiveBench = load_class(_BENCH, "LiveBench", Strategy)
BenchConfig = LiveBench.Config


class ChurnConfig(BenchConfig):
    order_every: int = 250  # trades (per consumer) between two order turns


class SoakChurn(LiveBench):
    Config = ChurnConfig

    def on_start(self, ctx):
        super().on_start(ctx)
        self.turn = 0
        self.trades = 0

    def on_trade(self, trade, ctx):
        super().on_trade(trade, ctx)
        self.trades += 1
        if self.trades % self.config.order_every:
            return None
        self.turn += 1
        sym = trade.symbol
        if self.turn % 4 == 0:  # cancel what rests in this symbol, rest a limit far from the price
            for order in ctx.open_orders(sym):
                ctx.cancel(order)
            return [ctx.buy(sym, 1, limit=round(trade.price * 0.9, 2))]
        held = ctx.position(sym)
        if held > 0:
            return [ctx.sell(sym, held)]
        return [ctx.buy(sym, 1)]
'''

PLAN = """[session]
duration = "{seconds}s"
speed = 1
[source]
kind = "sim"
symbols = {symbols}
rate = {rate}
bars = "trades"
[database]
data_dir = "{pgdata}"
[consumers]
count = {consumers}
[[strategies]]
name = "soak"
file = "{strategy}"
class = "SoakChurn"
[strategies.config]
warm_symbols = {symbols}
order_every = {order_every}
"""

PROGRESS = re.compile(r"(\d+) events/s, (\d+) events, consumers \[([\d, ]*)\]")
CONSUMER_PID = re.compile(r"consumer (\d+) started \(pid (\d+)\)")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def status_kb(pid: int, keys: tuple[str, ...] = ("VmRSS", "RssAnon", "RssFile", "RssShmem")) -> dict:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in keys:
                out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def fit(ts: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least-squares slope of ys over ts, its standard error and the residuals' standard deviation."""
    n = len(ts)
    mt, my = sum(ts) / n, sum(ys) / n
    sxx = sum((t - mt) ** 2 for t in ts)
    if n < 3 or sxx == 0:
        return 0.0, float("nan"), float("nan")
    slope = sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True)) / sxx
    resid = [y - (my + slope * (t - mt)) for t, y in zip(ts, ys, strict=True)]
    s2 = sum(r * r for r in resid) / (n - 2)
    return slope, math.sqrt(s2 / sxx), math.sqrt(s2)


class Trader:
    """`trader` on the soak plan, its stderr read line by line (clock start, consumer pids, progress)."""

    def __init__(self, tmp: Path, plan: Path, summary: Path) -> None:
        self.cmd = [str(REPO / ".venv/bin/trader"), "--plan", str(plan), "--summary-json", str(summary)]
        self.stdout = (tmp / "trader.out").open("w")
        self.err_path = tmp / "trader.err"
        self.proc = subprocess.Popen(
            self.cmd,
            stdout=self.stdout,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            start_new_session=True,  # Ctrl-C reaches this script only; the trader gets its SIGINT from us
        )
        self.t0 = time.monotonic()
        self.clock = threading.Event()
        self.t_clock: float | None = None
        self.consumer_pids: dict[int, int] = {}
        self.progress: list[
            dict
        ] = []  # the daemon's 5-s lines: (t from clock start, rate, events, processed)
        self.tail: list[str] = []
        self.errors: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        with self.err_path.open("w") as log:
            for line in self.proc.stderr:  # type: ignore[union-attr]
                log.write(line)
                self.tail.append(line)
                del self.tail[:-40]
                now = time.monotonic()
                if m := CONSUMER_PID.search(line):
                    self.consumer_pids[int(m.group(2))] = int(m.group(1))
                elif "clock started" in line and not self.clock.is_set():
                    self.t_clock = now
                    self.clock.set()
                elif m := PROGRESS.search(line):
                    self.progress.append(
                        {
                            "t": round(now - (self.t_clock or now), 1),
                            "rate": int(m.group(1)),
                            "events": int(m.group(2)),
                            "processed": [int(x) for x in m.group(3).split(",") if x.strip()],
                        }
                    )
                elif " ERROR " in line or "Traceback" in line:
                    self.errors.append(line.rstrip())
                    del self.errors[20:]

    def interrupt_and_wait(self, timeout: float) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None


class Sampler:
    """The trader's processes, labelled, and their memory every interval."""

    def __init__(self, trader: Trader, pgdata: Path) -> None:
        self.trader = trader
        self.pgdata = str(pgdata)
        self.procs: dict[int, psutil.Process] = {}  # everything ever seen (for the final kill)
        self.labels: dict[int, str] = {}
        self.groups: dict[int, str] = {}  # pid -> "liu" | "postgres"
        self.samples: dict[int, list[tuple]] = {}  # pid -> [(t, rss_kb, uss_kb, anon_kb, fds, cpu_s)]
        self.main = psutil.Process(trader.proc.pid)
        self.uss_ok = True

    # -- finding and naming ---------------------------------------------------
    def _postmaster(self) -> psutil.Process | None:
        for p in psutil.process_iter(["cmdline"]):
            cmd = p.info["cmdline"] or []
            if cmd and cmd[0].endswith("/postgres") and self.pgdata in cmd:
                return p
        return None

    def _liu_label(self, p: psutil.Process) -> str:
        if p.pid == self.main.pid:
            return "trader (main)"
        if p.pid in self.trader.consumer_pids:
            return f"liu-consumer-{self.trader.consumer_pids[p.pid]}"
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            return f"pid {p.pid}"
        if "liu.watchdog" in cmd:
            return "liu watchdog"
        if "multiprocessing.resource_tracker" in cmd:
            return "mp resource tracker"
        if "multiprocessing.forkserver" in cmd:
            try:
                parent = p.parent()
            except psutil.Error:
                parent = None
            if parent is not None and parent.pid == self.main.pid:
                return "mp forkserver"
            return self._forkserver_child(p)
        return f"{p.name()} {p.pid}"

    def _forkserver_child(self, p: psutil.Process) -> str:
        """liu-marketdata listens on a TCP port; liu-producer is connected to it."""
        try:
            conns = p.net_connections(kind="tcp")
        except psutil.Error:
            conns = []
        if any(c.status == psutil.CONN_LISTEN for c in conns):
            return "liu-marketdata"
        if any(c.raddr and c.raddr.ip in ("127.0.0.1", "::1") for c in conns):
            return "liu-producer"
        return f"forkserver child {p.pid}"

    def _pg_label(self, p: psutil.Process, postmaster: int) -> str:
        if p.pid == postmaster:
            return "pg postmaster"
        try:
            title = " ".join(p.cmdline())
        except psutil.Error:
            return f"pg {p.pid}"
        title = " ".join(title.split()).removeprefix("postgres: ")  # the title is padded with spaces
        if " [local]" in title or "@" in title:  # a client backend: its title changes with each query
            return f"pg backend {p.pid}"
        return f"pg {title}"

    def discover(self) -> None:
        """Add processes not seen yet (the tree can change: postgres backends come and go)."""
        try:
            tree = [self.main, *self.main.children(recursive=True)]
        except psutil.Error:
            tree = []
        for p in tree:
            if p.pid not in self.procs:
                self.procs[p.pid] = p
                self.groups[p.pid] = "liu"
                self.samples[p.pid] = []
            label = self.labels.get(p.pid, "")
            if not label or label.startswith(("forkserver child", "pid ")):  # the sockets may come later
                self.labels[p.pid] = self._liu_label(p)
        pm = self._postmaster()
        if pm is None:
            return
        try:
            pg = [pm, *pm.children(recursive=True)]
        except psutil.Error:
            pg = [pm]
        for p in pg:
            if p.pid not in self.procs:
                self.procs[p.pid] = p
                self.groups[p.pid] = "postgres"
                self.samples[p.pid] = []
                self.labels[p.pid] = self._pg_label(p, pm.pid)

    # -- sampling ---------------------------------------------------------------
    def sample(self, t: float) -> None:
        self.discover()
        for pid, p in self.procs.items():
            try:
                if not p.is_running() or p.status() == psutil.STATUS_ZOMBIE:
                    continue
                st = status_kb(pid)
                if "VmRSS" not in st:
                    continue
                uss = None
                if self.uss_ok:
                    try:
                        uss = p.memory_full_info().uss // 1024
                    except psutil.AccessDenied:
                        self.uss_ok = False
                ct = p.cpu_times()
                fds = p.num_fds()
            except psutil.Error:
                continue
            self.samples[pid].append(
                (round(t, 2), st["VmRSS"], uss, st.get("RssAnon"), fds, round(ct.user + ct.system, 2))
            )

    def kill_all(self, grace: float = 10.0) -> list[str]:
        """Kill whatever of the processes seen is still running `grace` s after the trader has exited
        (the forkserver and the resource tracker notice their parent's exit on their own)."""
        psutil.wait_procs(list(self.procs.values()), timeout=grace)
        killed = []
        for pid, p in self.procs.items():
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    p.kill()
                    killed.append(f"{self.labels.get(pid, pid)} ({pid})")
            except psutil.Error:
                pass
        psutil.wait_procs(list(self.procs.values()), timeout=5)
        return killed


def analyse(sampler: Sampler, session_s: float, warmup_s: float) -> list[dict]:
    rows = []
    for pid, ss in sampler.samples.items():
        if not ss:
            continue
        window = [s for s in ss if warmup_s <= s[0] <= session_s]
        row = {
            "process": sampler.labels[pid],
            "group": sampler.groups[pid],
            "pid": pid,
            "samples": len(ss),
            "samples_fitted": len(window),
            "rss_first_mib": round(ss[0][1] / 1024, 1),
        }
        if len(window) >= 3:
            ts = [s[0] / 3600 for s in window]
            span_h = ts[-1] - ts[0]
            for key, idx in (("rss", 1), ("uss", 2), ("anon", 3)):
                ys = [s[idx] / 1024 for s in window if s[idx] is not None]
                if len(ys) != len(window):
                    continue
                slope, se, sd = fit(ts, ys)
                row[f"{key}_start_mib"] = round(ys[0], 1)
                row[f"{key}_end_mib"] = round(ys[-1], 1)
                row[f"{key}_slope_mib_h"] = round(slope, 2)
                row[f"{key}_slope_se"] = round(se, 2)
                row[f"{key}_resid_sd_mib"] = round(sd, 3)
            # PostgreSQL's RSS counts the shared buffers a process has touched: judge its heap (RssAnon)
            on = "anon" if row["group"] == "postgres" and "anon_slope_mib_h" in row else "rss"
            slope, se = row[f"{on}_slope_mib_h"], row[f"{on}_slope_se"]
            rise = slope * span_h
            row["verdict_on"] = on
            row["fitted_rise_mib"] = round(rise, 2)
            row["grows"] = bool(slope > 3 * se and rise >= 1.0)
            cpu = window[-1][5] - window[0][5]
            row["cpu_share"] = round(cpu / (span_h * 3600), 3) if span_h else None
            row["fds"] = [window[0][4], window[-1][4]]
        rows.append(row)
    order = {"trader (main)": 0, "liu-marketdata": 1, "liu-producer": 2}
    rows.sort(
        key=lambda r: (
            r["group"] != "liu",
            order.get(r["process"], 3 if r["process"].startswith("liu-consumer") else 4),
            r["process"],
        )
    )
    return rows


def run(args: argparse.Namespace, tmp: Path, res: dict) -> None:
    session_s = round(args.minutes * 60, 3)
    warmup_s = min(120.0, 0.1 * session_s)
    res["session_s"], res["warmup_s"] = session_s, warmup_s
    strategy = tmp / "soak_churn.py"
    strategy.write_text(CHURN.format(bench=str(STRATEGY)))
    plan = tmp / "tradeplan.toml"
    plan.write_text(
        PLAN.format(
            seconds=session_s,
            symbols=args.symbols,
            rate=args.rate,
            pgdata=tmp / "pgdata",
            consumers=args.consumers,
            strategy=strategy,
            order_every=args.order_every,
        )
    )
    summary = tmp / "summary.json"
    trader = Trader(tmp, plan, summary)
    res["trader_command"] = shlex.join(trader.cmd)
    sampler = None
    try:
        if not trader.clock.wait(180):
            raise RuntimeError(
                "the trader's clock did not start within 180 s; stderr tail:\n" + "".join(trader.tail)
            )
        res["clock_after_s"] = round(trader.t_clock - trader.t0, 2)
        sampler = Sampler(trader, tmp / "pgdata")
        t_clock = trader.t_clock
        k = 0
        print(
            f"clock started {res['clock_after_s']} s after launch; sampling every {args.interval:g} s "
            f"for {session_s:g} s (fit after {warmup_s:g} s)",
            flush=True,
        )
        while True:
            t = time.monotonic() - t_clock
            if t > session_s or trader.proc.poll() is not None:
                break
            sampler.sample(t)
            if k % max(1, round(60 / args.interval)) == 0:
                liu_rss = {
                    sampler.labels[pid]: ss[-1][1] // 1024
                    for pid, ss in sampler.samples.items()
                    if ss and sampler.groups[pid] == "liu" and ss[-1][0] == round(t, 2)
                }
                rate = trader.progress[-1]["rate"] if trader.progress else 0
                print(
                    f"  t={t:6.0f}s  {rate:>6,} events/s  RSS MiB "
                    + ", ".join(f"{k} {v}" for k, v in liu_rss.items()),
                    flush=True,
                )
            k += 1
            time.sleep(max(0.0, t_clock + k * args.interval - time.monotonic()))
        ended_early = trader.proc.poll() is not None
        # the session ends by itself; then the shutdown (drain, end-of-session analysis, postgres stop)
        code = trader.proc.wait(args.exit_timeout) if not ended_early else trader.proc.returncode
        res["trader_exit_code"] = code
        res["trader_exit_after_session_s"] = round(time.monotonic() - t_clock - session_s, 1)
        if ended_early:
            raise RuntimeError(
                f"the trader exited (code {code}) {time.monotonic() - t_clock:.0f} s into a "
                f"{session_s:g} s session; stderr tail:\n" + "".join(trader.tail)
            )
    finally:
        if trader.proc.poll() is None:
            res["trader_exit_code"] = trader.interrupt_and_wait(60)
        if sampler is not None:
            killed = sampler.kill_all()
            if killed:
                res["killed_at_end"] = killed
        elif trader.proc.poll() is None:
            trader.proc.kill()
        trader.reader.join(10)
        trader.stdout.close()
        res["progress"] = trader.progress
        if trader.errors:
            res["trader_errors"] = trader.errors
    res["processes"] = analyse(sampler, session_s, warmup_s)
    res["samples"] = {
        f"{sampler.labels[pid]} [{pid}]": ss for pid, ss in sampler.samples.items() if ss
    }  # (t s, RSS KiB, USS KiB, RssAnon KiB, fds, CPU s)
    res["uss_sampled"] = sampler.uss_ok
    res["session"] = session_summary(summary, trader.progress, session_s)


def session_summary(path: Path, progress: list[dict], session_s: float) -> dict:
    if not path.exists():
        return {"error": f"no summary JSON at {path}"}
    d = json.loads(path.read_text())
    cons = d.get("consumers") or []
    out = {
        "end_reason": d.get("end_reason"),
        "producer_events": (d.get("producer") or {}).get("events"),
        "server_sent_events": d.get("server_sent_events"),
        "processed": sum(c.get("processed", 0) for c in cons),
        "received": sum(c.get("received", 0) for c in cons),
        "sent": sum(d.get("sent_per_consumer") or []),
        "stale": sum(c.get("stale", 0) for c in cons),
        "strategy_errors": sum(c.get("strategy_errors", 0) for c in cons),
        "orders": sum(c.get("orders", 0) for c in cons),
        "fills": sum(c.get("fills_total", 0) for c in cons),
        "cancelled": sum(c.get("cancelled", 0) for c in cons),
        "rejected": sum(c.get("rejected", 0) for c in cons),
        "db_backlog": sum(d.get("db_backlog") or []),
    }
    out["sustained_rate"] = round(out["processed"] / session_s) if session_s else None
    if len(progress) >= 2:
        a, b = progress[0], progress[-1]
        out["logged_rate"] = (
            round((b["events"] - a["events"]) / (b["t"] - a["t"])) if b["t"] > a["t"] else None
        )
        out["logged_rate_min"] = min(p["rate"] for p in progress[1:])
        out["logged_rate_max"] = max(p["rate"] for p in progress[1:])
        # produced minus processed at a 5-s line: events queued for the consumers plus stale drops so far
        out["max_unprocessed_events"] = max(p["events"] - sum(p["processed"]) for p in progress)
    return out


def report(res: dict) -> None:
    print()
    print(f"== {res['date']}, {res['machine']}, load {res['loadavg_start']} → {res.get('loadavg_end')}")
    print(f"command: {res['command']}")
    print(
        f"session {res['session_s']:g} s at {res['params']['rate']:,} events/s, {res['params']['consumers']} "
        f"consumers, {res['params']['symbols']} symbols; samples every {res['params']['interval']:g} s; "
        f"slopes fitted after a warm-up of {res['warmup_s']:g} s (min of 2 min and 10 %)"
    )
    s = res.get("session", {})
    if "processed" in s:
        print(
            f"events: produced {s['producer_events']:,}, processed {s['processed']:,} (sent to consumers "
            f"{s['sent']:,}), stale {s['stale']:,}; sustained {s['sustained_rate']:,} events/s over the session"
            + (
                f" (daemon's 5-s log: {s['logged_rate']:,}/s, lowest {s['logged_rate_min']:,}/s, "
                f"produced − processed up to {s['max_unprocessed_events']:,} (queued + stale so far))"
                if s.get("logged_rate")
                else ""
            )
        )
        print(
            f"orders {s['orders']:,}, fills {s['fills']:,}, cancelled {s['cancelled']:,}, rejected "
            f"{s['rejected']:,}, strategy errors {s['strategy_errors']}, rows left in the spool "
            f"{s['db_backlog']}; end: {s['end_reason']}; trader exit code {res.get('trader_exit_code')}, "
            f"{res.get('trader_exit_after_session_s')} s after the session's end"
        )
    hdr = (
        f"{'process':<34} {'RSS 0 s':>8} {'RSS start':>9} {'RSS end':>8} {'RSS slope MiB/h':>17} "
        f"{'USS end':>8} {'USS slope':>10} {'anon slope':>10} {'CPU':>5} {'fds':>9}  verdict"
    )
    for group, title in (("liu", "liu processes (trader's tree)"), ("postgres", "embedded PostgreSQL")):
        rows = [r for r in res["processes"] if r["group"] == group]
        if not rows:
            continue
        print(f"\n{title}, MiB (0 s = clock start; start = first sample after the warm-up):")
        print(hdr)
        for r in rows:
            if "rss_slope_mib_h" not in r:
                print(f"{r['process']:<34} ({r['samples_fitted']} samples after the warm-up: no fit)")
                continue
            uss_end = f"{r['uss_end_mib']:8.1f}" if "uss_end_mib" in r else f"{'-':>8}"
            uss_sl = f"{r['uss_slope_mib_h']:+10.2f}" if "uss_slope_mib_h" in r else f"{'-':>10}"
            anon = f"{r['anon_slope_mib_h']:+10.2f}" if "anon_slope_mib_h" in r else f"{'-':>10}"
            slope = f"{r['rss_slope_mib_h']:+.2f} ± {r['rss_slope_se']:.2f}"
            fds = f"{r['fds'][0]}→{r['fds'][1]}"
            print(
                f"{r['process']:<34} {r['rss_first_mib']:8.1f} {r['rss_start_mib']:9.1f} {r['rss_end_mib']:8.1f} {slope:>17} "
                f"{uss_end} {uss_sl} {anon} {100 * (r['cpu_share'] or 0):4.0f}% "
                f"{fds:>9}  "
                + (
                    f"GROWS (+{r['fitted_rise_mib']:.1f} MiB {r['verdict_on']} over the window)"
                    if r["grows"]
                    else f"flat ({r['verdict_on']})"
                )
            )
        if group == "postgres":
            print("(RSS here counts the shared buffers each process touched; the verdict is on RssAnon)")
    grows = [r for r in res["processes"] if r.get("grows") and r["group"] == "liu"]
    print(
        "\nliu processes growing beyond noise: "
        + (", ".join(f"{r['process']} {r['rss_slope_mib_h']:+.1f} MiB/h" for r in grows) or "none")
    )
    if res.get("killed_at_end"):
        print(f"killed at the end (still running after the trader): {', '.join(res['killed_at_end'])}")
    if res.get("trader_errors"):
        print("trader errors logged:")
        for line in res["trader_errors"][:5]:
            print(f"  {line}")
    print(f"total {res['wall_s']} s")


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, default=None, help="write the figures (and every sample) here")
    p.add_argument("--minutes", type=float, default=20.0, help="session length (default 20)")
    p.add_argument("--interval", type=float, default=10.0, help="seconds between samples (default 10)")
    p.add_argument("--rate", type=int, default=50_000, help="sim source events/s (default 50000)")
    p.add_argument("--consumers", type=int, default=2)
    p.add_argument("--symbols", type=int, default=500)
    p.add_argument("--order-every", type=int, default=250, help="trades per consumer between order turns")
    p.add_argument(
        "--exit-timeout",
        type=float,
        default=600.0,
        help="seconds the trader may take to shut down after the session",
    )
    p.add_argument("--keep", action="store_true", help="keep the temp dir (plan, logs, pgdata)")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, _terminate)  # as Ctrl-C: stop the trader and everything it started
    if args.minutes <= 0 or args.interval <= 0:
        p.error("--minutes and --interval must be positive")
    cmd = shlex.join([".venv/bin/python", "benchmarks/soak.py", *sys.argv[1:]])
    t0 = time.monotonic()
    res: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": f"{os.cpu_count()} cores ({cpu_model()}), Python {sys.version.split()[0]}",
        "command": cmd,
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "loadavg_start": round(loadavg(), 2),
    }
    tmp = Path(tempfile.mkdtemp(prefix="liu-soak-"))
    print(
        f"soak: {args.minutes:g} min at {args.rate:,} events/s, {args.consumers} consumers, "
        f"{args.symbols} symbols, order turn every {args.order_every} trades; load {res['loadavg_start']}; "
        f"in {tmp}",
        flush=True,
    )
    code = 0
    try:
        run(args, tmp, res)
    except KeyboardInterrupt:
        print("interrupted: the trader and its processes were stopped", file=sys.stderr)
        code = 130
    except Exception as e:  # the processes are gone (run's finally); say why and keep the logs
        print(f"soak failed: {e}", file=sys.stderr)
        res["error"] = str(e)
        args.keep = True
        code = 1
    finally:
        res["wall_s"] = round(time.monotonic() - t0, 1)
        res["loadavg_end"] = round(loadavg(), 2)
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    if code == 0:
        report(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return code


if __name__ == "__main__":
    sys.exit(main())
