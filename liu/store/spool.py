"""The spool: an append-only local file for rows the database cannot take now.

A trading session must neither end nor lose an order or a fill because PostgreSQL is down, slow or
refusing writes. When a writer cannot write a unit of rows (one flush: new orders, status changes, fills),
the unit goes to its spool file, fsynced, and every later unit queues behind it there, so the rows reach
the database in the order they happened. The writer replays the file when the database answers again;
a file left behind (the database was still down when the session ended, or the process was killed) is
replayed by the next start before anything else touches the database. Replays are exactly once: see the
high-water marks in `liu.store.writer`.

One file per writer stream, `<dir>/<batch_id>-<name>.log`, created on the first unit that needs it and
removed once everything in it is in the database. A file is a sequence of records, each
`length (4 bytes, big-endian) | crc32 of the payload (4 bytes) | payload (msgpack)`. The first record is
the header `{"v": 1, "stream", "batch_id"}`; each later one is a unit `[seq, orders, updates, fills]` in
the writer's buffered form (fills already as table records). A record cut short by a crash or failing its
checksum ends the readable part; it is cut off (with a warning) before the file is appended to again.

Rows the database refuses as bad data (not the connection) are not retried: they are appended to
`<batch_id>-<name>.refused` as JSON lines, with the error, for a person to look at.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgpack

log = logging.getLogger(__name__)

VERSION = 1
SUFFIX = ".log"
_HEAD = struct.Struct(">II")  # payload length, crc32
_RUN_ENDS = "run-ends.jsonl"  # sessions whose end the database could not record (see save_run_end)


def spool_dir(state_dir: Path) -> Path:
    """Where a plan's spool files live: `spool/` beside its data directory (`.liu/spool` by default)."""
    return state_dir / "spool"


@dataclass
class Unit:
    """One flush of one writer: its sequence number and its rows, oldest first."""

    seq: int
    orders: list
    updates: list
    fills: list

    @property
    def rows(self) -> int:
        return len(self.orders) + len(self.updates) + len(self.fills)


def _plain(value: Any) -> Any:
    """msgpack fallback for values strategies put in indicators (numpy scalars and arrays, anything else)."""
    item = getattr(value, "tolist", None) or getattr(value, "item", None)
    return item() if item is not None else str(value)


def _pack(obj: Any) -> bytes:
    payload = msgpack.packb(obj, default=_plain, use_bin_type=True)
    return _HEAD.pack(len(payload), zlib.crc32(payload)) + payload


def _records(data: bytes) -> Iterator[tuple[int, Any]]:
    """(end offset, decoded payload) of each whole, intact record."""
    pos, n = 0, len(data)
    while pos + _HEAD.size <= n:
        length, crc = _HEAD.unpack_from(data, pos)
        start, end = pos + _HEAD.size, pos + _HEAD.size + length
        if end > n or zlib.crc32(data[start:end]) != crc:
            return
        yield end, msgpack.unpackb(data[start:end], use_list=False, raw=False, strict_map_key=False)
        pos = end


def read_spool(path: Path) -> tuple[dict, list[Unit], int]:
    """A spool file's header, its intact units, and the length of its intact part in bytes.

    Raises ValueError when the file does not start with a spool header.
    """
    data = path.read_bytes()
    header: dict | None = None
    units: list[Unit] = []
    good = 0
    for end, rec in _records(data):
        if header is None:
            if not isinstance(rec, dict) or rec.get("v") != VERSION:
                raise ValueError(f"{path}: not a liu spool file (version {VERSION})")
            header = rec
        else:
            seq, orders, updates, fills = rec
            units.append(Unit(seq, list(orders), list(updates), list(fills)))
        good = end
    if header is None:
        raise ValueError(f"{path}: not a liu spool file (no header)")
    if good < len(data):
        log.warning(
            "spool %s: %d bytes after the last intact record (cut short by a crash?) are ignored",
            path,
            len(data) - good,
        )
    return header, units, good


def spool_files(directory: Path) -> list[Path]:
    """The spool files in `directory`, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(directory.glob(f"*{SUFFIX}"), key=lambda p: (p.stat().st_mtime, p.name))


class Spool:
    """The spool file of one writer stream; appends are fsynced, one fsync per call."""

    def __init__(self, path: Path, stream: str, batch_id: str) -> None:
        self.path = path
        self.stream = stream
        self.batch_id = batch_id
        self.units = 0  # units in the file
        self.rows = 0  # rows in the file
        self.last_seq = 0  # the highest sequence number in the file
        self.refused = 0  # rows written to the .refused file by this process
        self._file: Any = None

    @classmethod
    def open(cls, directory: Path, stream: str, batch_id: str, name: str) -> Spool:
        """The spool of `stream`; an existing file (a previous process of the same stream) is taken over."""
        spool = cls(directory / f"{batch_id}-{name}{SUFFIX}", stream, batch_id)
        if spool.path.exists():
            header, units, good = read_spool(spool.path)
            if header.get("stream") != stream:
                raise ValueError(f"{spool.path}: spool of stream {header.get('stream')!r}, not {stream!r}")
            spool.units = len(units)
            spool.rows = sum(u.rows for u in units)
            spool.last_seq = max((u.seq for u in units), default=0)
            if good < spool.path.stat().st_size:
                os.truncate(spool.path, good)  # appends go after the last intact record
        return spool

    def append(self, units: list[Unit]) -> None:
        """Append `units` and fsync; raises OSError when the disk refuses (the caller keeps them)."""
        if not units:
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab")  # noqa: SIM115 - kept open while the stream lives
            if self._file.tell() == 0:
                self._file.write(_pack({"v": VERSION, "stream": self.stream, "batch_id": self.batch_id}))
        self._file.write(b"".join(_pack([u.seq, u.orders, u.updates, u.fills]) for u in units))
        self._file.flush()
        os.fsync(self._file.fileno())
        self.units += len(units)
        self.rows += sum(u.rows for u in units)
        self.last_seq = max(self.last_seq, units[-1].seq)

    def read(self) -> list[Unit]:
        """Every unit in the file, oldest first."""
        if not self.units:
            return []
        return read_spool(self.path)[1]

    def clear(self) -> None:
        """Everything in the file is in the database: remove it."""
        self.close()
        self.path.unlink(missing_ok=True)
        self.units = self.rows = 0

    def refuse(self, kind: str, row: Any, error: str) -> None:
        """Keep a row the database refuses as bad data, for a person to look at (not replayed)."""
        path = self.path.with_suffix(".refused")
        path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"kind": kind, "error": error, "row": row}, default=str)
        with open(path, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.refused += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# ------------------------------------------------------------------------------- session ends


def save_run_end(directory: Path, batch_id: str, reason: str) -> Path:
    """Remember a session's end reason the database could not take; the next start records it."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / _RUN_ENDS
    entry = {"batch_id": batch_id, "reason": reason, "end_time": datetime.now(UTC).isoformat()}
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return path


def pending_run_ends(directory: Path) -> list[tuple[str, str, datetime]]:
    """(batch_id, reason, end time) of each session end saved by `save_run_end`, oldest first."""
    path = directory / _RUN_ENDS
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            e = json.loads(line)
            out.append((e["batch_id"], e["reason"], datetime.fromisoformat(e["end_time"])))
        except (ValueError, KeyError, TypeError):
            log.warning("spool %s: skipping an unreadable line %r", path, line[:200])
    return out


def clear_run_ends(directory: Path) -> None:
    (directory / _RUN_ENDS).unlink(missing_ok=True)
