"""Alembic owns the schema: new SQLite files migrate themselves, unknown ones are refused."""

from __future__ import annotations

import gc
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy import inspect, text

from eventhub_log import EventHub, SchemaError
from eventhub_log.migrations import head_revision
from eventhub_log.store.database import open_database

from . import databases


async def _revision(url: str) -> str | None:
    database = open_database(url)
    try:
        async with database.engine.connect() as conn:
            return (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
    finally:
        await database.engine.dispose()


async def _stamp(url: str, revision: str) -> None:
    database = open_database(url)
    try:
        async with database.engine.begin() as conn:
            await conn.execute(
                text("UPDATE alembic_version SET version_num = :revision"), {"revision": revision}
            )
    finally:
        await database.engine.dispose()


@pytest.fixture
async def empty_postgres(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A PostgreSQL database with no tables at all (not cloned from the template)."""
    request.getfixturevalue("postgres_template")  # skips, or fails, with the reason
    name = f"eventhub_empty_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(databases._admin_dsn())
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield databases._database_url(name)
    await databases.drop_pg_database(name)


async def test_new_sqlite_file_is_brought_to_head_by_itself(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "folder" / "hub.db"
    url = f"sqlite+aiosqlite:///{path}"
    async with EventHub(url) as hub:  # no auto_migrate given: SQLite migrates
        event = await hub.publish("room:lobby", None, {"text": "hi"})
        assert event.seq == 1
        async with hub.database.read() as conn:
            tables = set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
        assert {"events", "topics", "subscriptions", "log_head", "alembic_version"} <= tables
    assert path.exists()
    assert await _revision(url) == head_revision()
    # Opening it again finds it at head and keeps the data.
    async with EventHub(url) as hub:
        assert [e.payload for e in await hub.history("room:lobby")] == [{"text": "hi"}]


async def test_unknown_revision_is_refused_with_what_to_do(database_url: str) -> None:
    async with EventHub(database_url, auto_migrate=True) as hub:
        await hub.publish("kept", None, 1)
    await _stamp(database_url, "ffff")

    for auto_migrate in (True, False):
        hub = EventHub(database_url, auto_migrate=auto_migrate)
        with pytest.raises(SchemaError) as refused:
            await hub.start()
        message = str(refused.value)
        assert "'ffff'" in message
        assert "does not know" in message
        assert "Upgrade eventhub-log or point it at another database" in message
        assert not hub.running
        await hub.close()

    # Nothing was touched: the stamp and the data are as they were.
    assert await _revision(database_url) == "ffff"
    await _stamp(database_url, head_revision())
    async with EventHub(database_url, auto_migrate=False) as hub:
        assert [e.payload for e in await hub.history("kept")] == [1]


async def test_empty_postgres_without_auto_migrate_says_to_run_migrate(
    empty_postgres: str,
) -> None:
    hub = EventHub(empty_postgres)  # PostgreSQL: auto_migrate is off by default
    with pytest.raises(SchemaError, match=r"run `eventhub-log migrate --database-url \.\.\.`"):
        await hub.start()
    await hub.close()
    database = open_database(empty_postgres)
    try:
        async with database.engine.connect() as conn:
            tables = await conn.run_sync(lambda sync: inspect(sync).get_table_names())
    finally:
        await database.engine.dispose()
    assert tables == []  # refused means untouched

    async with EventHub(empty_postgres, auto_migrate=True) as hub:
        assert (await hub.publish("t", None, 1)).seq == 1
    assert await _revision(empty_postgres) == head_revision()


async def test_sqlite_without_auto_migrate_says_to_run_migrate(tmp_path: Path) -> None:
    hub = EventHub(f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}", auto_migrate=False)
    with pytest.raises(SchemaError, match="eventhub-log migrate"):
        await hub.start()
    await hub.close()


async def test_a_refused_start_leaves_no_connection_open(database_url: str) -> None:
    """``async with`` never reaches ``__aexit__`` when start fails: start cleans up.

    An unclosed driver connection would warn when collected, which fails the test.
    """
    async with EventHub(database_url, auto_migrate=True):
        pass
    await _stamp(database_url, "ffff")
    with pytest.raises(SchemaError):
        async with EventHub(database_url, auto_migrate=True):
            pass
    gc.collect()
