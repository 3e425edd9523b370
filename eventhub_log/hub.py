"""EventHub: the seed's subscribe / unsubscribe / publish on a durable, ordered log."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Hashable, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar

from sqlalchemy import event as sa_event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from .delivery import STREAM_BUFFER_BYTES, Dispatcher, Feed
from .errors import (
    DatabaseUnavailable,
    HubNotStarted,
    InvalidCursor,
    OwnerLimitReached,
    ValidationError,
)
from .grouped_writes import GroupedWrites
from .idempotency import purge_expired, request_hash, validate_key
from .log import WRITE_QUEUE_BYTES, WRITE_QUEUE_EVENTS, GroupCommitWriter
from .migrations import ensure_schema
from .model import Event, Gap, HistoryPage, PendingEvent, TopicInfo, new_pending, parse_cursor
from .notify import Notifier, PollingNotifier
from .notify.postgres import PostgresNotifier, asyncpg_dsn, track_backends
from .retention import gaps as retention_gaps
from .store import queries
from .store import retention as retention_store
from .store.database import DEFAULT_DATABASE_URL, Database, open_database, translate_errors
from .subscription_sync import SubscriptionSync
from .validation import (
    MAX_SUBSCRIBER_LENGTH,
    encode_for_log,
    validate_exclude,
    validate_publisher,
    validate_range,
    validate_subscriber,
    validate_topic,
    validate_topics,
)

log = logging.getLogger(__name__)

Mode = Literal["stateful", "stateless"]
# Events read per query of an export; each page is a short read of its own.
MAX_HISTORY_LIMIT = 1000
EXPORT_PAGE = MAX_HISTORY_LIMIT
# Every live instance applies a subscription change within a poll interval;
# ten minutes is far beyond that, even across a long database outage.
_CHANGES_KEPT = timedelta(minutes=10)
# Subscriptions past their lifetime removed per heartbeat: a short transaction
# however many expire at once; the rest go in the next rounds.
_EXPIRED_PER_ROUND = 1000
# Where ``publish_in`` notes the last position on the caller's connection.
_PUBLISHED_INFO = "eventhub_log_published"


class EventHub:
    """A topic pub/sub hub whose every publish is appended to a SQL log.

    ``mode="stateful"`` (the default) assumes this process does the publishing:
    its own commits reach its streams with no extra read, and a slow poll notices
    anyone else's. ``mode="stateless"`` is for several processes sharing one
    database: every process watches the log closely and delivers whatever lands.
    On PostgreSQL both modes wake on LISTEN/NOTIFY and poll only as a safety net
    (``poll_interval``, default 1 s); on SQLite stateless mode polls the head every
    50 ms. ``instance_ttl`` must exceed every instance's ``heartbeat_interval``.
    A stream buffers at most ``stream_buffer`` events and ``stream_buffer_bytes``
    of payload; publishes beyond ``write_queue_events`` or ``write_queue_bytes``
    waiting for the database raise ``Overloaded``.
    """

    def __init__(
        self,
        database_url: str | AsyncEngine = DEFAULT_DATABASE_URL,
        *,
        mode: Mode = "stateful",
        auto_migrate: bool | None = None,
        max_batch: int = 1000,
        stream_buffer: int = 1000,
        stream_buffer_bytes: int = STREAM_BUFFER_BYTES,
        write_queue_events: int = WRITE_QUEUE_EVENTS,
        write_queue_bytes: int = WRITE_QUEUE_BYTES,
        poll_interval: float | None = None,
        heartbeat_interval: float = 5.0,
        instance_ttl: float = 30.0,
        sqlite_synchronous: str = "FULL",
        instance_id: str | None = None,
        idempotency_ttl: float = 24 * 3600.0,
    ) -> None:
        if mode not in ("stateful", "stateless"):
            raise ValueError("mode must be 'stateful' or 'stateless'")
        if max_batch < 1 or stream_buffer < 1:
            raise ValueError("max_batch and stream_buffer must be at least 1")
        self.mode: Mode = mode
        self.database: Database = open_database(database_url, sqlite_synchronous=sqlite_synchronous)
        # Our own connections' server pids: the listener ignores their NOTIFYs.
        self._own_backends = (
            set() if self.database.is_sqlite else track_backends(self.database.engine)
        )
        self._owns_engine = not isinstance(database_url, AsyncEngine)
        self._auto_migrate = self.database.is_sqlite if auto_migrate is None else auto_migrate
        self._stream_buffer = stream_buffer
        self._stream_buffer_bytes = stream_buffer_bytes
        fast_poll = mode == "stateless" and self.database.is_sqlite
        self._poll_interval = poll_interval or (0.05 if fast_poll else 1.0)
        self._heartbeat_interval = heartbeat_interval
        self._instance_ttl = instance_ttl
        self.instance_id = instance_id or uuid.uuid4().hex
        self._dispatcher = Dispatcher(
            self._read_after, self._head_position, page_bytes=stream_buffer_bytes
        )
        self._writer = GroupCommitWriter(
            self.database,
            self._committed,
            max_batch=max_batch,
            idempotency_ttl=idempotency_ttl,
            max_queue_events=write_queue_events,
            max_queue_bytes=write_queue_bytes,
        )
        self._row_writes = GroupedWrites(self.database)
        self._heads: SharedReads[None, int] = SharedReads(self._read_head)
        self._pages: SharedReads[tuple[int, tuple[str, ...] | None, int], list[Event]] = (
            SharedReads(self._read_page)
        )
        self._marks: SharedReads[tuple[str, ...], dict[str, list[tuple[int, int]]]] = SharedReads(
            self._read_marks
        )
        self._idempotency_ttl = idempotency_ttl
        self.events_published = 0  # by this process's writer, for metrics
        self._notifiers: list[Notifier] = []
        self._subscription_sync = SubscriptionSync(
            self.database,
            self._dispatcher,
            self._poll_interval,
            self.instance_id,
            read_before_every_catch_up=fast_poll,
        )
        self._maintenance: asyncio.Task[None] | None = None
        self._running = False

    # Lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> EventHub:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        if self._running:
            return
        try:
            await self._start()
        except BaseException:
            # Stop whatever did start and release the engine's connections: a
            # failed ``async with`` never reaches ``__aexit__``.
            self._running = True
            with contextlib.suppress(Exception):
                await self.close()
            raise

    async def _start(self) -> None:
        await ensure_schema(self.database, upgrade=self._auto_migrate)
        async with self.database.write() as conn:
            await queries.heartbeat(conn, self.instance_id, _now())
        await self._dispatcher.start()
        self._writer.start()
        self._row_writes.start()
        await self._subscription_sync.start()
        self._notifiers = [
            PollingNotifier(self._head_position, self._delivered, self._poll_interval)
        ]
        if not self.database.is_sqlite:
            self._notifiers.append(
                PostgresNotifier(
                    asyncpg_dsn(self.database.engine.url),
                    self._delivered,
                    on_subscriptions=self._subscription_sync.wake,
                    application_name=f"eventhub-log listen {self.instance_id}",
                    own_backends=self._own_backends,
                )
            )
        for notifier in self._notifiers:
            await notifier.start(self._dispatcher.wake)
        self._maintenance = asyncio.create_task(self._maintain(), name="eventhub-log heartbeat")
        self._running = True

    async def close(self) -> None:
        """Commit what is queued, end the streams, remove this instance's rows."""
        if not self._running:
            if self._owns_engine:
                await self.database.engine.dispose()
            return
        self._running = False
        await self._writer.stop()
        await self._row_writes.stop()
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
        for notifier in self._notifiers:
            await notifier.stop()
        await self._subscription_sync.stop()
        await self._dispatcher.stop()
        with contextlib.suppress(Exception):
            async with self.database.write() as conn:
                await queries.remove_instance(conn, self.instance_id)
        if self._owns_engine:
            await self.database.engine.dispose()

    @property
    def running(self) -> bool:
        return self._running

    def _require_running(self) -> None:
        if not self._running:
            raise HubNotStarted(
                "the hub is not running: use `async with EventHub(...) as hub:` "
                "or call `await hub.start()` first"
            )

    # The seed API --------------------------------------------------------------

    async def subscribe(
        self,
        topic: str,
        subscriber_id: str,
        *,
        owner: str | None = None,
        ttl: float | None = None,
        max_owned: int | None = None,
    ) -> datetime | None:
        """Subscribe (idempotent). An open stream of this subscriber gets the topic too.

        With a stream of this subscriber open here the row is that stream's. With
        none, the row notes ``owner`` (who made it: the token's ``sub``) and, with
        ``ttl`` (seconds), expires then unless a stream takes it over; subscribing
        again renews it. ``max_owned``: refuse (``OwnerLimitReached``, nothing
        written) when ``owner`` already has that many rows no stream holds.
        Returns when the row expires: ``None`` when it has no lifetime (no
        ``ttl``, or a stream holds it).
        """
        validate_topic(topic)
        validate_subscriber(subscriber_id)
        owner = _validate_owner(owner)
        lifetime = _validate_ttl(ttl)
        if max_owned is not None and (isinstance(max_owned, bool) or max_owned < 0):
            raise ValueError("max_owned must be a whole number, at least 0")
        self._require_running()
        # With a stream of this subscriber open here, the row is that stream's:
        # it goes when the stream closes, and with this instance if it dies
        # (a row owned by nobody would outlive a crash).
        feed = min(self._dispatcher.feeds_of(subscriber_id), key=_connection_id, default=None)
        async with self.database.write() as conn:
            now = _now()
            if feed is None and owner is not None and max_owned is not None:
                owned = await queries.owned_subscriptions(
                    conn, self.database.dialect, owner, topic, subscriber_id
                )
                if owned >= max_owned:
                    raise OwnerLimitReached(max_owned)
            try:
                expires_at = None if lifetime is None else now + lifetime
            except OverflowError:
                raise ValidationError(f"ttl {ttl} reaches beyond the year 9999") from None
            stream_less = await queries.add_subscriptions(
                conn,
                self.database.dialect,
                subscriber_id,
                [topic],
                now,
                connection_id=None if feed is None else feed.connection_id,
                instance_id=None if feed is None else self.instance_id,
                owner=owner,
                expires_at=expires_at,
            )
            position = await queries.record_subscription_change(
                conn, self.database.dialect, subscriber_id, topic, added=True, now=now
            )
        self._dispatcher.add_topic(subscriber_id, topic, position)
        self._subscriptions_changed()
        return stream_less.get(topic)

    async def unsubscribe(self, topic: str, subscriber_id: str) -> bool:
        """Remove one subscription; ``False`` when there was none."""
        validate_topic(topic)
        validate_subscriber(subscriber_id)
        self._require_running()
        async with self.database.write() as conn:
            removed = await queries.remove_subscription(conn, topic, subscriber_id)
            if removed:
                await queries.record_subscription_change(
                    conn, self.database.dialect, subscriber_id, topic, added=False, now=_now()
                )
        self._dispatcher.remove_topic(subscriber_id, topic)
        if removed:
            self._subscriptions_changed()
        return removed

    async def unsubscribe_all(self, subscriber_id: str) -> int:
        """Remove every row of a subscriber in one transaction (what a disconnect does)."""
        validate_subscriber(subscriber_id)
        self._require_running()
        async with self.database.write() as conn:
            removed = await queries.remove_subscriber(conn, subscriber_id)
            if removed:
                await queries.record_subscription_change(
                    conn, self.database.dialect, subscriber_id, None, added=False, now=_now()
                )
        for feed in self._dispatcher.feeds_of(subscriber_id):
            for topic in list(feed.topics):
                self._dispatcher.remove_topic(subscriber_id, topic)
        if removed:
            self._subscriptions_changed()
        return removed

    async def publish(
        self, topic: str, exclude_id: str | None, payload: Any, *, publisher: str | None = None
    ) -> Event:
        """Append one event; returns it once committed. ``exclude_id``: who not to tell;
        ``publisher``: who published it (the token's ``sub``), stored with it."""
        pending = _pending(topic, exclude_id, payload, validate_publisher(publisher))
        self._require_running()
        (event,) = await self._writer.submit([pending])
        return event

    async def publish_many(
        self, items: Iterable[tuple[str, str | None, Any]], *, publisher: str | None = None
    ) -> list[Event]:
        """Append several ``(topic, exclude_id, payload)`` events atomically, in order,
        each recording ``publisher``."""
        pending = _pending_batch(items, validate_publisher(publisher))
        self._require_running()
        return await self._writer.submit(pending)

    async def publish_once(
        self,
        idempotency_key: str,
        items: Iterable[tuple[str, str | None, Any]],
        *,
        publisher: str | None = None,
    ) -> tuple[list[Event], bool]:
        """Publish ``(topic, exclude_id, payload)`` events atomically, once per key.

        Returns the events and ``True`` when they are the stored result of an
        earlier call with this key (nothing was appended). The key is stored in
        the same transaction as the events and kept for ``idempotency_ttl``
        seconds; reusing it for different events, or from another ``publisher``,
        raises ``IdempotencyConflict``.
        """
        key = validate_key(idempotency_key)
        pending = _pending_batch(items, validate_publisher(publisher))
        self._require_running()
        return await self._writer.submit_keyed(pending, key, request_hash(pending))

    async def publish_in(
        self,
        transaction: AsyncConnection | AsyncSession,
        topic: str,
        exclude_id: str | None,
        payload: Any,
        *,
        publisher: str | None = None,
    ) -> Event:
        """Append inside the caller's transaction: the event exists iff it commits.

        Streams get the event after the commit. On SQLite, begin that transaction
        with ``hub.transaction()`` (or ``BEGIN IMMEDIATE``) so that it cannot fail
        on lock upgrade; on PostgreSQL it holds the log's write lock until it ends,
        so keep it short.
        """
        pending = _pending(topic, exclude_id, payload, validate_publisher(publisher))
        self._require_running()
        conn = (
            await transaction.connection() if isinstance(transaction, AsyncSession) else transaction
        )
        with translate_errors():
            (event,) = await queries.append(conn, self.database.dialect, [pending], _now())
        conn.info[_PUBLISHED_INFO] = max(conn.info.get(_PUBLISHED_INFO, 0), event.position)
        if isinstance(transaction, AsyncSession):
            sa_event.listen(
                transaction.sync_session,
                "after_commit",
                lambda _session: self._signal_commit(event.position),
                once=True,
            )
        return event

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction for your own statements plus ``publish_in``; streams
        are told once it commits."""
        self._require_running()
        async with self.database.write() as conn:
            yield conn
            published = int(conn.info.pop(_PUBLISHED_INFO, 0))
        self._signal_commit(published)

    def _signal_commit(self, position: int) -> None:
        """A transaction outside the writer committed events up to ``position``."""
        self._dispatcher.wake()
        if position:
            for notifier in self._notifiers:
                notifier.published(position)

    # Reading -------------------------------------------------------------------

    async def history(
        self,
        topic: str,
        *,
        after_seq: int | None = None,
        before_seq: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        order: Literal["asc", "desc"] = "asc",
    ) -> list[Event]:
        """A page of a topic's events; page on by ``after_seq`` (or ``before_seq``)."""
        page = await self.history_page(
            topic,
            after_seq=after_seq,
            before_seq=before_seq,
            since=since,
            until=until,
            limit=limit,
            order=order,
        )
        return page.events

    async def history_page(
        self,
        topic: str,
        *,
        after_seq: int | None = None,
        before_seq: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        order: Literal["asc", "desc"] = "asc",
    ) -> HistoryPage:
        """Like ``history``, also telling whether more events follow the page."""
        validate_topic(topic)
        validate_range(
            after_seq=after_seq,
            before_seq=before_seq,
            since=since,
            until=until,
            limit=limit,
            max_limit=MAX_HISTORY_LIMIT,
            order=order,
        )
        self._require_running()
        async with self.database.read() as conn:
            found = await queries.history(
                conn,
                topic,
                after_seq=after_seq,
                before_seq=before_seq,
                since=since,
                until=until,
                descending=order == "desc",
                limit=limit + 1,
            )
        return HistoryPage(events=found[:limit], has_more=len(found) > limit)

    async def gaps(self, topics: Collection[str], after: str | None) -> list[Gap]:
        """What retention deleted of ``topics`` that a reader resuming after the
        cursor ``after`` (``None``: from the beginning) will not get: send these
        before replaying. ``from_seq`` may start early (by less than a pruning
        chunk), never late."""
        for topic in topics:
            validate_topic(topic)
        position = 0 if after is None else parse_cursor(after)
        self._require_running()
        return await retention_gaps(self.database, topics, position)

    async def export(
        self,
        topic: str,
        *,
        after_seq: int | None = None,
        before_seq: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        order: Literal["asc", "desc"] = "asc",
    ) -> AsyncIterator[Event]:
        """Every selected event, read a page at a time, never all at once.

        Each page is its own short read, and no connection is held while the
        caller consumes a page: a reader that stops reading (an HTTP export to a
        client that never reads) holds memory for one page and no pooled
        connection, so exports cannot starve the pool. Pages continue by seq
        (keyset), so none is skipped or repeated; an ascending export also
        takes in events appended while it runs."""
        while True:
            page = await self.history_page(
                topic,
                after_seq=after_seq,
                before_seq=before_seq,
                since=since,
                until=until,
                limit=EXPORT_PAGE,
                order=order,
            )
            for event in page.events:
                yield event
            if not page.has_more:
                return
            if order == "desc":
                before_seq = page.events[-1].seq
            else:
                after_seq = page.events[-1].seq

    async def topics(
        self, *, after: str | None = None, limit: int | None = None
    ) -> list[TopicInfo]:
        """Topics in name order: all of them, or a page (those after ``after``, at
        most ``limit``)."""
        if limit is not None and limit < 1:
            raise ValidationError("limit must be at least 1")
        self._require_running()
        async with self.database.read() as conn:
            return await queries.topic_infos(conn, after=after, limit=limit)

    async def subscriptions(self, subscriber_id: str) -> list[str]:
        validate_subscriber(subscriber_id)
        self._require_running()
        async with self.database.read() as conn:
            return await queries.subscriber_topics(conn, subscriber_id)

    async def subscribers(self, topic: str) -> list[str]:
        validate_topic(topic)
        self._require_running()
        async with self.database.read() as conn:
            return await queries.topic_subscribers(conn, topic)

    @property
    def open_streams(self) -> int:
        """Streams open in this process."""
        return self._dispatcher.feed_count

    async def head(self) -> str:
        """The cursor of the newest committed event (``"0"`` for an empty log)."""
        self._require_running()
        return str(await self._head_position())

    # Streams -------------------------------------------------------------------

    @asynccontextmanager
    async def stream(
        self,
        topics: Collection[str],
        subscriber_id: str | None = None,
        *,
        after: str | None = None,
        from_earliest: bool = False,
        buffer: int | None = None,
    ) -> AsyncIterator[Feed]:
        """Open a live feed: its subscription rows exist while it is open.

        With ``after`` (a cursor) it replays what was published since, then goes
        live; with ``from_earliest`` it replays all retained history first; else it
        starts at the head. Events excluding this subscriber are never delivered.
        The subscriber's rows are removed in one transaction when the block exits,
        even when the surrounding task is being cancelled.
        """
        topics = validate_topics(topics)
        subscriber = validate_subscriber(subscriber_id or f"sub-{uuid.uuid4().hex}")
        start_after = None if after is None else parse_cursor(after)
        self._require_running()
        feed = Feed(
            self._shared_read_after,
            subscriber,
            topics,
            max_buffer=buffer or self._stream_buffer,
            max_buffer_bytes=self._stream_buffer_bytes,
            connection_id=uuid.uuid4().hex,
            gap_reader=self._shared_gaps,
        )
        self._dispatcher.add(feed)  # before reading the head: nothing falls between
        try:
            existing: list[str] = await self._row_writes.run_batched(self._open_rows, feed)
            for topic in existing:
                self._dispatcher.add_topic(subscriber, topic)
            # Read the head only once the feed listens on every topic it will get;
            # the opens of one pass share a read begun after all of them got here.
            head = await self._heads.read(None)
            if start_after is not None and start_after > head:
                raise InvalidCursor(
                    f"cursor {after!r} is ahead of this log (newest is {head}): "
                    "it was not issued by this database"
                )
            if from_earliest:
                feed.start(0, replay=True)
            elif start_after is not None:
                feed.start(start_after, replay=start_after < head)
            else:
                feed.start(head, replay=False)
            yield feed
        finally:
            self._dispatcher.remove(feed)
            feed.close()
            await _shielded(self._release(feed))

    async def _close_rows(self, conn: AsyncConnection, feeds: list[Feed]) -> list[None]:
        """The rows of every stream closing in this group, in one statement."""
        await queries.remove_stream_rows(
            conn, [(feed.subscriber_id, feed.connection_id) for feed in feeds]
        )
        return [None] * len(feeds)

    async def _open_rows(self, conn: AsyncConnection, feeds: list[Feed]) -> list[list[str]]:
        """The rows of every stream opening in this group: one upsert, one claim
        of the subscribers' stream-less rows and one read of their rows, instead
        of three statements per stream one after another."""
        await queries.add_stream_subscriptions(
            conn,
            self.database.dialect,
            [(feed.subscriber_id, feed.topics, feed.connection_id) for feed in feeds],
            _now(),
            self.instance_id,
        )
        found = await queries.subscribers_topics(conn, {feed.subscriber_id for feed in feeds})
        return [found.get(feed.subscriber_id, []) for feed in feeds]

    async def _release(self, feed: Feed) -> None:
        try:
            if self._row_writes.running:
                await self._row_writes.run_batched(self._close_rows, feed)
            else:  # the hub is closing: its own transaction
                async with self.database.write() as conn:
                    await self._close_rows(conn, [feed])
        except Exception:
            # The heartbeat sweep removes them when this instance is gone.
            log.warning("could not remove the rows of %s", feed.subscriber_id, exc_info=True)

    # Internals -----------------------------------------------------------------

    def _committed(self, events: list[Event], previous_head: int) -> None:
        self.events_published += len(events)
        # On the loop's next turn, after the publishers' own wake-ups (their
        # futures were resolved first): with many streams the fan-out is the
        # longest step the loop takes, and an acknowledgement has no reason to
        # wait for it.
        asyncio.get_running_loop().call_soon(self._dispatcher.deliver, events)
        for notifier in self._notifiers:
            notifier.published(events[-1].position)

    def _subscriptions_changed(self) -> None:
        for notifier in self._notifiers:
            notifier.subscriptions_changed()

    def _delivered(self) -> int:
        return self._dispatcher.through

    async def _read_after(
        self,
        after_position: int,
        topic_names: Collection[str] | None,
        subscriber_id: str | None,
        limit: int,
    ) -> list[Event]:
        async with self.database.read() as conn:
            return await queries.read_after(conn, after_position, topic_names, subscriber_id, limit)

    async def _gaps_after(self, topic_names: Collection[str], after_position: int) -> list[Gap]:
        return await retention_gaps(self.database, topic_names, after_position)

    async def _shared_read_after(
        self,
        after_position: int,
        topic_names: Collection[str] | None,
        subscriber_id: str | None,
        limit: int,
    ) -> list[Event]:
        """A feed's page of the log, shared by the feeds asking for the same page
        at once (a crowd resuming from one cursor): read with no exclusion, which
        the feed applies itself (``Feed._wanted``), so that the subscriber is no
        part of the key."""
        topics = None if topic_names is None else tuple(sorted(topic_names))
        return await self._pages.read((after_position, topics, limit))

    async def _read_page(self, key: tuple[int, tuple[str, ...] | None, int]) -> list[Event]:
        after_position, topics, limit = key
        return await self._read_after(after_position, topics, None, limit)

    async def _shared_gaps(self, topic_names: Collection[str], after_position: int) -> list[Gap]:
        """``_gaps_after`` from a marks read shared by the feeds asking at once;
        it starts after every one of them asked, so it is at least as fresh as the
        page each of them checks with it."""
        found = await self._marks.read(tuple(sorted(topic_names)))
        return _gaps_from_marks(found, after_position)

    async def _read_marks(self, topics: tuple[str, ...]) -> dict[str, list[tuple[int, int]]]:
        async with self.database.read() as conn:
            return await retention_store.marks(conn, topics)

    async def _read_head(self, _: None) -> int:
        return await self._head_position()

    async def _head_position(self) -> int:
        async with self.database.read() as conn:
            return await queries.head_position(conn)

    async def _maintain(self) -> None:
        """Keep this instance's heartbeat and sweep the rows of dead instances."""
        ttl = timedelta(seconds=self._instance_ttl)
        while True:
            await asyncio.sleep(self._heartbeat_interval)
            try:
                async with self.database.write() as conn:
                    now = _now()
                    if not await queries.heartbeat(conn, self.instance_id, now):
                        # Stalled past the ttl, a live instance took us for dead and
                        # swept our streams' rows: they are still open, so put them back.
                        log.warning("this instance was swept as expired; restoring its rows")
                        await self._restore_rows(conn, now)
                    swept = await queries.sweep_expired(conn, now - ttl)
                    expired = await queries.remove_expired_subscriptions(
                        conn, now, _EXPIRED_PER_ROUND
                    )
                    if expired:
                        # Like an unsubscribe: the instance holding a feed that
                        # follows one of these topics drops it.
                        await queries.record_subscription_changes(
                            conn, self.database.dialect, expired, added=False, now=now
                        )
                    await purge_expired(conn, now, self._idempotency_ttl)
                    await queries.prune_subscription_changes(conn, now - _CHANGES_KEPT)
                if swept:
                    log.info("removed %d subscription rows of expired instances", swept)
                if expired:
                    log.info("removed %d subscriptions past their lifetime", len(expired))
                    for subscriber_id, topic in expired:
                        self._dispatcher.remove_topic(subscriber_id, topic)
                    self._subscriptions_changed()
            except DatabaseUnavailable as exc:
                log.warning("heartbeat failed: %s", exc)
            except Exception:
                log.warning("heartbeat failed", exc_info=True)

    async def _restore_rows(self, conn: AsyncConnection, now: datetime) -> None:
        for feed in self._dispatcher.feeds():
            await queries.add_subscriptions(
                conn,
                self.database.dialect,
                feed.subscriber_id,
                feed.topics,
                now,
                connection_id=feed.connection_id,
                instance_id=self.instance_id,
            )


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SharedReads(Generic[K, V]):
    """One read per key for the callers asking for it at the same moment.

    A caller joins only a read that has not begun: one in flight was begun
    before the caller asked, and may predate what the caller must see (its
    feed's registration, its page's read), so the caller waits for the next.
    The read begins on the loop's next turn, so the opens or replays woken
    together (by one commit, one head read) share it: 1,000 streams opening at
    once made 1,000 head reads, 1,000 page reads and 1,000 marks reads, each a
    pool checkout and a round trip of its own.
    """

    def __init__(self, read: Callable[[K], Awaitable[V]]) -> None:
        self._read = read
        self._next: dict[K, asyncio.Future[V]] = {}
        self._running: dict[K, asyncio.Task[None]] = {}

    async def read(self, key: K) -> V:
        future = self._next.get(key)
        if future is None:
            future = self._next[key] = asyncio.get_running_loop().create_future()
            # Read by whoever asks; no caller's cancellation may fail the others.
            future.add_done_callback(_retrieve)
            if key not in self._running:
                self._running[key] = asyncio.ensure_future(self._serve(key))
        return await asyncio.shield(future)

    async def _serve(self, key: K) -> None:
        try:
            await asyncio.sleep(0)  # let the callers woken with this one ask too
            while (future := self._next.pop(key, None)) is not None:
                try:
                    future.set_result(await self._read(key))
                except Exception as exc:
                    future.set_exception(exc)
        finally:
            self._running.pop(key, None)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _gaps_from_marks(found: dict[str, list[tuple[int, int]]], after_position: int) -> list[Gap]:
    """``retention.gaps`` from marks already read (the same rule)."""
    result: list[Gap] = []
    for topic in sorted(found):
        topic_marks = found[topic]
        through_seq, through_position = topic_marks[-1]
        if after_position >= through_position:
            continue
        seen = [seq for seq, position in topic_marks if position <= after_position]
        result.append(Gap(topic, (seen[-1] if seen else 0) + 1, through_seq))
    return result


