import subprocess
import sys

import msgpack
import pytest

from liu.events import BAR, QUOTE, TRADE
from liu.producer import decode, shard_of


def test_sharding_is_stable_across_processes():
    symbols = [f"S{i}" for i in range(200)] + ["AAPL", "SPY", "BRK.B"]
    here = [shard_of(s, 7) for s in symbols]
    code = "from liu.producer import shard_of; import sys; print([shard_of(s, 7) for s in sys.argv[1:]])"
    out = subprocess.run(
        [sys.executable, "-c", code, *symbols],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123"},
    )
    assert eval(out.stdout) == here
    assert set(here) == set(range(7))  # spreads over every consumer


def test_decode_alpaca_messages():
    t = msgpack.unpackb(
        msgpack.packb(
            [
                {
                    "T": "t",
                    "S": "AAPL",
                    "i": 1,
                    "x": "V",
                    "p": 101.5,
                    "s": 10,
                    "t": msgpack.Timestamp(1, 5),
                    "c": [],
                    "z": "C",
                },
                {
                    "T": "q",
                    "S": "AAPL",
                    "bx": "V",
                    "bp": 101.4,
                    "bs": 2,
                    "ax": "V",
                    "ap": 101.6,
                    "as": 3,
                    "t": msgpack.Timestamp(2, 0),
                    "c": [],
                    "z": "C",
                },
                {
                    "T": "b",
                    "S": "AAPL",
                    "o": 1,
                    "h": 2,
                    "l": 0.5,
                    "c": 1.5,
                    "v": 100,
                    "t": msgpack.Timestamp(60, 0),
                    "n": 3,
                    "vw": 1.2,
                },
            ]
        ),
        timestamp=2,
    )
    assert decode(t[0], 7) == (TRADE, "AAPL", 1_000_000_005, 101.5, 10.0, 7)
    assert decode(t[1], 7) == (QUOTE, "AAPL", 2_000_000_000, 101.4, 2.0, 101.6, 3.0, 7)
    assert decode(t[2], 7) == (BAR, "AAPL", 60_000_000_000, 1.0, 2.0, 0.5, 1.5, 100.0, 7)
    assert decode({"T": "subscription"}, 7) is None


@pytest.mark.parametrize(
    "bad",
    [
        {"T": "t", "S": "X", "p": "abc", "s": 1, "t": 5},
        {"T": "t", "S": "X", "s": 1, "t": 5},
        {"T": "t", "S": "X", "p": 1.0, "s": 1, "t": "2024-01-01T00:00:00Z"},
    ],
)
def test_decode_rejects_malformed(bad):
    with pytest.raises((KeyError, ValueError, TypeError)):
        decode(bad, 0)
