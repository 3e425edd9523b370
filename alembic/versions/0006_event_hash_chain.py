"""Tamper-evident history: every event's hash in its topic's chain (contract section 8).

Adds ``events.hash``, ``topics.last_hash`` (the chain's head, so an append needs
no read of the events table) and ``topics.pruned_hash`` (the hash of the last
event retention deleted), and computes the hashes of the events already stored,
topic by topic in seq order, a chunk at a time so memory stays flat on any log.

The computation is written out here rather than imported from the library: a
migration must do the same thing forever, whatever the library becomes. It is
the contract's rule verbatim (``rfc8785`` on the whole object), so it also
checks the writer's faster path, which must give the same hashes.

A topic that retention had already pruned before this revision has lost the
hashes of its deleted events: its chain starts again from 64 zeros at its first
kept event, and ``pruned_hash`` records exactly that anchor.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime

import rfc8785
import sqlalchemy as sa

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GENESIS = "0" * 64
CHUNK = 1000

_topics = sa.table(
    "topics",
    sa.column("topic", sa.String),
    sa.column("pruned_through_seq", sa.BigInteger),
    sa.column("last_hash", sa.String),
    sa.column("pruned_hash", sa.String),
)
_events = sa.table(
    "events",
    sa.column("topic", sa.String),
    sa.column("seq", sa.BigInteger),
    sa.column("payload", sa.Text),
    sa.column("exclude_id", sa.String),
    sa.column("publisher", sa.String),
    sa.column("published_at", sa.DateTime),
    sa.column("hash", sa.String),
)


def _timestamp(moment: datetime) -> str:
    # As history shows it: RFC 3339 in UTC with microseconds (stored naive UTC).
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _hash(prev: str, topic: str, seq: int, row: sa.Row[tuple[object, ...]]) -> str:
    published_at = row.published_at
    if isinstance(published_at, str):  # SQLite text, when the type does not parse it
        published_at = datetime.fromisoformat(published_at)
    canonical = rfc8785.dumps(
        {
            "topic": topic,
            "seq": seq,
            "published_at": _timestamp(published_at),
            "exclude": row.exclude_id,
            "publisher": row.publisher,
            "payload": json.loads(row.payload),
        }
    )
    return hashlib.sha256(prev.encode() + b"\n" + canonical).hexdigest()


def upgrade() -> None:
    # Plain ADD COLUMNs (nullable, no default) rewrite nothing; events.hash becomes
    # NOT NULL once every row has one.
    op.add_column("events", sa.Column("hash", sa.String(64), nullable=True))
    op.add_column("topics", sa.Column("last_hash", sa.String(64), nullable=True))
    op.add_column("topics", sa.Column("pruned_hash", sa.String(64), nullable=True))

    bind = op.get_bind()
    set_hash = (
        sa.update(_events)
        .where(_events.c.topic == sa.bindparam("b_topic"), _events.c.seq == sa.bindparam("b_seq"))
        .values(hash=sa.bindparam("b_hash"))
    )
    for topic, pruned_through in bind.execute(
        sa.select(_topics.c.topic, _topics.c.pruned_through_seq).order_by(_topics.c.topic)
    ).all():
        prev = GENESIS
        done = int(pruned_through)
        while True:
            rows = bind.execute(
                sa.select(
                    _events.c.seq,
                    _events.c.payload,
                    _events.c.exclude_id,
                    _events.c.publisher,
                    _events.c.published_at,
                )
                .where(_events.c.topic == topic, _events.c.seq > done)
                .order_by(_events.c.seq)
                .limit(CHUNK)
            ).all()
            if not rows:
                break
            updates = []
            for row in rows:
                prev = _hash(prev, topic, int(row.seq), row)
                updates.append({"b_topic": topic, "b_seq": row.seq, "b_hash": prev})
            bind.execute(set_hash, updates)
            done = int(rows[-1].seq)
        values: dict[str, str | None] = {"last_hash": None if prev == GENESIS else prev}
        if pruned_through:
            values["pruned_hash"] = GENESIS
        bind.execute(sa.update(_topics).where(_topics.c.topic == topic).values(**values))

    with op.batch_alter_table("events") as batch:
        batch.alter_column("hash", existing_type=sa.String(64), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("topics") as batch:
        batch.drop_column("pruned_hash")
        batch.drop_column("last_hash")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("hash")
