"""Live feeds: replay after a cursor, then live, in order, none twice, none missing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import event as sa_event

from eventhub_log import Event, EventHub, Feed, InvalidCursor, InvalidTopic

# A feed that has nothing for this long has lost something (or the machine is stuck).
PATIENCE = 30.0


async def take(feed: Feed, count: int) -> list[Event]:
    """The next ``count`` events of the feed, failing if they do not come."""
    events: list[Event] = []
    while len(events) < count:
        event = await feed.next(timeout=PATIENCE)
        assert event is not None, f"feed stalled after {len(events)} of {count} events"
        events.append(event)
    return events


async def assert_quiet_then(feed: Feed, hub: EventHub, topic: str) -> None:
    """Nothing more is queued on the feed: the next event it gives is a fresh marker."""
    marker = await hub.publish(topic, None, {"marker": True})
    (event,) = await take(feed, 1)
    assert event.id == marker.id


class Collector:
    """Reads a feed in the background, as a client would."""

    def __init__(self, feed: Feed) -> None:
        self.received: list[Event] = []
        self._feed = feed
        self._arrived = asyncio.Event()

    async def run(self) -> None:
        async for event in self._feed:
            self.received.append(event)
            self._arrived.set()

    async def wait_for(self, count: int) -> list[Event]:
        async def reached() -> None:
            while len(self.received) < count:
                self._arrived.clear()
                await self._arrived.wait()

        await asyncio.wait_for(reached(), PATIENCE)
        return self.received[:count]


@contextlib.asynccontextmanager
async def collecting(feed: Feed) -> AsyncIterator[Collector]:
    collector = Collector(feed)
    task = asyncio.create_task(collector.run())
    try:
        yield collector
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_live_feed_gets_each_event_once_in_order(hub: EventHub) -> None:
    async with hub.stream(["room:lobby"], "ch-1") as feed:
        published = [await hub.publish("room:lobby", None, {"n": n}) for n in range(5)]
        await hub.publish("room:other", None, {"not": "subscribed"})
        assert await take(feed, 5) == published
        await assert_quiet_then(feed, hub, "room:lobby")


async def test_feed_started_mid_stream_sees_every_later_event_once(hub: EventHub) -> None:
    topics = ["mid:0", "mid:1", "mid:2"]
    watched = {"mid:0", "mid:1"}
    publishing = asyncio.Event()
    feed_open = asyncio.Event()

    async def publisher(task: int) -> None:
        # Publish all along: before the feed opens, while it opens, and 30 more
        # events each once it is open.
        n = after_open = 0
        while after_open < 30:
            await hub.publish(topics[(task + n) % 3], None, {"task": task, "n": n})
            n += 1
            if n == 10:
                publishing.set()
            if feed_open.is_set():
                after_open += 1

    publishers = [asyncio.create_task(publisher(task)) for task in range(10)]
    await publishing.wait()
    async with hub.stream(watched, "mid-reader") as feed:
        feed_open.set()
        start = int(feed.cursor)
        assert start > 0  # really mid-stream: events came before
        async with collecting(feed) as collector:
            await asyncio.gather(*publishers)
            expected = [
                event
                for topic in watched
                async for event in hub.export(topic)
                if event.position > start
            ]
            expected.sort(key=lambda event: event.position)
            assert len(expected) >= 200  # 10 tasks x 30 events, two topics in three
            received = await collector.wait_for(len(expected))
            assert [e.id for e in received] == [e.id for e in expected]
            assert received == expected
        await assert_quiet_then(feed, hub, "mid:0")


async def test_resume_from_a_cursor_gets_exactly_what_was_missed(hub: EventHub) -> None:
    async with hub.stream(["a", "b"], "ch-1") as feed:
        seen = [await hub.publish(topic, None, n) for n, topic in enumerate("abab")]
        assert await take(feed, 4) == seen
        cursor = feed.cursor
        assert cursor == seen[-1].id

    missed = []
    for n in range(6):
        missed.append(await hub.publish("a" if n % 2 else "b", None, {"missed": n}))
        await hub.publish("c", None, {"not subscribed": n})
    await hub.publish("a", "ch-1", {"excluded": True})

    async with hub.stream(["a", "b"], "ch-1", after=cursor) as feed:
        assert await take(feed, 6) == missed
        live = await hub.publish("b", None, {"live": True})
        assert await take(feed, 1) == [live]
        await assert_quiet_then(feed, hub, "a")


async def test_resume_at_the_head_replays_nothing(hub: EventHub) -> None:
    last = await hub.publish("a", None, 1)
    async with hub.stream(["a"], after=last.id) as feed:
        await assert_quiet_then(feed, hub, "a")  # the first thing it gives is new


async def test_from_earliest_replays_all_history_then_goes_live(hub: EventHub) -> None:
    history = await hub.publish_many([("a", None, n) for n in range(1500)])
    await hub.publish("other", None, {})
    async with hub.stream(["a"], from_earliest=True) as feed:
        assert await take(feed, 1500) == history
        await assert_quiet_then(feed, hub, "a")


async def test_exclusion_holds_live_and_on_replay(hub: EventHub) -> None:
    async def publish_mix() -> list[Event]:
        return [
            await hub.publish("room:lobby", None, "for everyone"),
            await hub.publish("room:lobby", "ch-1", "not for ch-1"),
            await hub.publish("room:lobby", "ch-2", "not for ch-2"),
        ]

    async with (
        hub.stream(["room:lobby"], "ch-1") as one,
        hub.stream(["room:lobby"], "ch-2") as two,
    ):
        everyone, not_one, not_two = await publish_mix()
        assert await take(one, 2) == [everyone, not_two]
        assert await take(two, 2) == [everyone, not_one]
        await assert_quiet_then(one, hub, "room:lobby")

    async with hub.stream(["room:lobby"], "ch-1", from_earliest=True) as replay:
        replayed = await take(replay, 3)
        assert [e.payload for e in replayed] == ["for everyone", "not for ch-2", {"marker": True}]
    async with hub.stream(["room:lobby"], "ch-2", after="0") as replay:
        replayed = await take(replay, 2)
        assert [e.payload for e in replayed] == ["for everyone", "not for ch-1"]


async def test_one_commit_mixing_topics_reaches_each_feed_in_position_order(
    hub: EventHub,
) -> None:
    """A batch is fanned out per topic; a feed of several topics still gets it in order."""
    async with (
        hub.stream(["mix:a", "mix:b"], "both") as both,
        hub.stream(["mix:a"], "only-a") as only_a,
        hub.stream(["mix:b"], "only-b") as only_b,
    ):
        batch = await hub.publish_many(
            [
                ("mix:a", None, 1),
                ("mix:b", None, 2),
                ("mix:a", "both", 3),
                ("mix:b", None, 4),
                ("mix:a", "only-a", 5),
                ("mix:c", None, 6),
                ("mix:a", None, 7),
            ]
        )
        by_payload = {event.payload: event for event in batch}
        assert await take(both, 5) == [by_payload[n] for n in (1, 2, 4, 5, 7)]
        assert await take(only_a, 3) == [by_payload[n] for n in (1, 3, 7)]
        assert await take(only_b, 2) == [by_payload[n] for n in (2, 4)]
        # Nothing else was buffered: the next events are these markers.
        marker_a = await hub.publish("mix:a", None, "marker")
        marker_b = await hub.publish("mix:b", None, "marker")
        assert await take(both, 2) == [marker_a, marker_b]
        assert await take(only_a, 1) == [marker_a]
        assert await take(only_b, 1) == [marker_b]


async def test_slow_feed_overflows_to_the_log_and_loses_nothing(database_url: str) -> None:
    async with (
        EventHub(database_url, auto_migrate=True, stream_buffer=5) as hub,
        hub.stream(["slow"], "slow-reader") as feed,
    ):
        published: list[Event] = []

        async def publisher(task: int) -> None:
            for n in range(30):
                published.append(await hub.publish("slow", None, {"task": task, "n": n}))

        await asyncio.gather(*(publisher(task) for task in range(10)))
        # Nobody read while 300 events arrived: the 5-event buffer overflowed.
        assert feed.overflows > 0
        published.sort(key=lambda event: event.position)
        assert await take(feed, 300) == published
        await assert_quiet_then(feed, hub, "slow")


async def test_slow_reader_racing_publishers_loses_nothing(database_url: str) -> None:
    async with (
        EventHub(database_url, auto_migrate=True, stream_buffer=5) as hub,
        hub.stream(["race"], "racer") as feed,
    ):
        received: list[Event] = []

        async def slow_reader() -> None:
            while len(received) < 400:
                event = await feed.next(timeout=PATIENCE)
                assert event is not None
                received.append(event)
                if len(received) % 7 == 0:
                    await asyncio.sleep(0.005)  # a reader slower than the publishers

        reader = asyncio.create_task(slow_reader())
        published = await asyncio.gather(*(hub.publish("race", None, {"n": n}) for n in range(400)))
        await asyncio.wait_for(reader, PATIENCE)
        assert received == sorted(published, key=lambda event: event.position)
        assert [e.seq for e in received] == list(range(1, 401))


async def test_subscribing_while_a_feed_is_open_adds_the_topic(hub: EventHub) -> None:
    async with hub.stream(["a"], "ch-1") as feed:
        await hub.subscribe("b", "ch-1")
        b = await hub.publish("b", None, "now wanted")
        assert await take(feed, 1) == [b]
        assert await hub.unsubscribe("b", "ch-1") is True
        await hub.publish("b", None, "no longer wanted")
        await assert_quiet_then(feed, hub, "a")


async def test_feed_rows_exist_while_open_and_go_when_it_closes(hub: EventHub) -> None:
    async with hub.stream(["a", "b"], "ch-1"):
        assert await hub.subscriptions("ch-1") == ["a", "b"]
        assert await hub.subscribers("a") == ["ch-1"]
    assert await hub.subscriptions("ch-1") == []


async def test_malformed_cursor_is_refused(hub: EventHub) -> None:
    for cursor in ["abc", "-1", "1.5", "", "99999999999999999999"]:
        with pytest.raises(InvalidCursor, match="cursor"):
            async with hub.stream(["a"], after=cursor):
                pass


async def test_cursor_ahead_of_the_log_is_refused(hub: EventHub) -> None:
    await hub.publish("a", None, 1)
    with pytest.raises(InvalidCursor, match="ahead of this log"):
        async with hub.stream(["a"], after="5"):
            pass
    assert await hub.subscriptions("never") == []


async def test_local_publishes_reach_feeds_without_reading_the_log(hub: EventHub) -> None:
    """Stateful mode: the writer hands committed events straight to the feeds."""
    reads: list[str] = []

    def watch(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if "FROM events" in statement:
            reads.append(statement)

    async with hub.stream(["room:lobby"], "ch-1") as feed:
        # A PostgreSQL listener looks at the log once when it connects (signals
        # sent before it listened are lost): let that happen before counting.
        for notifier in hub._notifiers:
            listening = getattr(notifier, "listening", None)
            if listening is not None:
                await asyncio.wait_for(listening.wait(), PATIENCE)
        warm_up = await hub.publish("room:lobby", None, "warm-up")
        assert await take(feed, 1) == [warm_up]

        sync_engine = hub.database.engine.sync_engine
        sa_event.listen(sync_engine, "before_cursor_execute", watch)
        try:
            published = [await hub.publish("room:lobby", None, n) for n in range(10)]
            published += await asyncio.gather(
                *(hub.publish("room:lobby", None, n) for n in range(10, 50))
            )
            assert await take(feed, 50) == sorted(published, key=lambda e: e.position)
        finally:
            sa_event.remove(sync_engine, "before_cursor_execute", watch)
    # 50 publishes, no read of the log for them (at most the listener's one
    # look, should it come late on a loaded machine).
    assert len(reads) <= 1, reads


async def test_a_single_string_is_not_taken_for_a_list_of_topics(hub: EventHub) -> None:
    with pytest.raises(InvalidTopic, match=r"pass \[topic\]"):
        async with hub.stream("room:lobby"):  # a str is a Collection[str] to mypy
            pass
    with pytest.raises(InvalidTopic, match="collection of topics"):
        async with hub.stream(42):  # type: ignore[arg-type]
            pass
    with pytest.raises(InvalidTopic):
        async with hub.stream(["ok", "not ok"]):
            pass
    async with hub.stream(("a", "b")) as feed, hub.stream({"c"}) as other:
        assert (feed.topics, other.topics) == ({"a", "b"}, {"c"})
    assert await hub.topics() == []
    assert await hub.subscribers("r") == []
