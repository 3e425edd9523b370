"""Statements on the ``idempotency_keys`` table (see ``eventhub_log.idempotency``)."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncConnection

from .tables import idempotency_keys, log_head


async def lock_log(conn: AsyncConnection) -> None:
    """Take the ``log_head`` row lock that every append takes, early.

    On SQLite the write transaction (``BEGIN IMMEDIATE``) already excludes every
    other writer and ``FOR UPDATE`` is left out of the SQL.
    """
    await conn.execute(select(log_head.c.position).where(log_head.c.id == 1).with_for_update())


async def delete_expired(
    conn: AsyncConnection, before: datetime, keys: Collection[str] | None
) -> int:
    """Forget keys created before ``before``: all of them, or only ``keys``."""
    query = delete(idempotency_keys).where(idempotency_keys.c.created_at < before)
    if keys is not None:
        if not keys:
            return 0
        query = query.where(idempotency_keys.c.key.in_(sorted(keys)))
    return int((await conn.execute(query)).rowcount or 0)


async def find(conn: AsyncConnection, keys: Collection[str]) -> dict[str, tuple[str, str]]:
    """``key -> (request_hash, response)`` for the keys that exist."""
    if not keys:
        return {}
    rows = await conn.execute(
        select(
            idempotency_keys.c.key, idempotency_keys.c.request_hash, idempotency_keys.c.response
        ).where(idempotency_keys.c.key.in_(sorted(keys)))
    )
    return {key: (digest, response) for key, digest, response in rows}


async def insert(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    await conn.execute(idempotency_keys.insert(), rows)
