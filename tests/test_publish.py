"""publish(): what it returns, that it is stored, and group commit under load."""

from __future__ import annotations

import asyncio
import json
import re
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from eventhub_log import Event, EventHub, StorageError
from eventhub_log.store import sqlite as sqlite_store


async def test_publish_returns_the_stored_event(hub: EventHub) -> None:
    before = datetime.now(UTC)
    event = await hub.publish("room:lobby", None, {"type": "message", "text": "hi"})
    after = datetime.now(UTC)

    assert event.topic == "room:lobby"
    assert event.seq == 1
    assert event.id == str(event.position)
    assert event.payload == {"type": "message", "text": "hi"}
    assert event.exclude_id is None
    assert event.published_at.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= event.published_at <= after + timedelta(seconds=1)

    (stored,) = await hub.history("room:lobby")
    assert stored == event
    assert stored.published_at.tzinfo is not None
    assert stored.to_dict()["published_at"].endswith("Z")


async def test_exclude_id_is_stored_and_returned(hub: EventHub) -> None:
    event = await hub.publish("room:lobby", "ch-1", {"text": "not for ch-1"})
    assert event.exclude_id == "ch-1"
    (stored,) = await hub.history("room:lobby")
    assert stored.exclude_id == "ch-1"
    assert stored.to_dict()["exclude"] == "ch-1"


async def test_publish_without_subscribers_still_appends(hub: EventHub) -> None:
    assert await hub.subscribers("notifications:42") == []
    first = await hub.publish("notifications:42", None, {"n": 1})
    second = await hub.publish("notifications:42", None, {"n": 2})

    assert [e.seq for e in await hub.history("notifications:42")] == [1, 2]
    assert int(second.id) > int(first.id)
    (info,) = await hub.topics()
    assert (info.topic, info.last_seq, info.event_count) == ("notifications:42", 2, 2)


async def test_seqs_count_per_topic_and_ids_across_topics(hub: EventHub) -> None:
    a1 = await hub.publish("a", None, 1)
    b1 = await hub.publish("b", None, 2)
    a2 = await hub.publish("a", None, 3)
    assert [(e.topic, e.seq) for e in (a1, b1, a2)] == [("a", 1), ("b", 1), ("a", 2)]
    assert int(a1.id) < int(b1.id) < int(a2.id)


async def test_any_json_value_round_trips(hub: EventHub) -> None:
    payloads: list[Any] = [
        None,
        True,
        0,
        -(2**53 - 1),  # the last integer RFC 8785 (the event hash) holds exactly
        1.5,
        "",
        "ünïcødé ☃ \u2028",
        [],
        {},
        {"nested": {"list": [1, "two", None, {"x": False}]}},
    ]
    for payload in payloads:
        await hub.publish("types", None, payload)
    stored = await hub.history("types")
    assert [e.payload for e in stored] == payloads
    assert [json.loads(e.payload_json) for e in stored] == payloads


async def test_publish_many_is_atomic_and_ordered(hub: EventHub) -> None:
    events = await hub.publish_many([("a", None, 1), ("b", "x", 2), ("a", None, 3)])
    assert [(e.topic, e.seq, e.payload) for e in events] == [("a", 1, 1), ("b", 1, 2), ("a", 2, 3)]
    positions = [e.position for e in events]
    assert positions == list(range(positions[0], positions[0] + 3))


async def test_fifty_tasks_two_thousand_events_five_topics(hub: EventHub) -> None:
    """Concurrent publishes share commits yet keep every per-topic seq contiguous."""
    topics = [f"load:{n}" for n in range(5)]
    returned: list[Event] = []
    per_task: dict[int, list[Event]] = defaultdict(list)

    async def publisher(task: int) -> None:
        for n in range(40):  # 50 tasks x 40 = 2,000 events
            event = await hub.publish(topics[(task + n) % 5], None, {"task": task, "n": n})
            per_task[task].append(event)
            returned.append(event)

    await asyncio.gather(*(publisher(task) for task in range(50)))

    assert len(returned) == 2000
    ids = [e.id for e in returned]
    assert len(set(ids)) == 2000

    stored: list[Event] = []
    for topic in topics:
        history = [e async for e in hub.export(topic)]
        # Per topic: 1, 2, 3... with no hole and no duplicate.
        assert [e.seq for e in history] == list(range(1, len(history) + 1))
        # Commit order: seq order and id order agree within a topic.
        positions = [e.position for e in history]
        assert positions == sorted(positions)
        stored.extend(history)

    # Every returned event is in the history exactly once, exactly as returned.
    assert len(stored) == 2000
    assert sorted(stored, key=lambda e: e.position) == sorted(returned, key=lambda e: e.position)
    # Ids are the commit order: a fresh log numbers them 1..2000 with no gap.
    assert sorted(e.position for e in stored) == list(range(1, 2001))
    # Each task waited for its publish to commit before the next: its ids increase.
    for events in per_task.values():
        assert [e.position for e in events] == sorted(e.position for e in events)
        assert [e.payload["n"] for e in events] == list(range(40))


