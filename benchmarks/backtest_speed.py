"""Backtest speed: liu against backtrader, nautilus_trader and backtesting.py on the same bars.

Reproduce (the first run also creates the peers' own virtual environment,
~/.cache/liu-bench-peers/venv, with `pip install backtrader nautilus_trader backtesting "pandas<3"`):

    .venv/bin/python benchmarks/backtest_speed.py --json /tmp/backtest_speed.json
    .venv/bin/python benchmarks/backtest_speed.py --quick          # smaller sizes, under ~3 minutes

Workload: SMA(10/30) crossover, long only, all-in at the next bar's open, no
fees, on 1 x 100,000 and 20 x 100,000 seeded synthetic minute bars (the same
NPZ file for every engine). liu runs the shipped `strategies/sma_cross.py`
through `liu.backtest.run_backtest`. Every engine runs in its own process
(peak RSS is that process's), prints one JSON line, and is checked against a
vectorised NumPy reference of the same rules (`_synthetic.reference`), in
the variant of the rules the engine implements (fill at next open or at
the signal close; one shared account, or one account per symbol).

liu's cost per bar is split by running variants of the strategy: `feed`
(only building the wire tuples), `dispatch` (runner + bar history with a
strategy that does nothing), `indicators` (a strategy that only reads the
two SMAs), `full` (SmaCross: decisions, orders, broker, fills).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import _synthetic as syn  # noqa: E402
import numpy as np  # noqa: E402
from peers._common import peak_rss_mb  # noqa: E402

CASH = 100_000.0
PEERS = ("backtrader", "nautilus", "backtesting")
PEER_PACKAGES = ("backtrader", "nautilus_trader==1.221.*", "backtesting", "pandas<3")
DEFAULT_VENV = Path.home() / ".cache" / "liu-bench-peers" / "venv"
VARIANTS = ("feed", "dispatch", "indicators", "full")
BATCH = 2000  # wire tuples per batch handed to the backtester


# -- liu, run in a child process ---------------------------------------------------------------
try:  # the strategy variants are loaded by liu's plugin loader from this file
    from liu.events import BAR
    from liu.strategy import Strategy

    class DoNothing(Strategy):
        """Receives every bar and does nothing: the runner's dispatch cost."""

        def on_bar(self, bar, ctx):
            return None

    class ReadSmas(Strategy):
        """Reads the two SMAs the way SmaCross does, decides nothing: the indicators' cost."""

        def __init__(self, name, config):
            super().__init__(name, config)
            self._sma = {}

        def on_bar(self, bar, ctx):
            sma = self._sma.get(bar.symbol)
            if sma is None:
                sma = self._sma[bar.symbol] = (
                    ctx.indicator(bar.symbol, "SMA", timeperiod=10),
                    ctx.indicator(bar.symbol, "SMA", timeperiod=30),
                )
            sma[0].value, sma[1].value
            return None

except ImportError:  # imported in the peers' venv: no liu there
    pass