def _pending_batch(items: object, publisher: str | None) -> list[PendingEvent]:
    if isinstance(items, str | bytes | dict) or not isinstance(items, Iterable):
        raise ValidationError("a batch is a list of (topic, exclude_id, payload) tuples")
    pending = []
    for item in items:
        if not isinstance(item, tuple | list) or len(item) != 3:
            raise ValidationError(
                f"each event of a batch is a (topic, exclude_id, payload) tuple, not {item!r:.80}"
            )
        topic, exclude_id, payload = item
        pending.append(_pending(topic, exclude_id, payload, publisher))
    if not pending:
        raise ValidationError("a batch needs at least one event")
    return pending


def _pending(
    topic: str, exclude_id: str | None, payload: Any, publisher: str | None
) -> PendingEvent:
    """``publisher`` is already validated: a batch checks it once, not per event."""
    topic = validate_topic(topic)
    stored, canonical = encode_for_log(payload)
    return new_pending(
        topic,
        stored,
        None if exclude_id is None else validate_exclude(exclude_id),
        publisher,
        canonical,
    )


def _validate_owner(owner: object) -> str | None:
    """The same rules as a subscriber id: it is the ``sub`` of a token."""
    if owner is None:
        return None
    if (
        not isinstance(owner, str)
        or not owner
        or len(owner) > MAX_SUBSCRIBER_LENGTH
        or not owner.isprintable()
    ):
        raise ValidationError(f"owner must be None or 1 to 255 printable characters: {owner!r:.80}")
    return owner


def _validate_ttl(ttl: object) -> timedelta | None:
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not ttl > 0:
        raise ValidationError(f"ttl must be a number of seconds above 0, not {ttl!r:.80}")
    try:
        return timedelta(seconds=ttl)
    except OverflowError:
        raise ValidationError(f"ttl {ttl} is too large") from None


def _connection_id(feed: Feed) -> str:
    return feed.connection_id


def _now() -> datetime:
    return datetime.now(UTC)


async def _shielded(coro: Any) -> None:
    """Run cleanup to the end even if the caller is cancelled meanwhile."""
    task = asyncio.ensure_future(coro)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


__all__ = ["EventHub", "Mode", "OwnerLimitReached"]
