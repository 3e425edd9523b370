"""SQLite: WAL, a busy timeout, and ``BEGIN IMMEDIATE`` for write transactions.

pysqlite (under aiosqlite) normally opens transactions lazily with a plain
``BEGIN`` and upgrades the lock at the first write; two such transactions can
each hold a read lock and wait on each other until the busy timeout fires. A
write transaction here asks for the write lock up front instead, so writers queue
on the busy timeout and never deadlock. Reads keep a deferred ``BEGIN`` so they
run beside the writer under WAL.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import event
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..chain import GENESIS
from ..errors import DatabaseUnavailable, StorageError, StorageFull
from ..model import Event, PendingEvent
from .queries import number_events
from .tables import events
from .upserts import Upserts

WRITE_OPTION = "eventhub_write"


async def signal_appended(conn: AsyncConnection, position: int) -> None:
    """No signal on SQLite: other processes poll the head."""


async def signal_subscriptions(conn: AsyncConnection) -> None:
    """No signal on SQLite: other processes poll ``subscription_changes``."""


async def lock_owner(conn: AsyncConnection, owner: str) -> None:
    """Nothing to take: a SQLite write transaction already excludes every other."""


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


_SQLITE_FULL = 13


def is_full(exc: BaseException) -> bool:
    """SQLITE_FULL ("database or disk is full"): the disk, or ``max_page_count``."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF == _SQLITE_FULL
    return isinstance(exc, sqlite3.Error) and "database or disk is full" in str(exc)


def _is_memory(engine: AsyncEngine) -> bool:
    database = engine.url.database
    return database in (None, "", ":memory:") or "mode=memory" in str(engine.url)


# The upserts queries.py calls on a dialect module (upserts.py).
_UPSERTS = Upserts(sqlite_insert)
topics_upsert = _UPSERTS.topics_upsert
subscription_upsert = _UPSERTS.subscription_upsert
subscription_upsert_many = _UPSERTS.subscription_upsert_many
subscription_refresh = _UPSERTS.subscription_refresh


# The group-commit writer's transaction, as one call on the driver's thread -----
#
# aiosqlite runs every sqlite3 call on a thread of its own and each call is a
# round trip between that thread and the event loop; through SQLAlchemy a batch
# takes about twenty of them (begin, three statements with their cursors, commit,
# the pool's reset), which costs more than the commit's fsync. The writer's batch
# needs no SQLAlchemy feature, so it runs the whole transaction as one call on
# that thread: the same statements on the same pooled connection, one round trip.

_BUMP_HEAD = "UPDATE log_head SET position = position + ? WHERE id = 1 RETURNING position"
# The batch's topics are read, numbered in Python and written back with their new
# head hash by one statement executed with the list: one upsert RETURNING per
# topic and then an update of its hash per topic cost 2 statements a topic. The
# transaction holds SQLite's write lock from its BEGIN IMMEDIATE, so what is read
# is what the upsert overwrites.
_TOPICS_READ_MAX = 500  # parameters a read, well below any SQLite's limit
_UPSERT_TOPICS = (
    "INSERT INTO topics (topic, last_seq, created_at, last_published_at, last_hash) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (topic) DO UPDATE SET last_seq = excluded.last_seq, "
    "last_published_at = excluded.last_published_at, last_hash = excluded.last_hash"
)
_READ_TOPICS: dict[int, str] = {}


def _read_topics(count: int) -> str:
    sql = _READ_TOPICS.get(count)
    if sql is None:
        marks = ", ".join("?" * count)
        sql = _READ_TOPICS[count] = (
            f"SELECT topic, last_seq, last_hash FROM topics WHERE topic IN ({marks})"
        )
    return sql


