"""Alpaca v2 market-data stream protocol: msgpack encoding, message builders, and the one decode.

Every server frame is a msgpack array of maps. Market messages carry `t` as a
msgpack Timestamp extension (type -1), never as a string: alpaca-py calls
`msg["t"].to_datetime()` on it. `wire_event` turns a received message into
liu's wire tuple (`liu.events`); the producer and the backtester both use it.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import msgpack

from liu.events import BAR, MALFORMED, QUOTE, TRADE, TRADE_NO_LAST
from liu.ticks import no_last

Timestamp = msgpack.Timestamp

# Message type → subscription channel (the keys of subscribe / unsubscribe / ack).
CHANNEL_OF_TYPE = {"t": "trades", "q": "quotes", "b": "bars", "u": "updatedBars", "d": "dailyBars"}
TYPE_OF_CHANNEL = {v: k for k, v in CHANNEL_OF_TYPE.items()}
CHANNELS = tuple(CHANNEL_OF_TYPE.values())

_packer = msgpack.Packer()


@dataclass(frozen=True, slots=True)
class Encoded:
    """A pre-encoded frame: msgpack array bytes of `count` market messages."""

    data: bytes
    count: int


def is_crypto(symbol: str) -> bool:
    """Alpaca spells crypto pairs BASE/QUOTE ("BTC/USD"); stock symbols never hold a slash."""
    return "/" in symbol


def encode(obj: Any) -> bytes:
    """msgpack-encode `obj` (msgpack.Timestamp values become the ext type)."""
    return _packer.pack(obj)


def decode(data: bytes | str) -> Any:
    """Decode one client or server frame: msgpack bytes, or JSON text."""
    if isinstance(data, str):
        return json.loads(data)
    return msgpack.unpackb(data)


def ts(ts_ns: int) -> Timestamp:
    """msgpack Timestamp from int nanoseconds since the Unix epoch (UTC)."""
    return Timestamp.from_unix_nano(ts_ns)


def trade_msg(
    symbol: str,
    ts_ns: int,
    price: float,
    size: float,
    exchange: str = "V",
    id: int = 0,
    conditions: list[str] | None = None,
    tape: str = "C",
) -> dict:
    """A trade `{"T":"t","S","i","x","p","s","t","c","z"}`."""
    return {
        "T": "t",
        "S": symbol,
        "i": id,
        "x": exchange,
        "p": price,
        "s": size,
        "t": Timestamp.from_unix_nano(ts_ns),
        "c": conditions if conditions is not None else ["@"],
        "z": tape,
    }


def quote_msg(
    symbol: str,
    ts_ns: int,
    bid: float,
    bid_size: float,
    ask: float,
    ask_size: float,
    bid_exchange: str = "V",
    ask_exchange: str = "V",
    conditions: list[str] | None = None,
    tape: str = "C",
) -> dict:
    """A quote `{"T":"q","S","bx","bp","bs","ax","ap","as","t","c","z"}`."""
    return {
        "T": "q",
        "S": symbol,
        "bx": bid_exchange,
        "bp": bid,
        "bs": bid_size,
        "ax": ask_exchange,
        "ap": ask,
        "as": ask_size,
        "t": Timestamp.from_unix_nano(ts_ns),
        "c": conditions if conditions is not None else ["R"],
        "z": tape,
    }


def bar_msg(
    symbol: str,
    ts_ns: int,
    o: float,
    h: float,
    l: float,  # noqa: E741 - Alpaca's field name
    c: float,
    v: float,
    n: int = 0,
    vw: float | None = None,
    kind: str = "b",
) -> dict:
    """A bar `{"T":"b","S","o","h","l","c","v","t","n","vw"}`; `ts_ns` is the bar's start.

    `kind` may be "u" (updated bar) or "d" (daily bar) instead of "b".
    """
    return {
        "T": kind,
        "S": symbol,
        "o": o,
        "h": h,
        "l": l,
        "c": c,
        "v": v,
        "t": Timestamp.from_unix_nano(ts_ns),
        "n": n,
        "vw": (o + h + l + c) / 4.0 if vw is None else vw,
    }


# Decoding (received frames unpacked with `msgpack.unpackb(frame, timestamp=2)`) ---------------

UNROUTABLE: tuple = ()
"""What `wire_event` returns for a message without a string symbol to route it by."""


def wire_event(m: Any, recv: int) -> tuple | None:
    """One received message → its wire tuple (see `liu.events`), stamped with receive time `recv` (ns).

    The producer and the backtester both decode with this, so they agree on every message:
    * a trade, quote or bar with a string symbol → its TRADE / QUOTE / BAR tuple; a trade whose sale
      conditions (`c`, on tape `z`) say it does not update the last price → TRADE_NO_LAST, shaped
      like TRADE (the bad-tick filter drops it, `liu.ticks`);
    * one with a string symbol but a missing or bad field → `(MALFORMED, symbol, 0, reason, recv)`,
      so the consumer that owns the symbol counts it;
    * anything without a string symbol to route by (not a map, no "S", a list or number as "S")
      → `UNROUTABLE` (the empty tuple, false like None: test `if ev:` first);
    * a trading status ("s") → None, like any other map (success, subscription, error, a type liu
      does not use); but a status with a missing or bad "S", "t" or "sc" is MALFORMED or UNROUTABLE
      as above, so broken ones are counted like broken trades.

    `t` must be unpacked as int nanoseconds (`timestamp=2`): a string time is malformed.
    """
    try:
        kind = m["T"]
        if kind == "t":
            sym, t = m["S"], m["t"]
            if t.__class__ is not int or sym.__class__ is not str:
                raise _bad_key(sym, t)
            c = m.get("c")
            kind_ = TRADE_NO_LAST if c and no_last(c, m.get("z")) else TRADE
            return (kind_, sym, t, float(m["p"]), float(m["s"]), recv)
        if kind == "q":
            sym, t = m["S"], m["t"]
            if t.__class__ is not int or sym.__class__ is not str:
                raise _bad_key(sym, t)
            return (QUOTE, sym, t, float(m["bp"]), float(m["bs"]), float(m["ap"]), float(m["as"]), recv)
        if kind == "b":
            sym, t = m["S"], m["t"]
            if t.__class__ is not int or sym.__class__ is not str:
                raise _bad_key(sym, t)
            return (
                BAR,
                sym,
                t,
                float(m["o"]),
                float(m["h"]),
                float(m["l"]),
                float(m["c"]),
                float(m["v"]),
                recv,
            )
        if kind == "s":  # a trading status: no event (liu subscribes to none), but a broken one is counted
            sym, t = m["S"], m["t"]
            if t.__class__ is not int or sym.__class__ is not str:
                raise _bad_key(sym, t)
            if m["sc"].__class__ is not str:
                raise TypeError(f"sc must be a string, got {type(m['sc']).__name__}")
        return None
    except Exception as e:
        sym = m.get("S") if m.__class__ is dict else None
        if sym.__class__ is not str:
            return UNROUTABLE
        return (MALFORMED, sym, 0, f"{type(e).__name__}: {e}"[:200], recv)


def _bad_key(sym: Any, t: Any) -> Exception:
    if t.__class__ is not int:
        return ValueError(f"t must be a msgpack Timestamp, got {type(t).__name__}")
    return TypeError(f"S must be a string, got {type(sym).__name__}")


# Control messages ------------------------------------------------------------


def success(msg: str, **extra: Any) -> dict:
    return {"T": "success", "msg": msg, **extra}


def error(code: int, msg: str) -> dict:
    return {"T": "error", "code": code, "msg": msg}


CONNECTED = encode([success("connected")])
AUTHENTICATED = encode([success("authenticated")])
ERR_INVALID_SYNTAX = encode([error(400, "invalid syntax")])
ERR_NOT_AUTHENTICATED = encode([error(401, "not authenticated")])
ERR_AUTH_FAILED = encode([error(402, "auth failed")])
ERR_ALREADY_AUTHENTICATED = encode([error(403, "already authenticated")])


def end_of_data(events: int) -> bytes:
    """liu-specific: a finite feed (replay) is exhausted after `events` market messages."""
    return encode([success("end of data", events=events)])


# Pre-encoded frames (benchmark fast path) -----------------------------------
#
# msgpack packs a Timestamp with non-zero nanoseconds and seconds < 2**34 in the
# 64-bit ext form: d7 ff + uint64(nanos << 34 | seconds). Frames are built with
# a placeholder timestamp of that form, then each send replaces every
# placeholder with the real time in one `bytes.replace` call.

_TS64 = struct.Struct(">BbQ")
PLACEHOLDER_SECONDS = 0x2_5A5A_5A5A  # < 2**34, in 2447; never a real event time here
PLACEHOLDER_NANOS = 987_654_321
PLACEHOLDER_TS = Timestamp(PLACEHOLDER_SECONDS, PLACEHOLDER_NANOS)
PLACEHOLDER_BYTES = _TS64.pack(0xD7, -1, (PLACEHOLDER_NANOS << 34) | PLACEHOLDER_SECONDS)
assert encode(PLACEHOLDER_TS) == PLACEHOLDER_BYTES


def ts64_bytes(ts_ns: int) -> bytes:
    """The 10-byte 64-bit msgpack Timestamp ext for `ts_ns` (valid even when nanos == 0)."""
    seconds, nanos = divmod(ts_ns, 1_000_000_000)
    if not 0 <= seconds < 1 << 34:
        raise ValueError(f"timestamp {ts_ns} does not fit the 64-bit msgpack form")
    return _TS64.pack(0xD7, -1, (nanos << 34) | seconds)