def wire_batches(bars: dict[str, np.ndarray], batch: int = BATCH) -> Iterator[list[tuple]]:
    """Bars as liu wire tuples, time-major (every symbol's bar of a minute, in symbol order)."""
    syms = syn.symbols(bars["close"].shape[0])
    n_sym, n = bars["close"].shape
    rows_per_batch = max(1, batch // n_sym)
    for a in range(0, n, rows_per_batch):
        b = min(n, a + rows_per_batch)
        ts = np.repeat(bars["ts"][a:b], n_sym).tolist()
        cols = [bars[f][:, a:b].T.ravel().tolist() for f in syn.FIELDS]
        yield list(zip([BAR] * len(ts), syms * (b - a), ts, *cols, ts, strict=True))


def _plan(variant: str, n_sym: int):
    from liu.plan import parse_plan

    if variant == "full":
        strategy = {
            "name": "sma_cross",
            "file": str(ROOT / "strategies" / "sma_cross.py"),
            "class": "SmaCross",
            "config": {
                "fast_period": 10,
                "slow_period": 30,
                "allocation": 1.0,
                "allow_short": False,
                "stop_pct": 0.0,  # the peers' rules have no stop-loss
            },
        }
    else:
        cls = {"dispatch": "DoNothing", "indicators": "ReadSmas"}[variant]
        strategy = {"name": variant, "file": str(Path(__file__).resolve()), "class": cls}
    raw = {
        "session": {"env": "BACKTEST"},
        "source": {"kind": "sim", "symbols": syn.symbols(n_sym), "bars": "stream"},
        "broker": {"kind": "paper", "cash": CASH},
        "strategies": [strategy],
    }
    return parse_plan(raw, "backtest_speed plan", ROOT)


def liu_child(bars_path: Path, variant: str, profile: Path | None) -> dict[str, Any]:
    """Run one liu variant over the bars; the JSON result of an engine run."""
    import gc

    bars = syn.load_bars(bars_path)
    n_sym, n = bars["close"].shape
    out: dict[str, Any] = {"engine": "liu", "variant": variant, "bars": n_sym * n}
    gc.collect()
    if variant == "feed":
        t0, c0 = time.perf_counter(), time.process_time()
        seen = sum(len(b) for b in wire_batches(bars))
        out.update(
            elapsed=time.perf_counter() - t0,
            cpu=time.process_time() - c0,
            bars_seen=seen,
            peak_rss_mb=peak_rss_mb(),
        )
        return out
    from liu.backtest import run_backtest

    plan = _plan(variant, n_sym)
    prof = None
    if profile is not None:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t0, c0 = time.perf_counter(), time.process_time()
    res = run_backtest(plan, events=wire_batches(bars), dsn=None)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    if prof is not None:
        prof.disable()
        prof.dump_stats(profile)
    buys = [0] * n_sym
    sells = [0] * n_sym
    index = {s: i for i, s in enumerate(syn.symbols(n_sym))}
    cash = res.start_cash
    held = dict.fromkeys(index, 0.0)
    for f in res.fills:
        (buys if f.side == "buy" else sells)[index[f.symbol]] += 1
        sign = 1.0 if f.side == "buy" else -1.0
        cash -= sign * f.qty * f.price + f.fee
        held[f.symbol] += sign * f.qty
    # Final equity from the fills and the last prices (independent of how the equity curve is sampled).
    equity = cash + sum(q * res.last_price[s] for s, q in held.items() if q)
    out.update(
        elapsed=elapsed,
        cpu=cpu,
        bars_seen=int(res.counts.get("processed", 0)),
        entries=buys,
        exits=sells,
        final_equity=equity,
        curve_final_equity=res.final_equity,
        peak_rss_mb=peak_rss_mb(),
    )
    return out


# -- the parent: data, references, engines, comparison, report ----------------------------------
def ensure_venv(venv: Path) -> Path:
    """The peers' own virtual environment (created and filled on first use); its python."""
    py = venv / "bin" / "python"
    probe = [str(py), "-c", "import backtrader, nautilus_trader, backtesting"]
    if py.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return py
    print(f"creating the peers' virtual environment in {venv} (one time) ...", flush=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", *PEER_PACKAGES], check=True)
    subprocess.run(probe, check=True)
    return py


def run_child(cmd: list[str], timeout: float) -> dict[str, Any]:
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore"}
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode or not lines:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {p.returncode}: {' | '.join(tail)}"}
    return json.loads(lines[-1])


RULES = {  # which variant of the rules each engine implements, and why it differs from liu's
    "liu": ("next_open_cut", True, "a gap-up buy is cut to what the cash pays; the peers overdraw"),
    "backtrader": ("next_open", True, ""),
    "backtesting": (
        "next_open",
        False,
        "one asset per run: each symbol trades its own account of the start cash",
    ),
    "nautilus": (
        "close",
        True,
        "market orders from on_bar fill at the signal bar's close, not the next open",
    ),
}


def check(result: dict[str, Any], ref: syn.Reference, tol: float = 1e-6) -> tuple[bool, str]:
    """Does an engine's result match a reference? (ok, what differs)."""
    if "error" in result:
        return False, result["error"]
    problems = []
    if result.get("bars_seen") != result.get("bars"):
        problems.append(f"saw {result.get('bars_seen')} of {result.get('bars')} bars")
    for key in ("entries", "exits"):
        got, want = result[key], getattr(ref, key)
        if got != want:
            bad = [i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
            problems.append(f"{key} {sum(got)} vs {sum(want)} (symbols {bad[:5]})")
    if result.get("fill_events", result.get("orders")) != result.get("orders"):
        problems.append(f"{result['fill_events']} fill events for {result['orders']} orders (partial fills)")
    curve = result.get("curve_final_equity")
    if curve is not None and abs(curve - result["final_equity"]) > tol:
        problems.append(f"equity curve ends at {curve:,.6f}, fills give {result['final_equity']:,.6f}")
    d = result["final_equity"] - ref.final_equity
    if abs(d) > tol:
        problems.append(f"final equity {result['final_equity']:,.6f} vs {ref.final_equity:,.6f} ({d:+,.6f})")
    return not problems, "; ".join(problems)


def run_size(n_sym: int, n: int, args: argparse.Namespace, peer_py: Path | None, tmp: Path) -> dict[str, Any]:
    """Every engine (and liu's variants) on one size; figures and agreement."""
    label = f"{n_sym} x {n:,}"
    bars = syn.make_bars(n_sym, n, seed=args.seed)
    path = tmp / f"bars-{n_sym}x{n}.npz"
    syn.save_bars(path, bars)
    t0 = time.perf_counter()
    refs = {
        (fill, shared): syn.reference(bars, CASH, fill=fill, shared=shared)
        for fill in ("next_open", "next_open_cut", "close")
        for shared in (True, False)
    }
    ref_s = time.perf_counter() - t0
    liu_ref = refs[("next_open_cut", True)]
    print(
        f"[{label}] reference: {liu_ref.total_entries} entries, {liu_ref.total_exits} exits, "
        f"final equity {liu_ref.final_equity:,.6f} ({ref_s:.2f}s; {liu_ref.near_ties} near-tie bars)",
        flush=True,
    )
    out: dict[str, Any] = {
        "symbols": n_sym,
        "bars_per_symbol": n,
        "bars": n_sym * n,
        "engines": {},
        "liu_variants": {},
    }
    me = [sys.executable, str(Path(__file__).resolve()), "--child", "--bars", str(path)]
    for variant in VARIANTS:
        if variant != "full" and args.no_breakdown:
            continue
        runs = [run_child([*me, "--variant", variant], args.timeout) for _ in range(args.repeat)]
        ok = [x for x in runs if "cpu" in x]
        r = min(ok, key=lambda x: x["cpu"]) if ok else runs[0]  # least disturbed by the shared machine
        r["cpu_runs"] = [x.get("cpu") for x in runs]
        out["liu_variants"][variant] = r
        print(f"[{label}] liu {variant}: {_brief(r)}", flush=True)
    engines: dict[str, dict[str, Any]] = {"liu": out["liu_variants"]["full"]}
    for peer in PEERS:
        if peer_py is None or peer not in args.engines:
            continue
        r = run_child(
            [str(peer_py), str(HERE / "peers" / f"run_{peer}.py"), "--bars", str(path), "--cash", str(CASH)],
            args.timeout,
        )
        engines[peer] = r
        print(f"[{label}] {peer}: {_brief(r)}", flush=True)
    for name, r in engines.items():
        fill, shared, why = RULES[name]
        shared = shared or n_sym == 1
        ok, diff = check(r, refs[(fill, shared)])
        ok_liu, diff_liu = check(r, liu_ref) if (fill, shared) != ("next_open_cut", True) else (ok, diff)
        r["agreement"] = {
            "rules": f"fill={fill}, {'shared account' if shared else 'one account per symbol'}",
            "matches_reference_of_its_rules": ok,
            "difference_from_its_rules": diff,
            "matches_liu_rules": ok_liu,
            "difference_from_liu_rules": diff_liu,
            "why_rules_differ": why if (fill, shared) != ("next_open_cut", True) else "",
        }
        if "cpu" in r:
            r["bars_per_s"] = r["bars"] / r["cpu"]
            r["bars_per_s_wall"] = r["bars"] / r["elapsed"]
            r["us_per_bar"] = 1e6 * r["cpu"] / r["bars"]
        out["engines"][name] = r
    out["references"] = {
        f"{fill},{'shared' if shared else 'per_symbol'}": {
            "entries": ref.total_entries,
            "exits": ref.total_exits,
            "final_equity": ref.final_equity,
            "near_ties": ref.near_ties,
        }
        for (fill, shared), ref in refs.items()
    }
    v = out["liu_variants"]
    if all("cpu" in v.get(k, {}) for k in VARIANTS):
        us = {k: 1e6 * v[k]["cpu"] / out["bars"] for k in VARIANTS}
        out["liu_cost_us_per_bar"] = {
            "feed (building wire tuples)": us["feed"],
            "dispatch (runner, bar history, do-nothing strategy)": us["dispatch"] - us["feed"],
            "indicators (two streaming SMAs, read by the strategy)": us["indicators"] - us["dispatch"],
            "broker + strategy logic (SmaCross decisions, orders, fills)": us["full"] - us["indicators"],
            "total": us["full"],
        }
    liu, ratios = out["engines"]["liu"], {}
    for peer, goal in (("nautilus", 10.0), ("backtesting", 2.0), ("backtrader", None)):
        p = out["engines"].get(peer, {})
        if "bars_per_s" in liu and "bars_per_s" in p:
            ratios[f"liu/{peer}"] = {"ratio": liu["bars_per_s"] / p["bars_per_s"], "goal": goal}
    out["ratios"] = ratios
    return out


def _brief(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"ERROR {r['error']}"
    return f"{r['bars'] / r['cpu']:,.0f} bars/s cpu ({r['elapsed']:.2f}s wall), {r['peak_rss_mb']:.0f} MiB"


def render(report: dict[str, Any], command: str) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=max(Console().width, 160))
    t = Table(
        title=f"Backtest speed, SMA(10/30) cross · {report['date']} · {report['machine']}",
        title_justify="left",
    )
    cols = (
        "size",
        "engine",
        "bars/s (cpu)",
        "bars/s (wall)",
        "µs/bar",
        "peak RSS MiB",
        "entries/exits",
        "final equity",
        "agrees",
    )
    for col in cols:
        t.add_column(col, justify="left" if col in ("engine", "agrees", "size") else "right")
    notes: list[str] = []
    for size in report["sizes"]:
        label = f"{size['symbols']} × {size['bars_per_symbol']:,}"
        for name, r in size["engines"].items():
            if "error" in r:
                notes.append(f"{label} {name}: [red]{r['error']}")
                t.add_row(label, name, "", "", "", "", "", "", f"[red]error ({len(notes)})")
                continue
            a = r["agreement"]
            if a["matches_liu_rules"]:
                agree = "[green]yes"
            elif a["matches_reference_of_its_rules"]:
                notes.append(
                    f"{label} {name}: matches the reference of its own rules ({a['rules']}): "
                    f"{a['why_rules_differ']}. Against liu's rules: {a['difference_from_liu_rules']}"
                )
                agree = f"[yellow]own rules ({len(notes)})"
            else:
                notes.append(f"{label} {name}: [red]{a['difference_from_its_rules']}")
                agree = f"[red]NO ({len(notes)})"
            t.add_row(
                label,
                name,
                f"{r['bars_per_s']:,.0f}",
                f"{r['bars_per_s_wall']:,.0f}",
                f"{r['us_per_bar']:.2f}",
                f"{r['peak_rss_mb']:,.0f}",
                f"{sum(r['entries'])}/{sum(r['exits'])}",
                f"{r['final_equity']:,.2f}",
                agree,
            )
        t.add_section()
    con.print(t)
    for i, note in enumerate(notes, 1):
        con.print(f"({i}) {note}")
    rt = Table(title="liu / peer (bars/s, cpu)", title_justify="left")
    for col in ("size", "ratio", "value", "goal"):
        rt.add_column(col)
    for size in report["sizes"]:
        for k, v in size["ratios"].items():
            goal = v["goal"]
            ok = (
                "" if goal is None else ("[green]met" if v["ratio"] >= goal else f"[red]missed (≥ {goal:g}×)")
            )
            rt.add_row(f"{size['symbols']} × {size['bars_per_symbol']:,}", k, f"{v['ratio']:.2f}×", ok)
    con.print(rt)
    ct = Table(title="liu cost per bar (µs, cpu), from variants", title_justify="left")
    ct.add_column("part")
    sizes = [s for s in report["sizes"] if "liu_cost_us_per_bar" in s]
    for s in sizes:
        ct.add_column(f"{s['symbols']} × {s['bars_per_symbol']:,}", justify="right")
    if sizes:
        for part in sizes[0]["liu_cost_us_per_bar"]:
            ct.add_row(part, *(f"{s['liu_cost_us_per_bar'][part]:.2f}" for s in sizes))
        con.print(ct)
    con.print(f"liu at {report['liu_commit']}; peers {report.get('peer_versions', {})}")
    con.print(f"Reproduce: [bold]{command}")


def _git_state() -> str:
    """HEAD, and whether liu/ or strategies/ had uncommitted changes (figures depend on them)."""

    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--", "liu", "strategies")
    return git("rev-parse", "--short", "HEAD") + (" + uncommitted changes in liu/" if dirty else "")


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for part in text.split(","):
        a, b = part.lower().split("x")
        sizes.append((int(a), int(b)))
    return sizes


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--json", type=Path, help="write every figure to this file")
    ap.add_argument("--quick", action="store_true", help="smaller sizes: 1 x 20,000 and 20 x 5,000 bars")
    ap.add_argument("--sizes", help="symbols x bars, comma separated (default 1x100000,20x100000)")
    ap.add_argument(
        "--engines",
        default=",".join(PEERS),
        help=f"peers to run (default {','.join(PEERS)}); '' for liu only",
    )
    ap.add_argument(
        "--venv", type=Path, default=DEFAULT_VENV, help=f"peers' virtual environment (default {DEFAULT_VENV})"
    )
    ap.add_argument("--no-breakdown", action="store_true", help="skip liu's cost-per-bar variants")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each liu variant; the least cpu counts")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per engine run")
    ap.add_argument(
        "--profile", type=Path, help="also cProfile liu (full) on the first size, stats to this file"
    )
    args = ap.parse_args()
    args.engines = [e for e in args.engines.split(",") if e]
    unknown = set(args.engines) - set(PEERS)
    if unknown:
        ap.error(f"--engines: unknown {sorted(unknown)}; expected some of {PEERS}")
    sizes = (
        parse_sizes(args.sizes)
        if args.sizes
        else ([(1, 20_000), (20, 5_000)] if args.quick else [(1, 100_000), (20, 100_000)])
    )
    peer_py = ensure_venv(args.venv) if args.engines else None
    command = " ".join(["python", "benchmarks/backtest_speed.py", *sys.argv[1:]])
    report: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, load {os.getloadavg()[0]:.1f}",
        "command": command,
        "liu_commit": _git_state(),
        "workload": "SMA(10/30) cross, long only, all-in at the next bar's open, no fees, start cash 100,000",
        "sizes": [],
    }
    if peer_py is not None:
        versions = subprocess.run(
            [
                str(peer_py),
                "-c",
                "import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in ('backtrader', 'nautilus_trader', 'backtesting', 'pandas')}))",
            ],
            capture_output=True,
            text=True,
        )
        report["peer_versions"] = json.loads(versions.stdout) if versions.returncode == 0 else {}
    with tempfile.TemporaryDirectory(prefix="liu-bench-") as tmp:
        for n_sym, n in sizes:
            report["sizes"].append(run_size(n_sym, n, args, peer_py, Path(tmp)))
        if args.profile:
            n_sym, n = sizes[0]
            path = Path(tmp) / f"bars-{n_sym}x{n}.npz"
            run_child(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--child",
                    "--bars",
                    str(path),
                    "--profile",
                    str(args.profile),
                ],
                args.timeout,
            )
            import pstats

            pstats.Stats(str(args.profile)).sort_stats("tottime").print_stats(25)
    report["machine"] += f" (load {os.getloadavg()[0]:.1f} at the end)"
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    render(report, command)


def _child_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bars", type=Path, required=True)
    ap.add_argument("--variant", choices=VARIANTS, default="full")
    ap.add_argument("--profile", type=Path)
    a = ap.parse_args(argv)
    print(json.dumps(liu_child(a.bars, a.variant, a.profile)))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child_main(sys.argv[2:])
    else:
        main()
