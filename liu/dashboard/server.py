"""Serving the dashboard with uvicorn: the listening socket, a server thread (live) or the foreground
(`trader dashboard`), and the address `trader` prints.

The socket is bound before uvicorn starts, so a port in use is one clear error at start, port 0 gets a
free port whose number is known at once, and connections made before uvicorn runs wait in the backlog.
uvicorn's access log is off: the first request carries `?token=` in its query string.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from urllib.parse import quote

import uvicorn

from liu.errors import ConfigError
from liu.plan import LOCAL_HOSTS, DashboardPlan

ALL_INTERFACES = ("0.0.0.0", "::", "")


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one); ConfigError naming the setting otherwise."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except (OSError, IndexError) as e:
        raise ConfigError(f"tradeplan [dashboard] host={host!r}: not an address to listen on ({e})") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise ConfigError(
            f"tradeplan [dashboard] cannot listen on {host}:{port}: {e.strerror}; "
            "set another port (0 picks a free one) or enabled = false"
        ) from None
    return sock


@dataclass(frozen=True)
class Address:
    """Where the dashboard listens; `url` carries the token (print it, never log it)."""

    host: str
    port: int
    token: str

    @property
    def base(self) -> str:
        host = socket.gethostname() if self.host in ALL_INTERFACES else self.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/?token={quote(self.token, safe='-._~')}"

    def __repr__(self) -> str:  # never the token
        return f"Address({self.base})"


def announce(console, address: Address, plan: DashboardPlan, what: str) -> None:
    """Print the address with its token to the console (stdout), and say so when others can reach it."""
    console.print(f"{what}: {address.url}", highlight=False, soft_wrap=True, markup=False)
    if plan.host not in LOCAL_HOSTS:
        console.print(
            f"[yellow]dashboard listens on {plan.host}:{address.port}, not only this machine: every request "
            "needs the token; it is plain HTTP, so use it on a network you trust (or behind TLS)[/]",
            highlight=False,
            soft_wrap=True,
        )


class Server:
    """uvicorn on an already bound socket: `start()` in a thread of its own, or `run()` here."""

    def __init__(self, app, sock: socket.socket) -> None:
        self.sock = sock
        config = uvicorn.Config(
            app,
            log_config=None,  # the process's logging, not uvicorn's own
            access_log=False,  # the first request's query string holds the token
            lifespan="on",
            ws="none",
            server_header=False,
            timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(config)
        self.thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def start(self) -> None:
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, name="liu-dashboard", daemon=True
        )
        self.thread.start()

    def run(self) -> None:
        """Serve in this thread until SIGINT/SIGTERM (uvicorn handles them)."""
        try:
            self.server.run(sockets=[self.sock])
        finally:
            self.sock.close()

    def stop(self, timeout: float = 5.0) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout)
        self.sock.close()
