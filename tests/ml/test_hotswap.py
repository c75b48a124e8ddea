"""Hot-swap under load: `trader model promote` while the daemon replays recorded bars.

Every closed bar of every symbol is scored exactly once, by the old or the new version; per symbol
the switch is one cut (no v1 row after a v2 row); the counts in PostgreSQL, the consumers' reports
and the recorded file agree.

The promotion does not race the replay: the strategy holds each consumer at its first bar at or
after GATE (data time) until version 2 serves there, and the test promotes once both consumers
are held. So the cut is exact: bars before GATE and each consumer's gate bar are version 1's, all
later bars version 2's, however slow the machine.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import asyncpg
import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import GradientBoostingClassifier

from liu.ml.pipeline import FeaturePipeline
from liu.ml.registry import Registry
from liu.ml.spec import load_spec
from liu.shard import shard_of
from liu.testing import sample_data
from tests.helpers import REPO, eventually, trader_command
from tests.ml.helpers import minute_bars, train, write_spec

pytestmark = pytest.mark.slow
SYMBOLS = ["SPY", "AIG", "BAC", "IBM"]  # AIG, BAC on consumer 0; SPY, IBM on consumer 1
START, END = "2013-10-07 09:30", "2013-10-07 13:30"  # end exclusive, like the replay
GATE = pd.Timestamp("2013-10-07 10:00", tz="America/New_York").value  # 3 s into the replay at speed 600

# MlVote, holding the consumer (its on_bar awaits; the consumer's housekeeping, which swaps models,
# keeps running) at its first bar at or after gate_ns until model `tiny` serves version 2. It leaves
# held.<pid> = "symbol bar_ts version" when it starts holding, released.<pid> when it lets go.
GATED_VOTE = """
import asyncio, os, time
from pathlib import Path

from liu.plugins import load_class
from liu.strategy import Strategy

MlVote = load_class(Path({vote!r}), "MlVote", Strategy)


class GatedVoteConfig(MlVote.Config):
    gate_ns: int


class GatedVote(MlVote):
    Config = GatedVoteConfig
    held = False

    async def on_bar(self, bar, ctx):
        if not self.held and bar.ts >= self.config.gate_ns:
            self.held = True
            Path(f"held.{{os.getpid()}}").write_text(f"{{bar.symbol}} {{bar.ts}} {{ctx.model_version('tiny')}}")
            end = time.monotonic() + 120
            while ctx.model_version("tiny") != 2:  # swapped by the consumer's housekeeping task
                if time.monotonic() > end:
                    raise RuntimeError("gate: model tiny version 2 did not arrive within 120s")
                await asyncio.sleep(0.02)
            Path(f"released.{{os.getpid()}}").write_text("2")
        return super().on_bar(bar, ctx)
"""


def replay_bars() -> pd.DataFrame:
    """The bar events the replay sends: rows of the window with a trade close (bar starts, UTC ns)."""
    df = pd.read_csv(sample_data("us_equity_minute_lean.csv.gz"))
    df = df[df["symbol"].isin(SYMBOLS) & df["close"].notna()].copy()
    ts = pd.to_datetime(df["timestamp"], utc=True, format="ISO8601")
    lo = pd.Timestamp(START, tz="America/New_York")
    hi = pd.Timestamp(END, tz="America/New_York")
    df = df[(ts >= lo) & (ts < hi)].copy()
    df["ts"] = ts[df.index].dt.as_unit("ns").astype("int64")
    return df.sort_values(["symbol", "ts"])


async def _predictions(dsn: str, batch_id: str) -> list:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(
            "SELECT version, symbol, bar_ts, outputs FROM predictions WHERE batch_id = $1 AND model = 'tiny' "
            "ORDER BY id",
            batch_id,
        )
    finally:
        await conn.close()


def test_promote_while_the_daemon_runs_scores_every_bar_once(tmp_path, pg_dsn):
    spec_path = write_spec(tmp_path)
    spec = load_spec(spec_path)
    lookback = FeaturePipeline(spec).lookback
    train_bars = minute_bars(tuple(SYMBOLS), n=300)  # 2013-10-04 and early 10-07: before the replay window
    _, v1 = train(
        spec_path, train_bars, GradientBoostingClassifier(n_estimators=30, max_depth=3, random_state=0)
    )
    _, v2 = train(
        spec_path, train_bars, GradientBoostingClassifier(n_estimators=10, max_depth=2, random_state=1)
    )
    reg = Registry(spec.registry_root, pg_dsn)
    assert asyncio.run(reg.register(spec, v1, {}, 0.6)) == 1  # best: serving at start
    assert asyncio.run(reg.register(spec, v2, {}, 0.5)) == 2

    plan = f"""
