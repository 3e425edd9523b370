"""SQLite: WAL, a busy timeout, and ``BEGIN IMMEDIATE`` for write transactions.

pysqlite (under aiosqlite) normally opens transactions lazily with a plain
``BEGIN`` and upgrades the lock at the first write; two such transactions can
each hold a read lock and wait on each other until the busy timeout fires. A
write transaction here asks for the write lock up front instead, so writers queue
on the busy timeout and never deadlock. Reads keep a deferred ``BEGIN`` so they
run beside the writer under WAL.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import Insert

from .tables import subscriptions, topics

WRITE_OPTION = "eventhub_write"


def configure(engine: AsyncEngine, *, synchronous: str, busy_timeout_ms: int) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from pysqlite; the "begin" hook does it.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        if not _is_memory(engine):
            cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute(f"PRAGMA synchronous = {synchronous}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        write = connection.get_execution_options().get(WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _is_memory(engine: AsyncEngine) -> bool:
    database = engine.url.database
    return database in (None, "", ":memory:") or "mode=memory" in str(engine.url)


def topics_upsert(rows: list[dict[str, Any]]) -> Insert:
    stmt = sqlite_insert(topics).values(rows)
    return stmt.on_conflict_do_update(
        index_elements=[topics.c.topic],
        set_={
            "last_seq": topics.c.last_seq + stmt.excluded.last_seq,
            "last_published_at": stmt.excluded.last_published_at,
        },
    ).returning(topics.c.topic, topics.c.last_seq)


def subscription_upsert(rows: list[dict[str, Any]]) -> Insert:
    stmt = sqlite_insert(subscriptions).values(rows)
    return stmt.on_conflict_do_update(
        index_elements=[subscriptions.c.topic, subscriptions.c.subscriber_id],
        set_={
            "connection_id": stmt.excluded.connection_id,
            "instance_id": stmt.excluded.instance_id,
        },
    )


def subscription_insert_missing(rows: list[dict[str, Any]]) -> Insert:
    return sqlite_insert(subscriptions).values(rows).on_conflict_do_nothing()
