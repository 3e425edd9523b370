"""Fresh databases for tests: a SQLite file per test, or a PostgreSQL database per
test cloned from a migrated template (cloning is much faster than migrating)."""

from __future__ import annotations

import asyncio
import os
import uuid

import asyncpg
from sqlalchemy.engine import make_url

from eventhub_log.migrations import ensure_schema
from eventhub_log.store.database import open_database

PG_URL = os.environ.get(
    "EVENTHUB_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
_TEMPLATE = f"eventhub_template_{os.getpid()}"


def _admin_dsn() -> str:
    url = make_url(PG_URL)
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _database_url(name: str) -> str:
    return make_url(PG_URL).set(database=name).render_as_string(hide_password=False)


async def pg_available() -> str | None:
    """``None`` when PostgreSQL answers, else why not."""
    try:
        conn = await asyncpg.connect(_admin_dsn(), timeout=3)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    await conn.close()
    return None


async def create_template() -> None:
    conn = await asyncpg.connect(_admin_dsn())
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{_TEMPLATE}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{_TEMPLATE}"')
    finally:
        await conn.close()
    database = open_database(_database_url(_TEMPLATE))
    try:
        await ensure_schema(database, upgrade=True)
    finally:
        await database.engine.dispose()


async def drop_template() -> None:
    conn = await asyncpg.connect(_admin_dsn())
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{_TEMPLATE}" WITH (FORCE)')
    finally:
        await conn.close()


async def create_pg_database() -> tuple[str, str]:
    name = f"eventhub_test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(_admin_dsn())
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{_TEMPLATE}"')
    finally:
        await conn.close()
    return name, _database_url(name)


async def drop_pg_database(name: str) -> None:
    conn = await asyncpg.connect(_admin_dsn())
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]
