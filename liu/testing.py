"""Helpers for tests, usable by plug-in authors too: sample data lookup and bar factories."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from liu.clock import FakeClock
from liu.events import BAR

__all__ = ["FakeClock", "sample_data", "make_bars"]

_REPO = Path(__file__).resolve().parent.parent


def sample_data(name: str) -> Path:
    """Path of a recorded-data file in `LIU_SAMPLE_DATA` (default ../shared/data); skips the test if absent."""
    base = Path(os.environ.get("LIU_SAMPLE_DATA", _REPO.parent / "shared" / "data"))
    path = base / name
    if not path.exists():
        import pytest

        pytest.skip(f"recorded data {path} is absent (set LIU_SAMPLE_DATA to the folder holding it)")
    return path


def make_bars(
    symbol: str, n: int, start_ns: int = 1_700_000_000 * 10**9, seed: int = 1, price: float = 100.0
) -> list[tuple]:
    """`n` seeded random-walk minute bars as wire tuples (BAR, symbol, ts, o, h, l, c, v, recv)."""
    rng = np.random.default_rng(seed)
    closes = price * np.exp(np.cumsum(rng.normal(0, 0.002, n)))
    opens = np.concatenate([[price], closes[:-1]]) * (1 + rng.normal(0, 0.0005, n))
    highs = np.maximum(opens, closes) * (1 + np.abs(rng.normal(0, 0.001, n)))
    lows = np.minimum(opens, closes) * (1 - np.abs(rng.normal(0, 0.001, n)))
    vols = rng.integers(100, 10_000, n)
    minute = 60 * 10**9
    return [
        (
            BAR,
            symbol,
            start_ns + i * minute,
            float(opens[i]),
            float(highs[i]),
            float(lows[i]),
            float(closes[i]),
            float(vols[i]),
            0,
        )
        for i in range(n)
    ]
