"""Statements of retention (see ``eventhub_log.retention``)."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .tables import events, retention_marks, topics


async def topic_states(
    conn: AsyncConnection, names: Collection[str] | None
) -> list[tuple[str, int, int]]:
    """``(topic, last_seq, pruned_through_seq)`` of the named topics, or of all."""
    query = select(topics.c.topic, topics.c.last_seq, topics.c.pruned_through_seq).order_by(
        topics.c.topic
    )
    if names is not None:
        query = query.where(topics.c.topic.in_(sorted(names)))
    return [(name, int(last), int(pruned)) for name, last, pruned in await conn.execute(query)]


async def last_seq_before(conn: AsyncConnection, topic: str, before: datetime) -> int:
    """The highest seq of the topic published before ``before`` (0 when none)."""
    found = await conn.execute(
        select(func.max(events.c.seq)).where(
            events.c.topic == topic, events.c.published_at < before
        )
    )
    return int(found.scalar() or 0)


async def delete_through(
    conn: AsyncConnection, topic: str, after_seq: int, through_seq: int
) -> int:
    """Delete the topic's events with ``after_seq < seq <= through_seq``, leaving a
    mark with the last one's position, and note the new bound and the last one's
    hash on the topic."""
    found = (
        await conn.execute(
            select(events.c.position, events.c.hash).where(
                events.c.topic == topic, events.c.seq == through_seq
            )
        )
    ).first()
    position, last_hash = (None, None) if found is None else found
    if position is not None:
        await conn.execute(
            retention_marks.insert().values(topic=topic, seq=through_seq, position=position)
        )
    deleted = await conn.execute(
        delete(events).where(
            events.c.topic == topic, events.c.seq > after_seq, events.c.seq <= through_seq
        )
    )
    # The hash of the last deleted event anchors the kept events' chain, so the
    # topic still verifies from its first kept event; same transaction, so the
    # bound and its anchor never disagree.
    bound: dict[str, object] = {"pruned_through_seq": through_seq}
    if last_hash is not None:
        bound["pruned_hash"] = last_hash
    await conn.execute(
        update(topics)
        .where(topics.c.topic == topic, topics.c.pruned_through_seq < through_seq)
        .values(bound)
    )
    return int(deleted.rowcount or 0)


async def pruned_through(conn: AsyncConnection, names: Collection[str]) -> dict[str, int]:
    """``topic -> pruned_through_seq`` for the named topics that were ever pruned."""
    if not names:
        return {}
    rows = await conn.execute(
        select(topics.c.topic, topics.c.pruned_through_seq).where(
            topics.c.topic.in_(sorted(names)), topics.c.pruned_through_seq > 0
        )
    )
    return {name: int(seq) for name, seq in rows}


async def marks(conn: AsyncConnection, names: Collection[str]) -> dict[str, list[tuple[int, int]]]:
    """``topic -> [(seq, position), ...]`` in seq order, for the named topics."""
    if not names:
        return {}
    rows = await conn.execute(
        select(retention_marks.c.topic, retention_marks.c.seq, retention_marks.c.position)
        .where(retention_marks.c.topic.in_(sorted(names)))
        .order_by(retention_marks.c.topic, retention_marks.c.seq)
    )
    found: dict[str, list[tuple[int, int]]] = {}
    for name, seq, position in rows:
        found.setdefault(name, []).append((int(seq), int(position)))
    return found
