"""SQLAlchemy Core tables. Alembic owns the schema; these mirror its head revision."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC, hands back aware UTC: one behaviour on every dialect."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def result_processor(self, dialect: Dialect, coltype: object) -> Any:
        if dialect.name == "sqlite":
            return _sqlite_result
        return super().result_processor(dialect, coltype)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # raw SQLite text from aggregate functions
            value = datetime.fromisoformat(value)
        assert isinstance(value, datetime)
        return _as_utc(value)


# SQLite hands back text. The events of one commit share their timestamp, so a
# replay page parses each batch's once: parsing and making it aware cost about
# an eighth of a replay's time when done for every row.
_PARSED: dict[str, datetime] = {}
_PARSED_SIZE = 4096


def _sqlite_result(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None if value is None else _as_utc(value)
    moment = _PARSED.get(value)
    if moment is None:
        if len(_PARSED) >= _PARSED_SIZE:
            _PARSED.clear()
        moment = _PARSED[value] = _as_utc(datetime.fromisoformat(value))
    return moment


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()

# A single row holding the last allocated log position. Every write transaction
# updates it first, which serialises writers on this row: see log.py.
log_head = Table(
    "log_head",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("position", BigInteger, nullable=False),
)

topics = Table(
    "topics",
    metadata,
    Column("topic", String(255), primary_key=True),
    Column("last_seq", BigInteger, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_published_at", UTCDateTime, nullable=True),
    # Retention deleted every event of the topic up to this seq (0: none).
    Column("pruned_through_seq", BigInteger, nullable=False, server_default="0"),
    # The hash of the topic's last event (NULL: none yet), so an append chains
    # on without reading the events table; and that of the last event retention
    # deleted (NULL: none), from which the kept events' chain verifies.
    Column("last_hash", String(64), nullable=True),
    Column("pruned_hash", String(64), nullable=True),
)

events = Table(
    "events",
    metadata,
    Column("topic", String(255), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("payload", Text, nullable=False),
    Column("exclude_id", String(255), nullable=True),
    Column("published_at", UTCDateTime, nullable=False),
    # The publishing token's ``sub``; NULL on an open hub and for events older than 0005.
    Column("publisher", String(255), nullable=True),
    # Its link in the topic's hash chain: see eventhub_log/chain.py.
    Column("hash", String(64), nullable=False),
    PrimaryKeyConstraint("topic", "seq", name="pk_events"),
    UniqueConstraint("position", name="uq_events_position"),
    Index("ix_events_published_at", "topic", "published_at"),
)

subscriptions = Table(
    "subscriptions",
    metadata,
    Column("topic", String(255), nullable=False),
    Column("subscriber_id", String(255), nullable=False),
    # The stream that owns the row (NULL: made through the API with no stream).
    Column("connection_id", String(64), nullable=True),
    # The server instance holding that stream, for the crash sweep.
    Column("instance_id", String(64), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    # Who made a row with no stream: the token's ``sub`` (NULL: server code or an
    # open hub), for the per-client cap; and when it goes unless a stream takes
    # it over (NULL: never). A stream's rows have no lifetime: they go with it.
    Column("owner", String(255), nullable=True),
    Column("expires_at", UTCDateTime, nullable=True),
    PrimaryKeyConstraint("topic", "subscriber_id", name="pk_subscriptions"),
    Index("ix_subscriptions_subscriber", "subscriber_id"),
    Index("ix_subscriptions_instance", "instance_id"),
    Index("ix_subscriptions_expires_at", "expires_at"),
    Index("ix_subscriptions_owner", "owner"),
)

instances = Table(
    "instances",
    metadata,
    Column("instance_id", String(64), primary_key=True),
    Column("started_at", UTCDateTime, nullable=False),
    Column("heartbeat_at", UTCDateTime, nullable=False),
)

# Subscribe / unsubscribe calls made through the hub (not stream opens), so that the
# instance holding that subscriber's stream applies them: see subscription_sync.py.
# ``id`` is allocated under the ``log_head`` lock, so ids are commit-ordered like
# positions; ``position`` is the log head at the change: the change applies to
# events after it. ``topic`` NULL with ``added`` false: every topic was removed.
subscription_changes = Table(
    "subscription_changes",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("subscriber_id", String(255), nullable=False),
    Column("topic", String(255), nullable=True),
    Column("added", Boolean, nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("changed_at", UTCDateTime, nullable=False),
)

# Every pruned chunk of a topic leaves one row: the last seq it deleted and that
# event's log position. A reader resuming after a position finds between which
# marks it stood, hence the seqs it may have missed: see retention.py.
retention_marks = Table(
    "retention_marks",
    metadata,
    Column("topic", String(255), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("position", BigInteger, nullable=False),
    PrimaryKeyConstraint("topic", "seq", name="pk_retention_marks"),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("key", String(255), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("response", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False, index=True),
)
