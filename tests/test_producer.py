import subprocess
import sys

import msgpack
import pytest

from liu.backtest import _feed_batches
from liu.events import BAR, MALFORMED, QUOTE, TRADE, BarRevision
from liu.producer import Producer, shard_of
from liu.sources import protocol as P
from liu.sources.protocol import UNROUTABLE
from liu.sources.protocol import wire_event as decode
from liu.stats import SharedStats


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
    ("bad", "reason"),
    [
        (
            {"T": "t", "S": "X", "p": "abc", "s": 1, "t": 5},
            "ValueError: could not convert string to float: 'abc'",
        ),
        ({"T": "t", "S": "X", "s": 1, "t": 5}, "KeyError: 'p'"),
        (
            {"T": "t", "S": "X", "p": 1.0, "s": 1, "t": "2024-01-01T00:00:00Z"},
            "ValueError: t must be a msgpack Timestamp, got str",
        ),
        ({"S": "X", "p": 1.0}, "KeyError: 'T'"),
    ],
)
def test_decode_rejects_malformed(bad, reason):
    """A bad message of a symbol is a MALFORMED event for that symbol's consumer, naming the error."""
    assert decode(bad, 9) == (MALFORMED, "X", 0, reason, 9)


@pytest.mark.parametrize(
    "bad",
    [
        {"T": "t", "p": 1.0, "s": 1, "t": 5},  # no symbol
        {"T": "t", "S": ["X"], "p": 1.0, "s": 1, "t": 5},  # a list is no symbol (nor hashable)
        {"T": "q", "S": 7, "bp": 1, "bs": 1, "ap": 1, "as": 1, "t": 5},
        {"T": "t", "S": {"a": 1}, "p": "abc"},
        5,
        "t",
        None,
        [{"T": "t"}],
    ],
)
def test_decode_gives_unroutable_for_messages_without_a_string_symbol(bad):
    assert decode(bad, 0) == UNROUTABLE and not UNROUTABLE and UNROUTABLE is not None


# -- the producer and the backtester decode alike -----------------------------------------------

T0 = 1_700_000_000_000_000_000
FRAMES = [
    [
        P.trade_msg("AAA", T0, 10.5, 100),
        P.quote_msg("BBB", T0 + 1, 10.0, 1, 10.2, 2),
        P.bar_msg("AAA", T0, 10, 11, 9, 10.5, 1000),
        {"T": "subscription", "trades": ["AAA", "BBB"], "quotes": [], "bars": []},  # control: no event
    ],
    [
        {**P.trade_msg("AAA", T0 + 2, 1, 1), "p": "abc"},  # malformed, routed to AAA's consumer
        {k: v for k, v in P.quote_msg("BBB", T0 + 3, 1, 1, 1, 1).items() if k != "as"},  # missing field
        {**P.bar_msg("AAA", T0, 1, 1, 1, 1, 1), "t": "2024-01-01T00:00:00Z"},  # string time
        {"S": "BBB", "p": 1.0},  # no type
        {k: v for k, v in P.trade_msg("AAA", T0, 1, 1).items() if k != "S"},  # unroutable: no symbol
        {**P.trade_msg("AAA", T0, 1, 1), "S": ["AAA"]},  # unroutable: a list
        {**P.trade_msg("AAA", T0, 1, 1), "S": 42},  # unroutable: a number
        7,  # unroutable: not a map
        "junk",
        P.bar_msg("AAA", T0, 1, 2, 0.5, 1.5, 10, kind="u"),  # an updated bar: no event, a BarRevision
        P.success("authenticated"),
        P.trade_msg("BBB", T0 + 4, 20.25, 5),
    ],
]


class _Writer:
    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.controls: list[object] = []

    def send_control(self, msg: object) -> None:
        self.controls.append(msg)

    def send_batch(self, batch: list[tuple]) -> None:
        self.events.extend(batch)


class _Socket:
    def __init__(self, frames: list[bytes]) -> None:
        self.frames = frames

    async def __aiter__(self):
        for f in self.frames:
            yield f


class _Feed:
    async def frames(self, clock):
        for f in FRAMES:
            yield f


async def test_the_producer_and_the_backtester_decode_every_frame_to_the_same_tuples():
    writer = _Writer()
    stats = SharedStats(1)
    producer = Producer("ws://unused", "k", "s", [writer], stats)
    await producer._read(_Socket([P.encode(f) for f in FRAMES]))
    backtest = [ev for batch in [b async for b in _feed_batches(_Feed(), None, None)] for ev in batch]

    live = writer.events
    assert all(ev[-1] > 0 for ev in live) and all(ev[-1] == 0 for ev in backtest)  # only recv differs
    assert [ev[:-1] for ev in live] == [ev[:-1] for ev in backtest]
    assert [(ev[0], ev[1]) for ev in backtest] == [
        (TRADE, "AAA"),
        (QUOTE, "BBB"),
        (BAR, "AAA"),
        (MALFORMED, "AAA"),
        (MALFORMED, "BBB"),
        (MALFORMED, "AAA"),
        (MALFORMED, "BBB"),
        (TRADE, "BBB"),
    ]
    assert stats.producer()["unroutable"] == 5  # the producer counts what the backtester drops
    assert stats.producer()["events"] == len(live) == 8
    # The updated bar is no event: it goes to the consumer that owns AAA as a revision of a closed bar.
    assert writer.controls == [BarRevision("AAA", T0, 1.0, 2.0, 0.5, 1.5, 10.0)]
    assert stats.producer()["updated_bars"] == 1
