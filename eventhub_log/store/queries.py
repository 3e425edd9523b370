"""Every SQL statement of the library, as small functions over a connection."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Sequence
from datetime import datetime
from types import ModuleType
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, not_, or_, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ..chain import GENESIS, canonical_payload, link
from ..model import (
    Event,
    PendingEvent,
    SubscriptionChange,
    TopicInfo,
    format_timestamp,
    new_event,
)
from .tables import events, instances, log_head, subscription_changes, subscriptions, topics

_EVENT_COLUMNS = (
    events.c.topic,
    events.c.seq,
    events.c.position,
    events.c.published_at,
    events.c.payload,
    events.c.exclude_id,
    events.c.publisher,
    events.c.hash,
)


def _event(row: Any) -> Event:
    # The row's columns are _EVENT_COLUMNS, in new_event's order.
    return new_event(*row)


async def append(
    conn: AsyncConnection, dialect: ModuleType, pending: Sequence[PendingEvent], now: datetime
) -> list[Event]:
    """Append events inside the caller's write transaction.

    The first statement bumps the single ``log_head`` row. That row lock is held
    until commit, so write transactions allocate positions one after another and
    commit in that same order: a reader that has seen position N has also seen
    everything below N. Without it (an identity column or sequence) PostgreSQL
    hands out numbers at insert time but shows them at commit time, and a reader
    could see 11 before 10 and, resuming after 11, lose 10 for good.
    """
    count = len(pending)
    head = (
        await conn.execute(
            update(log_head)
            .where(log_head.c.id == 1)
            .values(position=log_head.c.position + count)
            .returning(log_head.c.position)
        )
    ).scalar_one()

    per_topic = Counter(item.topic for item in pending)
    upsert = dialect.topics_upsert(
        [
            {"topic": topic, "last_seq": n, "created_at": now, "last_published_at": now}
            for topic, n in per_topic.items()
        ]
    )
    # The row lock on ``log_head`` is held, so each topic's last hash read here is
    # the chain's head: no other writer can append to it before this commits.
    bumped = (await conn.execute(upsert)).all()
    last_seqs = {topic: last_seq for topic, last_seq, _ in bumped}
    heads = {topic: last_hash or GENESIS for topic, _, last_hash in bumped}
    stored = number_events(pending, head, last_seqs, now, heads)
    await conn.execute(
        events.insert(),
        [
            {
                "topic": ev.topic,
                "seq": ev.seq,
                "position": ev.position,
                "payload": ev.payload_json,
                "exclude_id": ev.exclude_id,
                "publisher": ev.publisher,
                "published_at": now,
                "hash": ev.hash,
            }
            for ev in stored
        ],
    )
    await conn.execute(
        update(topics)
        .where(topics.c.topic == bindparam("b_topic"))
        .values(last_hash=bindparam("b_hash")),
        [{"b_topic": topic, "b_hash": last_hash} for topic, last_hash in heads.items()],
    )
    await dialect.signal_appended(conn, head)
    return stored


def number_events(
    pending: Sequence[PendingEvent],
    head: int,
    last_seqs: dict[str, int],
    now: datetime,
    heads: dict[str, str],
) -> list[Event]:
    """Give a batch its positions, seqs and hashes, ending at ``head`` and at each
    topic's ``last_seq`` (the values the batch's own updates of ``log_head`` and
    ``topics`` returned). ``heads`` holds each topic's last hash before the batch
    and is left holding the batch's last hash of each."""
    next_seq = dict(last_seqs)
    for item in pending:
        next_seq[item.topic] -= 1
    stored: list[Event] = []
    position = head - len(pending)
    published_at = format_timestamp(now)
    for item in pending:
        topic = item.topic
        position += 1
        seq = next_seq[topic] = next_seq[topic] + 1
        canonical = item.payload_canonical
        if canonical is None:
            canonical = canonical_payload(item.payload_json)
        digest = heads[topic] = link(
            heads[topic], topic, seq, published_at, item.exclude_id, item.publisher, canonical
        )
        stored.append(
            new_event(
                topic,
                seq,
                position,
                now,
                item.payload_json,
                item.exclude_id,
                item.publisher,
                digest,
            )
        )
    return stored


async def head_position(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(log_head.c.position))).scalar_one())


