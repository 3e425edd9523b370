"""Live fan-out to local feeds, catch-up from the log, and backpressure.

Positions are gapless: each write transaction takes the next contiguous range
under the ``log_head`` row lock and a rollback gives its range back. So the
``Dispatcher`` can tell, from positions alone, whether it has seen every
committed event. A contiguous run (the local writer's batch, straight after its
commit) is fanned out with no database read; anything that does not follow on
(another process wrote in between, a wake-up from another instance, a publish
inside a caller's own transaction) makes it read the log from the last position
it delivered. Either way each feed sees events in position order, once.

Each ``Feed`` has a buffer bounded in events and in bytes (the length of the
payload JSON, which is nearly all of an event's size). A feed whose reader
falls behind is not fed live any more: its buffer is dropped and it catches up
from the log by itself, a page at a time, each page held to the same byte
budget, so a slow reader costs memory up to its bound and never blocks a
publisher. The bytes are counted per run of a batch (summed once by the
dispatcher, not once per feed) and start again from zero when a run finds the
buffer empty, which it is for a reader that keeps up; nothing is counted per event
taken (subtracting each taken event's size, a helper call per take, cost the
write loops of ``bench/sse_machinery.py --in-process`` about half again), so a
reader always a few events behind overflows a little early, never late.

A delivered batch is announced to each feed once, after all its events are
buffered, not once per event. A reader parked in ``next()`` is woken, unless it
set ``Feed.on_ready``: then the dispatcher calls that hook instead, and a
transport that can write without waiting (the SSE stream) takes the events on
the spot. Waking a thousand parked tasks per event cost more than the writes
themselves, and every wake-up was one more callback ahead of the publishers in
the event loop's queue.

A fan-out to more feeds than ``NOTIFY_SLICE`` is announced a slice per turn of
the event loop, not in one go: with 10,000 streams on a topic an event is 10,000
socket writes, about 190 ms of the loop, and in one step nothing else ran
meanwhile, so the next publish waited for the whole burst before its commit even
began (bench/streams_10k.py: p99 400-460 ms, half of it that wait). Between slices
the loop reads and commits what arrived; a feed still waiting for its turn when
the next event lands is announced once for both, which makes one write of them.
Each feed's events are buffered in order before any announcement, so only when
they are written changes, never what or in which order.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Sequence
from typing import Protocol

from .model import Event, Gap
from .waiting import Wakeup, wait_event

log = logging.getLogger(__name__)

CATCH_UP_PAGE = 1000
# The first page of a catch-up, before the size of the events is known: small, so
# that a log of large events costs little before the pages are sized to them.
FIRST_PAGE = 16
STREAM_BUFFER_BYTES = 4 * 1024 * 1024
# Feeds announced per turn of the event loop: at the SSE stream's 15-20 us a
# write, a few milliseconds before publishers and new requests get their turn.
NOTIFY_SLICE = 256


def _page_for(event_size: int, budget: int) -> int:
    """Events of about ``event_size`` that one page of ``budget`` bytes holds."""
    return max(1, min(CATCH_UP_PAGE, budget // max(event_size, 1)))


def _payload_bytes(events: Iterable[Event]) -> int:
    return sum([len(event.payload_json) for event in events])


class LogReader(Protocol):
    def __call__(
        self,
        after_position: int,
        topic_names: Collection[str] | None,
        subscriber_id: str | None,
        limit: int,
    ) -> Awaitable[list[Event]]: ...


_NO_GAPS: tuple[Gap, ...] = ()
# The buffer of every feed that has not buffered anything yet: read, cleared and
# popped only while non-empty (so never); each write to a feed's buffer swaps it
# for a deque of the feed's own first (``offer``, ``offer_run``, ``_catch_up_page``).
_UNUSED: deque[Event] = deque(maxlen=0)
# What retention removed of some topics that a reader after a position is owed.
GapReader = Callable[[Collection[str], int], Awaitable[list[Gap]]]


class Feed:
    """Events of a set of topics after a position: replay first, then live.

    Whatever is read from the log (a replay, a catch-up after an overflow) is
    checked against retention page by page: events that ``prune`` removed before
    the reader got to them become ``Gap``s, handed out by ``take_gaps()`` ahead of
    the events that follow them, never a silent skip, even when pruning runs
    while the replay does. A transport takes the gaps before it writes the events
    ``next()`` or ``take_ready()`` gave it; ``next()`` returns ``None`` when a page
    brought gaps and no event."""

    _ids = itertools.count(1)
    # A server holds one per open stream and touches each one per event: slots
    # keep it compact, so 10,000 of them stay nearer the CPU's caches.
    __slots__ = (
        "_catch_up_requests",
        "_closed",
        "_gap_reader",
        "_gaps",
        "_gaps_told",
        "_last_read",
        "_live",
        "_live_bytes",
        "_max_buffer",
        "_max_bytes",
        "_nudged",
        "_page",
        "_reader",
        "_replayed",
        "_rewinds",
        "_started",
        "_through",
        "_topic_after",
        "_waiting",
        "_wake",
        "announcing",
        "connection_id",
        "on_ready",
        "overflows",
        "position",
        "subscriber_id",
        "topics",
    )

    def __init__(
        self,
        reader: LogReader,
        subscriber_id: str,
        topic_names: Iterable[str],
        *,
        max_buffer: int = 1000,
        max_buffer_bytes: int = STREAM_BUFFER_BYTES,
        connection_id: str | None = None,
        gap_reader: GapReader | None = None,
    ) -> None:
        self.subscriber_id = subscriber_id
        self.connection_id = connection_id or f"feed-{next(self._ids)}"
        self.topics: set[str] = set(topic_names)
        self._reader = reader
        self._gap_reader = gap_reader
        self._gaps: list[Gap] = []
        # Per topic, the highest seq a gap handed out reached: told once.
        self._gaps_told: dict[str, int] = {}
        # Per topic, the last seq read from the log (before exclusion): a page
        # that follows on from it with no hole needs no retention check.
        self._last_read: dict[str, int] = {}
        self._max_buffer = max_buffer
        self._max_bytes = max_buffer_bytes
        # Both buffers start as the shared, always empty ``_UNUSED`` and get a deque
        # of their own on the first write: an empty deque is about 380 bytes, and
        # most idle streams never replay.
        self._live: deque[Event] = _UNUSED
        # Payload bytes offered to ``_live`` since an offer found it empty: at
        # least what it holds (events taken stay counted, as skipped duplicates
        # do, until then); meaningless while it is empty.
        self._live_bytes = 0
        self._page = FIRST_PAGE
        self._replayed: deque[Event] = _UNUSED
        self._wake = Wakeup()
        self._waiting = False
        # Called by the dispatcher, instead of waking the reader, when events are
        # ready while the reader waits in ``next()``; returns whether it took care
        # of them. It must not raise or await: it runs inside the dispatcher's loop.
        self.on_ready: Callable[[], bool] | None = None
        self._catch_up_requests = 0
        # In the dispatcher's queue of feeds to announce (``Dispatcher._announce``).
        self.announcing = False
        self._started = False
        self._closed = False
        self._nudged = False
        # Highest position handed to the reader of this feed (or queued for it).
        self._through = 0
        self.position = 0
        self.overflows = 0
        # Topics added while open, with the log position they apply after.
        self._topic_after: dict[str, int] = {}
        self._rewinds = 0

    def start(self, after_position: int, *, replay: bool) -> None:
        self._through = self.position = after_position
        self._started = True
        if replay:
            self.request_catch_up()

    @property
    def cursor(self) -> str:
        return str(self.position)

    # Called by the dispatcher ------------------------------------------------

    def add_topic(self, topic: str, after_position: int | None = None) -> None:
        """Take ``topic`` too; with ``after_position``, its events after that position.

        A change made on another instance arrives a little late: the dispatcher may
        already have gone past ``after_position`` without this feed seeing the new
        topic's events. So the feed drops what it holds and reads the log again
        from the last event it handed out, which loses nothing as long as it has
        not handed out anything beyond ``after_position`` yet.
        """
        if topic in self.topics:
            return
        self.topics.add(topic)
        if after_position is None:
            return
        self._topic_after[topic] = after_position
        if self._started:
            self._replayed.clear()
            self._through = self.position
            self._rewinds += 1
            self.request_catch_up()

    def remove_topic(self, topic: str) -> None:
        self.topics.discard(topic)
        self._topic_after.pop(topic, None)

    def _wanted(self, event: Event) -> bool:
        return (
            event.topic in self.topics
            and event.position > self._topic_after.get(event.topic, 0)
            and event.visible_to(self.subscriber_id)
        )

    def offer(self, event: Event) -> bool:
        """Buffer ``event`` if this feed wants it; ``notify()`` tells the reader.
        Returns whether it was buffered."""
        if not self._wanted(event):
            return False
        live = self._live
        size = len(event.payload_json)
        if not live:
            self._live_bytes = size  # one event over the whole budget still goes live
        elif len(live) >= self._max_buffer or self._live_bytes + size > self._max_bytes:
            self._overflow(size)
            return False
        else:
            self._live_bytes += size
        if live is _UNUSED:
            live = self._live = deque()
        live.append(event)
        return True

    def offer_run(
        self, events: list[Event], excluded: Collection[str], size: int | None = None
    ) -> bool:
        """``offer`` for a run of one topic's events in position order, where
        ``excluded`` holds the subscribers any of them excludes and ``size`` is
        their payload bytes (the dispatcher sums them once for every feed): one
        check and one ``extend`` in the common case, instead of one call per event."""
        if self._topic_after or self.subscriber_id in excluded:
            offered = False
            for event in events:
                offered = self.offer(event) or offered
            return offered
        if events[0].topic not in self.topics:
            return False
        live = self._live
        if size is None:
            size = _payload_bytes(events)
        total = self._live_bytes + size if live else size
        if len(live) + len(events) > self._max_buffer or (
            total > self._max_bytes and (live or len(events) > 1)
        ):
            self._overflow(size // len(events))
            return False
        if live is _UNUSED:
            live = self._live = deque()
        live.extend(events)
        self._live_bytes = total
        return True

    def _overflow(self, event_size: int) -> None:
        # Too far behind to keep feeding live: catch up from the log instead, in
        # pages sized for events like these.
        self.overflows += 1
        self._page = _page_for(event_size, self._max_bytes)
        self.request_catch_up()

    def notify(self) -> None:
        """Events were buffered: hand them to ``on_ready`` or wake the reader."""
        if self._waiting and self.on_ready is not None and self.on_ready():
            return
        self._wake.set()

    def request_catch_up(self) -> None:
        self._live.clear()
        self._live_bytes = 0
        self._catch_up_requests += 1
        self._wake.set()

    @property
    def started(self) -> bool:
        """Its start position is set (its subscription rows are committed by then)."""
        return self._started

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    @property
    def closed(self) -> bool:
        return self._closed

    # Called by the reader ----------------------------------------------------

    async def next(self, timeout: float | None = None) -> Event | None:
        """The next event, or ``None`` after ``timeout`` seconds with nothing new
        (or at once after ``nudge()``).

        Raises ``StopAsyncIteration`` once the feed is closed. A timeout only ever
        interrupts the wait, never a read of the log, so nothing is lost to it.
        """
        while True:
            event = self.next_nowait()
            if event is not None:
                return event
            if self._catch_up_requests and self._started:
                await self._catch_up_page()
                if self._gaps and not self.has_ready:
                    return None  # gaps to tell, with no event after them yet
                continue
            if self._closed:
                raise StopAsyncIteration
            if self._nudged:
                self._nudged = False
                return None
            self._wake.clear()
            self._waiting = True
            try:
                if timeout is None:
                    await self._wake.wait()
                elif not await wait_event(self._wake, timeout):
                    return None
            finally:
                self._waiting = False

    def next_nowait(self) -> Event | None:
        """The next event if one is buffered, else ``None``; never waits or reads
        the log. Lets a transport gather what is ready into one write."""
        taken = self.take_ready(1)
        return taken[0] if taken else None

    def take_ready(self, limit: int, max_bytes: int = 0) -> list[Event]:
        """Up to ``limit`` buffered events, in order: a replay page's first, then
        live ones; none while the log must be read first (``next()`` does).
        With ``max_bytes``, no more payload than that, but always one event."""
        replayed = self._replayed
        if replayed:  # a replay page: these go first, and the rest on the next call
            if max_bytes:
                taken = _take_within(replayed, limit, max_bytes, 0)[0]
            else:
                taken = [replayed.popleft() for _ in range(min(limit, len(replayed)))]
            self.position = taken[-1].position
            return taken
        if self._catch_up_requests and self._started:
            return []  # the log must be read first (``next()`` does)
        live, through = self._live, self._through
        if max_bytes and live and self._live_bytes > max_bytes:
            taken, popped = _take_within(live, limit, max_bytes, through)
            self._live_bytes -= popped
            if taken:
                self._through = self.position = taken[-1].position
            return taken
        # The loop counts nothing per event: what it takes stays counted until the
        # buffer is empty at the next offer (a reader keeping up empties it with
        # every take).
        taken = []
        while live and len(taken) < limit:
            event = live.popleft()
            if event.position > through:
                through = event.position
                taken.append(event)
        if taken:
            self._through = self.position = through
        return taken

    @property
    def has_ready(self) -> bool:
        """Events are buffered (a transport that took a part of them writes on)."""
        return bool(self._replayed or self._live)

    @property
    def buffered_bytes(self) -> int:
        """Payload bytes this feed holds (live, and of a replay page)."""
        return (self._live_bytes if self._live else 0) + _payload_bytes(self._replayed)

    @property
    def waiting(self) -> bool:
        """The reader is parked in ``next()`` (and so holds no event it took)."""
        return self._waiting

    def wake(self) -> None:
        """Make a waiting ``next()`` look at the buffer again (an ``on_ready`` that
        declined events, or could not write them all, calls this)."""
        self._wake.set()

    def nudge(self) -> None:
        """Make a waiting (or the next) ``next()`` return ``None`` once.

        Transports with many idle streams send heartbeats from one timer that
        nudges them, rather than arming a timeout around every wait.
        """
        self._nudged = True
        self._wake.set()

    def __aiter__(self) -> Feed:
        return self

    async def __anext__(self) -> Event:
        # Iterating gives events only; a reader that must tell gaps calls
        # ``next()`` and ``take_gaps()``.
        while (event := await self.next()) is None:
            pass
        return event

    async def with_gaps(self) -> AsyncIterator[Event | Gap]:
        """Events, each preceded by the gaps found before it, until the feed closes."""
        while True:
            try:
                event = await self.next()
            except StopAsyncIteration:
                return
            for gap in self.take_gaps():
                yield gap
            if event is not None:
                yield event

    def take_gaps(self) -> Sequence[Gap]:
        """Gaps found since the last call, to tell before the events now ready."""
        if not self._gaps:
            return _NO_GAPS
        gaps, self._gaps = self._gaps, []
        return gaps

    async def _catch_up_page(self) -> None:
        requests, rewinds = self._catch_up_requests, self._rewinds
        limit, since = self._page, self._through
        page = await self._reader(since, self.topics, self.subscriber_id, limit)
        if rewinds != self._rewinds:
            return  # a topic came in meanwhile: read again from the rewound position
        complete = len(page) < limit
        if page:
            # Keep what fits the budget (events may be larger than the last
            # page's): the rest is read again with the next page, sized for them.
            size, kept = 0, len(page)
            for index, event in enumerate(page):
                size += len(event.payload_json)
                if size > self._max_bytes and index:
                    kept, complete = index, False
                    break
            self._page = _page_for(size // (index + 1), self._max_bytes)
            if kept < len(page):
                page = page[:kept]
        if self._gap_reader is not None and self._has_hole(page):
            # After the page's read, so a prune that made it skip events has
            # committed and left its mark: what this page is missing is found now.
            await self._note_gaps(since)
            if rewinds != self._rewinds:
                return
        if page:
            self._through = page[-1].position
            if self._replayed is _UNUSED:
                self._replayed = deque()
            self._replayed.extend(event for event in page if self._wanted(event))
        if complete and requests == self._catch_up_requests:
            # Reached the head with no new overflow meanwhile: live from here on.
            self._catch_up_requests = 0

    def _has_hole(self, page: list[Event]) -> bool:
        """Whether the page may be missing events: it is the first, it brings a
        topic not read before, or a topic's seqs do not follow on. Asking the
        retention marks costs a query; a page that follows on needs none (measured:
        a query every page took a replay from 95,000-115,000 to about 80,000
        events/s). Events excluded for this subscriber (left out by the query)
        look like holes too: a query that finds nothing."""
        last_read = self._last_read
        hole = not last_read
        for event in page:
            last = last_read.get(event.topic)
            if last is None or event.seq != last + 1:
                hole = True
            last_read[event.topic] = event.seq
        return hole

    async def _note_gaps(self, since: int) -> None:
        assert self._gap_reader is not None
        for gap in await self._gap_reader(sorted(self.topics), since):
            told = self._gaps_told.get(gap.topic, 0)
            if gap.to_seq > told:
                self._gaps.append(Gap(gap.topic, max(gap.from_seq, told + 1), gap.to_seq))
                self._gaps_told[gap.topic] = gap.to_seq


def _notify_all(feeds: Iterable[Feed]) -> None:
    for feed in feeds:
        try:
            feed.notify()
        except Exception:  # one broken reader must not starve the others
            log.exception("notifying a feed failed")
            feed.wake()


def _take_within(
    events: deque[Event], limit: int, max_bytes: int, through: int
) -> tuple[list[Event], int]:
    """Pop up to ``limit`` events after ``through`` off ``events``, within ``max_bytes``
    of payload (at least one); returns them and the payload bytes popped."""
    taken: list[Event] = []
    size = popped = 0
    while events and len(taken) < limit:
        event_size = len(events[0].payload_json)
        if taken and size + event_size > max_bytes:
            break
        event = events.popleft()
        popped += event_size
        if event.position > through:
            through = event.position
            taken.append(event)
            size += event_size
    return taken, popped


class Dispatcher:
    """Routes committed events to the feeds of their topics, in position order."""

    def __init__(
        self,
        reader: LogReader,
        head: Callable[[], Awaitable[int]],
        *,
        page_bytes: int = STREAM_BUFFER_BYTES,
    ) -> None:
        self._reader = reader
        self._head = head
        # Its catch-up pages are held to ``page_bytes`` of payload, sized by the
        # events of the last page (it routes them and lets them go).
        self._page_bytes = page_bytes
        self._page = FIRST_PAGE
        self._by_topic: dict[str, set[Feed]] = {}
        self._by_subscriber: dict[str, set[Feed]] = {}
        self.through = 0
        self._catch_up_needed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Subscription changes from other instances (subscription_sync.py): applied
        # before each read of the log, and while one is signalled but not applied,
        # local commits go through that read too, so a change committed before an
        # event is in effect when the event is routed.
        self.before_catch_up: Callable[[], Awaitable[None]] | None = None
        self.hold: Callable[[], bool] = lambda: False
        # Feeds with events buffered, to announce a slice per loop turn, oldest first.
        self._announcing: deque[Feed] = deque()
        self._announce_handle: asyncio.Handle | None = None
        # Set while nothing is left to announce: a catch-up reads its next page
        # only then, so it never buffers pages faster than feeds are told of them.
        self._announced = asyncio.Event()
        self._announced.set()

    async def start(self) -> None:
        self.through = await self._head()
        self._task = asyncio.create_task(self._catch_up_loop(), name="eventhub-log catch-up")

    async def stop(self) -> None:
        if self._announce_handle is not None:
            self._announce_handle.cancel()
            self._announce_handle = None
        while self._announcing:
            self._announcing.popleft().announcing = False
        self._announced.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for feeds in list(self._by_subscriber.values()):
            for feed in list(feeds):
                feed.close()

    # Feeds -------------------------------------------------------------------

    def add(self, feed: Feed) -> None:
        for topic in feed.topics:
            self._by_topic.setdefault(topic, set()).add(feed)
        self._by_subscriber.setdefault(feed.subscriber_id, set()).add(feed)

    def remove(self, feed: Feed) -> None:
        for topic in feed.topics:
            self._discard(topic, feed)
        feeds = self._by_subscriber.get(feed.subscriber_id)
        if feeds is not None:
            feeds.discard(feed)
            if not feeds:
                del self._by_subscriber[feed.subscriber_id]

    def feeds_of(self, subscriber_id: str) -> set[Feed]:
        return set(self._by_subscriber.get(subscriber_id, ()))

    def add_topic(self, subscriber_id: str, topic: str, after_position: int | None = None) -> None:
        for feed in list(self._by_subscriber.get(subscriber_id, ())):
            self.add_feed_topic(feed, topic, after_position)

    def remove_topic(self, subscriber_id: str, topic: str) -> None:
        for feed in list(self._by_subscriber.get(subscriber_id, ())):
            self.remove_feed_topic(feed, topic)

    def add_feed_topic(self, feed: Feed, topic: str, after_position: int | None = None) -> None:
        feed.add_topic(topic, after_position)
        self._by_topic.setdefault(topic, set()).add(feed)

    def remove_feed_topic(self, feed: Feed, topic: str) -> None:
        feed.remove_topic(topic)
        self._discard(topic, feed)

    def _discard(self, topic: str, feed: Feed) -> None:
        feeds = self._by_topic.get(topic)
        if feeds is not None:
            feeds.discard(feed)
            if not feeds:
                del self._by_topic[topic]

    def feeds(self) -> list[Feed]:
        return [feed for feeds in self._by_subscriber.values() for feed in feeds]

    @property
    def feed_count(self) -> int:
        return sum(len(feeds) for feeds in self._by_subscriber.values())

    # Events ------------------------------------------------------------------

    def deliver(self, events: list[Event], *, from_log: bool = False) -> None:
        """Fan out events known to be committed, in position order.

        ``from_log``: the events were just read from the log after ``through``, so
        a hole between them is one retention made, not one still to come.
        """
        if not from_log and self.hold():
            self.wake()
            return
        run: list[Event] = []
        for event in events:
            if event.position <= self.through:
                continue
            if event.position != self.through + 1 and not from_log:
                # Something committed in between that we have not seen: the
                # catch-up task reads it (and the rest) from the log, in order.
                self.wake()
                break
            self.through = event.position
            run.append(event)
        if not run:
            return
        ready: dict[Feed, None] = {}
        try:
            self._fan_out(run, ready)
        finally:
            if len(ready) <= NOTIFY_SLICE and not self._announcing:
                _notify_all(ready)
            else:
                self._queue(ready)

    def _queue(self, ready: Iterable[Feed]) -> None:
        queue = self._announcing
        for feed in ready:
            if not feed.announcing:  # already queued: one announcement covers both
                feed.announcing = True
                queue.append(feed)
        self._announced.clear()
        if self._announce_handle is None:
            self._announce()

    def _announce(self) -> None:
        """Announce the next slice of queued feeds; the rest on later loop turns
        (a ``call_soon`` runs after the loop has polled for I/O)."""
        queue = self._announcing
        taken = [queue.popleft() for _ in range(min(NOTIFY_SLICE, len(queue)))]
        for feed in taken:
            feed.announcing = False
        if queue:
            self._announce_handle = asyncio.get_running_loop().call_soon(self._announce)
        else:
            self._announce_handle = None
            self._announced.set()
        _notify_all(taken)

    def _fan_out(self, run: list[Event], ready: dict[Feed, None]) -> None:
        """Offer ``run`` to the feeds of its topics; ``ready`` collects those that took some.

        Each topic's events go to its feeds as one run. A feed that follows
        several of the run's topics takes them event by event instead, so that
        its buffer stays in position order across topics.
        """
        by_topic: dict[str, list[Event]] = {}
        for event in run:
            group = by_topic.get(event.topic)
            if group is None:
                by_topic[event.topic] = [event]
            else:
                group.append(event)
        several = len(by_topic) > 1
        mixed: dict[Feed, None] = {}
        for topic, group in by_topic.items():
            feeds = self._by_topic.get(topic)
            if not feeds:
                continue
            excluded = {event.exclude_id for event in group if event.exclude_id is not None}
            size = _payload_bytes(group)
            for feed in feeds:
                if several and len(feed.topics) > 1:
                    mixed[feed] = None
                elif feed.offer_run(group, excluded, size):
                    ready[feed] = None
        for feed in mixed:
            for event in run:
                if feed.offer(event):
                    ready[feed] = None

    def wake(self) -> None:
        """Check the log for events committed by someone else."""
        self._catch_up_needed.set()

    async def _catch_up_loop(self) -> None:
        while True:
            await self._catch_up_needed.wait()
            self._catch_up_needed.clear()
            try:
                await self._catch_up()
            except Exception:
                # The database may be down; the next wake-up or poll tries again.
                log.warning("catch-up from the log failed", exc_info=True)
                await asyncio.sleep(0.5)
                self._catch_up_needed.set()

    async def _catch_up(self) -> None:
        while True:
            if self.before_catch_up is not None:
                await self.before_catch_up()
            if not self._by_topic:
                self.through = max(self.through, await self._head())
                return
            limit = self._page
            page = await self._reader(self.through, None, None, limit)
            if page:
                self._page = _page_for(_payload_bytes(page) // len(page), self._page_bytes)
            self.deliver(page, from_log=True)
            if len(page) < limit:
                return
            await self._announced.wait()