# The events insert by which of exclude_id and publisher the batch carries: pysqlite
# binds a None only after two failed attribute look-ups on its way to NULL (a
# formatted AttributeError each), so columns that are NULL for every event of the
# batch are left to their default, NULL, instead of bound. Rows stay in position
# order, so the table is written in the same order as with the full insert.
_INSERT_EVENTS = {
    (True, True): "INSERT INTO events (topic, seq, position, payload, exclude_id, publisher, "
    "published_at, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    (True, False): "INSERT INTO events (topic, seq, position, payload, exclude_id, "
    "published_at, hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
    (False, True): "INSERT INTO events (topic, seq, position, payload, publisher, "
    "published_at, hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
    (False, False): "INSERT INTO events (topic, seq, position, payload, published_at, hash) "
    "VALUES (?, ?, ?, ?, ?, ?)",
}


def _event_rows(
    stored: list[Event], stamp: object, excludes: bool, publishers: bool
) -> list[tuple[Any, ...]]:
    if excludes and publishers:
        return [
            (e.topic, e.seq, e.position, e.payload_json, e.exclude_id, e.publisher, stamp, e.hash)
            for e in stored
        ]
    if excludes:
        return [
            (e.topic, e.seq, e.position, e.payload_json, e.exclude_id, stamp, e.hash)
            for e in stored
        ]
    if publishers:
        return [
            (e.topic, e.seq, e.position, e.payload_json, e.publisher, stamp, e.hash) for e in stored
        ]
    return [(e.topic, e.seq, e.position, e.payload_json, stamp, e.hash) for e in stored]


async def append_batch(
    conn: AsyncConnection, pending: Sequence[PendingEvent], now: datetime
) -> list[Event] | None:
    """Append in a ``BEGIN IMMEDIATE`` transaction of its own, committed on return.

    ``None`` when the driver offers no way to run a call on its thread (then the
    caller takes the ordinary SQLAlchemy path, which gives the same result).
    """
    driver = (await conn.get_raw_connection()).driver_connection
    # aiosqlite's own way to queue a call on its thread (its methods all use it).
    run = getattr(driver, "_execute", None)
    db = getattr(driver, "_connection", None)
    if run is None or not isinstance(db, sqlite3.Connection):
        return None
    try:
        stored: list[Event] = await run(_append_on_thread, db, pending, now, _stamp(conn, now))
    except sqlite3.OperationalError as exc:  # locked past the busy timeout, disk I/O
        if is_full(exc):
            raise StorageFull(f"no space left: {exc}") from exc
        raise DatabaseUnavailable(f"database unavailable: {exc}") from exc
    except sqlite3.Error as exc:
        raise StorageError(f"database error: {exc}") from exc
    return stored


def _stamp(conn: AsyncConnection, now: datetime) -> object:
    """``now`` as the driver stores it: the column type's bind value, adapted once.

    The column type hands pysqlite a naive ``datetime``, which pysqlite turns into
    text with its registered adapter for every row and statement it is bound to
    (``isoformat(" ")``, after two failed attribute look-ups): a fifth of the
    driver thread's work per event. The events of a batch share the moment, so the
    same adapter is applied once here and its text bound instead: the same bytes
    stored. A value with no registered adapter goes as it is, as it did."""
    value = _encode_time(conn.dialect)(now)
    adapt = sqlite3.adapters.get((type(value), sqlite3.PrepareProtocol))
    return value if adapt is None else adapt(value)


_BIND_TIME: dict[object, Any] = {}


def _encode_time(dialect: Any) -> Any:
    encode = _BIND_TIME.get(dialect)
    if encode is None:
        encode = events.c.published_at.type.bind_processor(dialect)
        assert encode is not None
        _BIND_TIME.clear()  # one dialect per engine: keep the last only
        _BIND_TIME[dialect] = encode
    return encode


def _append_on_thread(
    db: sqlite3.Connection, pending: Sequence[PendingEvent], now: datetime, now_text: object
) -> list[Event]:
    counts: dict[str, int] = {}
    excludes = publishers = False
    for item in pending:
        counts[item.topic] = counts.get(item.topic, 0) + 1
        if item.exclude_id is not None:
            excludes = True
        if item.publisher is not None:
            publishers = True
    names = list(counts)
    db.execute("BEGIN IMMEDIATE")
    try:
        ((head,),) = db.execute(_BUMP_HEAD, (len(pending),)).fetchall()
        found: dict[str, tuple[int, str | None]] = {}
        for start in range(0, len(names), _TOPICS_READ_MAX):
            chunk = names[start : start + _TOPICS_READ_MAX]
            for topic, last_seq, last_hash in db.execute(_read_topics(len(chunk)), chunk):
                found[topic] = (last_seq, last_hash)
        last_seqs: dict[str, int] = {}
        heads: dict[str, str] = {}
        for topic, count in counts.items():
            last_seq, last_hash = found.get(topic, (0, None))
            last_seqs[topic] = last_seq + count
            heads[topic] = last_hash or GENESIS
        stored = number_events(pending, head, last_seqs, now, heads)
        db.executemany(
            _INSERT_EVENTS[excludes, publishers],
            _event_rows(stored, now_text, excludes, publishers),
        )
        db.executemany(
            _UPSERT_TOPICS,
            [
                (topic, last_seqs[topic], now_text, now_text, digest)
                for topic, digest in heads.items()
            ],
        )
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return stored
