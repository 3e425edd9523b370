"""Many streams opening at once: their rows, head, replay pages and retention
checks are batched or shared (``GroupedWrites.run_batched``, ``SharedReads``),
and each stream must still get exactly what a lone open would.

Every test runs on SQLite and on PostgreSQL (``hub`` is parametrized)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from eventhub_log import EventHub, Gap, InvalidCursor
from eventhub_log.delivery import Feed
from eventhub_log.retention import prune


async def take(feed: Feed, count: int, timeout: float = 10.0) -> list[Any]:
    """``count`` items (events and gaps) of ``feed``, then check nothing else is ready."""
    got: list[Any] = []
    async with asyncio.timeout(timeout):
        while len([item for item in got if not isinstance(item, Gap)]) < count:
            event = await feed.next()
            got.extend(feed.take_gaps())
            if event is not None:
                got.append(event)
    assert feed.next_nowait() is None
    return got


def group_sizes(hub: EventHub) -> list[int]:
    """Record how many opens each batched write served (the path under test)."""
    sizes: list[int] = []
    batch = hub._open_rows

    async def recorded(conn: Any, feeds: list[Feed]) -> list[list[str]]:
        sizes.append(len(feeds))
        return await batch(conn, feeds)

    hub._open_rows = recorded  # type: ignore[method-assign]
    return sizes


async def test_opens_at_once_each_get_exactly_their_live_events(hub: EventHub) -> None:
    sizes = group_sizes(hub)
    count = 200
    ready = 0
    all_open = asyncio.Event()

    async def one(i: int) -> list[tuple[str, Any]]:
        nonlocal ready
        topics = [f"room-{i % 5}"]
        async with hub.stream(topics, f"reader-{i}") as feed:
            assert await hub.subscriptions(f"reader-{i}") == topics
            ready += 1
            if ready == count:
                all_open.set()
            return [(e.topic, e.payload) for e in await take(feed, 4)]

    tasks = [asyncio.create_task(one(i)) for i in range(count)]
    await asyncio.wait_for(all_open.wait(), 30)
    for round_ in range(4):
        for room in range(5):
            await hub.publish(f"room-{room}", None, [room, round_])
    results = await asyncio.wait_for(asyncio.gather(*tasks), 60)
    for i, got in enumerate(results):
        room = i % 5
        assert got == [(f"room-{room}", [room, r]) for r in range(4)]
    assert sum(sizes) == count
    assert max(sizes) > 1
    await asyncio.sleep(0.1)
    assert all([await hub.subscriptions(f"reader-{i}") == [] for i in range(count)])


async def test_mixed_resumes_at_once_each_replay_exactly(hub: EventHub) -> None:
    published = [await hub.publish("log", None, n) for n in range(30)]
    # Events excluding one reader, among the others on a second topic.
    for n in range(5):
        published.append(await hub.publish("log", "r3", f"not for r3 {n}"))
    published.append(await hub.publish("other", None, "other"))
    count = 120

    async def one(i: int) -> tuple[int, list[Any]]:
        start = i % 34  # every cursor from the beginning of the log to near its end
        after = "0" if start == 0 else published[start - 1].id
        owed = [e for e in published[start:] if e.topic == "log" and e.visible_to(f"r{i}")]
        async with hub.stream(["log"], f"r{i}", after=after) as feed:
            got = await take(feed, len(owed))
        assert [e.id for e in got] == [e.id for e in owed]
        return i, got

    results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(count))), 60)
    assert len(results) == count


async def test_one_bad_cursor_among_opens_fails_only_that_one(hub: EventHub) -> None:
    sizes = group_sizes(hub)
    events = [await hub.publish("log", None, n) for n in range(5)]

    async def one(i: int) -> list[Any]:
        after = "999999" if i == 17 else events[1].id
        async with hub.stream(["log"], f"c{i}", after=after) as feed:
            return await take(feed, 3)

    results = await asyncio.gather(*(one(i) for i in range(60)), return_exceptions=True)
    assert isinstance(results[17], InvalidCursor)
    assert max(sizes) > 1
    for i, result in enumerate(results):
        if i != 17:
            assert [e.id for e in result] == [e.id for e in events[2:]]  # type: ignore[union-attr]
    await asyncio.sleep(0.1)
    assert await hub.subscriptions("c17") == []


async def test_resumes_at_once_after_pruning_are_each_told_the_gap(hub: EventHub) -> None:
    events = [await hub.publish("log", None, n) for n in range(20)]
    await prune(hub.database, keep=5, topics=["log"])

    async def one(i: int) -> list[Any]:
        after = "0" if i % 2 else events[9].id
        async with hub.stream(["log"], f"g{i}", after=after) as feed:
            return await take(feed, 5)

    results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(80))), 60)
    for i, got in enumerate(results):
        gaps = [item for item in got if isinstance(item, Gap)]
        assert [e.seq for e in got if not isinstance(e, Gap)] == list(range(16, 21))
        assert len(gaps) == 1
        assert (gaps[0].topic, gaps[0].to_seq) == ("log", 15)
        assert gaps[0].from_seq <= (1 if i % 2 else 11)


async def test_streams_of_one_subscriber_opening_together_share_its_rows(hub: EventHub) -> None:
    # A row made over REST with no stream: the streams opening take it over.
    await hub.subscribe("rest-topic", "twin", owner="twin", ttl=60)
    gate = asyncio.Event()

    async def one(topics: list[str]) -> set[str]:
        async with hub.stream(topics, "twin") as feed:
            await gate.wait()
            return set(feed.topics)

    tasks = [asyncio.create_task(one(["a"])), asyncio.create_task(one(["a", "b"]))]
    for _ in range(50):
        await asyncio.sleep(0.02)
        if sorted(await hub.subscriptions("twin")) == ["a", "b", "rest-topic"]:
            break
    assert sorted(await hub.subscriptions("twin")) == ["a", "b", "rest-topic"]
    gate.set()
    found = await asyncio.gather(*tasks)
    assert all("rest-topic" in topics for topics in found)
    await asyncio.sleep(0.1)
    assert await hub.subscriptions("twin") == []


@pytest.mark.parametrize("count", [1, 3])
async def test_small_groups_still_open(hub: EventHub, count: int) -> None:
    async def one(i: int) -> None:
        async with hub.stream(["x"], f"small-{i}") as feed:
            assert feed.started

    await asyncio.gather(*(one(i) for i in range(count)))
