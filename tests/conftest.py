"""Shared fixtures: one embedded PostgreSQL per test session, a fresh migrated database per test,
and no process outliving the test that started it.

The server starts lazily (only when a test asks for `pg_dsn`/`pg_server`), is
migrated once into a template database, and every test gets a copy of that
template (CREATE DATABASE ... TEMPLATE takes a few ms), dropped afterwards.
Plain helpers (waiting with a deadline, running `trader`) are in tests/helpers.py.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import warnings
from collections.abc import Iterator

import pytest

# The shared helper modules assert too: give their failures pytest's detailed messages.
pytest.register_assert_rewrite("tests.helpers", "tests.ml.helpers")

from liu.store.db import EmbeddedPostgres, create_database, drop_database, upgrade  # noqa: E402
from tests.helpers import ProcessReaper, untagged  # noqa: E402

pytest_plugins = ["pytester"]

TEMPLATE_DB = "liu_template"
_counter = itertools.count(1)


def run_sync(coro) -> object:
    """Run a coroutine to completion from sync code, even if the caller's thread has a loop."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["result"] = asyncio.run(coro)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            box["error"] = exc

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("result")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use the database fixtures get the `db` marker automatically."""
    for item in items:
        if {"pg_dsn", "pg_server", "pg_dsn_module"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.db)


@pytest.fixture(autouse=True)
def reap_processes() -> Iterator[ProcessReaper]:
    """Kill, after every test (passed, failed or timed out), every process it started and their whole trees.

    That covers `trader` and its producer, consumers and market-data server, multiprocessing children,
    and embedded PostgreSQL servers, even once they have left the tree (see tests.helpers.ProcessReaper).
    A test that passed but left processes behind gets a warning naming them.
    """
    reaper = ProcessReaper().start()
    try:
        yield reaper
    finally:
        killed = reaper.reap()
    if killed:
        warnings.warn(
            pytest.PytestWarning("killed processes the test left running: " + "; ".join(killed)),
            stacklevel=1,
        )


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """One embedded PostgreSQL for the whole session, with a migrated template database."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR not set
        with untagged():  # shared by later tests: no test's reaper may take it
            server = EmbeddedPostgres.start(tmp_path_factory.mktemp("pg") / "data", database=TEMPLATE_DB)
    try:
        upgrade(server.dsn)
        yield server
    finally:
        server.stop()


def _fresh_db(server: EmbeddedPostgres, prefix: str) -> str:
    name = f"{prefix}_{next(_counter)}"
    run_sync(create_database(server.server_dsn, name, template=TEMPLATE_DB))
    return name


@pytest.fixture
def pg_dsn(pg_server: EmbeddedPostgres) -> Iterator[str]:
    """asyncpg DSN (`postgresql://postgres@/DB?host=/sockdir`) of a fresh database migrated to head."""
    name = _fresh_db(pg_server, "t")
    yield pg_server.dsn_for(name)
    run_sync(drop_database(pg_server.server_dsn, name))


@pytest.fixture(scope="module")
def pg_dsn_module(pg_server: EmbeddedPostgres) -> Iterator[str]:
    """Like `pg_dsn` but shared by all tests of a module (for module-scoped fixtures)."""
    name = _fresh_db(pg_server, "m")
    yield pg_server.dsn_for(name)
    run_sync(drop_database(pg_server.server_dsn, name))
