"""PostgreSQL (asyncpg): upserts; writers serialise on the ``log_head`` row."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import Insert

from .tables import subscriptions, topics


def configure(engine: AsyncEngine, *, synchronous: str, busy_timeout_ms: int) -> None:
    """Nothing to set per connection: READ COMMITTED and the row lock suffice."""


def topics_upsert(rows: list[dict[str, Any]]) -> Insert:
    stmt = pg_insert(topics).values(rows)
    return stmt.on_conflict_do_update(
        index_elements=[topics.c.topic],
        set_={
            "last_seq": topics.c.last_seq + stmt.excluded.last_seq,
            "last_published_at": stmt.excluded.last_published_at,
        },
    ).returning(topics.c.topic, topics.c.last_seq)


def subscription_upsert(rows: list[dict[str, Any]]) -> Insert:
    stmt = pg_insert(subscriptions).values(rows)
    return stmt.on_conflict_do_update(
        index_elements=[subscriptions.c.topic, subscriptions.c.subscriber_id],
        set_={
            "connection_id": stmt.excluded.connection_id,
            "instance_id": stmt.excluded.instance_id,
        },
    )


def subscription_insert_missing(rows: list[dict[str, Any]]) -> Insert:
    return pg_insert(subscriptions).values(rows).on_conflict_do_nothing()
