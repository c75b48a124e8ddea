"""Shared by the peer-engine scripts (run in the peers' own virtual environment, not liu's)."""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path
from typing import Any

# The bars file's own reader and symbol names (NumPy only, so it imports in the peers' venv too).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _synthetic import load_bars as load  # noqa: E402, F401
from _synthetic import symbols  # noqa: E402, F401

FAST, SLOW = 10, 30


def args(description: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--bars", type=Path, required=True, help="NPZ written by benchmarks/_synthetic.py")
    ap.add_argument("--cash", type=float, default=100_000.0)
    return ap.parse_args()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def emit(result: dict[str, Any]) -> None:
    result.setdefault("peak_rss_mb", peak_rss_mb())
    sys.stdout.write(json.dumps(result) + "\n")