async def read_after(
    conn: AsyncConnection,
    after_position: int,
    topic_names: Collection[str] | None,
    subscriber_id: str | None,
    limit: int,
) -> list[Event]:
    """Events after a position, in position order; ``None`` topics means all."""
    query = select(*_EVENT_COLUMNS).where(events.c.position > after_position)
    if topic_names is not None:
        topic: Any = events.c.topic
        if conn.dialect.name == "sqlite":
            # With no statistics, SQLite answers ``topic IN (...)`` from the
            # (topic, published_at) index and sorts every event of those topics by
            # position, for every page: 20-30 ms a page 100,000 events into a
            # topic, so a catch-up grew with the square of its length. ``topic || ''``
            # is not indexable, which leaves the position index: a range scan in
            # order that stops at the limit, about 1 ms a page.
            topic = topic.concat("")
        query = query.where(topic.in_(sorted(topic_names)))
    if subscriber_id is not None:
        query = query.where(
            or_(events.c.exclude_id.is_(None), events.c.exclude_id != subscriber_id)
        )
    rows = await conn.execute(query.order_by(events.c.position).limit(limit))
    return [_event(row) for row in rows]


def history_query(
    topic: str,
    *,
    after_seq: int | None = None,
    before_seq: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    descending: bool = False,
    limit: int | None = None,
) -> Any:
    conditions = [events.c.topic == topic]
    if after_seq is not None:
        conditions.append(events.c.seq > after_seq)
    if before_seq is not None:
        conditions.append(events.c.seq < before_seq)
    if since is not None:
        conditions.append(events.c.published_at >= since)
    if until is not None:
        conditions.append(events.c.published_at < until)
    order = events.c.seq.desc() if descending else events.c.seq.asc()
    query = select(*_EVENT_COLUMNS).where(and_(*conditions)).order_by(order)
    return query if limit is None else query.limit(limit)


async def history(conn: AsyncConnection, topic: str, **filters: Any) -> list[Event]:
    return [_event(row) for row in await conn.execute(history_query(topic, **filters))]


async def event_at(conn: AsyncConnection, position: int) -> Event | None:
    row = (await conn.execute(select(*_EVENT_COLUMNS).where(events.c.position == position))).first()
    return None if row is None else _event(row)


async def topic_infos(
    conn: AsyncConnection, *, after: str | None = None, limit: int | None = None
) -> list[TopicInfo]:
    """One row per topic in name order (those after ``after``, at most ``limit``),
    without scanning the events: seqs have no holes and retention deletes a
    prefix, so a topic holds exactly the seqs after ``pruned_through_seq`` up to
    ``last_seq``, and its first event is a key lookup; its subscriber count is a
    range of the subscriptions' primary key, so a page costs its own rows only."""
    first = (
        select(events.c.published_at)
        .where(events.c.topic == topics.c.topic, events.c.seq == topics.c.pruned_through_seq + 1)
        .scalar_subquery()
    )
    subscriber_count = (
        select(func.count())
        .select_from(subscriptions)
        .where(subscriptions.c.topic == topics.c.topic)
        .scalar_subquery()
    )
    query = select(
        topics.c.topic,
        topics.c.last_seq,
        topics.c.last_seq - topics.c.pruned_through_seq,
        first,
        topics.c.last_published_at,
        subscriber_count,
    ).order_by(topics.c.topic)
    if after is not None:
        query = query.where(topics.c.topic > after)
    if limit is not None:
        query = query.limit(limit)
    return [TopicInfo(*row) for row in await conn.execute(query)]


# Subscriptions -------------------------------------------------------------


async def add_subscriptions(
    conn: AsyncConnection,
    dialect: ModuleType,
    subscriber_id: str,
    topic_names: Collection[str],
    now: datetime,
    *,
    connection_id: str | None = None,
    instance_id: str | None = None,
    owner: str | None = None,
    expires_at: datetime | None = None,
) -> dict[str, datetime | None]:
    """Insert rows, and return those left with no stream (topic: when it expires).

    A stream (``connection_id``) takes over the rows that already exist, and the
    subscriber's other rows no stream holds: they go with the stream now, so
    they lose their lifetime (an open stream's topic must not expire under it).
    With no stream the rows get ``owner`` and ``expires_at``, which a row no
    stream holds takes on too (subscribing again renews it); a row a stream
    holds is left to that stream and is not returned.
    """
    if not topic_names:
        return {}
    rows = [
        {
            "topic": topic,
            "subscriber_id": subscriber_id,
            "connection_id": connection_id,
            "instance_id": instance_id,
            "created_at": now,
            "owner": owner,
            "expires_at": None if connection_id is not None else expires_at,
        }
        for topic in sorted(topic_names)
    ]
    if connection_id is None:
        written = await conn.execute(dialect.subscription_refresh(rows))
        return {topic: expiry for topic, expiry in written}
    await conn.execute(dialect.subscription_upsert(rows))
    await conn.execute(
        update(subscriptions)
        .where(
            subscriptions.c.subscriber_id == subscriber_id,
            subscriptions.c.connection_id.is_(None),
        )
        .values(connection_id=connection_id, instance_id=instance_id, expires_at=None)
    )
    return {}


