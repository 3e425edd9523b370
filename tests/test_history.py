"""Reading history: by topic, seq range, time range, both orders, paged; export."""

from __future__ import annotations

from datetime import timedelta, timezone
from typing import Any

import pytest

from eventhub_log import Event, EventHub, ValidationError


async def _publish(hub: EventHub, topic: str, count: int) -> list[Event]:
    # One awaited publish at a time: each gets its own commit and its own time.
    return [await hub.publish(topic, None, {"n": n}) for n in range(count)]


async def test_history_is_per_topic(hub: EventHub) -> None:
    a = await _publish(hub, "a", 3)
    await _publish(hub, "b", 2)
    assert await hub.history("a") == a
    assert [e.topic for e in await hub.history("b")] == ["b", "b"]
    assert await hub.history("never-published") == []


async def test_seq_range_both_orders(hub: EventHub) -> None:
    events = await _publish(hub, "t", 10)
    between = await hub.history("t", after_seq=3, before_seq=7)
    assert [e.seq for e in between] == [4, 5, 6]
    descending = await hub.history("t", after_seq=3, before_seq=7, order="desc")
    assert [e.seq for e in descending] == [6, 5, 4]
    assert await hub.history("t", order="desc") == events[::-1]
    assert await hub.history("t", after_seq=10) == []


async def test_time_range_since_inclusive_until_exclusive(hub: EventHub) -> None:
    events = await _publish(hub, "t", 6)
    times = [e.published_at for e in events]
    assert times == sorted(times)
    assert len(set(times)) == 6

    selected = await hub.history("t", since=times[1], until=times[4])
    assert [e.seq for e in selected] == [2, 3, 4]
    assert [e.seq for e in await hub.history("t", since=times[5])] == [6]
    assert await hub.history("t", until=times[0]) == []
    just_after_first = times[0] + timedelta(microseconds=1)
    assert [e.seq for e in await hub.history("t", until=just_after_first)] == [1]
    # An aware time in another zone means the same instant.
    shifted = times[2].astimezone(timezone(timedelta(hours=5)))
    assert [e.seq for e in await hub.history("t", since=shifted, order="desc")] == [6, 5, 4, 3]


async def test_paging_forward_with_after_seq(hub: EventHub) -> None:
    events = await _publish(hub, "t", 25)
    pages: list[list[Event]] = []
    after = 0
    while page := await hub.history("t", after_seq=after, limit=10):
        pages.append(page)
        after = page[-1].seq
    assert [len(page) for page in pages] == [10, 10, 5]
    assert [e for page in pages for e in page] == events


async def test_paging_backward_with_before_seq(hub: EventHub) -> None:
    events = await _publish(hub, "t", 25)
    seen: list[Event] = []
    before: int | None = None
    while page := await hub.history("t", before_seq=before, limit=10, order="desc"):
        seen.extend(page)
        before = page[-1].seq
    assert seen == events[::-1]


@pytest.mark.parametrize("limit", [0, -1, 1001])
async def test_limit_out_of_bounds_is_refused(hub: EventHub, limit: int) -> None:
    with pytest.raises(ValidationError, match="limit must be between 1 and 1000"):
        await hub.history("t", limit=limit)


async def test_limit_bounds_are_inclusive(hub: EventHub) -> None:
    await hub.publish_many([("t", None, n) for n in range(1001)])
    assert len(await hub.history("t", limit=1)) == 1
    assert len(await hub.history("t", limit=1000)) == 1000


async def test_order_must_be_asc_or_desc(hub: EventHub) -> None:
    with pytest.raises(ValidationError, match="order"):
        await hub.history("t", order="sideways")  # type: ignore[arg-type]


async def test_export_streams_everything_with_the_filters(hub: EventHub) -> None:
    await hub.publish_many([("t", None, {"n": n}) for n in range(2500)])
    await hub.publish("other", None, {})

    exported = [e async for e in hub.export("t")]
    assert [e.seq for e in exported] == list(range(1, 2501))
    assert exported[1234].payload == {"n": 1234}

    tail = [e.seq async for e in hub.export("t", after_seq=2490, order="desc")]
    assert tail == list(range(2500, 2490, -1))


async def test_wrong_types_in_a_selection_are_refused_alike_everywhere(hub: EventHub) -> None:
    """Not a database error on one backend and an empty page on another."""
    await hub.publish("t", None, 1)
    wrong: list[dict[str, Any]] = [
        {"after_seq": "3"},
        {"after_seq": -1},
        {"before_seq": 1.5},
        {"after_seq": True},
        {"since": "2026-01-01T00:00:00Z"},
        {"until": 1700000000},
        {"limit": "10"},
        {"limit": 10.0},
        {"order": "DESC"},
    ]
    for filters in wrong:
        name = next(iter(filters))
        with pytest.raises(ValidationError, match=name):
            await hub.history("t", **filters)
        if name != "limit":
            with pytest.raises(ValidationError, match=name):
                async for _ in hub.export("t", **filters):
                    pass
