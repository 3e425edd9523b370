"""The writer's shortcuts make exactly what the plain code makes: the fast
constructors the same instances, the SQLite batch stamp the same text pysqlite
would write for the moment, the chain's one-string link the same hash."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
import rfc8785

from eventhub_log import EventHub
from eventhub_log.audit import verify_topic
from eventhub_log.chain import GENESIS, envelope, link
from eventhub_log.model import Event, PendingEvent, new_event, new_pending
from eventhub_log.store import sqlite as sqlite_store

MOMENT = datetime(2026, 12, 2, 10, 28, 47, 18897, tzinfo=UTC)


def test_new_event_is_the_dataclass_instance() -> None:
    values = ("room:1", 5, 10, MOMENT, '{"a":[1,"x"]}', "sub-1", "alice", "ab" * 32)
    fast, plain = new_event(*values), Event(*values)
    assert fast == plain
    assert hash(fast) == hash(plain)
    assert [f.name for f in dataclasses.fields(Event)] == list(vars(fast))
    assert vars(fast) == vars(plain)
    assert fast.payload == {"a": [1, "x"]}
    assert fast.id == "10"
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.seq = 6  # type: ignore[misc]


def test_new_pending_is_the_dataclass_instance() -> None:
    values = ("room:1", '{"b":1,"a":2}', None, "alice", '{"a":2,"b":1}')
    fast, plain = new_pending(*values), PendingEvent(*values)
    assert fast == plain
    assert hash(fast) == hash(plain)
    assert [f.name for f in dataclasses.fields(PendingEvent)] == list(vars(fast))
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.topic = "other"  # type: ignore[misc]


@pytest.mark.parametrize("microsecond", [0, 1, 18897, 999999])
async def test_the_batch_stamp_is_what_pysqlite_binds(tmp_path: Path, microsecond: int) -> None:
    """Binding the column type's value and binding the stamp store the same text,
    whole seconds (which ``isoformat`` writes without a fraction) included."""
    now = MOMENT.replace(microsecond=microsecond)
    hub = EventHub(f"sqlite+aiosqlite:///{tmp_path / 'e.db'}")
    async with hub, hub.database.engine.connect() as conn:
        stamp = sqlite_store._stamp(conn, now)
        bound = sqlite_store._encode_time(conn.dialect)(now)
    assert isinstance(stamp, str)
    db = sqlite3.connect(":memory:")
    ((from_value, from_stamp),) = db.execute("SELECT ?, ?", (bound, stamp)).fetchall()
    assert from_value == from_stamp == stamp


@pytest.mark.parametrize(
    ("topic", "seq", "exclude", "publisher", "payload"),
    [
        ("room:1", 1, None, None, {"type": "message", "n": 1}),
        ("a/b.c@d", 2**53 - 1, 'sub\n"x"\u2028', "pub\x01\u00e9\U0001f600", ["\\", {"z": 0}]),
        ("t", 7, "", None, {"\u00e9": "\ud7ff", "e": 1.5e-7, "big": -(2**53) + 1}),
    ],
)
def test_link_is_sha256_over_the_rfc8785_envelope(
    topic: str, seq: int, exclude: str | None, publisher: str | None, payload: object
) -> None:
    at = "2026-12-02T10:28:47.018897Z"
    prev = "cd" * 32
    canonical = rfc8785.dumps(payload).decode()
    document = {
        "topic": topic,
        "seq": seq,
        "published_at": at,
        "exclude": exclude,
        "publisher": publisher,
        "payload": payload,
    }
    expected = hashlib.sha256(prev.encode() + b"\n" + rfc8785.dumps(document)).hexdigest()
    assert link(prev, topic, seq, at, exclude, publisher, canonical) == expected
    head, tail = envelope(topic, at, exclude, publisher, canonical)
    assert (head + str(seq) + tail).encode() == rfc8785.dumps(document)
    assert link(GENESIS, topic, seq, at, exclude, publisher, canonical) != expected


async def test_sqlite_batches_keep_each_topic_head_and_seqs(tmp_path: Path) -> None:
    """New and known topics in one batch, batches of every column shape: seqs run
    on, and each topic's row holds its last event's seq and hash."""
    async with EventHub(f"sqlite+aiosqlite:///{tmp_path / 'e.db'}") as hub:
        await hub.publish("known", None, {"n": 0})
        await asyncio.gather(
            *(hub.publish(f"t:{n % 4}", None, {"n": n}) for n in range(40)),
            hub.publish("known", "someone", {"n": 1}),
            hub.publish("known", None, {"n": 2}, publisher="alice"),
            hub.publish("t:new", "x", {"n": 3}, publisher="bob"),
        )
        await hub.publish_many([("known", None, 4), ("t:0", "y", 5), ("t:9", None, 6)])
        async with hub.database.engine.connect() as conn:
            topics = (
                await conn.exec_driver_sql("SELECT topic, last_seq, last_hash FROM topics")
            ).all()
            events = (
                await conn.exec_driver_sql(
                    "SELECT topic, seq, hash, exclude_id, publisher FROM events ORDER BY position"
                )
            ).all()
        for topic, last_seq, last_hash in topics:
            mine = [row for row in events if row[0] == topic]
            assert [row[1] for row in mine] == list(range(1, len(mine) + 1))
            assert (last_seq, last_hash) == (mine[-1][1], mine[-1][2])
        assert ("known", 2, "someone", None) in [(r[0], r[1], r[3], r[4]) for r in events]
        assert ("t:new", 1, "x", "bob") in [(r[0], r[1], r[3], r[4]) for r in events]
        for topic, *_ in topics:
            verification = await verify_topic(hub.database, topic)
            assert verification is not None
            assert verification.ok
