"""Polling the head position: the wake-up for SQLite, and a safety net everywhere."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from .base import Notifier

log = logging.getLogger(__name__)


class PollingNotifier(Notifier):
    def __init__(
        self,
        head: Callable[[], Awaitable[int]],
        delivered: Callable[[], int],
        interval: float,
    ) -> None:
        self._head = head
        self._delivered = delivered
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    async def start(self, wake: Callable[[], None]) -> None:
        self._task = asyncio.create_task(self._run(wake), name="eventhub-log head poll")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self, wake: Callable[[], None]) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                if await self._head() > self._delivered():
                    wake()
            except Exception:
                log.debug("head poll failed", exc_info=True)