async def test_publish_returns_only_after_commit(hub: EventHub) -> None:
    """What publish() returned is readable at once through another connection."""

    async def publish_and_check(n: int) -> None:
        event = await hub.publish("visible", None, n)
        (found,) = await hub.history("visible", after_seq=event.seq - 1, limit=1)
        assert found.id == event.id

    await asyncio.gather(*(publish_and_check(n) for n in range(20)))


async def test_a_cancelled_publish_still_lands_once_queued(hub: EventHub) -> None:
    """Cancelling the caller cannot tear its event out of a batch in flight."""
    task = asyncio.create_task(hub.publish("t", None, "cancelled caller"))
    await asyncio.sleep(0)  # publish() has validated and queued its event
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    after = await hub.publish("t", None, "next")
    assert [e.payload for e in await hub.history("t")] == ["cancelled caller", "next"]
    assert after.seq == 2


async def _stored_rows(hub: EventHub) -> list[tuple[Any, ...]]:
    async with hub.database.read() as conn:
        events = await conn.exec_driver_sql(
            "SELECT topic, seq, position, payload, exclude_id, publisher, published_at"
            " FROM events ORDER BY position"
        )
        topics = await conn.exec_driver_sql(
            "SELECT topic, last_seq, created_at, last_published_at FROM topics ORDER BY topic"
        )
        return [tuple(row) for row in events] + [tuple(row) for row in topics]


async def test_sqlite_writer_stores_what_the_sqlalchemy_path_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer's one-call SQLite transaction writes the very rows (down to the
    timestamp text) that the portable SQLAlchemy path writes."""

    async def publish_all(name: str) -> list[tuple[Any, ...]]:
        async with EventHub(f"sqlite+aiosqlite:///{tmp_path / name}") as hub:
            await asyncio.gather(*(hub.publish(f"t:{n % 3}", None, {"n": n}) for n in range(30)))
            await hub.publish("t:0", "ch-1", ["excluded"])
            await hub.publish_many([("t:1", None, 1), ("t:9", "x", 2)])
            await hub.publish("t:2", None, "signed", publisher="alice")
            return await _stored_rows(hub)

    fast = await publish_all("fast.db")
    declined: list[int] = []

    async def no_shortcut(_conn: object, pending: list[object], _now: object) -> None:
        declined.append(len(pending))

    monkeypatch.setattr(sqlite_store, "append_batch", no_shortcut)
    portable = await publish_all("portable.db")
    assert sum(declined) == 34  # every event went the portable way

    timestamp = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}")
    for rows in (fast, portable):
        for row in rows:
            for value in row:
                if isinstance(value, str) and value[:2] == "20":
                    assert timestamp.fullmatch(value), value

    def without_times(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        return [tuple(v for v in row if not (isinstance(v, str) and v[:2] == "20")) for row in rows]

    assert without_times(fast) == without_times(portable)
    assert len(fast) == 34 + 4
    assert [row[5] for row in fast[:34]].count("alice") == 1


async def test_a_failed_commit_fails_its_callers_and_the_writer_goes_on(hub: EventHub) -> None:
    first = await hub.publish("t", None, 1)
    # A row the hub did not write takes the position its next event would get.
    intruder = (
        "INSERT INTO events (topic, seq, position, payload, exclude_id, published_at, hash)"
        f" VALUES ('other', 1, {first.position + 1}, '0', NULL, '2026-01-01 00:00:00.000000',"
        f" '{'0' * 64}')"
    )
    async with hub.database.engine.begin() as conn:
        await conn.exec_driver_sql(intruder)

    results = await asyncio.gather(
        *(hub.publish("t", None, n) for n in range(3)), return_exceptions=True
    )
    assert all(isinstance(result, StorageError) for result in results), results

    async with hub.database.engine.begin() as conn:
        await conn.exec_driver_sql("DELETE FROM events WHERE topic = 'other'")
    after = await hub.publish("t", None, "after")
    # Nothing of the failed batch was kept, nor its seqs or positions used up.
    assert (after.seq, after.position) == (2, first.position + 1)
    assert [e.payload for e in await hub.history("t")] == [1, "after"]


async def test_concurrent_publishes_share_commits(hub: EventHub) -> None:
    """Group commit: publishes waiting together go in one transaction (a batch's
    events carry its one commit time), and each caller still gets its own event."""
    events = await asyncio.gather(*(hub.publish("t", None, n) for n in range(100)))
    assert [e.payload for e in events] == list(range(100))
    commit_times = {e.published_at for e in events}
    assert len(commit_times) <= 5, f"{len(commit_times)} commits for 100 concurrent publishes"
