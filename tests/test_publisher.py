"""Every stored event records who published it (contract section 6): ``publisher``,
on every append path and every read path, ``None`` unless given."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import subprocess
import sys
from typing import Any

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from eventhub_log import Event, EventHub, IdempotencyConflict, InvalidPublisher, ValidationError
from eventhub_log.export import event_json, ndjson_line
from eventhub_log.idempotency import request_hash
from eventhub_log.model import PendingEvent
from eventhub_log.store.tables import idempotency_keys

from . import hashes
from .test_feed import take


async def _stored_publishers(hub: EventHub) -> list[tuple[str, int, str | None]]:
    """The rows themselves, not what the hub makes of them."""
    async with hub.database.read() as conn:
        rows = await conn.execute(
            text("SELECT topic, seq, publisher FROM events ORDER BY position")
        )
        return [(topic, seq, publisher) for topic, seq, publisher in rows]


async def _exported(hub: EventHub, topic: str) -> list[Event]:
    return [event async for event in hub.export(topic)]


async def test_publisher_is_none_by_default_everywhere(hub: EventHub) -> None:
    event = await hub.publish("t", None, 1)
    (batched,) = await hub.publish_many([("t", None, 2)])
    (keyed,), _ = await hub.publish_once("k", [("t", None, 3)])
    async with hub.transaction() as conn:
        joined = await hub.publish_in(conn, "t", None, 4)
    assert [e.publisher for e in (event, batched, keyed, joined)] == [None] * 4
    assert await _stored_publishers(hub) == [("t", n, None) for n in range(1, 5)]
    assert [e.publisher for e in await hub.history("t")] == [None] * 4
    assert [e.publisher for e in await _exported(hub, "t")] == [None] * 4
    assert event.to_dict()["publisher"] is None
    assert json.loads(event_json(event))["publisher"] is None


async def test_publish_stores_and_returns_the_publisher(hub: EventHub) -> None:
    event = await hub.publish("room:lobby", "ch-1", {"text": "hi"}, publisher="alice")
    assert event.publisher == "alice"
    (stored,) = await hub.history("room:lobby")
    assert stored == event
    assert (await _exported(hub, "room:lobby")) == [event]
    assert await _stored_publishers(hub) == [("room:lobby", 1, "alice")]
    assert event.to_dict() == {
        "topic": "room:lobby",
        "seq": 1,
        "id": event.id,
        "payload": {"text": "hi"},
        "published_at": event.to_dict()["published_at"],
        "exclude": "ch-1",
        "publisher": "alice",
        "hash": hashes.chain([event.to_dict()])[0],
    }
    # The hand-written JSON of history pages and exports says the same, in order.
    assert json.loads(event_json(stored)) == event.to_dict()
    assert list(json.loads(ndjson_line(stored))) == list(event.to_dict())


async def test_concurrent_publishers_sharing_a_commit_keep_their_own_names(
    hub: EventHub,
) -> None:
    names = [None, "alice", "bob", 'with "quotes" and \u00e9\u00e8 \U0001f600']
    events = await asyncio.gather(
        *(hub.publish(f"t:{n % 3}", None, n, publisher=names[n % 4]) for n in range(60))
    )
    assert [e.publisher for e in events] == [names[n % 4] for n in range(60)]
    by_id = {e.id: e.publisher for e in events}
    for topic in ("t:0", "t:1", "t:2"):
        for stored in await hub.history(topic, limit=1000):
            assert stored.publisher == by_id[stored.id]
            assert json.loads(event_json(stored))["publisher"] == by_id[stored.id]


async def test_publish_many_gives_every_event_the_publisher(hub: EventHub) -> None:
    events = await hub.publish_many(
        [("a", None, 1), ("b", "x", 2), ("a", None, 3)], publisher="svc:orders"
    )
    assert [e.publisher for e in events] == ["svc:orders"] * 3
    assert await _stored_publishers(hub) == [
        ("a", 1, "svc:orders"),
        ("b", 1, "svc:orders"),
        ("a", 2, "svc:orders"),
    ]
    assert [e.publisher for e in await hub.history("a")] == ["svc:orders"] * 2


async def test_publish_once_stores_it_and_a_retry_gets_it_back(hub: EventHub) -> None:
    first, replayed = await hub.publish_once("k1", [("t", None, 1), ("u", None, 2)], publisher="al")
    assert not replayed
    assert [e.publisher for e in first] == ["al", "al"]
    again, replayed = await hub.publish_once("k1", [("t", None, 1), ("u", None, 2)], publisher="al")
    assert replayed
    assert again == first
    assert await _stored_publishers(hub) == [("t", 1, "al"), ("u", 1, "al")]

    # Retries racing into one batch: the first use appends, the others replay it.
    results = await asyncio.gather(
        *(hub.publish_once("k2", [("t", None, 3)], publisher="bo") for _ in range(10))
    )
    assert sum(not replayed for _, replayed in results) == 1
    assert {(events[0].id, events[0].publisher) for events, _ in results} == {
        (results[0][0][0].id, "bo")
    }
    assert [e.publisher for e in await hub.history("t")] == ["al", "bo"]


async def test_a_replay_answers_with_the_publisher_the_key_stored(hub: EventHub) -> None:
    (first,), _ = await hub.publish_once("k", [("t", None, 1)], publisher="alice")
    # What the key holds is what a replay answers with, not the retry's own arguments.
    async with hub.database.write() as conn:
        (response,) = (
            await conn.execute(
                select(idempotency_keys.c.response).where(idempotency_keys.c.key == "k")
            )
        ).one()
        rows = json.loads(response)
        assert [row[4] for row in rows] == ["alice"]
        rows[0][4] = "as-stored"
        await conn.execute(
            update(idempotency_keys)
            .where(idempotency_keys.c.key == "k")
            .values(response=json.dumps(rows))
        )
    (again,), replayed = await hub.publish_once("k", [("t", None, 1)], publisher="alice")
    assert replayed
    assert (again.id, again.publisher) == (first.id, "as-stored")


async def test_another_publisher_reusing_a_key_is_a_conflict(hub: EventHub) -> None:
    await hub.publish_once("k", [("t", None, 1)], publisher="alice")
    for other in ("mallory", None):
        with pytest.raises(IdempotencyConflict):
            await hub.publish_once("k", [("t", None, 1)], publisher=other)
    await hub.publish_once("anon", [("t", None, 2)])
    with pytest.raises(IdempotencyConflict):
        await hub.publish_once("anon", [("t", None, 2)], publisher="alice")
    assert await _stored_publishers(hub) == [("t", 1, "alice"), ("t", 2, None)]


async def test_keys_stored_before_publishers_were_recorded_still_replay(hub: EventHub) -> None:
    (first,), _ = await hub.publish_once("old", [("t", None, {"n": 1})])
    # A key written before revision 0005: four coordinates an event, and the hash
    # of [topic, exclude, payload] triples.
    async with hub.database.write() as conn:
        (response,) = (
            await conn.execute(
                select(idempotency_keys.c.response).where(idempotency_keys.c.key == "old")
            )
        ).one()
        legacy = json.dumps([row[:4] for row in json.loads(response)], separators=(",", ":"))
        await conn.execute(
            update(idempotency_keys).where(idempotency_keys.c.key == "old").values(response=legacy)
        )
    (again,), replayed = await hub.publish_once("old", [("t", None, {"n": 1})])
    assert replayed
    assert (again.id, again.publisher) == (first.id, None)

    pending = [PendingEvent("t", '{"n":1}', None)]
    before_0005 = hashlib.sha256(b'[["t",null,{"n":1}]]').hexdigest()
    assert request_hash(pending) == before_0005
    assert request_hash([PendingEvent("t", '{"n":1}', None, "alice")]) != before_0005


async def test_publish_in_stores_the_publisher(hub: EventHub) -> None:
    async with hub.stream(["t"], "reader") as feed:
        async with hub.transaction() as conn:
            joined = await hub.publish_in(conn, "t", None, 1, publisher="job:nightly")
        assert joined.publisher == "job:nightly"
        sessions = async_sessionmaker(hub.database.engine, expire_on_commit=False)
        async with sessions() as session, session.begin():
            in_session = await hub.publish_in(session, "t", None, 2, publisher="web")
        assert in_session.publisher == "web"
        delivered = await take(feed, 2)
    assert [e.publisher for e in delivered] == ["job:nightly", "web"]
    assert [e.publisher for e in await hub.history("t")] == ["job:nightly", "web"]
    assert await _stored_publishers(hub) == [("t", 1, "job:nightly"), ("t", 2, "web")]


async def test_streams_carry_the_publisher_live_and_on_replay(hub: EventHub) -> None:
    first = await hub.publish("t", None, 1, publisher="alice")
    async with hub.stream(["t"], "live") as feed:
        live = await hub.publish("t", None, 2, publisher="bob")
        (got,) = await take(feed, 1)
        assert (got.id, got.publisher) == (live.id, "bob")
    async with hub.stream(["t"], "again", after="0") as feed:
        replayed = await take(feed, 2)
    assert [(e.id, e.publisher) for e in replayed] == [(first.id, "alice"), (live.id, "bob")]
    async with hub.stream(["t"], "earliest", from_earliest=True) as feed:
        assert [e.publisher for e in await take(feed, 2)] == ["alice", "bob"]


async def test_another_instance_reads_the_publisher_from_the_log(database_url: str) -> None:
    """Events a hub did not write reach its streams by reading the log (catch-up)."""
    quiet: dict[str, Any] = {"poll_interval": 0.05}
    async with (
        EventHub(database_url, mode="stateless", auto_migrate=True, **quiet) as here,
        EventHub(database_url, mode="stateless", auto_migrate=True, **quiet) as elsewhere,
        here.stream(["t"], "reader") as feed,
    ):
        published = await elsewhere.publish_many(
            [("t", None, 1), ("t", None, 2)], publisher="elsewhere"
        )
        got = await take(feed, 2)
    assert [(e.id, e.publisher) for e in got] == [(e.id, "elsewhere") for e in published]


@pytest.mark.parametrize(
    ("publisher", "message"),
    [
        ("", "1 to 255 characters"),
        ("x" * 256, "1 to 255 characters"),
        (5, "must be a string or None, not int"),
        (b"alice", "must be a string or None, not bytes"),
        ("bad\ud800", "lone surrogate"),
    ],
)
async def test_an_invalid_publisher_is_refused_and_nothing_is_written(
    hub: EventHub, publisher: Any, message: str
) -> None:
    attempts = [
        hub.publish("t", None, 1, publisher=publisher),
        hub.publish_many([("t", None, 1), ("u", None, 2)], publisher=publisher),
        hub.publish_once("k", [("t", None, 1)], publisher=publisher),
    ]
    for attempt in attempts:
        with pytest.raises(InvalidPublisher, match=message):
            await attempt
    async with hub.transaction() as conn:
        with pytest.raises(InvalidPublisher, match=message):
            await hub.publish_in(conn, "t", None, 1, publisher=publisher)
        await hub.publish_in(conn, "t", None, "the transaction is still usable")
    assert issubclass(InvalidPublisher, ValidationError)
    assert [e.payload for e in await hub.history("t")] == ["the transaction is still usable"]
    assert await hub.history("u") == []
    # The refused keyed publish did not take its key.
    _, replayed = await hub.publish_once("k", [("t", None, 1)], publisher="fine")
    assert not replayed


async def test_the_longest_publisher_is_stored_whole(hub: EventHub) -> None:
    longest = "\u00e9" * 254 + "\U0001f600"  # 255 characters, 510 bytes of UTF-8
    event = await hub.publish("t", None, 1, publisher=longest)
    assert event.publisher == longest
    (stored,) = await hub.history("t")
    assert stored.publisher == longest


def test_export_and_csv_from_the_command_line_show_the_publisher(database_url: str) -> None:
    async def seed() -> list[Event]:
        async with EventHub(database_url, auto_migrate=True) as hub:
            return [
                await hub.publish("room", "ch-1", {"a": 1}, publisher="alice"),
                await hub.publish("room", None, [2], publisher='o"neil, ltd'),
                await hub.publish("room", None, 3),
            ]

    events = asyncio.run(seed())

    def export(form: str) -> str:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "eventhub_log.cli",
                "export",
                "room",
                "--format",
                form,
                "--database-url",
                database_url,
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout

    lines = [json.loads(line) for line in export("ndjson").splitlines()]
    assert lines == [event.to_dict() for event in events]
    rows = list(csv.reader(io.StringIO(export("csv"))))
    assert rows[0] == [
        "topic",
        "seq",
        "id",
        "published_at",
        "exclude",
        "publisher",
        "hash",
        "payload",
    ]
    assert [row[4:6] + row[7:] for row in rows[1:]] == [
        ["ch-1", "alice", '{"a":1}'],
        ["", 'o"neil, ltd', "[2]"],
        ["", "", "3"],
    ]
    assert [row[6] for row in rows[1:]] == [event.hash for event in events]
