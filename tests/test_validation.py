"""Bad input gets a clear exception and writes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from eventhub_log import (
    EventHub,
    HubNotStarted,
    InvalidPayload,
    InvalidSubscriber,
    InvalidTopic,
    ValidationError,
)

BAD_TOPICS: list[Any] = [
    "",
    "x" * 256,
    "room lobby",
    "room#1",
    "röom",
    "tab\there",
    "line\nbreak",
    "/leading",
    "trailing/",
    "/",
    "a//b",
    "a/./b",
    "a/../b",
    "..",
    ".",
    "../etc",
    None,
    42,
    b"room:lobby",
    ["room:lobby"],
]

GOOD_TOPICS = [
    "room:lobby",
    "user:123",
    "presence:updates",
    "notifications:42",
    "x" * 255,
    "a/b/c",
    "a.b",
    "...a",
    "mail@example.com",
    "A-Z_0-9:.@/x",
]

BAD_PAYLOADS: list[Any] = [
    {1, 2},
    b"bytes",
    bytearray(b"x"),
    float("nan"),
    float("inf"),
    float("-inf"),
    {"deep": [1, {"x": float("nan")}]},
    object(),
    {"when": datetime(2026, 1, 1)},
    {(1, 2): "tuple key"},
    {1: "int key"},
    {None: "None key"},
    (1, 2),
    {"nested": {"set": {1}}},
    "lone surrogate \ud800",
    {"key \udfff": 1},
]

BAD_SUBSCRIBERS: list[Any] = ["", "x" * 256, "bell\x07", "new\nline", 7, None, b"ch-1"]


async def _assert_nothing_written(hub: EventHub) -> None:
    assert await hub.topics() == []
    assert await hub.head() == "0"


async def test_bad_topics_are_refused_before_writing(hub: EventHub) -> None:
    for topic in BAD_TOPICS:
        with pytest.raises(InvalidTopic, match="a topic is 1 to 255 characters") as refused:
            await hub.publish(topic, None, {"text": "hi"})
        assert "no leading or trailing '/'" in str(refused.value)
        with pytest.raises(InvalidTopic):
            await hub.subscribe(topic, "ch-1")
        with pytest.raises(InvalidTopic):
            await hub.publish_many([("fine", None, 1), (topic, None, 2)])
        with pytest.raises(InvalidTopic):
            await hub.history(topic)
    await _assert_nothing_written(hub)
    assert await hub.subscriptions("ch-1") == []


async def test_good_topics_are_accepted(hub: EventHub) -> None:
    for topic in GOOD_TOPICS:
        event = await hub.publish(topic, None, {})
        assert event.topic == topic
    assert sorted(info.topic for info in await hub.topics()) == sorted(GOOD_TOPICS)


async def test_bad_payloads_are_refused_before_writing(hub: EventHub) -> None:
    for payload in BAD_PAYLOADS:
        with pytest.raises(InvalidPayload, match="payload is not JSON-serialisable"):
            await hub.publish("room:lobby", None, payload)
        with pytest.raises(InvalidPayload):
            await hub.publish_many([("room:lobby", None, 1), ("room:lobby", None, payload)])
    await _assert_nothing_written(hub)


async def test_circular_payload_is_refused(hub: EventHub) -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(InvalidPayload):
        await hub.publish("room:lobby", None, loop)
    await _assert_nothing_written(hub)


async def test_a_bad_payload_among_concurrent_publishes_fails_alone(hub: EventHub) -> None:
    """Validation happens in the caller, so a batch never carries a bad event."""
    results = await asyncio.gather(
        *(hub.publish("t", None, n) for n in range(20)),
        hub.publish("t", None, {"bad": {1}}),
        return_exceptions=True,
    )
    assert isinstance(results[-1], InvalidPayload)
    assert [e.seq for e in await hub.history("t")] == list(range(1, 21))


async def test_bad_subscriber_ids_are_refused_before_writing(hub: EventHub) -> None:
    for subscriber in BAD_SUBSCRIBERS:
        with pytest.raises(InvalidSubscriber, match="subscriber id"):
            await hub.subscribe("room:lobby", subscriber)
        with pytest.raises(InvalidSubscriber):
            await hub.unsubscribe("room:lobby", subscriber)
        with pytest.raises(InvalidSubscriber):
            await hub.unsubscribe_all(subscriber)
        if subscriber is not None:  # None as exclude_id means "everyone"
            with pytest.raises(InvalidSubscriber):
                await hub.publish("room:lobby", subscriber, {})
    await _assert_nothing_written(hub)
    assert await hub.subscribers("room:lobby") == []


async def test_validation_errors_are_value_errors(hub: EventHub) -> None:
    """Callers that catch ValueError (or the library's base) catch them all."""
    with pytest.raises(ValueError, match="topic"):
        await hub.publish("", None, {})
    with pytest.raises(ValidationError):
        await hub.publish("ok", None, {1})


async def test_using_the_hub_before_start_says_what_to_do(tmp_path: Path) -> None:
    hub = EventHub(f"sqlite+aiosqlite:///{tmp_path / 'never-started.db'}")
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: hub.publish("room:lobby", None, {}),
        lambda: hub.publish_many([("room:lobby", None, {})]),
        lambda: hub.subscribe("room:lobby", "ch-1"),
        lambda: hub.unsubscribe("room:lobby", "ch-1"),
        lambda: hub.unsubscribe_all("ch-1"),
        lambda: hub.history("room:lobby"),
        lambda: hub.subscribers("room:lobby"),
        lambda: hub.subscriptions("ch-1"),
        lambda: hub.topics(),
        lambda: hub.head(),
    ]
    try:
        for call in calls:
            with pytest.raises(HubNotStarted, match=r"async with EventHub\(\.\.\.\)"):
                await call()
        with pytest.raises(HubNotStarted):
            async with hub.stream(["room:lobby"]):
                pass
        with pytest.raises(HubNotStarted):
            async with hub.transaction():
                pass
        with pytest.raises(HubNotStarted):
            async for _ in hub.export("room:lobby"):
                pass
    finally:
        await hub.close()


async def test_using_the_hub_after_close_raises(database_url: str) -> None:
    async with EventHub(database_url, auto_migrate=True) as hub:
        await hub.publish("t", None, 1)
    with pytest.raises(HubNotStarted):
        await hub.publish("t", None, 2)
    with pytest.raises(HubNotStarted):
        await hub.history("t")


async def test_malformed_batches_are_refused_before_writing(hub: EventHub) -> None:
    malformed: list[Any] = [
        "room:lobby",
        42,
        {"room:lobby": 1},
        [],
        [("room:lobby", None)],
        [("room:lobby", None, 1, "extra")],
        [("room:lobby", None, 1), "room:lobby"],
    ]
    for batch in malformed:
        with pytest.raises(ValidationError, match="batch"):
            await hub.publish_many(batch)
    await _assert_nothing_written(hub)
    lists_too: list[Any] = [["room:lobby", None, 1], ("room:lobby", "ch-1", 2)]
    events = await hub.publish_many(lists_too)
    assert [(e.seq, e.exclude_id) for e in events] == [(1, None), (2, "ch-1")]
