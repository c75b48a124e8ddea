"""liu's live path end to end: sim server → producer → consumers → strategy, against a Queue baseline.

Reproduce:  .venv/bin/python benchmarks/live_path.py [--json PATH] [--consumers 1] [--symbols 500]
                [--seconds 3] [--rates 50k,100k,...] [--baseline-rates ...] [--no-cold-start] [--profile]
                [--strategy plain|ml|both] [--speed N] [--tries N] [--source sim|alpaca|both]

Processes are wired exactly as liu/daemon.py does (forkserver context, one Pipe(duplex=False) channel and
one duplex result pipe per consumer, Subscribe(Assign(all symbols)), wait for Subscribed, Start(ClockSpec) to the producer,
("start", spec) to the server, Stop at the end, ConsumerReports back). The server is liu's
MarketDataServer with a pre-encoded SimFeed (trades only, 200 per frame); its rate is changed per step.

Figures: highest sustained offered rate (every event consumed, queue depth not growing, no stale
drops at --stale-after), p50/p99 latency from producer receive to the strategy callback at 80 % of
that rate, stale drops, consumer RSS, cold start of `trader`, and the same ramp for the
one-`mp.Queue.put`-per-event baseline (see benchmarks/_baseline.py).

ML (`--strategy ml|both`): the same ramp with `LiveBenchML`, whose tradeplan entry names a model
(`models = [{spec, version = 1}]`): a 100-tree GradientBoostingClassifier on the 12 features of
models/sma_rsi.toml, trained here on synthetic bars (benchmarks/_ml_bench.py). liu's consumers load it
(pinned, no database) and score it at every bar close. `--speed N` runs the market clock N× wall time so
bars close often (each active symbol closes a minute bar every 60/N s); `stale_after` is then scaled by N
so that it still means --stale-after seconds of wall time. `both` keeps the two pipelines up side by
side and interleaves their steps rate by rate (only one is fed at a time), so the ratio compares the
same minutes of a shared machine; `--tries N` reruns a rate up to N times before it counts as not
sustained. Defaults (plain, speed 1, one try) are the old run. Model cost per bar close: the
consumers' CPU per event, ML minus plain at the same rate, per scored bar (noisy when bars are few).

Alpaca source kind (`--source alpaca|both`; default both): the same workload, with the producer and
consumers set up as `[source] kind = "alpaca"` sets them up against liu's server as a local Alpaca: the
producer on the stock stream path (`/v2/iex`, the crypto path beside it, subscribing updated bars too)
and every consumer warming its symbols from the server's historical-bars REST (alpaca-py's client,
`liu.sources.alpaca.history`) before their first event. Its sustained rate should match the sim
figure within noise; the warm-up time of all `--symbols` (Subscribe sent → every consumer has loaded
or given up on each of its symbols) is reported beside it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from _baseline import (  # noqa: E402
    ML_FIELDS,
    BenchSetup,
    baseline_consumer_main,
    baseline_producer_main,
    bench_consumer_main,
    bench_serve,
)

from liu.brokers.account import Account  # noqa: E402
from liu.clock import ClockSpec  # noqa: E402
from liu.events import Assign, Start, Stop, Subscribe  # noqa: E402
from liu.messages import ConsumerReady, Subscribed  # noqa: E402
from liu.plan import parse_plan  # noqa: E402
from liu.producer import producer_main  # noqa: E402
from liu.stats import SharedStats  # noqa: E402

STRATEGY = str(HERE / "bench_strategy.py")
KEY, SECRET = "bench", "bench-secret"


def _rates(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        out.append(int(float(part[:-1]) * 1000) if part.endswith("k") else int(float(part)))
    return out


def _pct(values: list[int] | array, q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_s(pid: int) -> float:
    """utime + stime of a process (all threads), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def loadavg() -> float:
    return os.getloadavg()[0]


