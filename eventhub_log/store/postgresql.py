"""PostgreSQL (asyncpg): upserts; writers serialise on the ``log_head`` row."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import event, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import Insert

from ..chain import GENESIS
from ..errors import DatabaseUnavailable, StorageError
from ..model import Event, PendingEvent
from .queries import number_events
from .tables import subscriptions, topics

# LISTEN/NOTIFY channels (notify/postgres.py listens). Every write transaction
# that appends events or changes subscriptions sends its NOTIFY itself: PostgreSQL
# delivers it at the commit, in commit order, and never for a rollback, with no
# round trip of its own. The payload is a log position, never an event.
EVENTS_CHANNEL = "eventhub_log_events"
SUBSCRIPTIONS_CHANNEL = "eventhub_log_subscriptions"


async def signal_appended(conn: AsyncConnection, position: int) -> None:
    """In the transaction that appended up to ``position``: tell the listeners."""
    await conn.execute(select(func.pg_notify(EVENTS_CHANNEL, str(position))))


async def signal_subscriptions(conn: AsyncConnection) -> None:
    """In a transaction that changed subscriptions: tell the listeners."""
    await conn.execute(select(func.pg_notify(SUBSCRIPTIONS_CHANNEL, "")))


def configure(engine: AsyncEngine, *, synchronous: str, busy_timeout_ms: int) -> None:
    """READ COMMITTED and the row lock suffice; only broken connections need care."""

    @event.listens_for(engine.sync_engine, "handle_error")
    def _stuck_is_disconnect(context: ExceptionContext) -> None:
        # A connection that broke mid-operation (a server restart) can be left
        # with its protocol stuck ("cannot switch to state ..."); SQLAlchemy does
        # not count that as a disconnect and would lend it again and again.
        if type(context.original_exception).__name__ == "InternalClientError":
            context.is_disconnect = True


def topics_upsert(rows: list[dict[str, Any]]) -> Insert:
    stmt = pg_insert(topics).values(rows)
    return stmt.on_conflict_do_update(
        index_elements=[topics.c.topic],
        set_={
            "last_seq": topics.c.last_seq + stmt.excluded.last_seq,
            "last_published_at": stmt.excluded.last_published_at,
        },
    ).returning(topics.c.topic, topics.c.last_seq, topics.c.last_hash)


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


# The writer's append as two statements on the driver, each prepared once per
# connection, in one transaction. The first bumps ``log_head`` (taking its row
# lock before any ``topics`` row is touched: the lock order of
# ``queries.append``, for commit order and no deadlock on ``topics`` rows) and
# the batch's topics, returning each topic's new ``last_seq`` and the hash its
# chain ends with; ON CONFLICT DO UPDATE works on the latest committed row, so
# both are the true heads, whichever instance wrote last. The hashes are then
# computed here (the payloads' canonical texts are ready from validation) and
# the second statement inserts the events, moves each topic's ``last_hash`` and
# sends the NOTIFY (see ``signal_appended``).
#
# The chain needs the previous hash before the events can be written, so the
# one-statement append this replaced (the numbering done in SQL) cannot carry
# it: two statements plus BEGIN and COMMIT are four round trips instead of one,
# a few tenths of a millisecond a batch on a local server.
_RESERVE = """
WITH head AS (
    UPDATE log_head SET position = position + $3::bigint WHERE id = 1 RETURNING position
), bumped AS (
    INSERT INTO topics AS t (topic, last_seq, created_at, last_published_at)
    SELECT c.topic, c.n, $4::timestamp, $4::timestamp
    FROM unnest($1::text[], $2::bigint[]) AS c(topic, n) CROSS JOIN head
    ON CONFLICT (topic) DO UPDATE
        SET last_seq = t.last_seq + excluded.last_seq,
            last_published_at = excluded.last_published_at
    RETURNING t.topic, t.last_seq, t.last_hash
)
SELECT b.topic, b.last_seq, b.last_hash, h.position FROM bumped b CROSS JOIN head h
"""
_INSERT = f"""
WITH inserted AS (
    INSERT INTO events (topic, seq, position, payload, exclude_id, publisher, published_at, hash)
    SELECT topic, seq, position, payload, exclude_id, publisher, $7::timestamp, hash
    FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[],
                $8::text[]) AS i(topic, seq, position, payload, exclude_id, publisher, hash)
), heads AS (
    UPDATE topics AS t SET last_hash = h.hash
    FROM unnest($9::text[], $10::text[]) AS h(topic, hash) WHERE t.topic = h.topic
)
SELECT pg_notify('{EVENTS_CHANNEL}', $11::text)
"""


async def append_batch(
    conn: AsyncConnection, pending: Sequence[PendingEvent], now: datetime
) -> list[Event]:
    """Append in a transaction of its own on the asyncpg connection, committed on return.

    The same rows and numbers as ``queries.append``, with no multi-row upsert and
    insert for SQLAlchemy to compile per batch.
    """
    import asyncpg  # type: ignore[import-untyped]  # (only ever used with this dialect)

    driver = (await conn.get_raw_connection()).driver_connection
    assert driver is not None
    naive = now.replace(tzinfo=None)  # timestamps are stored as naive UTC
    counts = Counter(item.topic for item in pending)
    try:
        async with driver.transaction():
            rows = await driver.fetch(
                _RESERVE, list(counts), list(counts.values()), len(pending), naive
            )
            last_seqs = {row[0]: row[1] for row in rows}
            heads = {row[0]: row[2] or GENESIS for row in rows}
            stored = number_events(pending, rows[0][3], last_seqs, now, heads)
            await driver.execute(
                _INSERT,
                [e.topic for e in stored],
                [e.seq for e in stored],
                [e.position for e in stored],
                [e.payload_json for e in stored],
                [e.exclude_id for e in stored],
                [e.publisher for e in stored],
                naive,
                [e.hash for e in stored],
                list(heads),
                list(heads.values()),
                str(stored[-1].position),
            )
    except (
        OSError,
        asyncpg.InterfaceError,
        asyncpg.PostgresConnectionError,
        # The connection broke mid-operation and its protocol state is stuck
        # ("cannot switch to state ..."): as good as lost.
        asyncpg.InternalClientError,
    ) as exc:
        await conn.invalidate(exc)  # the pool must not lend this connection again
        raise DatabaseUnavailable(f"database unavailable: {exc}") from exc
    except asyncpg.PostgresError as exc:
        if _is_unavailable(exc.sqlstate):
            await conn.invalidate(exc)
            raise DatabaseUnavailable(f"database unavailable: {exc}") from exc
        raise StorageError(f"database error: {exc}") from exc
    return stored


def _is_unavailable(sqlstate: str | None) -> bool:
    """Connection exceptions, a server shutting down or starting up, too many clients."""
    if sqlstate is None:
        return False
    return sqlstate.startswith("08") or sqlstate in ("57P01", "57P02", "57P03", "53300")
