"""PostgreSQL (asyncpg): upserts; writers serialise on the ``log_head`` row."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import event, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..chain import canonical_payload, envelope
from ..errors import DatabaseUnavailable, StorageError, StorageFull
from ..model import Event, PendingEvent, format_timestamp, new_event
from .upserts import Upserts

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


# The first key of the advisory locks that serialise one owner's subscribes; the
# second is a hash of the owner (two owners sharing one only wait for each other).
_OWNER_LOCKS = 0x45484C53


async def lock_owner(conn: AsyncConnection, owner: str) -> None:
    """Until the transaction ends, hold the lock of ``owner``'s stream-less rows.

    Two subscribes of one client on READ COMMITTED would otherwise both count
    below the cap and both insert. Taken first in its transaction, before any
    row, and by nothing else: it cannot join a lock cycle.
    """
    await conn.execute(select(func.pg_advisory_xact_lock(_OWNER_LOCKS, func.hashtext(owner))))


def configure(engine: AsyncEngine, *, synchronous: str, busy_timeout_ms: int) -> None:
    """READ COMMITTED and the row lock suffice; only broken connections need care."""

    @event.listens_for(engine.sync_engine, "handle_error")
    def _stuck_is_disconnect(context: ExceptionContext) -> None:
        # A connection that broke mid-operation (a server restart) can be left
        # with its protocol stuck ("cannot switch to state ..."); SQLAlchemy does
        # not count that as a disconnect and would lend it again and again.
        if type(context.original_exception).__name__ == "InternalClientError":
            context.is_disconnect = True


# The upserts queries.py calls on a dialect module (upserts.py).
_UPSERTS = Upserts(pg_insert)
topics_upsert = _UPSERTS.topics_upsert
subscription_upsert = _UPSERTS.subscription_upsert
subscription_upsert_many = _UPSERTS.subscription_upsert_many
subscription_refresh = _UPSERTS.subscription_refresh


# The writer's append as one call of ``eventhub_log_append`` (created by
# revision 0006), prepared once per connection and run in its own implicit
# transaction: one round trip, no BEGIN or COMMIT. The function bumps
# ``log_head`` first (taking its row lock before any ``topics`` row is touched:
# the lock order of ``queries.append``, for commit order and no deadlock on
# ``topics`` rows), then upserts the batch's topics (ON CONFLICT DO UPDATE works
# on the latest committed row, so the seqs and head hashes it returns are true
# whichever instance wrote last), links each event into its topic's chain,
# inserts the events, moves ``topics.last_hash`` and sends the NOTIFY (see
# ``signal_appended``). Python hands it each event's canonical text cut around
# the seq (``chain.envelope``). Computing the links in Python instead needed
# the heads back first: two statements in a transaction, four round trips, which
# cost a lone publisher a third of its rate.
_APPEND = (
    "SELECT out_seq, out_hash, out_position FROM eventhub_log_append("
    "$1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::bytea[], "
    f"$7::timestamp, '{EVENTS_CHANNEL}')"
)


async def append_batch(
    conn: AsyncConnection, pending: Sequence[PendingEvent], now: datetime
) -> list[Event]:
    """Append in one statement of its own on the asyncpg connection, committed on return.

    The same rows, numbers and hashes as ``queries.append``, in one round trip
    instead of five, and with no multi-row upsert and insert for SQLAlchemy to
    compile per batch.
    """
    import asyncpg  # type: ignore[import-untyped]  # (only ever used with this dialect)

    driver = (await conn.get_raw_connection()).driver_connection
    assert driver is not None
    naive = now.replace(tzinfo=None)  # timestamps are stored as naive UTC
    published_at = format_timestamp(now)
    heads: list[bytes] = []
    tails: list[bytes] = []
    for item in pending:
        canonical = item.payload_canonical
        if canonical is None:
            canonical = canonical_payload(item.payload_json)
        head, tail = envelope(item.topic, published_at, item.exclude_id, item.publisher, canonical)
        heads.append(head.encode())
        tails.append(tail.encode())
    try:
        rows = await driver.fetch(
            _APPEND,
            [item.topic for item in pending],
            [item.payload_json for item in pending],
            [item.exclude_id for item in pending],
            [item.publisher for item in pending],
            heads,
            tails,
            naive,
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
        if exc.sqlstate == "53100":  # disk_full: rolled back, nothing written
            raise StorageFull(f"no space left: {exc}") from exc
        if _is_unavailable(exc.sqlstate):
            await conn.invalidate(exc)
            raise DatabaseUnavailable(f"database unavailable: {exc}") from exc
        raise StorageError(f"database error: {exc}") from exc
    return [
        new_event(
            item.topic,
            seq,
            position,
            now,
            item.payload_json,
            item.exclude_id,
            item.publisher,
            digest,
        )
        for item, (seq, digest, position) in zip(pending, rows, strict=True)
    ]


def _is_unavailable(sqlstate: str | None) -> bool:
    """Connection exceptions, a server shutting down or starting up, too many clients."""
    if sqlstate is None:
        return False
    return sqlstate.startswith("08") or sqlstate in ("57P01", "57P02", "57P03", "53300")
