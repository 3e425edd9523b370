"""Idempotency keys at the library level: stored with the events, race-free."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from eventhub_log import EventHub
from eventhub_log.errors import IdempotencyConflict, ValidationError
from eventhub_log.idempotency import purge_expired
from eventhub_log.store.tables import idempotency_keys


async def test_retry_returns_first_result_and_appends_nothing(hub: EventHub) -> None:
    first, replayed = await hub.publish_once("k1", [("t", None, {"a": 1, "b": 2})])
    assert not replayed
    again, replayed = await hub.publish_once("k1", [("t", None, {"b": 2, "a": 1})])
    assert replayed
    assert [(e.id, e.seq, e.published_at) for e in again] == [
        (e.id, e.seq, e.published_at) for e in first
    ]
    assert again[0].payload == {"a": 1, "b": 2}
    assert len(await hub.history("t")) == 1


async def test_same_key_other_events_is_a_conflict(hub: EventHub) -> None:
    await hub.publish_once("k", [("t", None, 1)])
    with pytest.raises(IdempotencyConflict, match="already used"):
        await hub.publish_once("k", [("t", None, 2)])
    with pytest.raises(IdempotencyConflict):
        await hub.publish_once("k", [("t", "x", 1)])
    assert [e.payload for e in await hub.history("t")] == [1]


async def test_concurrent_requests_with_one_key_append_once(hub: EventHub) -> None:
    results = await asyncio.gather(
        *(hub.publish_once("race", [("t", None, {"n": 1}), ("u", None, 2)]) for _ in range(20)),
        *(hub.publish("t", None, {"other": i}) for i in range(5)),
    )
    keyed = [r for r in results if isinstance(r, tuple)]
    assert sum(not replayed for _, replayed in keyed) == 1
    assert len({tuple(e.id for e in events) for events, _ in keyed}) == 1
    assert len(await hub.history("t")) == 6
    assert len(await hub.history("u")) == 1


async def test_conflict_in_a_batch_does_not_fail_neighbours(hub: EventHub) -> None:
    outcomes = await asyncio.gather(
        hub.publish_once("dup", [("t", None, 1)]),
        hub.publish_once("dup", [("t", None, 2)]),
        hub.publish("t", None, 3),
        return_exceptions=True,
    )
    assert isinstance(outcomes[1], IdempotencyConflict)
    assert sorted(e.payload for e in await hub.history("t")) == [1, 3]


async def test_expired_keys_are_forgotten(hub: EventHub) -> None:
    await hub.publish_once("old", [("t", None, 1)])
    async with hub.database.write() as conn:
        await conn.execute(
            update(idempotency_keys).values(created_at=datetime.now(UTC) - timedelta(days=2))
        )
    _, replayed = await hub.publish_once("old", [("t", None, 2)])
    assert not replayed
    async with hub.database.write() as conn:
        await conn.execute(
            update(idempotency_keys).values(created_at=datetime.now(UTC) - timedelta(days=2))
        )
        assert await purge_expired(conn, datetime.now(UTC), 3600) == 1


async def test_bad_keys_are_rejected(hub: EventHub) -> None:
    for key in ("", "x" * 256, "tab\there", "é"):
        with pytest.raises(ValidationError):
            await hub.publish_once(key, [("t", None, 1)])
    with pytest.raises(ValidationError):
        await hub.publish_once("k", [])


async def test_two_hubs_on_one_database_append_once(database_url: str) -> None:
    async with (
        EventHub(database_url, auto_migrate=True) as first,
        EventHub(database_url, auto_migrate=True) as second,
    ):
        results = await asyncio.gather(
            *(
                hub.publish_once(f"key-{n % 5}", [("t", None, {"n": n % 5})])
                for n in range(40)
                for hub in (first, second)
            )
        )
        assert sum(not replayed for _, replayed in results) == 5
        by_key: dict[int, set[str]] = {}
        for events, _ in results:
            by_key.setdefault(events[0].payload["n"], set()).add(events[0].id)
        assert all(len(ids) == 1 for ids in by_key.values())
        assert len(await first.history("t")) == 5
