"""A fan-out to many feeds is announced a slice per loop turn (delivery.py).

With thousands of SSE streams on a topic the announcements are thousands of
socket writes; done in one step they held the event loop for the whole burst,
and the next publish waited for all of it before its commit began. These tests
pin down what the slicing must keep: every feed gets every event once and in
order, other work runs between slices, and a feed still waiting for its turn
when the next event lands is announced once for both.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from eventhub_log.delivery import NOTIFY_SLICE, Dispatcher, Feed
from eventhub_log.model import Event

TOPIC = "room:lobby"
FEEDS = 2 * NOTIFY_SLICE + 88  # three slices, the last one short


async def _no_log(*_args: object) -> list[Event]:
    raise AssertionError("a contiguous run must not read the log")


async def _head() -> int:
    return 0


def _event(position: int) -> Event:
    return Event(TOPIC, position, position, datetime.now(UTC), f'{{"n":{position}}}')


class Hooked:
    """A feed whose reader waits in ``next()`` and writes through ``on_ready``,
    as the SSE stream does; records what each announcement wrote."""

    def __init__(self, feed: Feed) -> None:
        self.feed = feed
        self.writes: list[list[int]] = []
        feed.on_ready = self._on_ready
        self.task = asyncio.create_task(feed.next())

    def _on_ready(self) -> bool:
        self.writes.append([event.position for event in self.feed.take_ready(100)])
        return True


async def _parked_feeds(dispatcher: Dispatcher, count: int) -> list[Hooked]:
    hooked = []
    for n in range(count):
        feed = Feed(_no_log, f"s{n}", [TOPIC])
        feed.start(0, replay=False)
        dispatcher.add(feed)
        hooked.append(Hooked(feed))
    await asyncio.sleep(0)  # every reader parks in next()
    assert all(h.feed.waiting for h in hooked)
    return hooked


async def test_a_wide_fan_out_lets_the_loop_run_between_slices() -> None:
    dispatcher = Dispatcher(_no_log, _head)
    hooked = await _parked_feeds(dispatcher, FEEDS)
    seen_by_other_work: list[int] = []

    def other_work() -> None:  # a publish or a new request, due on the next turn
        seen_by_other_work.append(sum(len(h.writes) for h in hooked))

    dispatcher.deliver([_event(1)])
    assert sum(len(h.writes) for h in hooked) == NOTIFY_SLICE  # the first slice, at once
    asyncio.get_running_loop().call_soon(other_work)
    for _ in range(10):
        await asyncio.sleep(0)
    (announced_before,) = seen_by_other_work
    assert NOTIFY_SLICE <= announced_before < FEEDS  # it ran before the last slice
    assert all(h.writes == [[1]] for h in hooked)
    for h in hooked:
        h.task.cancel()


async def test_a_feed_still_queued_is_announced_once_for_two_events() -> None:
    dispatcher = Dispatcher(_no_log, _head)
    hooked = await _parked_feeds(dispatcher, FEEDS)
    dispatcher.deliver([_event(1)])
    dispatcher.deliver([_event(2)])  # before the loop turned
    for _ in range(10):
        await asyncio.sleep(0)
    # The first slice wrote event 1 at once and event 2 on its own turn; every
    # other feed was still queued when event 2 came and wrote both in one go.
    writes = sorted((h.writes for h in hooked), key=len)
    assert writes == [[[1, 2]]] * (FEEDS - NOTIFY_SLICE) + [[[1], [2]]] * NOTIFY_SLICE
    for h in hooked:
        h.task.cancel()


async def test_a_narrow_fan_out_is_announced_at_once() -> None:
    dispatcher = Dispatcher(_no_log, _head)
    hooked = await _parked_feeds(dispatcher, NOTIFY_SLICE)
    dispatcher.deliver([_event(1)])
    assert all(h.writes == [[1]] for h in hooked)
    for h in hooked:
        h.task.cancel()


async def test_stopping_drops_what_was_still_to_announce() -> None:
    dispatcher = Dispatcher(_no_log, _head)
    hooked = await _parked_feeds(dispatcher, FEEDS)
    dispatcher.deliver([_event(1)])
    await dispatcher.stop()
    for _ in range(5):
        await asyncio.sleep(0)
    assert sum(len(h.writes) for h in hooked) == NOTIFY_SLICE
    assert all(h.feed.closed for h in hooked)
    assert not any(h.feed.announcing for h in hooked)
    # Closed feeds end their readers (after what they still held).
    await asyncio.gather(*(h.task for h in hooked), return_exceptions=True)


async def test_a_catch_up_reads_its_next_page_once_the_last_one_is_announced() -> None:
    """A backlog read from the log goes no faster than the feeds are told of it:
    a page is announced to every feed before the next one is read."""
    page_size = 3
    backlog = [_event(position) for position in range(1, 3 * page_size + 1)]
    hooked: list[Hooked] = []
    told_at_each_read: list[int] = []

    async def reader(after: int, _topics: object, _until: object, limit: int) -> list[Event]:
        told_at_each_read.append(sum(len(h.writes) for h in hooked))
        return [event for event in backlog if event.position > after][:limit]

    # Pages of three events: a page holds three payloads like these.
    dispatcher = Dispatcher(reader, _head, page_bytes=3 * len(backlog[0].payload_json))
    dispatcher._page = page_size
    hooked.extend(await _parked_feeds(dispatcher, FEEDS))
    await dispatcher._catch_up()
    # Each read after the first found every feed told of the page before it.
    assert told_at_each_read == [0, FEEDS, 2 * FEEDS, 3 * FEEDS]
    assert all(h.writes == [[1, 2, 3], [4, 5, 6], [7, 8, 9]] for h in hooked)
    for h in hooked:
        h.task.cancel()