class Pipeline:
    """Server + producer + N consumers, liu's transport or the Queue baseline."""

    def __init__(
        self,
        mode: str,
        consumers: int,
        symbols: int,
        batch: int,
        stale_after: float,
        work: bool = True,
        speed: float = 1.0,
        model: dict | None = None,
        source: str = "sim",
    ) -> None:
        """`model` (from _ml_bench.BenchModel.as_dict): run LiveBenchML with it; `speed`: market clock × wall;
        `source`: "alpaca" wires producer and consumers as kind = "alpaca" does (stream paths, warm-up)."""
        self.mode = mode
        self.source = source
        self.warmup: dict | None = None
        self.n = consumers
        self.speed = speed
        self.ml = model is not None
        ctx = self.ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["liu.engine", "liu.producer", "liu.sources.server", "_baseline"])
        entry = {
            "name": "bench",
            "file": STRATEGY,
            "class": "LiveBench",
            # sim: a synthetic history seeds the indicators; alpaca: the consumers load the server's
            "config": {"warm_symbols": symbols if source == "sim" else 0, "work": work},
        }
        if model is not None:
            entry["class"] = "LiveBenchML"
            entry["config"]["model"] = model["name"]
            entry["models"] = [{"spec": model["spec_path"], "version": model["version"]}]
        self.plan = parse_plan(
            {
                # stale_after is data time: scaled by the speed, it stays `stale_after` seconds of wall time
                "consumers": {"count": consumers, "stale_after": stale_after * speed},
                "source": {"kind": "sim", "symbols": symbols, "batch": batch, "bars": "trades"},
                "strategies": [entry],
            },
            source="live_path benchmark",
        )
        self.server_conn, child = ctx.Pipe()
        self.server = ctx.Process(
            target=bench_serve,
            args=({"symbols": symbols, "batch": batch, "key": KEY, "secret": SECRET}, child),
            name="bench-marketdata",
            daemon=True,
        )
        self.server.start()
        child.close()
        if not self.server_conn.poll(60):
            raise RuntimeError("server did not start")
        _, port, self.symbols = self.server_conn.recv()
        url = f"ws://127.0.0.1:{port}"
        crypto_url = history = None
        kinds: tuple[str, ...] = ("trades", "quotes")
        if source == "alpaca":
            from liu.market import warmup_bars
            from liu.sources.alpaca.client import Credentials, Endpoints
            from liu.sources.alpaca.history import HistorySource

            http = f"http://127.0.0.1:{port}"
            endpoints = Endpoints(http, url, http, "iex")
            url, crypto_url = endpoints.stock_stream, endpoints.crypto_stream
            kinds = (*kinds, "updatedBars")
            history = HistorySource(endpoints, Credentials(KEY, SECRET), warmup_bars(self.plan))
        self.stats = SharedStats(consumers, ctx)
        self.control = ctx.RawArray("q", 2)
        self.ml_counts = ctx.RawArray("q", len(ML_FIELDS) * consumers) if self.ml else None
        self.account = Account(
            self.plan.broker.cash, shared=True, ctx=ctx, slots=consumers, strategies=len(self.plan.strategies)
        )
        self.consumers, self.results, chans = [], [], []
        for i in range(consumers):
            res_r, res_w = ctx.Pipe()  # duplex, as the daemon's: the consumer listens on it
            setup = BenchSetup(
                i,
                self.plan,
                "benchbatch",
                {},
                None,
                self.account,
                self.stats,
                control=self.control,
                ml_counts=self.ml_counts,
                history=history,
            )
            if mode == "liu":
                r, w = ctx.Pipe(duplex=False)
                p = ctx.Process(target=bench_consumer_main, args=(setup, r, res_w), name=f"liu-consumer-{i}")
            else:
                w = r = ctx.Queue()
                p = ctx.Process(
                    target=baseline_consumer_main, args=(setup, r, res_w), name=f"base-consumer-{i}"
                )
            p.start()
            if mode == "liu":
                r.close()
            res_w.close()
            chans.append(w)
            self.consumers.append(p)
            self.results.append(res_r)
        main_end, prod_end = ctx.Pipe()
        target = producer_main if mode == "liu" else baseline_producer_main
        args: tuple = (url, KEY, SECRET, chans, prod_end, self.stats, kinds)
        if crypto_url is not None:
            args = (*args, crypto_url)
        self.producer = ctx.Process(target=target, args=args, name=f"{mode}-producer")
        self.producer.start()
        prod_end.close()
        if mode == "liu":
            for w in chans:
                w.close()
        self.ctl = main_end
        t_subscribe = time.monotonic()
        self.ctl.send(Subscribe(Assign(tuple(self.symbols), (), "")))
        if not self.ctl.poll(30):
            raise RuntimeError("producer did not answer the subscription")
        msg = self.ctl.recv()
        if not isinstance(msg, Subscribed):
            raise RuntimeError(f"producer: {msg}")
        self.wait_ready(120 if self.ml else 60)
        if history is not None:
            self.warmup = self.wait_warm(t_subscribe, history.bars)
        now = time.time_ns()
        # speed 1: data time = wall time, so trade.ts is the server's send time
        spec = ClockSpec(now, now, speed)
        self.ctl.send(Start(spec))
        self.server_conn.send(("start", spec))

    def wait_ready(self, timeout: float) -> None:
        """Every consumer sends ConsumerReady(i) once its runner (strategies, models) is built, as in the daemon."""
        if self.mode == "queue":  # the baseline consumer sends no "ready"
            return
        for i, (conn, p) in enumerate(zip(self.results, self.consumers, strict=True)):
            if not conn.poll(timeout):
                raise RuntimeError(f"consumer {i} not ready after {timeout}s (exit code {p.exitcode})")
            try:
                msg = conn.recv()
            except EOFError:
                raise RuntimeError(f"consumer {i} exited during start-up (exit code {p.exitcode})") from None
            if not isinstance(msg, ConsumerReady):
                raise RuntimeError(f"consumer {i}: expected ready, got {msg!r}")

    def wait_warm(self, t0: float, bars: int, timeout: float = 300) -> dict:
        """Until every consumer has loaded (or given up on) each of its symbols' history; from `t0`."""
        n = len(self.symbols)
        deadline = time.monotonic() + timeout
        while True:
            rows = [self.stats.consumer(i) for i in range(self.n)]
            done = sum(r["warmed"] + r["warm_failed"] for r in rows)
            if done >= n:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"warm-up: {done} of {n} symbols after {timeout:g}s")
            time.sleep(0.01)
        return {
            "symbols": n,
            "bars_per_symbol": bars,
            "seconds": round(time.monotonic() - t0, 3),
            "bars": sum(r["warm_bars"] for r in rows),
            "not_loaded": sum(r["warm_failed"] for r in rows),
        }

    # -- measuring -------------------------------------------------------
    def ml_totals(self) -> dict[str, int]:
        """The model scorers' counts (ML_FIELDS) summed over consumers, as last published (every 50 ms)."""
        a, k = self.ml_counts, len(ML_FIELDS)
        return {f: sum(a[i * k + j] for i in range(self.n)) for j, f in enumerate(ML_FIELDS)}

    def wait_bars(self) -> None:
        """Let the consumers close the last open minute bars (flush_bars: minute end + 2 s of data time,
        checked every 250 ms), so a step's bars are counted in that step."""
        time.sleep(min(62 / self.speed + 0.35, 5.0))

    def depth(self) -> tuple[int, int, int, int]:
        """(sent, received, processed+stale, backlog) summed over consumers."""
        sent = rec = done = back = 0
        for i in range(self.n):
            c = self.stats.consumer(i)
            sent += c["sent"]
            rec += c["received"]
            done += c["processed"] + c["stale"]
            back += c["backlog_bytes"]
        return sent, rec, done, back

    def totals(self) -> dict[str, int]:
        t = {"processed": 0, "stale": 0, "received": 0, "sent": 0}
        for i in range(self.n):
            c = self.stats.consumer(i)
            for k in t:
                t[k] += c[k]
        t["producer_events"] = self.stats.producer()["events"]
        return t

    def set_rate(self, rate: int) -> tuple[int, float]:
        """Restart the server's feed at `rate` (0 = pause); (events sent so far, server's monotonic time)."""
        self.server_conn.send(("rate", rate))
        if not self.server_conn.poll(30):
            raise RuntimeError("server did not answer")
        _, sent, t = self.server_conn.recv()
        return sent, t

    def settle(self, timeout: float = 30) -> bool:
        """Wait until the producer has stopped receiving and every consumer has what it was sent."""
        deadline = time.monotonic() + timeout
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            ev = self.stats.producer()["events"]
            sent, rec, _, _ = self.depth()
            if ev != last:
                last, since = ev, time.monotonic()
            elif rec == sent and time.monotonic() - since >= 0.1:
                return True
            time.sleep(0.01)
        return False

    def step(self, rate: int, seconds: float, step_id: int, stride: int) -> dict:
        self.settle()
        before = self.totals()
        m0 = self.ml_totals() if self.ml else None
        self.control[1] = stride
        self.control[0] = step_id
        load0 = loadavg()
        procs = {"server": self.server.pid, "producer": self.producer.pid}
        procs |= {f"consumer{i}": p.pid for i, p in enumerate(self.consumers)}
        cpu0 = {k: cpu_s(pid) for k, pid in procs.items()}
        s0, ts0 = self.set_rate(rate)
        t0 = time.monotonic()
        samples = []
        while time.monotonic() - t0 < seconds:
            time.sleep(0.1)
            sent, rec, _, back = self.depth()
            samples.append((time.monotonic() - t0, sent - rec, back))
        s1, ts1 = self.set_rate(0)
        t1 = time.monotonic()
        cpu1 = {k: cpu_s(pid) for k, pid in procs.items()}
        self.control[0] = 0
        ok_drain = self.settle()
        drain = time.monotonic() - t1 - 0.1  # settle() waits 0.1 s of quiet
        cpu2 = {k: cpu_s(pid) for k, pid in procs.items()}
        if self.ml:
            self.wait_bars()
            m1 = self.ml_totals()
        # CPU share of one core during the step, and CPU µs per event including the drain
        cpu_share = {k: round((cpu1[k] - cpu0[k]) / (t1 - t0), 2) for k in procs}
        after = self.totals()
        d = {k: after[k] - before[k] for k in after}
        # What entered liu (the producer's count); the server's own count can miss the frame
        # in flight when its feed task is cancelled.
        offered = d["producer_events"]
        dur = ts1 - ts0  # the server's own start → stop of the feed
        half = [s for s in samples if s[0] >= seconds / 2]
        first = [s for s in samples if s[0] < seconds / 2]
        end_depth = statistics.mean(x[1] for x in samples[-3:]) if samples else 0
        grow = (
            (statistics.mean(x[1] for x in half) - statistics.mean(x[1] for x in first)) / (seconds / 2)
            if half and first
            else 0.0
        )
        achieved = (s1 - s0) / dur
        sustained = (
            ok_drain
            and achieved >= 0.97 * rate
            and d["processed"] == offered
            and d["stale"] == 0
            and end_depth <= 0.1 * rate
            and grow <= 0.02 * rate
        )
        out = {
            "target_rate": rate,
            "offered": offered,
            "seconds": round(dur, 3),
            "offered_rate": round(achieved),
            "producer_events": d["producer_events"],
            "processed": d["processed"],
            "stale": d["stale"],
            "max_depth_events": max((x[1] for x in samples), default=0),
            "end_depth_events": round(end_depth),
            "depth_growth_per_s": round(grow),
            "max_backlog": max((x[2] for x in samples), default=0),
            "drain_s": round(drain, 3),
            "loadavg": round(load0, 2),
            "cpu_share": cpu_share,
            "cpu_us_per_event": {k: round((cpu2[k] - cpu0[k]) / max(offered, 1) * 1e6, 2) for k in procs},
            "sustained": bool(sustained),
        }
        if self.ml:
            dm = {f"ml_{k}": m1[k] - m0[k] for k in m1}
            out |= dm | {"ml_scored_per_s": round(dm["ml_scored"] / dur, 1)}
        return out

    def pids(self) -> dict[str, int | list[int]]:
        return {
            "producer": self.producer.pid,
            "consumers": [p.pid for p in self.consumers],
            "server": self.server.pid,
        }

    def close(self) -> list:
        self.ctl.send(Stop("benchmark end"))
        reports = []
        for conn in self.results:
            if conn.poll(60):
                try:
                    reports.append(conn.recv())
                except EOFError:
                    pass
        for p in [*self.consumers, self.producer]:
            p.join(10)
            if p.exitcode is None:
                p.kill()
        try:
            self.server_conn.send(("stop",))
            self.server_conn.poll(5)
        except OSError:
            pass
        self.server.join(5)
        if self.server.exitcode is None:
            self.server.kill()
        return reports


