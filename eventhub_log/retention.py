"""Retention: delete a topic's oldest events, and remember how far that went.

Pruning always removes a prefix of a topic (every seq up to a bound), never a
hole in the middle, and records the bound in ``topics.pruned_through_seq`` in the
same transaction. So what remains is exactly the events with a higher seq, and a
reader resuming from before the bound can be told precisely which seqs it will
never see (an SSE ``gap``), instead of skipping them silently.

The time rule picks the bound as the newest event older than the cutoff; since
clocks of several instances may disagree slightly, an event published a moment
earlier with a higher seq can be kept a little longer, never lost out of order.
Large prunes go in chunks, each its own short transaction, so the writer is held
up for a moment at a time rather than for the whole deletion.

Each chunk leaves a mark: its last seq and that event's log position. A reader
resuming after a position P is owed every event of its topics after P; those
that are gone are the topic's seqs from just after the last mark at or before P
through ``pruned_through_seq``. So ``gaps`` reports them exactly when P falls on
a chunk boundary and otherwise starts the range at most ``CHUNK - 1`` seqs early,
never late: the reader is never told less than it missed.

Each chunk also writes the hash of its last deleted event to
``topics.pruned_hash``, in the same transaction as the bound: the kept events'
hash chain continues from it, so a pruned topic still verifies (audit.py).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from .errors import ValidationError
from .model import Gap
from .store import retention as store
from .store.database import Database

CHUNK = 1000
_DURATION_PART = re.compile(r"(\d+)(w|d|h|m|s)")
_UNIT_SECONDS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}


@dataclass(frozen=True)
class Pruned:
    """What pruning did to one topic."""

    topic: str
    deleted: int
    pruned_through_seq: int


def parse_duration(text: str) -> timedelta:
    """``30s``, ``15m``, ``12h``, ``7d``, ``2w`` or combinations such as ``1d12h``."""
    compact = text.strip().lower().replace(" ", "")
    parts = _DURATION_PART.findall(compact)
    if not compact or "".join(n + unit for n, unit in parts) != compact:
        raise ValidationError(
            f"invalid duration {text[:40]!r}: use a number and a unit (s, m, h, d, w), "
            "e.g. 7d or 1d12h"
        )
    return timedelta(seconds=sum(int(n) * _UNIT_SECONDS[unit] for n, unit in parts))


async def prune(
    database: Database,
    *,
    older_than: timedelta | None = None,
    keep: int | None = None,
    topics: Collection[str] | None = None,
    now: datetime | None = None,
    dry_run: bool = False,
) -> list[Pruned]:
    """Delete events older than ``older_than`` and/or beyond the newest ``keep`` of
    each topic (all topics, or those named). Returns one entry per topic touched."""
    if older_than is None and keep is None:
        raise ValidationError("say what to prune: older_than, keep, or both")
    if keep is not None and keep < 0:
        raise ValidationError("keep must be 0 or more")
    if older_than is not None and older_than < timedelta(0):
        raise ValidationError("older_than must not be negative")
    cutoff = (now or datetime.now(UTC)) - older_than if older_than is not None else None

    async with database.read() as conn:
        states = await store.topic_states(conn, topics)
    results: list[Pruned] = []
    for topic, last_seq, already in states:
        bound = 0
        if keep is not None:
            bound = max(bound, last_seq - keep)
        if cutoff is not None:
            async with database.read() as conn:
                bound = max(bound, await store.last_seq_before(conn, topic, cutoff))
        if bound <= already:
            continue
        deleted = bound - already  # seqs are gapless and pruning takes a prefix
        if not dry_run:
            deleted = 0
            done = already
            while done < bound:
                step = min(bound, done + CHUNK)
                async with database.write() as conn:
                    deleted += await store.delete_through(conn, topic, done, step)
                done = step
        results.append(Pruned(topic, deleted, bound))
    return results


async def gaps(database: Database, topics: Collection[str], after_position: int) -> list[Gap]:
    """What retention removed of ``topics`` that a reader resuming after
    ``after_position`` (0: from the beginning) was owed, one ``Gap`` per topic."""
    async with database.read() as conn:
        found = await store.marks(conn, topics)
    result: list[Gap] = []
    for topic in sorted(found):
        topic_marks = found[topic]
        through_seq, through_position = topic_marks[-1]
        if after_position >= through_position:
            continue  # everything pruned lies at or before where the reader stood
        seen = [seq for seq, position in topic_marks if position <= after_position]
        result.append(Gap(topic, (seen[-1] if seen else 0) + 1, through_seq))
    return result
