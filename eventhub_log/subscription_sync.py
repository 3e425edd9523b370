"""Subscription changes made on any instance reach the open feeds of this one.

A subscriber's stream lives on one instance, but ``PUT /v1/subscriptions/...``
(or ``hub.subscribe`` in someone's job) may be answered by another. Each such
call records a row in ``subscription_changes`` in the same transaction as the
subscription itself, with the log head at that moment (see
``queries.record_subscription_change``). Every instance reads the rows after the
last one it read, and for the subscribers it has feeds of, brings each started
feed's topics to the subscription rows of that moment (read in the same
snapshot), rather than replaying the changes one by one: a change made before a
stream opened (an unsubscribe-all, say) then cannot undo that stream's own
topics. It reads when told (PostgreSQL NOTIFY on the subscriptions channel) and
on a timer (the only signal on SQLite, a safety net on PostgreSQL): as with
events, a lost signal only delays.

The change's log position makes an added topic exact: the feed takes that
topic's events after the position, reading them from the log if they already
went by (``Feed.add_topic``). The instance holding the stream also takes the
new row over, as a subscribe answered next to the stream does: it then goes when
the stream closes, and with this instance if it dies, instead of being owned by
nobody and outliving a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from .delivery import Dispatcher
from .store import queries
from .store.database import Database
from .waiting import wait_event

log = logging.getLogger(__name__)

PAGE = 500


class SubscriptionSync:
    def __init__(
        self,
        database: Database,
        dispatcher: Dispatcher,
        interval: float,
        instance_id: str,
        *,
        read_before_every_catch_up: bool = False,
    ) -> None:
        self._database = database
        self._instance_id = instance_id
        self._dispatcher = dispatcher
        self._interval = interval
        self._applied = 0
        # Subscribers whose feeds were still opening at the last read, with the
        # position to add new topics after: brought to their rows at the next one.
        self._recheck: dict[str, int] = {}
        # Signalled (PostgreSQL NOTIFY) but not read yet.
        self.pending = False
        # Processes sharing a SQLite file have no signal: in stateless mode they
        # read before every read of the log (a cheap query, and the log is read
        # only when the head moved). Not in stateful mode, where this process is
        # the one expected to publish: there a read before each catch-up, during
        # which local commits are held and so themselves go through a catch-up,
        # kept a busy hub reading the log for events it had in hand.
        self._read_every_time = read_before_every_catch_up
        dispatcher.before_catch_up = self._before_catch_up
        dispatcher.hold = lambda: self.pending or self._lock.locked()
        self._wakeup = asyncio.Event()
        # One reader at a time: changes must be applied in id order.
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # Changes made before this instance started concern no feed of it.
        async with self._database.read() as conn:
            self._applied = await queries.last_subscription_change(conn)
        self._task = asyncio.create_task(self._run(), name="eventhub-log subscription sync")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def wake(self) -> None:
        self.pending = True
        self._wakeup.set()

    async def _before_catch_up(self) -> None:
        if self._lock.locked():
            # A read is under way (it cleared ``pending`` when it began): the
            # events about to be routed may follow the changes it is applying.
            async with self._lock:
                pass
        if self.pending or self._read_every_time:
            await self.apply_new()

    async def _run(self) -> None:
        while True:
            interval = min(self._interval, 0.1) if self._recheck else self._interval
            await wait_event(self._wakeup, interval)
            self._wakeup.clear()
            try:
                if self.pending or self._recheck or await self._changed():
                    await self.apply_new()
            except Exception:
                self.pending = False  # do not hold local delivery while the database is away
                log.debug("reading subscription changes failed", exc_info=True)

    async def _changed(self) -> bool:
        """Whether any change came after the last one applied. Looked at without
        the lock: a timed read that finds nothing new then holds no delivery
        (held deliveries go through a read of the log, and a busy hub took a
        tenth of a second, every second, to get back to delivering directly)."""
        async with self._database.read() as conn:
            return await queries.last_subscription_change(conn) > self._applied

    async def apply_new(self) -> None:
        async with self._lock:
            await self._apply_new()

    async def _apply_new(self) -> None:
        self.pending = False
        # Only feeds started before the snapshot below: their own rows are in it.
        # A feed still opening may see its rows committed after the snapshot, so
        # it waits for the next read.
        ready = {feed for feed in self._dispatcher.feeds() if feed.started}
        # Per subscriber with feeds here: the newest change's position, and the
        # position each topic was added at.
        latest: dict[str, int] = dict(self._recheck)
        added_at: dict[tuple[str, str], int] = {}
        wanted: dict[str, set[str]] = {}
        applied = self._applied  # moved on only once the changes are applied
        async with self._database.read() as conn:
            if not self._database.is_sqlite:  # SQLite's read transaction is a snapshot
                await conn.execution_options(isolation_level="REPEATABLE READ")
            while True:
                changes = await queries.subscription_changes_after(conn, applied, PAGE)
                for change in changes:
                    applied = change.id
                    if not self._dispatcher.feeds_of(change.subscriber_id):
                        continue
                    latest[change.subscriber_id] = change.position
                    if change.added and change.topic is not None:
                        added_at[change.subscriber_id, change.topic] = change.position
                if len(changes) < PAGE:
                    break
            for subscriber_id in latest:
                wanted[subscriber_id] = set(await queries.subscriber_topics(conn, subscriber_id))
        self._applied = applied
        self._recheck = {}
        claims: list[tuple[str, str, str]] = []
        for subscriber_id, topics in wanted.items():
            every = self._dispatcher.feeds_of(subscriber_id)
            feeds = [feed for feed in every if feed in ready]
            if len(feeds) < len(every):
                self._recheck[subscriber_id] = latest[subscriber_id]
            if not feeds:
                continue
            owner = min(feed.connection_id for feed in feeds)
            for feed in feeds:
                for topic in topics - feed.topics:
                    after = added_at.get((subscriber_id, topic), latest[subscriber_id])
                    self._dispatcher.add_feed_topic(feed, topic, after)
                for topic in feed.topics - topics:
                    self._dispatcher.remove_feed_topic(feed, topic)
            claims += [
                (subscriber_id, topic, owner)
                for topic in topics
                if (subscriber_id, topic) in added_at
            ]
        if claims:
            async with self._database.write() as conn:
                for subscriber_id, topic, connection_id in claims:
                    await queries.claim_subscription(
                        conn, subscriber_id, topic, connection_id, self._instance_id
                    )
