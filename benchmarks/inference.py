"""Model inference inside a consumer: single-row ONNX scoring at bar close, against scikit-learn.

Reproduce:  .venv/bin/python benchmarks/inference.py [--json PATH] [--trees 100] [--sklearn-rows 2000]

What runs (one process, like one consumer):
1. A 100-tree GradientBoostingClassifier (binary: 5-bar forward return > 0) is trained on the features of
   models/sma_rsi.toml (12 TA-Lib + derived features) over real minute bars of SPY, AIG, BAC, IBM
   (../shared/data/us_equity_minute_lean.csv.gz), exported with liu.ml.export (zipmap off) and loaded
   through liu.ml.inference.load_model (validated, one intra-op thread).
2. Every bar goes through `ModelScorer` exactly as in a consumer (bar hook: streaming feature update,
   float32 row into the preallocated buffer, onnxruntime run, latest output stored, prediction queued
   in a PredictionWriter buffer). Timed per bar: the whole hook, the ONNX run alone, the feature update alone.
3. In the same run, scikit-learn `predict_proba` on the same rows, one row at a time.
4. A consumer-like loop: `StrategyRunner.process` over batches of bar events (every event closes a
   bar: the worst case for per-bar ML work), with strategies/ml_vote.py (this model) against
   strategies/sma_cross.py (no model), in events/s.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from _ml_bench import train_and_place  # noqa: E402

from liu.brokers.account import Account  # noqa: E402
from liu.engine import build_runner  # noqa: E402
from liu.events import BAR, Bar  # noqa: E402
from liu.ml.inference import ModelScorer, load_model  # noqa: E402
from liu.ml.pipeline import FeaturePipeline  # noqa: E402
from liu.ml.predictions import PredictionWriter  # noqa: E402
from liu.ml.spec import load_spec  # noqa: E402
from liu.plan import parse_plan  # noqa: E402

SYMBOLS = ("SPY", "AIG", "BAC", "IBM")
DATA = (
    Path(os.environ.get("LIU_SAMPLE_DATA", REPO.parent / "shared" / "data")) / "us_equity_minute_lean.csv.gz"
)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def load_bars() -> dict[str, dict[str, np.ndarray]]:
    df = pd.read_csv(DATA)
    df = df[df["symbol"].isin(SYMBOLS) & df["close"].notna()].copy()
    df["ts"] = pd.to_datetime(df["timestamp"], utc=True, format="ISO8601").dt.as_unit("ns").astype("int64")
    out = {}
    for sym, g in df.sort_values("ts").groupby("symbol"):
        out[sym] = {c: g[c].to_numpy(np.float64) for c in ("open", "high", "low", "close", "volume", "ts")}
    return out


def bar_events(bars: dict) -> list[tuple]:
    rows = [
        (BAR, s, int(b["ts"][i]), b["open"][i], b["high"][i], b["low"][i], b["close"][i], b["volume"][i], 0)
        for s, b in bars.items()
        for i in range(len(b["ts"]))
    ]
    return sorted(rows, key=lambda r: (r[2], r[1]))


def make_model(work: Path, bars: dict, trees: int):
    """Spec (sma_rsi features, binary label) + trained estimator + registered-like ONNX file."""
    text = (REPO / "models" / "sma_rsi.toml").read_text()
    text = text.replace("classes = 3", "classes = 2").replace("down = -0.0005", "down = 0.0")
    text = text.replace('metric = "log_loss"', 'metric = "roc_auc"').replace(
        'dir = "../.liu/models"', 'dir = "registry"'
    )
    text = text.replace("n_estimators = 100", f"n_estimators = {trees}")
    spec_path = work / "sma_rsi_bench.toml"
    spec_path.write_text(text.replace('name = "sma_rsi"', 'name = "bench"', 1))
    spec = load_spec(spec_path)
    pipe = FeaturePipeline(spec)
    est, path, _ = train_and_place(spec, pipe, bars, 1)
    return spec_path, pipe, est, load_model(path, pipe, name="bench", version=1, spec_file=spec_path)


def scorer_latency(pipe, loaded, events: list[tuple], rounds: int) -> dict:
    """Per bar: the whole bar hook (features + ONNX + bookkeeping) and the ONNX run alone, in µs."""
    hook_ns: list[int] = []
    onnx_ns: list[int] = []
    rows: list[np.ndarray] = []
    outs: list[np.ndarray] = []
    pc = time.perf_counter_ns
    for r in range(rounds):
        sink = PredictionWriter(
            "postgresql://unused", "bench"
        )  # its add() only appends (flushes are not timed)
        scorer = ModelScorer(None, sink)
        scorer.add(loaded, pipe, strategies=["bench"])
        m = scorer.models["bench"]
        run, outs_names, feed, buf = m.run, m.outs, m.feed, m.group.buf
        bars = [Bar(e[1], e[2], e[3], e[4], e[5], e[6], e[7]) for e in events]
        gc.collect()
        gc.disable()
        try:
            for bar in bars:
                before = m.scored[1]
                t0 = pc()
                scorer(bar)
                t1 = pc()
                if m.scored[1] != before:  # a scored bar (not warm-up)
                    hook_ns.append(t1 - t0)
                    t2 = pc()
                    run(outs_names, feed, None)
                    onnx_ns.append(pc() - t2)
                    if r == 0:
                        rows.append(buf[0].copy())
                        outs.append(m.latest[bar.symbol])
        finally:
            gc.enable()
    feat_ns: list[int] = []
    for _ in range(rounds):  # the streaming feature update alone, on fresh streams
        streams = {s: pipe.stream() for s in {e[1] for e in events}}
        gc.disable()
        try:
            for e in events:
                st = streams[e[1]]
                t0 = pc()
                row = st.update(e[3], e[4], e[5], e[6], e[7])
                dt = pc() - t0
                if row is not None:
                    feat_ns.append(dt)
        finally:
            gc.enable()
    return {
        "bars_scored_per_round": len(rows),
        "features_p50_us": pct(feat_ns, 0.5) / 1000,
        "features_p99_us": pct(feat_ns, 0.99) / 1000,
        "hook_p50_us": pct(hook_ns, 0.5) / 1000,
        "hook_p99_us": pct(hook_ns, 0.99) / 1000,
        "onnx_p50_us": pct(onnx_ns, 0.5) / 1000,
        "onnx_p99_us": pct(onnx_ns, 0.99) / 1000,
        "_rows": np.array(rows),
        "_outs": np.array(outs),
    }


def sklearn_latency(est, rows: np.ndarray, n: int) -> dict:
    """predict_proba on one row at a time (float32 rows, as ONNX sees them), in µs."""
    pick = rows[np.linspace(0, len(rows) - 1, min(n, len(rows))).astype(int)].astype(np.float64)
    ts: list[int] = []
    pc = time.perf_counter_ns
    for x in pick:
        x2 = x.reshape(1, -1)
        t0 = pc()
        est.predict_proba(x2)
        ts.append(pc() - t0)
    return {"rows": len(pick), "p50_us": pct(ts, 0.5) / 1000, "p99_us": pct(ts, 0.99) / 1000}


async def runner_rate(plan, events: list[tuple], batch: int, rounds: int) -> dict:
    """events/s of StrategyRunner.process over bar-event batches (median of `rounds` fresh runners)."""
    rates = []
    for _ in range(rounds):
        runner = build_runner(plan, Account(1e9), {}, order_prefix="b")
        runner.assign(sorted({e[1] for e in events}))
        await runner.start()
        chunks = [events[i : i + batch] for i in range(0, len(events), batch)]
        gc.collect()
        t0 = time.perf_counter()
        for c in chunks:
            await runner.process(c)
        dt = time.perf_counter() - t0
        rates.append(len(events) / dt)
        assert runner.counts["strategy_errors"] == 0, runner.counts
    return {
        "events": len(events),
        "events_per_s": round(statistics.median(rates)),
        "runs": [round(r) for r in rates],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    p.add_argument("--trees", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3, help="passes over all bars for the latency figures")
    p.add_argument("--sklearn-rows", type=int, default=2000)
    p.add_argument("--batch", type=int, default=200, help="events per batch in the runner loop")
    args = p.parse_args()
    cmd = shlex.join([".venv/bin/python", "benchmarks/inference.py", *sys.argv[1:]])
    if not DATA.exists():
        print(f"recorded data {DATA} is absent (set LIU_SAMPLE_DATA)")
        return 2
    res: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cores, Python {sys.version.split()[0]}",
        "command": cmd,
        "loadavg_start": round(os.getloadavg()[0], 2),
    }
    bars = load_bars()
    events = bar_events(bars)
    with tempfile.TemporaryDirectory(prefix="liu-inference-") as d:
        work = Path(d)
        spec_path, pipe, est, loaded = make_model(work, bars, args.trees)
        res["model"] = {
            "estimator": f"GradientBoostingClassifier(n_estimators={args.trees}), binary",
            "features": pipe.width,
            "bars": len(events),
            "symbols": list(SYMBOLS),
        }
        lat = scorer_latency(pipe, loaded, events, args.rounds)
        rows, outs = lat.pop("_rows"), lat.pop("_outs")
        sk = sklearn_latency(est, rows, args.sklearn_rows)
        diff = float(np.abs(est.predict_proba(rows.astype(np.float64)) - outs).max())
        res["scoring"] = lat | {"max_abs_diff_vs_sklearn": diff}
        res["sklearn"] = sk
        res["speedup_hook_p50"] = round(sk["p50_us"] / lat["hook_p50_us"], 1)
        res["speedup_onnx_p50"] = round(sk["p50_us"] / lat["onnx_p50_us"], 1)

        vote = parse_plan(
            {
                "strategies": [
                    {
                        "name": "vote",
                        "file": str(REPO / "strategies" / "ml_vote.py"),
                        "class": "MlVote",
                        "models": [{"spec": str(spec_path), "version": 1}],
                        "config": {"threshold": 0.55, "allocation": 0.01},
                    }
                ],
                "source": {"bars": "stream"},
            },
            base_dir=work,
        )
        plain = parse_plan(
            {
                "strategies": [
                    {
                        "name": "sma",
                        "file": str(REPO / "strategies" / "sma_cross.py"),
                        "class": "SmaCross",
                        "config": {"fast_period": 10, "slow_period": 30, "allocation": 0.01},
                    }
                ],
                "source": {"bars": "stream"},
            },
            base_dir=work,
        )
        res["runner_ml_vote"] = asyncio.run(runner_rate(vote, events, args.batch, args.rounds))
        res["runner_sma_cross"] = asyncio.run(runner_rate(plain, events, args.batch, args.rounds))
    res["ml_vs_plain"] = round(
        res["runner_ml_vote"]["events_per_s"] / res["runner_sma_cross"]["events_per_s"], 2
    )
    res["loadavg_end"] = round(os.getloadavg()[0], 2)
    report(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


def report(res: dict) -> None:
    s, sk = res["scoring"], res["sklearn"]
    print(f"== {res['date']}, {res['machine']}, load {res['loadavg_start']} → {res['loadavg_end']}")
    print(f"command: {res['command']}")
    m = res["model"]
    print(
        f"model: {m['estimator']}, {m['features']} features, {m['bars']:,} real minute bars of {m['symbols']}"
    )
    print(
        f"1. bar hook (streaming features + ONNX + bookkeeping), per scored bar: p50 {s['hook_p50_us']:.1f} µs, "
        f"p99 {s['hook_p99_us']:.1f} µs   (goal p50 ≤ 10 µs)"
    )
    print(
        f"   of which the streaming feature update ({res['model']['features']} features): "
        f"p50 {s['features_p50_us']:.1f} µs, p99 {s['features_p99_us']:.1f} µs"
    )
    print(
        f"   ONNX run alone (1 row, float32, preallocated): p50 {s['onnx_p50_us']:.1f} µs, p99 {s['onnx_p99_us']:.1f} µs"
    )
    print(
        f"2. scikit-learn predict_proba, 1 row ({sk['rows']:,} rows): p50 {sk['p50_us']:.1f} µs, p99 {sk['p99_us']:.1f} µs"
    )
    print(
        f"3. speed-up at p50: whole hook {res['speedup_hook_p50']}×, ONNX run {res['speedup_onnx_p50']}×   "
        f"(goal ≥ 20×); max |ONNX − sklearn| = {s['max_abs_diff_vs_sklearn']:.1e}"
    )
    a, b = res["runner_ml_vote"], res["runner_sma_cross"]
    print(
        f"4. runner loop, every event a bar close: ml_vote {a['events_per_s']:,} events/s, "
        f"sma_cross {b['events_per_s']:,} events/s (ratio {res['ml_vs_plain']})"
    )


if __name__ == "__main__":
    sys.exit(main())
