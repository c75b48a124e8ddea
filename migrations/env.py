"""Alembic environment: runs migrations over asyncpg with the plain DSN liu uses everywhere.

The DSN comes from `config.attributes["dsn"]` (liu.store.db.upgrade) or the
LIU_DATABASE_URL environment variable (plain `alembic upgrade head`).
"""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig

import asyncpg
from alembic import context
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from liu.store.schema import metadata

config = context.config

if config.config_file_name and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = metadata


def _dsn() -> str:
    dsn = config.attributes.get("dsn") or os.environ.get("LIU_DATABASE_URL")
    if not dsn:
        raise RuntimeError("no database DSN: set LIU_DATABASE_URL or use `trader db upgrade`")
    return dsn


def run_migrations_offline() -> None:
    """Emit SQL without a database (`alembic upgrade head --sql`)."""
    context.configure(url="postgresql://", target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def _do_run(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    dsn = _dsn()
    # async_creator hands asyncpg the DSN unchanged (socket dirs, sslmode, ... stay asyncpg's business).
    engine = create_async_engine(
        "postgresql+asyncpg://", async_creator=lambda: asyncpg.connect(dsn), poolclass=NullPool
    )
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_do_run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(_run_async())
