"""Waiting with a timeout that a cancellation always gets through.

On Python 3.11, ``asyncio.wait_for`` can swallow a cancellation that arrives
just as the awaited thing finishes (CPython gh-86296): a background loop built
on it then goes round again instead of stopping, and whoever awaits its end
waits for ever. ``asyncio.timeout`` counts cancellations and re-raises an
outside one, so the loops here wait through it.
"""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``event``; whether it was set."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True
