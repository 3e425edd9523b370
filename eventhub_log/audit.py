"""Verification of the hash chain from the stored rows (contract section 8).

The writer links each event as it appends (``chain.link``, fast); everything
here recomputes from what the database holds, with the reference rule:
``rfc8785`` on the whole object, as an outside verifier would. A chain breaks
at the first event whose recomputed hash differs from the stored one, or at a
seq that is not the one after the previous (a deleted or renumbered event), or
where events end before the topic's ``last_seq`` (a truncated tail).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import asdict, dataclass
from typing import Any

import rfc8785

from .chain import GENESIS
from .model import Event, format_timestamp
from .store import queries
from .store.database import Database

PAGE = 1000
# A prune running beside a verification can delete the events it was about to
# read: it starts again from the new anchor, at most this many times.
_ATTEMPTS = 3


def canonical(event: Event) -> bytes:
    """The RFC 8785 text the event's hash covers."""
    return rfc8785.dumps(
        {
            "topic": event.topic,
            "seq": event.seq,
            "published_at": format_timestamp(event.published_at),
            "exclude": event.exclude_id,
            "publisher": event.publisher,
            "payload": event.payload,
        }
    )


def chain_hash(prev_hash: str, event: Event) -> str:
    """The hash the event must have after ``prev_hash``."""
    return hashlib.sha256(prev_hash.encode() + b"\n" + canonical(event)).hexdigest()


@dataclass(frozen=True)
class Verification:
    """What recomputing one topic's chain found. ``from_seq`` is the first event
    the chain is checked from (after any retention), ``through_seq`` and
    ``head_hash`` the last event that held (``from_seq - 1`` and the anchor when
    none did), ``first_bad_seq`` where it broke (``None``: it holds)."""

    topic: str
    ok: bool
    from_seq: int
    through_seq: int
    head_hash: str
    first_bad_seq: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Progress = Callable[[int], object]


async def verify_topic(
    database: Database, topic: str, *, page: int = PAGE, progress: Progress | None = None
) -> Verification | None:
    """Recompute ``topic``'s chain a page at a time; ``None`` for an unknown topic.
    ``progress`` is told how many events each page checked."""
    for _ in range(_ATTEMPTS):
        async with database.read() as conn:
            state = await queries.chain_state(conn, topic)
        if state is None:
            return None
        last_seq, pruned_through, anchor = state
        result = await _verify(database, topic, last_seq, pruned_through, anchor, page, progress)
        if result.ok:
            return result
        async with database.read() as conn:
            again = await queries.chain_state(conn, topic)
        if again is None or again[1] == pruned_through:
            return result  # no prune moved the anchor: the break is in the rows
    return result


async def verify_topics(
    database: Database, topics: Collection[str] | None = None, *, progress: Progress | None = None
) -> AsyncIterator[tuple[str, Verification | None]]:
    """Each topic named (or every topic, in name order) and its verification."""
    if topics is None:
        async with database.read() as conn:
            names = await queries.topic_names(conn)
    else:
        names = list(topics)
    for name in names:
        yield name, await verify_topic(database, name, progress=progress)


async def _verify(
    database: Database,
    topic: str,
    last_seq: int,
    pruned_through: int,
    anchor: str,
    page: int,
    progress: Progress | None,
) -> Verification:
    prev, through = anchor, pruned_through

    def broken(seq: int) -> Verification:
        return Verification(topic, False, pruned_through + 1, through, prev, seq)

    while through < last_seq:
        async with database.read() as conn:
            rows = await queries.history(
                conn, topic, after_seq=through, before_seq=last_seq + 1, limit=page
            )
        if not rows:
            return broken(through + 1)  # the tail is missing
        for event in rows:
            if event.seq != through + 1:
                return broken(through + 1)
            expected = chain_hash(prev, event)
            if event.hash != expected:
                return broken(event.seq)
            prev, through = expected, event.seq
        if progress is not None:
            progress(len(rows))
    return Verification(topic, True, pruned_through + 1, through, prev, None)


__all__ = ["GENESIS", "Verification", "canonical", "chain_hash", "verify_topic", "verify_topics"]
