"""Alembic owns the schema: new SQLite files migrate themselves, unknown ones are refused."""

from __future__ import annotations

import asyncio
import gc
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from alembic import command
from eventhub_log import EventHub, SchemaError
from eventhub_log.migrations import alembic_config, head_revision
from eventhub_log.store.database import open_database
from eventhub_log.store.tables import metadata

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


@pytest.fixture
def empty_database(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A database with no tables at all, on either backend."""
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    # The template first, outside any event loop: its setup runs one of its own.
    request.getfixturevalue("postgres_template")
    return str(request.getfixturevalue("empty_postgres"))


async def _upgrade_to(url: str, revision: str) -> None:
    def upgrade(connection: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    database = open_database(url)
    try:
        async with database.write() as conn:
            await conn.run_sync(upgrade)
    finally:
        await database.engine.dispose()


async def _event_columns(url: str) -> list[str]:
    database = open_database(url)
    try:
        async with database.engine.connect() as conn:
            columns = await conn.run_sync(lambda sync: inspect(sync).get_columns("events"))
    finally:
        await database.engine.dispose()
    return [column["name"] for column in columns]


async def test_head_is_the_subscription_owner_revision_and_the_tables_mirror_it(
    database_url: str,
) -> None:
    assert head_revision() == "0007"
    async with EventHub(database_url, auto_migrate=True) as hub, hub.database.read() as conn:
        differences = await conn.run_sync(
            lambda sync: compare_metadata(
                MigrationContext.configure(sync, opts={"compare_type": True}), metadata
            )
        )
    assert differences == []


async def test_0005_upgrades_a_database_at_0004_holding_events(empty_database: str) -> None:
    url = empty_database
    await _upgrade_to(url, "0004")
    assert await _revision(url) == "0004"
    assert "publisher" not in await _event_columns(url)
    database = open_database(url)
    try:
        async with database.write() as conn:
            # What 0004's writer left: two events of one topic, the head and seq after them.
            await conn.execute(text("UPDATE log_head SET position = 2 WHERE id = 1"))
            await conn.execute(
                text(
                    "INSERT INTO topics (topic, last_seq, created_at, last_published_at) "
                    "VALUES ('old', 2, :at, :at)"
                ),
                {"at": datetime(2026, 1, 2, 3, 4, 5)},
            )
            for seq in (1, 2):
                await conn.execute(
                    text(
                        "INSERT INTO events (topic, seq, position, payload, exclude_id, "
                        "published_at) VALUES ('old', :seq, :seq, :payload, NULL, :at)"
                    ),
                    {"seq": seq, "payload": f'{{"n":{seq}}}', "at": datetime(2026, 1, 2, 3, 4, 5)},
                )
    finally:
        await database.engine.dispose()

    async with EventHub(url, auto_migrate=True) as hub:
        assert await _revision(url) == head_revision()
        kept = await hub.history("old")
        assert [(e.seq, e.payload, e.publisher) for e in kept] == [
            (1, {"n": 1}, None),
            (2, {"n": 2}, None),
        ]
        assert all(e.to_dict()["publisher"] is None for e in kept)
        new = await hub.publish("old", None, {"n": 3}, publisher="alice")
        assert (new.seq, new.position) == (3, 3)
        async with hub.database.read() as conn:
            rows = await conn.execute(text("SELECT seq, publisher FROM events ORDER BY seq"))
            assert [tuple(row) for row in rows] == [(1, None), (2, None), (3, "alice")]


async def test_0007_upgrades_a_database_at_0006_holding_subscriptions(
    empty_database: str,
) -> None:
    url = empty_database
    await _upgrade_to(url, "0006")
    database = open_database(url)
    try:
        async with database.write() as conn:
            # A row made with no stream and one a stream held, as 0006 left them.
            await conn.execute(
                text(
                    "INSERT INTO subscriptions (topic, subscriber_id, connection_id, "
                    "instance_id, created_at) VALUES ('room:a', 'rest', NULL, NULL, :at), "
                    "('room:a', 'streamed', 'c1', 'i1', :at)"
                ),
                {"at": datetime(2026, 1, 2, 3, 4, 5)},
            )
    finally:
        await database.engine.dispose()

    async with EventHub(url, auto_migrate=True, heartbeat_interval=0.05) as hub:
        assert await _revision(url) == head_revision()
        async with hub.database.read() as conn:
            rows = await conn.execute(
                text(
                    "SELECT subscriber_id, owner, expires_at FROM subscriptions "
                    "ORDER BY subscriber_id"
                )
            )
            assert [tuple(row) for row in rows] == [("rest", None, None), ("streamed", None, None)]
        # No lifetime: several heartbeats later the stream-less row is still there.
        await asyncio.sleep(0.3)
        assert await hub.subscribers("room:a") == ["rest", "streamed"]
        # And a renewal over REST gives it one.
        expires_at = await hub.subscribe("room:a", "rest", owner="alice", ttl=60)
        assert expires_at is not None


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
