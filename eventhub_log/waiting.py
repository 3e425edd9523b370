"""Waiting with a timeout that a cancellation always gets through.

On Python 3.11, ``asyncio.wait_for`` can swallow a cancellation that arrives
just as the awaited thing finishes (CPython gh-86296): a background loop built
on it then goes round again instead of stopping, and whoever awaits its end
waits for ever. ``asyncio.timeout`` counts cancellations and re-raises an
outside one, so the loops here wait through it.
"""

from __future__ import annotations

import asyncio


class Wakeup:
    """``asyncio.Event``'s set/clear/wait for one waiter at a time, without the
    deque of waiters every ``asyncio.Event`` carries (about 380 bytes even when
    empty): a feed has one reader, and a server holds a feed per open stream.

    A second concurrent ``wait()`` shares the first's future."""

    __slots__ = ("_set", "_waiter")

    def __init__(self) -> None:
        self._set = False
        self._waiter: asyncio.Future[None] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if self._set:
            return True
        waiter = self._waiter
        if waiter is None or waiter.done():
            waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            if self._waiter is waiter:
                self._waiter = None
        return True


async def wait_event(event: asyncio.Event | Wakeup, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``event``; whether it was set."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True
