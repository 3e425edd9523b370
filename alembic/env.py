"""Alembic environment: runs on a connection handed in by eventhub_log.migrations,
or opens its own from EVENTHUB_DATABASE_URL / alembic.ini when run as ``alembic``."""

from __future__ import annotations

import asyncio
import os

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from alembic import context
from eventhub_log.store.tables import metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    url = os.environ.get("EVENTHUB_DATABASE_URL") or config.get_main_option("sqlalchemy.url")
    assert url, "no database URL"
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_run)
            await conn.commit()
    finally:
        await engine.dispose()


given = config.attributes.get("connection")
if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=metadata)
    with context.begin_transaction():
        context.run_migrations()
elif given is not None:
    _run(given)
else:
    asyncio.run(_run_online())
