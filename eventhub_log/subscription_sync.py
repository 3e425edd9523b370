"""Subscription changes made on any instance reach the open feeds of this one.

A subscriber's stream lives on one instance, but ``PUT /v1/subscriptions/...``
(or ``hub.subscribe`` in someone's job) may be answered by another. Each such
call records a row in ``subscription_changes`` in the same transaction as the
subscription itself, with the log head at that moment (see
``queries.record_subscription_change``). Every instance reads the rows after the
last one it applied, in id order, and applies those of subscribers it has feeds
for. It reads when told (PostgreSQL NOTIFY on the subscriptions channel) and on a
timer (the only signal on SQLite, a safety net on PostgreSQL): as with events, a
lost signal only delays.

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

log = logging.getLogger(__name__)

PAGE = 500


class SubscriptionSync:
    def __init__(
        self, database: Database, dispatcher: Dispatcher, interval: float, instance_id: str
    ) -> None:
        self._database = database
        self._instance_id = instance_id
        self._dispatcher = dispatcher
        self._interval = interval
        self._applied = 0
        # Signalled (PostgreSQL NOTIFY) but not read yet.
        self.pending = False
        # SQLite has no signal: read before every read of the log (a cheap query,
        # and there the log is read only when the head moved).
        self._read_every_time = database.is_sqlite
        dispatcher.before_catch_up = self._before_catch_up
        dispatcher.hold = lambda: self.pending
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
        if self.pending or self._read_every_time:
            await self.apply_new()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self._interval)
            self._wakeup.clear()
            try:
                await self.apply_new()
            except Exception:
                self.pending = False  # do not hold local delivery while the database is away
                log.debug("reading subscription changes failed", exc_info=True)

    async def apply_new(self) -> None:
        async with self._lock:
            await self._apply_new()

    async def _apply_new(self) -> None:
        self.pending = False
        claims: list[tuple[str, str, str]] = []
        while True:
            async with self._database.read() as conn:
                changes = await queries.subscription_changes_after(conn, self._applied, PAGE)
            for change in changes:
                self._applied = change.id
                feeds = self._dispatcher.feeds_of(change.subscriber_id)
                if not feeds:
                    continue
                if change.added and change.topic is not None:
                    self._dispatcher.add_topic(change.subscriber_id, change.topic, change.position)
                    owner = min(feed.connection_id for feed in feeds)
                    claims.append((change.subscriber_id, change.topic, owner))
                elif change.topic is not None:
                    self._dispatcher.remove_topic(change.subscriber_id, change.topic)
                else:
                    for feed in self._dispatcher.feeds_of(change.subscriber_id):
                        for topic in list(feed.topics):
                            self._dispatcher.remove_topic(change.subscriber_id, topic)
            if len(changes) < PAGE:
                break
        if claims:
            async with self._database.write() as conn:
                for subscriber_id, topic, connection_id in claims:
                    await queries.claim_subscription(
                        conn, subscriber_id, topic, connection_id, self._instance_id
                    )
