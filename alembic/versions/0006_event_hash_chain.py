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


# PostgreSQL: the writer's whole append in one round trip (store/postgresql.py).
# The chain needs each topic's head hash, read under the ``log_head`` lock, before
# the events can be written; computing the links here rather than in Python
# between two statements saves three round trips a batch. The caller passes each
# event's canonical text cut around its seq (``head_part`` ends with '"seq":',
# ``tail_part`` starts with ',"topic":'), as UTF-8, so only the prefix hash and
# the seq are joined here, both ASCII.
APPEND_FUNCTION = """
CREATE FUNCTION eventhub_log_append(
    p_topics text[], p_payloads text[], p_excludes text[], p_publishers text[],
    p_head_parts bytea[], p_tail_parts bytea[], p_at timestamp, p_channel text
) RETURNS TABLE (out_seq bigint, out_hash text, out_position bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_n integer := cardinality(p_topics);
    v_head bigint;
    v_seqs bigint[] := array_fill(0::bigint, ARRAY[v_n]);
    v_hashes text[] := array_fill(''::text, ARRAY[v_n]);
    v_topic text := NULL;
    v_prev text;
    v_last_topics text[] := '{}';
    v_last_hashes text[] := '{}';
    r record;
BEGIN
    UPDATE log_head SET position = position + v_n WHERE id = 1 RETURNING position INTO v_head;
    FOR r IN
        WITH input AS (
            SELECT topic, ord FROM unnest(p_topics) WITH ORDINALITY AS i(topic, ord)
        ), counts AS (
            SELECT topic, count(*) AS n FROM input GROUP BY topic
        ), bumped AS (
            INSERT INTO topics AS t (topic, last_seq, created_at, last_published_at)
            SELECT c.topic, c.n, p_at, p_at FROM counts c
            ON CONFLICT (topic) DO UPDATE
                SET last_seq = t.last_seq + excluded.last_seq,
                    last_published_at = excluded.last_published_at
            RETURNING t.topic, t.last_seq, t.last_hash
        )
        SELECT i.ord, i.topic, b.last_hash,
               b.last_seq - c.n + row_number() OVER (PARTITION BY i.topic ORDER BY i.ord) AS seq
        FROM input i JOIN bumped b ON b.topic = i.topic JOIN counts c ON c.topic = i.topic
        ORDER BY i.topic, i.ord
    LOOP
        IF v_topic IS DISTINCT FROM r.topic THEN
            IF v_topic IS NOT NULL THEN
                v_last_topics := v_last_topics || v_topic;
                v_last_hashes := v_last_hashes || v_prev;
            END IF;
            v_topic := r.topic;
            v_prev := coalesce(r.last_hash, repeat('0', 64));
        END IF;
        v_prev := encode(sha256(
            convert_to(v_prev || E'\n', 'UTF8') || p_head_parts[r.ord]
            || convert_to(r.seq::text, 'UTF8') || p_tail_parts[r.ord]
        ), 'hex');
        v_seqs[r.ord] := r.seq;
        v_hashes[r.ord] := v_prev;
    END LOOP;
    v_last_topics := v_last_topics || v_topic;
    v_last_hashes := v_last_hashes || v_prev;
    INSERT INTO events (topic, seq, position, payload, exclude_id, publisher, published_at, hash)
    SELECT i.topic, i.seq, v_head - v_n + i.ord, i.payload, i.exclude_id, i.publisher, p_at, i.hash
    FROM unnest(p_topics, v_seqs, p_payloads, p_excludes, p_publishers, v_hashes)
        WITH ORDINALITY AS i(topic, seq, payload, exclude_id, publisher, hash, ord);
    UPDATE topics AS t SET last_hash = h.hash
    FROM unnest(v_last_topics, v_last_hashes) AS h(topic, hash) WHERE t.topic = h.topic;
    PERFORM pg_notify(p_channel, v_head::text);
    RETURN QUERY SELECT s.seq, s.hash, v_head - v_n + s.ord
        FROM unnest(v_seqs, v_hashes) WITH ORDINALITY AS s(seq, hash, ord) ORDER BY s.ord;
END
$$
"""


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
    if bind.dialect.name == "postgresql":
        op.execute(APPEND_FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "DROP FUNCTION eventhub_log_append(text[], text[], text[], text[], bytea[], bytea[], "
            "timestamp, text)"
        )
    with op.batch_alter_table("topics") as batch:
        batch.drop_column("pruned_hash")
        batch.drop_column("last_hash")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("hash")
