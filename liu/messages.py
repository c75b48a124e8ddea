"""What the daemon's child processes tell the main process, as typed messages.

Requests to a child travel as the control messages of `liu.events` (`Start`,
`Stop`, `Subscribe`); the replies are here, one small frozen dataclass each,
so the receiver matches on the type and reads named fields instead of tuple
positions. They cross `multiprocessing` pipes, so they hold only plain,
picklable values.
"""

from __future__ import annotations

from dataclasses import dataclass

# -- consumer → main (then a `liu.events.ConsumerReport` when it exits) ------------------------


@dataclass(frozen=True)
class ConsumerReady:
    """Consumer `index` has built its runner (strategies, models); the clock starts once all have."""

    index: int


# -- producer → main ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Subscribed:
    """The market-data server acknowledged a subscription (no symbols: nothing new to subscribe)."""

    symbols: tuple[str, ...] = ()


@dataclass(frozen=True)
class SourceEnded:
    """A finite feed (replay) sent its last message; `events` is how many market messages it sent."""

    events: int


@dataclass(frozen=True)
class Reconnected:
    """The producer reconnected after losing the market-data connection for `gap` seconds."""

    gap: float


@dataclass(frozen=True)
class ProducerFailed:
    """The producer cannot go on (e.g. the server refused its keys); `reason` says why."""

    reason: str


@dataclass(frozen=True)
class ProducerStopped:
    """The producer drained its channels and is exiting; `gaps` are its reconnection gaps in seconds."""

    gaps: tuple[float, ...] = ()


# -- market-data server → main (requests: `Start(clock)` starts the feed, `Stop()` stops) --------


@dataclass(frozen=True)
class ServerReady:
    """The market-data server listens on `port`.

    `universe`: symbol → {"price", "avg_volume", "shortable"}; `first_ts`: the
    replay's first event data time in ns, None for the simulator.
    """

    port: int
    universe: dict[str, dict]
    first_ts: int | None = None


@dataclass(frozen=True)
class ServerFailed:
    """The server could not start (or its process exited); `reason` says why."""

    reason: str


@dataclass(frozen=True)
class ServerStopped:
    """The server stopped after sending `sent_events` market messages."""

    sent_events: int
