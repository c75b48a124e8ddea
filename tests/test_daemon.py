"""End to end: `trader` as a subprocess on the simulator and on recorded data, against PostgreSQL."""

import pytest

from liu.testing import sample_data
from tests.helpers import REPO, STRATEGY, check_session, run_trader

pytestmark = pytest.mark.slow


def test_sim_session_end_to_end(tmp_path, pg_dsn):
    plan = f"""
[session]
duration = "8s"
speed = 600
[source]
kind = "sim"
symbols = 30
rate = 3000
[database]
dsn = "{pg_dsn}"
[consumers]
count = 2
stale_after = "10m"
[[scanners]]
name = "volume"
file = "{REPO}/scanners/volume.py"
class = "VolumeScanner"
target_strategies = ["sma_cross"]
[scanners.config]
top = 12
{STRATEGY}
"""
    proc, summary = run_trader(tmp_path, plan)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert summary["end_reason"] == "session end"
    assert sum(c["received"] for c in summary["consumers"]) > 1000
    assert summary["producer"]["events"] == sum(summary["sent_per_consumer"])
    fills = check_session(summary, pg_dsn, 2, "session end", proc.stderr)
    assert fills, "the demo strategy should trade on the simulator"
    assert "batch_id" in proc.stdout and summary["batch_id"] in proc.stdout.replace("\n", "")


def test_replay_of_recorded_minute_bars_end_to_end(tmp_path, pg_dsn):
    path = sample_data("us_equity_minute_lean.csv.gz")
    plan = f"""
[session]
duration = "5m"
speed = "max"
[source]
kind = "replay"
path = "{path}"
symbols = ["SPY", "AIG", "BAC", "IBM"]
bars = "stream"
[database]
dsn = "{pg_dsn}"
[consumers]
count = 2
{STRATEGY}
"""
    proc, summary = run_trader(tmp_path, plan)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert summary["end_reason"] == "source ended"
    assert sum(c["received"] for c in summary["consumers"]) == summary["producer"]["events"] > 5000
    assert summary["producer"]["events"] == summary["source_events"]
    fills = check_session(summary, pg_dsn, 2, "source ended", proc.stderr)
    assert fills


def test_embedded_database_default(tmp_path):
    """No DSN: liu starts its own PostgreSQL in the data directory and stops it at the end."""
    plan = f"""
[session]
duration = "3s"
speed = 600
[source]
symbols = 5
rate = 500
[database]
data_dir = "{tmp_path}/pgdata"
[consumers]
count = 1
{STRATEGY}
"""
    proc, summary = run_trader(tmp_path, plan)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "pgdata" / "PG_VERSION").exists()
    assert not (tmp_path / "pgdata" / "postmaster.pid").exists()  # stopped
    assert summary["consumers"][0]["received"] > 0
