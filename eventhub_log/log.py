"""The append path: one writer task commits concurrent publishes together.

A commit costs the same whether it carries one event or a hundred, so callers do
not each open a transaction. They queue a ``Submission`` and wait; the writer
takes everything queued (up to ``max_batch`` events), appends it in one
transaction, and resolves each caller's future only after that commit. While a
commit is in flight the next batch gathers, so the batch size follows the load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from .errors import DatabaseUnavailable, EventHubError, HubNotStarted, Overloaded, StorageError
from .idempotency import KeyedRequest, append_keyed
from .model import Event, PendingEvent
from .store import postgresql, queries, sqlite
from .store.database import Database, translate_errors

log = logging.getLogger(__name__)

CommitListener = Callable[[list[Event], int], None]

# While the database stalls, publishers keep queueing: these bound what waits.
WRITE_QUEUE_EVENTS = 10_000
WRITE_QUEUE_BYTES = 64 * 1024 * 1024


class Submission:
    """One caller's events, appended atomically (all or none).

    A plain class with slots rather than a dataclass: one is made for every
    publish, and the dataclass's ``__init__`` with its default factory for the
    future cost about as much as the rest of queueing it."""

    __slots__ = ("events", "future", "key", "replayed", "request_hash", "size")

    def __init__(
        self,
        events: Sequence[PendingEvent],
        future: asyncio.Future[list[Event]],
        key: str | None = None,
        request_hash: str = "",
    ) -> None:
        self.events = events
        self.future = future
        # With a key, a retry (same key and hash) gets the first result: ``replayed``.
        self.key = key
        self.request_hash = request_hash
        self.replayed = False
        self.size = 0  # payload bytes, counted while queued


class GroupCommitWriter:
    def __init__(
        self,
        database: Database,
        on_commit: CommitListener,
        *,
        max_batch: int = 1000,
        idempotency_ttl: float = 24 * 3600.0,
        max_queue_events: int = WRITE_QUEUE_EVENTS,
        max_queue_bytes: int = WRITE_QUEUE_BYTES,
    ) -> None:
        self._database = database
        self._max_queue_events = max_queue_events
        self._max_queue_bytes = max_queue_bytes
        self._queued_events = 0
        self._queued_bytes = 0
        self._idempotency_ttl = idempotency_ttl
        self._on_commit = on_commit
        self._max_batch = max_batch
        self._queue: deque[Submission] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # SQLite: the writer keeps one pooled connection while it runs. Taking it
        # from the pool and giving it back for every batch cost a further round
        # trip to the driver's thread (the pool's reset): a fifth of a lone
        # publisher's wait.
        self._connection: AsyncConnection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name="eventhub-log writer")

    async def stop(self) -> None:
        """Commit what is queued, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self._release_connection()

    async def submit(self, events: Sequence[PendingEvent]) -> list[Event]:
        if self._task is None or self._closing:
            raise HubNotStarted("the hub is not running: use `async with hub:` around publishes")
        assert self._loop is not None
        future: asyncio.Future[list[Event]] = self._loop.create_future()
        self._enqueue(Submission(events, future))
        # A cancelled caller cancels only its future: the submission stays queued
        # (or in the batch being committed) and the event still lands. No shield
        # needed, and none paid for: it cost two more callbacks per publish.
        return await future

    async def submit_keyed(
        self, events: Sequence[PendingEvent], key: str, request_hash: str
    ) -> tuple[list[Event], bool]:
        """Like ``submit``, once per key: returns the events and whether they were
        the stored result of an earlier request with that key."""
        if self._task is None or self._closing:
            raise HubNotStarted("the hub is not running: use `async with hub:` around publishes")
        assert self._loop is not None
        submission = Submission(events, self._loop.create_future(), key, request_hash)
        self._enqueue(submission)
        stored = await asyncio.shield(submission.future)
        return stored, submission.replayed

    def _enqueue(self, submission: Submission) -> None:
        """Queue ``submission``, or refuse it before anything is queued when the
        queue is full; an empty queue takes any one submission."""
        events = submission.events
        count = len(events)
        size = submission.size = (
            len(events[0].payload_json)
            if count == 1
            else sum([len(event.payload_json) for event in events])
        )
        if self._queued_events and (
            self._queued_events + count > self._max_queue_events
            or self._queued_bytes + size > self._max_queue_bytes
        ):
            raise Overloaded(
                f"{self._queued_events} events ({self._queued_bytes} bytes) are waiting for "
                "the database: nothing was queued; retry later"
            )
        self._queued_events += count
        self._queued_bytes += size
        self._queue.append(submission)
        self._wakeup.set()

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = self._take_batch()
            try:
                await self._commit(batch)
            except DatabaseUnavailable as exc:
                # The outcome may be unknown (a lost COMMIT acknowledgement), so
                # retrying could append twice: fail the callers and let them decide.
                for submission in batch:
                    _fail(submission, exc)
            except EventHubError as exc:
                if len(batch) > 1:
                    # One bad submission must not fail its neighbours: retry alone.
                    for submission in batch:
                        await self._commit_or_fail(submission)
                else:
                    _fail(batch[0], exc)
            except Exception as exc:  # never let the writer die silently
                log.exception("writer failed to commit a batch")
                for submission in batch:
                    _fail(submission, StorageError(f"could not commit: {exc}"))

    def _take_batch(self) -> list[Submission]:
        batch = [self._queue.popleft()]
        size = len(batch[0].events)
        while self._queue and size + len(self._queue[0].events) <= self._max_batch:
            submission = self._queue.popleft()
            batch.append(submission)
            size += len(submission.events)
        self._queued_events -= size
        self._queued_bytes -= sum([submission.size for submission in batch])
        return batch

    async def _commit_or_fail(self, submission: Submission) -> None:
        try:
            await self._commit([submission])
        except Exception as exc:
            _fail(submission, exc if isinstance(exc, EventHubError) else StorageError(str(exc)))

    async def _commit(self, batch: list[Submission]) -> None:
        if any(submission.key is not None for submission in batch):
            await self._commit_keyed(batch)
            return
        pending = [event for submission in batch for event in submission.events]
        stored = await self._append(pending, datetime.now(UTC))
        offset = 0
        for submission in batch:
            count = len(submission.events)
            if not submission.future.done():
                submission.future.set_result(stored[offset : offset + count])
            offset += count
        try:
            self._on_commit(stored, stored[0].position - 1)
        except Exception:
            # Committed is committed: the callers have their events regardless.
            log.exception("delivering a committed batch failed")

    async def _commit_keyed(self, batch: list[Submission]) -> None:
        requests = [KeyedRequest(s.events, s.key, s.request_hash) for s in batch]
        now = datetime.now(UTC)
        async with self._database.write() as conn:
            stored, outcomes = await append_keyed(
                conn, self._database.dialect, requests, now, self._idempotency_ttl
            )
        if stored:
            try:
                self._on_commit(stored, stored[0].position - 1)
            except Exception:
                log.exception("delivering a committed batch failed")
        for submission, outcome in zip(batch, outcomes, strict=True):
            if submission.future.done():
                continue
            if outcome.error is not None:
                submission.future.set_exception(outcome.error)
            else:
                assert outcome.events is not None
                submission.replayed = outcome.replayed
                submission.future.set_result(outcome.events)

    async def _append(self, pending: list[PendingEvent], now: datetime) -> list[Event]:
        database = self._database
        if database.is_sqlite:
            # One round trip to the driver's thread instead of a score: see sqlite.py.
            with translate_errors():
                if self._connection is None:
                    self._connection = await database.engine.connect()
                try:
                    stored = await sqlite.append_batch(self._connection, pending, now)
                except BaseException:
                    # The transaction was rolled back; still, start afresh.
                    await self._release_connection()
                    raise
            if stored is not None:
                return stored
            await self._release_connection()
        elif database.dialect is postgresql:
            with translate_errors():
                async with database.engine.connect() as conn:
                    return await postgresql.append_batch(conn, pending, now)
        async with database.write() as conn:
            return await queries.append(conn, database.dialect, pending, now)

    async def _release_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()


def _fail(submission: Submission, exc: BaseException) -> None:
    if not submission.future.done():
        submission.future.set_exception(exc)