# Subscribers per ``IN`` list when many streams open together: far below
# SQLite's 32,766 and PostgreSQL's 65,535 bound parameters.
_ROWS_PER_STATEMENT = 1000


async def add_stream_subscriptions(
    conn: AsyncConnection,
    dialect: ModuleType,
    opens: Sequence[tuple[str, Collection[str], str]],
    now: datetime,
    instance_id: str,
) -> None:
    """``add_subscriptions`` for many streams at once: ``(subscriber_id, topics,
    connection_id)`` each, in the order they opened.

    The same as running them one after another: a later stream of a subscriber
    takes over the rows of its topics from an earlier one, and the subscriber's
    rows no stream held go to the first of its streams. A row appears once in
    the upsert (PostgreSQL refuses to update one row twice in a statement);
    rows go in (subscriber, topic) order, so concurrent transactions lock them
    in one order. Both statements run as executemany of one statement, compiled
    once: a multi-row VALUES is compiled again for every row count."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    claims: dict[str, str] = {}
    for subscriber_id, topic_names, connection_id in opens:
        claims.setdefault(subscriber_id, connection_id)
        for topic in topic_names:
            rows[(subscriber_id, topic)] = {
                "topic": topic,
                "subscriber_id": subscriber_id,
                "connection_id": connection_id,
                "instance_id": instance_id,
                "created_at": now,
                "owner": None,
                "expires_at": None,
            }
    ordered = [rows[key] for key in sorted(rows)]
    if ordered:
        await conn.execute(dialect.subscription_upsert_many(), ordered)
    if claims:
        await conn.execute(
            update(subscriptions)
            .where(
                subscriptions.c.subscriber_id == bindparam("claimer"),
                subscriptions.c.connection_id.is_(None),
            )
            .values(connection_id=bindparam("claim"), instance_id=instance_id, expires_at=None),
            [{"claimer": s, "claim": c} for s, c in sorted(claims.items())],
        )


async def subscribers_topics(
    conn: AsyncConnection, subscriber_ids: Collection[str]
) -> dict[str, list[str]]:
    """``subscriber_topics`` of many subscribers in one read (per thousand)."""
    found: dict[str, list[str]] = {}
    names = sorted(set(subscriber_ids))
    for start in range(0, len(names), _ROWS_PER_STATEMENT):
        rows = await conn.execute(
            select(subscriptions.c.subscriber_id, subscriptions.c.topic)
            .where(subscriptions.c.subscriber_id.in_(names[start : start + _ROWS_PER_STATEMENT]))
            .order_by(subscriptions.c.subscriber_id, subscriptions.c.topic)
        )
        for subscriber_id, topic in rows:
            found.setdefault(subscriber_id, []).append(topic)
    return found


async def owned_subscriptions(
    conn: AsyncConnection, dialect: ModuleType, owner: str, topic: str, subscriber_id: str
) -> int:
    """How many rows no stream holds ``owner`` made, besides ``(topic, subscriber_id)``
    (subscribing to it again adds none). Locks the owner's count until the
    transaction ends, so concurrent subscribes of one owner cannot both pass a cap."""
    await dialect.lock_owner(conn, owner)
    count = await conn.execute(
        select(func.count())
        .select_from(subscriptions)
        .where(
            subscriptions.c.owner == owner,
            subscriptions.c.connection_id.is_(None),
            not_(
                and_(subscriptions.c.topic == topic, subscriptions.c.subscriber_id == subscriber_id)
            ),
        )
    )
    return int(count.scalar_one())


async def remove_expired_subscriptions(
    conn: AsyncConnection, now: datetime, limit: int
) -> list[tuple[str, str]]:
    """Delete at most ``limit`` rows no stream holds whose lifetime has ended;
    returns their ``(subscriber_id, topic)``.

    ``SKIP LOCKED`` (PostgreSQL; SQLite's writer is alone anyway): a row that a
    subscribe is renewing, or a stream taking over, is left for the next round,
    so the sweep waits on no row and cannot close a lock cycle with a
    subscribe or an unsubscribe, which lock their row first and ``log_head``
    after it.
    """
    expired = (
        select(subscriptions.c.topic, subscriptions.c.subscriber_id)
        .where(subscriptions.c.connection_id.is_(None), subscriptions.c.expires_at <= now)
        .order_by(subscriptions.c.expires_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    removed = await conn.execute(
        delete(subscriptions)
        .where(tuple_(subscriptions.c.topic, subscriptions.c.subscriber_id).in_(expired))
        .returning(subscriptions.c.subscriber_id, subscriptions.c.topic)
    )
    return [(subscriber_id, topic) for subscriber_id, topic in removed]


async def remove_subscription(conn: AsyncConnection, topic: str, subscriber_id: str) -> bool:
    result = await conn.execute(
        delete(subscriptions).where(
            subscriptions.c.topic == topic, subscriptions.c.subscriber_id == subscriber_id
        )
    )
    return bool(result.rowcount)


async def remove_subscriber(conn: AsyncConnection, subscriber_id: str) -> int:
    """Delete every row of a subscriber."""
    query = delete(subscriptions).where(subscriptions.c.subscriber_id == subscriber_id)
    return int((await conn.execute(query)).rowcount or 0)


async def remove_stream_rows(conn: AsyncConnection, streams: Sequence[tuple[str, str]]) -> None:
    """The rows of closing ``(subscriber, connection id)`` streams: those a newer
    stream of the same subscriber has not taken over, plus the subscriber's rows
    made with no stream. One statement for many streams, not one each (10,000
    clients leaving at once queued 10,000 of them, seconds of the writer's time).
    A connection id is a random one per stream, so a row of one of these
    subscribers carrying one of these ids is that stream's own. Selected by
    subscriber, which is indexed."""
    connection_ids = [connection_id for _, connection_id in streams]
    subscriber_ids = sorted({subscriber_id for subscriber_id, _ in streams})
    await conn.execute(
        delete(subscriptions).where(
            subscriptions.c.subscriber_id.in_(subscriber_ids),
            or_(
                subscriptions.c.connection_id.in_(connection_ids),
                subscriptions.c.connection_id.is_(None),
            ),
        )
    )


async def claim_subscription(
    conn: AsyncConnection, subscriber_id: str, topic: str, connection_id: str, instance_id: str
) -> None:
    """Give a row made with no stream to a stream of that subscriber (see
    SubscriptionSync); it then goes with the stream, so its lifetime ends."""
    await conn.execute(
        update(subscriptions)
        .where(
            subscriptions.c.subscriber_id == subscriber_id,
            subscriptions.c.topic == topic,
            subscriptions.c.connection_id.is_(None),
        )
        .values(connection_id=connection_id, instance_id=instance_id, expires_at=None)
    )


async def subscriber_topics(conn: AsyncConnection, subscriber_id: str) -> list[str]:
    rows = await conn.execute(
        select(subscriptions.c.topic)
        .where(subscriptions.c.subscriber_id == subscriber_id)
        .order_by(subscriptions.c.topic)
    )
    return list(rows.scalars())


async def topic_subscribers(conn: AsyncConnection, topic: str) -> list[str]:
    rows = await conn.execute(
        select(subscriptions.c.subscriber_id)
        .where(subscriptions.c.topic == topic)
        .order_by(subscriptions.c.subscriber_id)
    )
    return list(rows.scalars())


async def record_subscription_change(
    conn: AsyncConnection,
    dialect: ModuleType,
    subscriber_id: str,
    topic: str | None,
    *,
    added: bool,
    now: datetime,
) -> int:
    """Note a subscribe/unsubscribe for the other instances; returns the log head it
    applies after (see ``record_subscription_changes``)."""
    return await record_subscription_changes(
        conn, dialect, [(subscriber_id, topic)], added=added, now=now
    )


async def record_subscription_changes(
    conn: AsyncConnection,
    dialect: ModuleType,
    changes: Sequence[tuple[str, str | None]],
    *,
    added: bool,
    now: datetime,
) -> int:
    """Note several ``(subscriber_id, topic)`` changes at once (one lock, one insert,
    one signal); returns the log head they apply after.

    Locking the ``log_head`` row (a no-op clause on SQLite, whose write transaction
    already excludes every other writer) does two things: change ids, taken as
    max + 1, are commit-ordered like positions, so a reader that has seen change N
    has seen every change below it; and the head read here is an exact cut: every
    event at or below it committed before this change, every event above it after.
    """
    head = (
        await conn.execute(select(log_head.c.position).where(log_head.c.id == 1).with_for_update())
    ).scalar_one()
    last = (await conn.execute(select(func.max(subscription_changes.c.id)))).scalar() or 0
    await conn.execute(
        subscription_changes.insert().values(
            [
                {
                    "id": last + n,
                    "subscriber_id": subscriber_id,
                    "topic": topic,
                    "added": added,
                    "position": head,
                    "changed_at": now,
                }
                for n, (subscriber_id, topic) in enumerate(changes, start=1)
            ]
        )
    )
    await dialect.signal_subscriptions(conn)
    return int(head)


async def subscription_changes_after(
    conn: AsyncConnection, after_id: int, limit: int
) -> list[SubscriptionChange]:
    rows = await conn.execute(
        select(
            subscription_changes.c.id,
            subscription_changes.c.subscriber_id,
            subscription_changes.c.topic,
            subscription_changes.c.added,
            subscription_changes.c.position,
        )
        .where(subscription_changes.c.id > after_id)
        .order_by(subscription_changes.c.id)
        .limit(limit)
    )
    return [SubscriptionChange(*row) for row in rows]


async def last_subscription_change(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(func.max(subscription_changes.c.id)))).scalar() or 0)


async def prune_subscription_changes(conn: AsyncConnection, before: datetime) -> None:
    """Forget old changes, keeping the newest so that ids never start over."""
    newest = select(func.max(subscription_changes.c.id)).scalar_subquery()
    await conn.execute(
        delete(subscription_changes).where(
            subscription_changes.c.changed_at < before, subscription_changes.c.id < newest
        )
    )


# Instances -----------------------------------------------------------------


async def heartbeat(
    conn: AsyncConnection, instance_id: str, now: datetime, *, started: bool = False
) -> bool:
    """Renew the heartbeat; ``False`` when the row had been swept (and is back now)."""
    if started:
        await conn.execute(
            instances.insert().values(instance_id=instance_id, started_at=now, heartbeat_at=now)
        )
        return True
    result = await conn.execute(
        update(instances).where(instances.c.instance_id == instance_id).values(heartbeat_at=now)
    )
    if result.rowcount:
        return True
    # Swept while we were stalled: come back (the caller restores its streams' rows).
    await conn.execute(
        instances.insert().values(instance_id=instance_id, started_at=now, heartbeat_at=now)
    )
    return False


async def sweep_expired(conn: AsyncConnection, expired_before: datetime) -> int:
    """Remove instances whose heartbeat is older than the bound, and their rows."""
    dead = select(instances.c.instance_id).where(instances.c.heartbeat_at < expired_before)
    removed = await conn.execute(delete(subscriptions).where(subscriptions.c.instance_id.in_(dead)))
    await conn.execute(delete(instances).where(instances.c.heartbeat_at < expired_before))
    return int(removed.rowcount or 0)


async def remove_instance(conn: AsyncConnection, instance_id: str) -> None:
    await conn.execute(delete(subscriptions).where(subscriptions.c.instance_id == instance_id))
    await conn.execute(delete(instances).where(instances.c.instance_id == instance_id))


# The hash chain ------------------------------------------------------------


async def chain_state(conn: AsyncConnection, topic: str) -> tuple[int, int, str] | None:
    """``(last_seq, pruned_through_seq, anchor)`` of a topic, the anchor being the
    hash its first kept event chains from; ``None`` for an unknown topic."""
    row = (
        await conn.execute(
            select(topics.c.last_seq, topics.c.pruned_through_seq, topics.c.pruned_hash).where(
                topics.c.topic == topic
            )
        )
    ).first()
    if row is None:
        return None
    return int(row[0]), int(row[1]), row[2] or GENESIS


async def topic_names(conn: AsyncConnection) -> list[str]:
    return list((await conn.execute(select(topics.c.topic).order_by(topics.c.topic))).scalars())