[session]
duration = "5m"
speed = 600
[source]
kind = "replay"
path = "{sample_data("us_equity_minute_lean.csv.gz")}"
symbols = {json.dumps(SYMBOLS)}
bars = "stream"
start = "{START}"
end = "{END}"
[database]
dsn = "{pg_dsn}"
[consumers]
count = 2
stale_after = "1d"  # consumers load sklearn + models after the clock starts (see report)
[[strategies]]
name = "vote"
file = "gated_vote.py"
class = "GatedVote"
models = [{{ spec = "{spec_path}" }}]
[strategies.config]
threshold = 0.55
allocation = 0.05
gate_ns = {GATE}
"""
    (tmp_path / "gated_vote.py").write_text(GATED_VOTE.format(vote=str(REPO / "strategies" / "ml_vote.py")))
    (tmp_path / "tradeplan.toml").write_text(plan)
    summary_path = tmp_path / "summary.json"
    log_path = tmp_path / "trader.log"  # a file, not a pipe: nothing blocks while the test waits

    def log() -> str:
        return log_path.read_text()[-3000:]

    with log_path.open("w") as log_file:
        trader = subprocess.Popen(
            trader_command("--plan", "tradeplan.toml", "--summary-json", str(summary_path)),
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    try:

        def marks(kind: str) -> list[Path]:
            assert trader.poll() is None, f"trader ended before both consumers were {kind}:\n{log()}"
            found = sorted(tmp_path.glob(f"{kind}.*"))
            return found if len(found) == 2 and all(f.read_text() for f in found) else []

        gates = eventually(lambda: marks("held"), 120, "both consumers holding at the gate", 0.05)
        promote = subprocess.run(
            trader_command("model", "promote", "tiny", "2", "--plan", "tradeplan.toml"),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert promote.returncode == 0, promote.stdout + promote.stderr
        eventually(
            lambda: marks("released"), 60, "version 2 serving on both consumers (gates released)", 0.05
        )
        trader.wait(timeout=240)
    finally:
        if trader.poll() is None:
            trader.kill()
    err = log_path.read_text()
    assert trader.returncode == 0, err[-3000:]
    gate_bars = {}
    for g in gates:
        sym, ts, version = g.read_text().split()
        assert version == "1", f"{g.name}: version {version} served when the gate was reached"
        gate_bars[sym] = int(ts)
    assert {shard_of(s, 2) for s in gate_bars} == {0, 1}  # one gate bar per consumer
    summary = json.loads(summary_path.read_text())
    assert summary["end_reason"] == "source ended", err[-3000:]

    # Every event reached a consumer and was processed; nothing was dropped as stale.
    consumers = summary["consumers"]
    assert sum(c["received"] for c in consumers) == summary["producer"]["events"] == summary["source_events"]
    for c in consumers:
        assert c["received"] == c["processed"] and c["stale"] == c["malformed"] == 0

    # The consumers' model counts: every closed bar either warmed the features up or was scored.
    file_bars = replay_bars()
    stats = [c["strategies"]["vote"]["models"]["tiny"] for c in consumers]
    assert sum(s["bars"] for s in stats) == len(file_bars)
    scored = {v: sum(s["scored"].get(v, 0) for s in stats) for v in ("1", "2")}
    assert sum(s["warming"] for s in stats) == lookback * len(SYMBOLS)
    assert scored["1"] + scored["2"] == len(file_bars) - lookback * len(SYMBOLS)
    assert scored["1"] > 0 and scored["2"] > 0, scored
    assert all(s["errors"] == 0 and not s["refused"] for s in stats)
    assert sum(c["processed"] for c in consumers) > len(file_bars)  # quotes too, each counted once

    # PostgreSQL: exactly the bars after warm-up, each once, one cut from v1 to v2 per symbol.
    rows = asyncio.run(_predictions(pg_dsn, summary["batch_id"]))
    keys = [(r["symbol"], int(r["bar_ts"].timestamp() * 1e9)) for r in rows]
    assert len(keys) == len(set(keys))
    expected = {(sym, int(ts)) for sym, g in file_bars.groupby("symbol") for ts in g["ts"].iloc[lookback:]}
    assert set(keys) == expected
    for v in ("1", "2"):
        assert sum(r["version"] == int(v) for r in rows) == scored[v]
    for sym in SYMBOLS:
        mine = sorted((int(r["bar_ts"].timestamp() * 1e9), r["version"]) for r in rows if r["symbol"] == sym)
        versions = [v for _, v in mine]
        assert versions == sorted(versions), f"{sym}: a v1 prediction after a v2 one"
        # The exact cut: version 1 before the gate and on the consumer's gate bar, version 2 after.
        cut = [(ts, 1 if ts < GATE or gate_bars.get(sym) == ts else 2) for ts, _ in mine]
        assert mine == cut, f"{sym}: the switch is not at the gate"
    assert all(len(r["outputs"]) == 2 and np.isclose(sum(r["outputs"]), 1, atol=1e-5) for r in rows)
    assert "model tiny: now serving version 2 (was 1)" in err