def latency_stats(reports: list, step_id: int) -> dict:
    lat, srv = array("q"), array("q")
    for rep in reports:
        got = getattr(rep, "bench", {}).get(step_id)
        if got:
            a, b = array("q"), array("q")
            a.frombytes(got[0])
            b.frombytes(got[1])
            lat.extend(a)
            srv.extend(b)
    if not lat:
        return {"samples": 0}
    tr = array("q")
    for rep in reports:
        got = getattr(rep, "bench_transport", {}).get(step_id)
        if got:
            tr.frombytes(got)
    return {
        "transport_batches": len(tr),
        "transport_p50_us": round(_pct(tr, 0.50) / 1000, 1),
        "transport_p99_us": round(_pct(tr, 0.99) / 1000, 1),
        "samples": len(lat),
        "p50_us": round(_pct(lat, 0.50) / 1000, 1),
        "p99_us": round(_pct(lat, 0.99) / 1000, 1),
        "max_us": round(max(lat) / 1000, 1),
        "server_to_callback_p50_us": round(_pct(srv, 0.50) / 1000, 1),
        "server_to_callback_p99_us": round(_pct(srv, 0.99) / 1000, 1),
    }


def profile(pids: dict[str, int], seconds: float) -> dict:
    """py-spy (if installed) on the given processes: top self-time functions, in % of samples."""
    exe = os.environ.get("PY_SPY") or next(
        (p for p in ("/tmp/pyspy/bin/py-spy", str(REPO / ".venv/bin/py-spy")) if Path(p).exists()), None
    )
    if exe is None:
        return {"error": "py-spy not found (pip install py-spy, or set PY_SPY)"}
    procs, outs = {}, {}
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, ["/tmp/pyspy", os.environ.get("PYTHONPATH")]))
    )
    for name, pid in pids.items():
        out = Path(tempfile.mkstemp(suffix=".txt")[1])
        outs[name] = out
        procs[name] = subprocess.Popen(
            [
                exe,
                "record",
                "-p",
                str(pid),
                "-d",
                str(int(seconds)),
                "-r",
                "200",
                "-f",
                "raw",
                "-o",
                str(out),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
    result = {}
    for name, p in procs.items():
        p.wait(seconds + 30)
        self_t: dict[str, int] = {}
        incl: dict[str, int] = {}
        total = 0
        for line in outs[name].read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            if not n.isdigit():
                continue
            k = int(n)
            total += k
            frames = stack.split(";")
            leaf = re.sub(r" \(.*?/", " (", frames[-1])
            self_t[leaf] = self_t.get(leaf, 0) + k
            for f in set(frames):
                f = re.sub(r" \(.*?/", " (", f)
                incl[f] = incl.get(f, 0) + k
        outs[name].unlink(missing_ok=True)
        if total:
            result[name] = {
                "samples": total,
                "self_top": [
                    (f, round(100 * v / total, 1))
                    for f, v in sorted(self_t.items(), key=lambda x: -x[1])[:12]
                ],
                "inclusive_top": [
                    (f, round(100 * v / total, 1)) for f, v in sorted(incl.items(), key=lambda x: -x[1])[:25]
                ],
            }
    return result


class Ramp:
    """One pipeline stepped up in rate until two steps in a row are not sustained."""

    def __init__(self, mode: str, args, model: dict | None = None, source: str = "sim") -> None:
        self.t_start = time.monotonic()
        self.args = args
        self.pipe = Pipeline(
            mode,
            args.consumers,
            args.symbols,
            args.batch,
            args.stale_after,
            not args.no_work,
            speed=args.speed,
            model=model,
            source=source,
        )
        self.model = model
        self.label = f"{mode}+ml" if model else mode
        if source != "sim":
            self.label += f"/{source}"
        self.out: dict = {
            "mode": mode,
            "strategy": "ml" if model else "plain",
            "source": source,
            "speed": args.speed,
            "steps": [],
        }
        if self.pipe.warmup is not None:
            self.out["warmup"] = self.pipe.warmup
            w = self.pipe.warmup
            print(
                f"  [{self.label}] warm-up: {w['symbols']:,} symbols × {w['bars_per_symbol']} bars in "
                f"{w['seconds']:.2f} s ({w['bars']:,} bars loaded, {w['not_loaded']} not loaded)",
                flush=True,
            )
        self.best = self.step_id = self.failures = 0
        self.done = False

    def warm(self) -> None:
        pipe = self.pipe
        pipe.set_rate(20_000)  # warm up: every symbol's indicators open, caches filled
        time.sleep(1.0)
        pipe.set_rate(0)
        if pipe.ml:  # the warm-up's last bars close before the first step counts
            pipe.settle()
            pipe.wait_bars()

    def step(self, rate: int) -> None:
        """Run `rate` up to --tries times, until one try is sustained (noise only ever slows a step down)."""
        for attempt in range(1, self.args.tries + 1):
            r = self._try(rate, attempt)
            if r["sustained"]:
                break
        if r["sustained"]:
            self.best = max(self.best, rate)
            self.failures = 0
        else:
            self.failures += 1
            if self.failures >= 2:  # one retry: the machine is shared
                self.done = True

    def _try(self, rate: int, attempt: int) -> dict:
        self.step_id += 1
        r = self.pipe.step(rate, self.args.seconds, self.step_id, 64)
        if self.args.tries > 1:
            r["try"] = attempt
        self.out["steps"].append(r)
        print(
            f"  [{self.label}] {rate:>7,}/s offered {r['offered_rate']:>7,}/s processed {r['processed']:>8,}"
            f"/{r['offered']:<8,} stale {r['stale']:<6} depth end {r['end_depth_events']:<7} "
            f"growth {r['depth_growth_per_s']:>7}/s drain {r['drain_s']:.2f}s load {r['loadavg']:.1f} "
            f"{'OK' if r['sustained'] else 'NOT sustained'}",
            flush=True,
        )
        print(
            "      CPU share of a core "
            + ", ".join(f"{k} {v:.2f}" for k, v in r["cpu_share"].items())
            + "; µs/event "
            + ", ".join(f"{k} {v:.1f}" for k, v in r["cpu_us_per_event"].items()),
            flush=True,
        )
        if self.pipe.ml:
            print(
                f"      ML: {r['ml_bars']:,} bar closes, {r['ml_scored']:,} scored "
                f"({r['ml_scored_per_s']:,.0f}/s of feed time), {r['ml_warming']:,} warming up, "
                f"{r['ml_errors']} errors",
                flush=True,
            )
        return r

    def conclude(self, latency: bool, prof: bool) -> None:
        """Sustained rate, then a latency step at 80 % of it and an optional py-spy profile."""
        out, pipe, best = self.out, self.pipe, self.best
        out["sustained_rate"] = best
        if pipe.ml:
            at = [s for s in out["steps"] if s["sustained"] and s["target_rate"] == best]
            out["ml_scored_per_s_at_sustained"] = at[-1]["ml_scored_per_s"] if at else 0.0
            out["ml_scored_per_s_max"] = max((s["ml_scored_per_s"] for s in out["steps"]), default=0.0)
        if latency and best:
            lat_rate = int(0.8 * best)
            self.step_id += 1
            r = pipe.step(lat_rate, self.args.latency_seconds, self.step_id, 1)
            out["latency_step"] = r
            out["latency_step_id"] = self.step_id
        if prof and best:
            pipe.set_rate(best)
            time.sleep(0.5)
            pids = {"producer": pipe.producer.pid, "consumer0": pipe.consumers[0].pid}
            out["profile_rate"] = best
            out["profile"] = profile(pids, 4)
            pipe.set_rate(0)
            pipe.settle()
        out["consumer_rss_kb"] = [rss_kb(p.pid) for p in pipe.consumers]
        out["producer_rss_kb"] = rss_kb(pipe.producer.pid)

    def close(self) -> dict:
        out = self.out
        reports = self.pipe.close()
        out["stale_total"] = sum(r.stale for r in reports)
        out["processed_total"] = sum(r.processed for r in reports)
        out["strategy_errors"] = sum(r.strategy_errors for r in reports)
        out["consumer_gc"] = [getattr(r, "bench_gc", None) for r in reports]  # gen: [count, total s, max s]
        if self.model:  # the consumers' own scorer counts for the whole run (ConsumerReport.strategies)
            out["ml_models"] = [r.strategies.get("bench", {}).get("models") for r in reports]
        if "latency_step_id" in out:
            out["latency"] = latency_stats(reports, out.pop("latency_step_id"))
        out["wall_s"] = round(time.monotonic() - self.t_start, 1)
        return out


def ramp(
    mode: str,
    rates: list[int],
    args,
    latency: bool,
    prof: bool,
    model: dict | None = None,
    source: str = "sim",
) -> dict:
    """Step the offered rate up until two steps in a row are not sustained; `model`: the ML strategy;
    `source`: "alpaca" for the alpaca source kind's wiring (see the module docstring)."""
    r = Ramp(mode, args, model, source)
    try:
        r.warm()
        for rate in rates:
            r.step(rate)
            if r.done:
                break
        r.conclude(latency, prof)
    finally:
        out = r.close()
    return out


def ramp_pair(rates: list[int], args, model: dict, latency: bool, prof: bool) -> tuple[dict, dict]:
    """Plain and ML pipelines side by side, their steps interleaved rate by rate (order alternating), so
    both see the same machine: on a shared box the load moves between minutes. Only one is fed at a time."""
    plain = Ramp("liu", args)
    try:
        ml = Ramp("liu", args, model)
    except BaseException:
        plain.close()
        raise
    try:
        plain.warm()
        ml.warm()
        for i, rate in enumerate(rates):
            for r in (plain, ml) if i % 2 == 0 else (ml, plain):
                if not r.done:
                    r.step(rate)
            if plain.done and ml.done:
                break
        plain.conclude(latency, prof)
        ml.conclude(latency, prof)
    finally:
        try:
            out_plain = plain.close()
        finally:
            out_ml = ml.close()
    return out_plain, out_ml


# -- cold start ------------------------------------------------------------------


def cold_start(tmp: Path, symbols: int, timeout: float = 60) -> dict:
    plan = f"""
[session]
duration = "60s"
speed = 1
[source]
kind = "sim"
symbols = {symbols}
rate = 20000
bars = "trades"
[database]
data_dir = "{tmp / "pgdata"}"
[consumers]
count = "auto"
stale_after = "5s"
[[strategies]]
name = "bench"
file = "{STRATEGY}"
class = "LiveBench"
"""
    path = tmp / "tradeplan.toml"
    path.write_text(plan)
    cmd = [str(REPO / ".venv/bin/trader"), "--plan", str(path)]
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    found = threading.Event()
    marks: dict[str, float] = {}
    tail: list[str] = []

    def read() -> None:
        for line in proc.stderr:
            tail.append(line)
            del tail[:-30]
            now = time.monotonic() - t0
            if "clock started" in line and "clock" not in marks:
                marks["clock"] = now
                m = re.search(r"([\d.]+)s after spawning", line)
                if m:
                    marks["spawn_to_clock"] = float(m.group(1))
            if "first event processed" in line and not found.is_set():
                marks["first"] = now
                found.set()

    th = threading.Thread(target=read, daemon=True)
    th.start()
    ok = found.wait(timeout)
    proc.send_signal(signal.SIGINT)
    t_int = time.monotonic()
    try:
        code = proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = None
    res = {
        "first_event_s": round(marks["first"], 3) if ok else None,
        "clock_started_s": round(marks["clock"], 3) if "clock" in marks else None,
        "spawn_to_clock_s": marks.get("spawn_to_clock"),
        "exit_after_sigint_s": round(time.monotonic() - t_int, 2),
        "exit_code": code,
        "command": shlex.join(cmd),
    }
    if not ok:
        res["stderr_tail"] = "".join(tail)
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    p.add_argument("--consumers", type=int, default=1)
    p.add_argument("--symbols", type=int, default=500)
    p.add_argument("--batch", type=int, default=200, help="messages per server frame")
    p.add_argument("--seconds", type=float, default=3.0, help="length of each rate step")
    p.add_argument("--latency-seconds", type=float, default=5.0)
    p.add_argument("--stale-after", type=float, default=5.0)
    p.add_argument("--rates", default="25k,50k,75k,100k,150k,200k,250k,300k,400k,500k")
    p.add_argument("--baseline-rates", default="10k,15k,20k,25k,35k,50k,75k,100k")
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument(
        "--no-work", action="store_true", help="strategy does no bar/indicator work (transport only)"
    )
    p.add_argument("--no-cold-start", action="store_true")
    p.add_argument(
        "--profile", action="store_true", help="py-spy the producer and a consumer at the sustained rate"
    )
    p.add_argument(
        "--strategy",
        choices=("plain", "ml", "both"),
        default="plain",
        help="plain: LiveBench; ml: LiveBench + a 100-tree GB ONNX model scored at each bar close; both: each, same run",
    )
    p.add_argument(
        "--tries",
        type=int,
        default=1,
        help="runs of a rate before it counts as not sustained (best of N: noise only slows a step down)",
    )
    p.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="market clock speed (× wall time); e.g. 120 closes each symbol's minute bar every 0.5 s",
    )
    p.add_argument(
        "--source",
        choices=("sim", "alpaca", "both"),
        default="both",
        help="sim: the producer on liu's own stream; alpaca: as [source] kind = 'alpaca' (stream paths, "
        "warm-up from the server's REST); both: each, plain strategy (the alpaca run follows the sim one)",
    )
    args = p.parse_args()
    if args.speed <= 0:
        p.error("--speed must be positive")
    if args.tries < 1:
        p.error("--tries must be at least 1")
    cmd = shlex.join([".venv/bin/python", "benchmarks/live_path.py", *sys.argv[1:]])
    t0 = time.monotonic()
    res: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cores, Python {sys.version.split()[0]}",
        "command": cmd,
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "loadavg_start": round(loadavg(), 2),
    }
    print(
        f"live path: {args.consumers} consumer(s), {args.symbols} symbols, {args.seconds}s steps; "
        f"load {res['loadavg_start']}"
        + (
            f"; strategy {args.strategy}, speed {args.speed:g}×"
            if args.strategy != "plain" or args.speed != 1
            else ""
        ),
        flush=True,
    )
    model = None
    work = None
    if args.strategy != "plain":
        work = tempfile.TemporaryDirectory(prefix="liu-mlbench-")
        from _ml_bench import prepare

        model = prepare(Path(work.name)).as_dict()
        print(
            f"model: {model['estimator']} {model['trees']} stages, classes {model['classes']}, "
            f"{model['features']} features (lookback {model['lookback']} bars), trained on "
            f"{model['train_rows']:,} synthetic rows in {model['train_s']} s → {model['path']}",
            flush=True,
        )
        res["model"] = model
    try:
        if args.strategy == "both":
            res["liu"], res["liu_ml"] = ramp_pair(_rates(args.rates), args, model, True, args.profile)
        elif args.strategy == "ml":
            res["liu_ml"] = ramp("liu", _rates(args.rates), args, True, args.profile, model=model)
        elif args.source != "alpaca":
            res["liu"] = ramp("liu", _rates(args.rates), args, latency=True, prof=args.profile)
        if args.source != "sim":
            res["liu_alpaca"] = ramp("liu", _rates(args.rates), args, True, args.profile, source="alpaca")
    finally:
        if work is not None:
            work.cleanup()
    if "liu" in res and "liu_ml" in res:
        plain, ml = res["liu"]["sustained_rate"], res["liu_ml"]["sustained_rate"]
        res["ml_vs_plain"] = {
            "speed": args.speed,
            "sustained_plain": plain,
            "sustained_ml": ml,
            "ratio_ml_over_plain": round(ml / plain, 3) if plain else None,
            "ml_scored_per_s_at_sustained": res["liu_ml"].get("ml_scored_per_s_at_sustained"),
            "per_rate": cpu_per_bar(res["liu"]["steps"], res["liu_ml"]["steps"]),
        }
    if not args.no_baseline:
        res["baseline"] = ramp("queue", _rates(args.baseline_rates), args, latency=True, prof=args.profile)
    if not args.no_cold_start:
        with tempfile.TemporaryDirectory(prefix="liu-cold-") as d:
            first = cold_start(Path(d), args.symbols)
            second = cold_start(Path(d), args.symbols)
        res["cold_start"] = {"first": first, "second": second}
    res["wall_s"] = round(time.monotonic() - t0, 1)
    res["loadavg_end"] = round(loadavg(), 2)
    report(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


def report(res: dict) -> None:
    print()
    print(f"== {res['date']}, {res['machine']}, load {res['loadavg_start']} → {res['loadavg_end']}")
    print(f"command: {res['command']}")
    if "liu" in res:
        report_ramp(res, res["liu"])
    if "liu_ml" in res:
        report_ml(res)
    if "liu_alpaca" in res:
        report_alpaca(res)
    report_rest(res)


def report_alpaca(res: dict) -> None:
    al = res["liu_alpaca"]
    sim = res.get("liu", {}).get("sustained_rate")
    ratio = f"; alpaca/sim = {al['sustained_rate'] / sim:.2f}×" if sim else ""
    print(f"9. sustained (liu, alpaca source kind): {al['sustained_rate']:,} events/s{ratio}")
    lat = al.get("latency", {})
    if lat.get("samples"):
        print(
            f"   latency at {al['latency_step']['target_rate']:,}/s (producer recv → on_trade): "
            f"p50 {lat['p50_us']:.0f} µs, p99 {lat['p99_us']:.0f} µs ({lat['samples']:,} events)"
        )
    w = al.get("warmup")
    if w:
        print(
            f"10. warm-up of {w['symbols']:,} symbols × {w['bars_per_symbol']} bars from the local server's "
            f"REST: {w['seconds']:.2f} s ({w['bars']:,} bars, {w['not_loaded']} not loaded)"
        )


def cpu_per_bar(plain: list[dict], ml: list[dict]) -> list[dict]:
    """Consumers' CPU per event, plain vs ML, at each rate both ramps ran; the difference per scored bar
    is an estimate of what one bar close's features + ONNX run + on_bar cost in the consumer."""

    def pick(steps: list[dict]) -> dict[int, dict]:  # per rate: the sustained try, else the last one
        by: dict[int, dict] = {}
        for s in steps:
            if not by.get(s["target_rate"], {}).get("sustained"):
                by[s["target_rate"]] = s
        return by

    out = []
    by_rate, by_rate_ml = pick(plain), pick(ml)
    for rate, m in by_rate_ml.items():
        p = by_rate.get(rate)
        if p is None:
            continue
        cp = sum(v for k, v in p["cpu_us_per_event"].items() if k.startswith("consumer"))
        cm = sum(v for k, v in m["cpu_us_per_event"].items() if k.startswith("consumer"))
        extra = (cm * m["offered"] - cp * p["offered"]) / m["ml_scored"] if m["ml_scored"] else None
        out.append(
            {
                "target_rate": m["target_rate"],
                "sustained_plain": p["sustained"],
                "sustained_ml": m["sustained"],
                "consumer_us_per_event_plain": round(cp, 2),
                "consumer_us_per_event_ml": round(cm, 2),
                "ml_scored_per_s": m["ml_scored_per_s"],
                "extra_consumer_us_per_scored_bar": None if extra is None else round(extra, 1),
            }
        )
    return out


def report_ml(res: dict) -> None:
    ml, m = res["liu_ml"], res["model"]
    print(
        f"ML strategy (LiveBenchML + {m['name']} v{m['version']}: {m['estimator']}, {m['trees']} stages, "
        f"{len(m['classes'])} classes, {m['features']} features, scored at each bar close), market clock "
        f"{res['params']['speed']:g}× wall time:"
    )
    print(
        f"7. sustained (liu, ML): {ml['sustained_rate']:,} events/s; bar closes scored at that rate "
        f"{ml.get('ml_scored_per_s_at_sustained', 0):,.0f}/s (max over steps {ml.get('ml_scored_per_s_max', 0):,.0f}/s)"
    )
    lat = ml.get("latency", {})
    if lat.get("samples"):
        print(
            f"   latency at {ml['latency_step']['target_rate']:,}/s (producer recv → on_trade): "
            f"p50 {lat['p50_us']:.0f} µs, p99 {lat['p99_us']:.0f} µs ({lat['samples']:,} events)"
        )
    errors = sum(s.get("ml_errors", 0) for s in ml["steps"])
    print(
        f"   stale drops {ml['stale_total']:,}, model errors {errors}, strategy errors {ml['strategy_errors']}, "
        f"consumer RSS {[round(k / 1024, 1) for k in ml['consumer_rss_kb']]} MiB"
    )
    vs = res.get("ml_vs_plain")
    if vs:
        ratio = vs["ratio_ml_over_plain"]
        print(
            f"8. same run, same speed: plain {vs['sustained_plain']:,} events/s, ML {vs['sustained_ml']:,} "
            f"events/s, ML/plain = {'n/a' if ratio is None else f'{ratio:.2f}×'}"
        )
        for r in vs["per_rate"]:
            extra = r["extra_consumer_us_per_scored_bar"]
            print(
                f"   at {r['target_rate']:,}/s: consumer CPU µs/event plain {r['consumer_us_per_event_plain']:.1f} "
                f"({'OK' if r['sustained_plain'] else 'not sustained'}), ML {r['consumer_us_per_event_ml']:.1f} "
                f"({'OK' if r['sustained_ml'] else 'not sustained'}) with {r['ml_scored_per_s']:,.0f} bars scored/s"
                + ("" if extra is None else f" → ≈{extra:.0f} µs of consumer CPU per scored bar")
            )


def report_ramp(res: dict, liu: dict) -> None:
    print(f"1. sustained (liu): {liu['sustained_rate']:,} events/s")
    lat = liu.get("latency", {})
    if lat.get("samples"):
        print(
            f"2. latency at {liu['latency_step']['target_rate']:,}/s (producer recv → on_trade): "
            f"p50 {lat['p50_us']:.0f} µs, p99 {lat['p99_us']:.0f} µs, max {lat['max_us']:.0f} µs "
            f"({lat['samples']:,} events; server send → on_trade p50 {lat['server_to_callback_p50_us']:.0f}"
            f" µs, p99 {lat['server_to_callback_p99_us']:.0f} µs)"
        )
        print(
            f"   of which producer recv → consumer batch start: p50 {lat['transport_p50_us']:.0f} µs, "
            f"p99 {lat['transport_p99_us']:.0f} µs ({lat['transport_batches']:,} batches)"
        )
        ls = liu["latency_step"]
        print(
            f"   that step: offered {ls['offered_rate']:,}/s, processed {ls['processed']:,}/{ls['offered']:,}, "
            f"stale {ls['stale']}, sustained {ls['sustained']}"
        )
    print(
        f"3. stale drops (liu, whole run, stale_after {res['params']['stale_after']}s): {liu['stale_total']:,}; "
        f"at sustained steps: {sum(s['stale'] for s in liu['steps'] if s['sustained'])}"
    )
    print(
        f"4. consumer RSS: {[round(k / 1024, 1) for k in liu['consumer_rss_kb']]} MiB "
        f"(producer {liu['producer_rss_kb'] / 1024:.1f} MiB)"
    )


def report_rest(res: dict) -> None:
    liu = res.get("liu")
    cs = res.get("cold_start")
    if cs:
        print(
            f"5. cold start to first event: first start (initdb) {cs['first']['first_event_s']} s, "
            f"second start {cs['second']['first_event_s']} s  ({cs['first']['command']})"
        )
        for k in ("first", "second"):
            c = cs[k]
            print(
                f"   {k}: clock started at {c['clock_started_s']} s (processes spawned → clock "
                f"{c['spawn_to_clock_s']} s), exit {c['exit_after_sigint_s']} s after SIGINT, code {c['exit_code']}"
            )
    base = res.get("baseline")
    if base and liu:
        ratio = liu["sustained_rate"] / base["sustained_rate"] if base["sustained_rate"] else float("inf")
        bl = base.get("latency", {})
        print(
            f"6. baseline (one mp.Queue.put per event): sustained {base['sustained_rate']:,} events/s; "
            f"liu/baseline = {ratio:.2f}×"
            + (
                f"; its latency at 80 %: p50 {bl['p50_us']:.0f} µs, p99 {bl['p99_us']:.0f} µs"
                if bl.get("samples")
                else ""
            )
        )
    for name in ("liu", "liu_ml", "baseline"):
        prof = res.get(name, {}).get("profile")
        if prof:
            for proc, d in prof.items():
                if isinstance(d, dict) and "self_top" in d:
                    print(f"   profile {name}/{proc} at {res[name]['profile_rate']:,}/s, self time:")
                    for f, pct in d["self_top"][:8]:
                        print(f"     {pct:5.1f}%  {f}")
    print(f"total {res['wall_s']} s")


if __name__ == "__main__":
    sys.exit(main())
