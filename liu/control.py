"""The control channel: `trader halt|resume|flatten|status` (and later the dashboard) steer a running daemon.

One Unix socket next to the data directory (`control_path(plan)`, `.liu/control.sock` by default), served
by the daemon's main process on its event loop. A Unix socket because it is local only, needs no port, is
found from the same `--plan` the daemon was started with, and its file mode (0600) is the access control:
only the user who runs the daemon may steer it.

Protocol: one JSON object per line, both ways, any number of requests on one connection (the dashboard
keeps one open). Request `{"cmd": "halt"|"resume"|"flatten"|"status"|"cancel", ...}`; answer
`{"ok": bool, "message": str, ...data}`, where `message` is a sentence for a terminal.

A socket file left by a crashed daemon is removed at start when nothing listens on it; when another daemon
answers on it, the start is refused. (Two daemons starting in the same instant could both see a stale file;
the embedded database on the same data directory refuses the second one anyway.)
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import json
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from liu.brokers.account import HALT_MANUAL, HALT_NAMES, Account
from liu.errors import LiuError

if TYPE_CHECKING:
    from liu.plan import TradePlan

log = logging.getLogger("liu.control")

COMMANDS = ("halt", "resume", "flatten", "status", "cancel")
MAX_LINE = 64 * 1024
_MAX_PATH = 107  # Linux sun_path is 108 bytes with the trailing NUL

Answer = dict[str, Any]
Handler = Callable[[dict[str, Any]], Awaitable[Answer]]
CancelFn = Callable[[str], Answer | Awaitable[Answer]]


class ControlError(LiuError):
    """The control channel cannot be served or reached; the message says why, in one line."""


def control_path(plan: TradePlan) -> Path:
    """The control socket of the daemon running `plan`: next to its data directory."""
    return plan.path(plan.database.data_dir).parent / "control.sock"


def _shown(path: Path) -> str:
    """`path` relative to the working directory when inside it: what the user typed, not /home/…"""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _check_length(path: Path) -> None:
    n = len(os.fsencode(path))
    if n > _MAX_PATH:
        raise ControlError(
            f"control socket {path} is {n} bytes long, more than the {_MAX_PATH} a Unix socket allows; "
            "set a shorter tradeplan [database] data_dir"
        )


# -- the server (daemon side) ------------------------------------------------------------------------------
class ControlServer:
    """Serve the control channel on `path` until `close()`; `handler` answers each request.

    `handler` may be set later (the daemon builds its account after the database is up); until then every
    request is answered "still starting". Start it early: a second daemon on the same plan stops there.

    Example:
        server = ControlServer(control_path(plan))
        await server.start()              # ControlError when another trader answers on the socket
        server.handler = AccountControl(account)
        ...
        await server.close()              # removes the socket file
    """

    def __init__(self, path: Path, handler: Handler | None = None) -> None:
        self.path = Path(path)
        self.handler = handler
        self._server: asyncio.AbstractServer | None = None
        self._inode: tuple[int, int] | None = None
        self._clients: dict[asyncio.Task, asyncio.StreamWriter] = {}
        self._closing = False

    async def start(self) -> None:
        path = self.path
        _check_length(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        _clear_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
            # Before listen(): nobody can connect while the mode is still the umask's.
            os.chmod(path, 0o600)
            st = os.stat(path)
        except OSError as e:
            sock.close()
            if e.errno == errno.EADDRINUSE:  # another daemon bound it after our check
                raise ControlError(_another(path)) from None
            raise ControlError(f"control channel: cannot create {_shown(path)}: {e.strerror}") from None
        self._inode = (st.st_dev, st.st_ino)
        self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=MAX_LINE)
        log.info("control channel on %s", path)

    async def close(self) -> None:
        """Stop serving, drop open connections, remove the socket file (only if it is still ours)."""
        if self._server is None:
            return
        self._closing = True  # a connection accepted just now closes itself when its task starts
        self._server.close()
        for writer in self._clients.values():
            writer.close()
        if self._clients:
            await asyncio.wait(list(self._clients), timeout=2.0)
        await self._server.wait_closed()
        self._server = None
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    async def __aenter__(self) -> ControlServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._clients[task] = writer
        try:
            while not self._closing:
                try:
                    line = await reader.readline()
                except ValueError:  # longer than MAX_LINE: answer, then drop the connection
                    answer = {"ok": False, "message": f"bad request: longer than {MAX_LINE} bytes"}
                    writer.write(_encode(answer))
                    await writer.drain()
                    break
                if not line:
                    break
                writer.write(_encode(await self._answer(line)))
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self._clients.pop(task, None)
            writer.close()

    async def _answer(self, line: bytes) -> Answer:
        try:
            request = json.loads(line)
        except ValueError:
            return {"ok": False, "message": "bad request: not JSON"}
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return {"ok": False, "message": 'bad request: expected {"cmd": "<command>", ...}'}
        if self.handler is None:
            return {"ok": False, "message": "the trader is still starting; try again in a moment"}
        cmd = request["cmd"]
        try:
            answer = await self.handler(request)
        except Exception as e:
            log.exception("control command %r failed", cmd)
            return {"ok": False, "message": f"{cmd} failed: {type(e).__name__}: {e}"}
        level = logging.DEBUG if cmd == "status" else logging.INFO  # the dashboard polls status
        log.log(level, "control %s: %s", cmd, answer.get("message"))
        return answer


def _encode(answer: Answer) -> bytes:
    return json.dumps(answer, default=str).encode() + b"\n"


def _another(path: Path) -> str:
    return (
        f"another trader is running on this plan: it answers on {_shown(path)}; "
        "stop it first, or give this plan another [database] data_dir"
    )


def _clear_stale(path: Path) -> None:
    """Remove a socket file nobody listens on (a crashed daemon's); refuse when a daemon answers."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlError(f"control channel: {_shown(path)} exists and is not a socket; move it away")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)
            log.info("removed stale control socket %s (nothing listened on it)", path)
            return
        except PermissionError:
            raise ControlError(
                f"control channel: {_shown(path)} belongs to another user; is their trader running?"
            ) from None
        except TimeoutError:
            pass  # it exists and is busy: a live daemon
    raise ControlError(_another(path))


# -- what the commands do -----------------------------------------------------------------------------------
class AccountControl:
    """Map control commands onto the shared `Account` (what every consumer reads before each order).

    - halt: `account.halt(HALT_MANUAL)`; orders that open or grow a position are refused, reducing ones pass.
    - resume: `account.resume()`; lifts any halt, a risk halt too (the user decided).
    - flatten: halt, then `account.request_flatten()`; every consumer cancels its open orders and closes
      its positions at market. It halts first because a flatten alone would let strategies reopen
      positions on their next bar; `resume` lets them trade again.
    - status: `account.view()` as a dict, with the open-order count and the flatten generation.
    - cancel: `client_order_id` goes to the `cancel` callback (which answers); without one, "not supported".

    Every answer carries the account's state after the command (the status fields), so a caller can
    refresh its display from any answer.
    """

    def __init__(self, account: Account, cancel: CancelFn | None = None) -> None:
        self.account = account
        self.cancel = cancel

    async def __call__(self, request: dict[str, Any]) -> Answer:
        cmd = request.get("cmd")
        if cmd == "cancel":
            return await self._cancel(request.get("client_order_id"))
        do = {"halt": self._halt, "resume": self._resume, "flatten": self._flatten, "status": self._status}
        if cmd not in do:
            return {"ok": False, "message": f"unknown command {cmd!r}; expected one of {', '.join(COMMANDS)}"}
        message, extra = do[cmd]()
        return {"ok": True, "message": message, **extra, **self._state()}

    def _reason(self) -> str:
        return HALT_NAMES[self.account.halted]

    def _halt(self) -> tuple[str, dict[str, Any]]:
        if not self.account.halt(HALT_MANUAL):
            return f"already halted ({self._reason()}); nothing changed", {"changed": False}
        return (
            "halted: orders that open or grow a position are refused; reducing orders pass "
            f"({self._figures()})"
        ), {"changed": True}

    def _resume(self) -> tuple[str, dict[str, Any]]:
        was = self._reason()
        if not self.account.resume():
            return "not halted; nothing to resume", {"changed": False}
        return (
            f"resumed: the {was} halt is lifted; strategies may open positions again ({self._figures()})",
            {"changed": True},
        )

    def _flatten(self) -> tuple[str, dict[str, Any]]:
        halted = "halted" if self.account.halt(HALT_MANUAL) else f"already halted ({self._reason()})"
        generation = self.account.request_flatten()
        gross = self.account.gross_exposure()
        return (
            f"flattening: {halted}; every consumer cancels its open orders and closes its positions at market "
            f"(flatten #{generation}; gross exposure {gross:,.2f}, {self._figures(equity=False)}); "
            "`trader resume` lets strategies trade again"
        ), {"changed": True}

    def _status(self) -> tuple[str, dict[str, Any]]:
        v = self.account.view()
        state = f"halted ({v.halt_reason})" if v.halted else "trading"
        return (
            f"{state}: equity {v.equity:,.2f}, cash {v.cash:,.2f}, buying power {v.buying_power:,.2f}, "
            f"gross exposure {v.gross_exposure:,.2f}, day P&L {v.day_pnl:+,.2f}, {self._figures(equity=False)}"
        ), {}

    async def _cancel(self, client_order_id: Any) -> Answer:
        if not isinstance(client_order_id, str) or not client_order_id:
            return {"ok": False, "message": "cancel needs a client_order_id"}
        if self.cancel is None:
            return {"ok": False, "message": f"cancel: not supported yet (order {client_order_id} untouched)"}
        answer = self.cancel(client_order_id)
        if inspect.isawaitable(answer):
            answer = await answer
        return {**answer, **self._state()}

    def _figures(self, equity: bool = True) -> str:
        n = self.account.open_orders()
        orders = f"{n} open order{'' if n == 1 else 's'}"
        return f"equity {self.account.equity():,.2f}, {orders}" if equity else orders

    def _state(self) -> dict[str, Any]:
        return {
            **asdict(self.account.view()),
            "open_orders": self.account.open_orders(),
            "flatten_generation": self.account.flatten_generation,
        }


# -- the client (CLI side) ----------------------------------------------------------------------------------
def send_command(path: Path, cmd: str, *, timeout: float = 5.0, **args: Any) -> Answer:
    """Send one command to the daemon listening on `path`; return its answer.

    Raises:
        ControlError: nothing listens on `path`, or the daemon did not answer within `timeout` seconds.

    Example:
        send_command(control_path(plan), "halt")["message"]
    """
    path = Path(path)
    _check_length(path)
    shown = _shown(path)
    request = json.dumps({**args, "cmd": cmd}).encode() + b"\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlError(f"no running trader: nothing listens on {shown}") from None
        except PermissionError:
            raise ControlError(f"not allowed to use {shown}: the trader runs as another user") from None
        except TimeoutError:
            raise ControlError(
                f"the trader on {shown} did not accept a connection within {timeout:g}s"
            ) from None
        try:
            s.sendall(request)
            line = _read_line(s)
        except TimeoutError:
            raise ControlError(f"the trader on {shown} did not answer {cmd!r} within {timeout:g}s") from None
        except ConnectionError:
            line = b""
    if not line:
        raise ControlError(f"the trader on {shown} closed the connection without answering {cmd!r}")
    try:
        answer = json.loads(line)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or "ok" not in answer or "message" not in answer:
        raise ControlError(
            f"the trader on {shown} answered {cmd!r} with something else than a control answer"
        )
    return answer


def _read_line(s: socket.socket) -> bytes:
    buf = b""
    while b"\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            return b""
        buf += chunk
    return buf.split(b"\n", 1)[0]
