"""Small writes of many callers, committed together.

Opening or closing a stream writes a few subscription rows. One transaction per
stream costs a commit (an fsync on SQLite) each, so a thousand clients
reconnecting after a restart would queue for seconds behind each other's
commits. Like the event writer, this runs everything queued in one transaction
and answers each caller after the commit.

Callers doing the same kind of write can also hand over just their item and a
batch function (``run_batched``): the items of a group go to one call of it,
so a thousand opens write their rows in one multi-row statement instead of a
thousand statements one after another (inside the shared transaction each
statement still cost a round trip and SQLAlchemy's compile-and-execute path:
1,000 opens at once took 4.4-5.7 s on SQLite that way, the fsync no part of it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection

from .errors import DatabaseUnavailable, HubNotStarted
from .store.database import Database

log = logging.getLogger(__name__)

T = TypeVar("T")
Operation = Callable[[AsyncConnection], Awaitable[Any]]
# Runs the items of a group in one go; returns one result per item, in order.
Batch = Callable[[AsyncConnection, list[Any]], Awaitable[list[Any]]]

MAX_GROUP = 500


@dataclass
class _Queued:
    operation: Operation | None
    future: asyncio.Future[Any]
    batch: Batch | None = None
    item: Any = None


class GroupedWrites:
    def __init__(self, database: Database) -> None:
        self._database = database
        self._queue: deque[_Queued] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._closing = False
        self._task = asyncio.create_task(self._run(), name="eventhub-log grouped writes")

    async def stop(self) -> None:
        """Finish what is queued, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._closing

    async def run(self, operation: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run ``operation`` inside a shared write transaction; return once committed."""
        if self._task is None or self._closing:
            raise HubNotStarted("the hub is not running")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(operation, future))
        self._wakeup.set()
        return await future

    async def run_batched(self, batch: Batch, item: Any) -> Any:
        """Hand ``item`` to ``batch`` with the other items of the group that the
        same function batches, inside the shared transaction; return its result
        once committed. If the group fails, each item is tried in a transaction
        of its own, so one bad item fails only its caller."""
        if self._task is None or self._closing:
            raise HubNotStarted("the hub is not running")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(None, future, batch, item))
        self._wakeup.set()
        return await future

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            group = [self._queue.popleft() for _ in range(min(len(self._queue), MAX_GROUP))]
            try:
                await self._commit(group)
            except DatabaseUnavailable as exc:
                for queued in group:
                    _fail(queued, exc)
            except Exception as exc:
                if len(group) == 1:
                    _fail(group[0], exc)
                    continue
                # One failing operation must not fail the others: run each alone.
                for queued in group:
                    try:
                        await self._commit([queued])
                    except Exception as single:
                        _fail(queued, single)

    async def _commit(self, group: list[_Queued]) -> None:
        results: dict[int, Any] = {}
        batches: dict[Batch, list[int]] = {}
        for index, queued in enumerate(group):
            if queued.batch is not None:
                batches.setdefault(queued.batch, []).append(index)
        async with self._database.write() as conn:
            for index, queued in enumerate(group):
                if queued.batch is None:
                    assert queued.operation is not None
                    results[index] = await queued.operation(conn)
                elif index == batches[queued.batch][0]:
                    # The whole batch where its first item stands: later items
                    # move ahead of plain operations queued between them. For
                    # opens and closes that is an order they could have come in
                    # anyway (a close queued a moment later).
                    members = batches[queued.batch]
                    answers = await queued.batch(conn, [group[i].item for i in members])
                    results.update(zip(members, answers, strict=True))
        for index, queued in enumerate(group):
            if not queued.future.done():
                queued.future.set_result(results[index])


def _fail(queued: _Queued, exc: BaseException) -> None:
    if not queued.future.done():
        queued.future.set_exception(exc)
    with contextlib.suppress(Exception):
        log.debug("grouped write failed: %s", exc)
