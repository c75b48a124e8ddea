"""DSN redaction, connection check and the embedded server's stop/start."""

from __future__ import annotations

import asyncpg
import pytest

from liu.errors import DatabaseError
from liu.store import EmbeddedPostgres, connect_check, redact_dsn


def test_redact_dsn() -> None:
    assert redact_dsn("postgresql://u:p@127.0.0.1:1/x") == "postgresql://u:***@127.0.0.1:1/x"
    assert redact_dsn("postgresql://u@h/x") == "postgresql://u@h/x"
    assert redact_dsn("postgresql://postgres@/liu?host=/tmp/s") == "postgresql://postgres@/liu?host=/tmp/s"
    assert "s3cret" not in redact_dsn("postgresql://u@h/x?password=s3cret")
    assert redact_dsn("host=h user=u password=s3cret dbname=x") == "host=h user=u password=*** dbname=x"


async def test_connect_check_unreachable() -> None:
    with pytest.raises(DatabaseError) as info:
        await connect_check("postgresql://u:p@127.0.0.1:1/x", timeout=2)
    msg = str(info.value)
    assert "127.0.0.1:1" in msg
    assert "u:p@" not in msg and "***" in msg
    assert "refused" in msg.lower()
    assert "LIU_DATABASE_URL" in msg
    assert "\n" not in msg


async def test_connect_check_dns_failure() -> None:
    with pytest.raises(DatabaseError) as info:
        await connect_check("postgresql://u:pw@no-such-host.invalid:5432/x", timeout=2)
    assert "no-such-host.invalid" in str(info.value)
    assert "pw@" not in str(info.value)


@pytest.mark.db
async def test_connect_check_bad_database_and_ok(pg_server: EmbeddedPostgres) -> None:
    await connect_check(pg_server.dsn)
    with pytest.raises(DatabaseError) as info:
        await connect_check(pg_server.dsn_for("does_not_exist"))
    assert "does_not_exist" in str(info.value)


@pytest.mark.db
async def test_connect_check_bad_user(pg_server: EmbeddedPostgres) -> None:
    dsn = pg_server.dsn.replace("postgres@", "nobody:pw@", 1)
    with pytest.raises(DatabaseError) as info:
        await connect_check(dsn)
    assert "nobody" in str(info.value) and "pw@" not in str(info.value)


@pytest.mark.db
async def test_embedded_stop_and_restart(tmp_path) -> None:
    data = tmp_path / "nested" / "pgdata"  # parent does not exist yet
    pg = EmbeddedPostgres.start(data)
    try:
        conn = await asyncpg.connect(pg.dsn)
        await conn.execute("CREATE TABLE t (x int); INSERT INTO t VALUES (42)")
        await conn.close()
        pg.stop()
        assert not pg.running
        with pytest.raises(DatabaseError):
            await connect_check(pg.dsn, timeout=1)
        pg = EmbeddedPostgres.start(data)
        conn = await asyncpg.connect(pg.dsn)
        assert await conn.fetchval("SELECT x FROM t") == 42
        await conn.close()
    finally:
        pg.stop()
