"""Shared by the peer-engine scripts (run in the peers' own virtual environment, not liu's)."""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path
from typing import Any

import numpy as np

FAST, SLOW = 10, 30


def args(description: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--bars", type=Path, required=True, help="NPZ written by benchmarks/_synthetic.py")
    ap.add_argument("--cash", type=float, default=100_000.0)
    return ap.parse_args()


def load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def symbols(n: int) -> list[str]:
    return [f"S{i:02d}" for i in range(n)]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def emit(result: dict[str, Any]) -> None:
    result.setdefault("peak_rss_mb", peak_rss_mb())
    sys.stdout.write(json.dumps(result) + "\n")
