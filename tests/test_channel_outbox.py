"""The channel SSE outbox holds a bounded number of bytes for a stalled reader."""

from __future__ import annotations

import asyncio

from api.channels import _Outbox


async def test_outbox_blocks_writer_beyond_its_bytes() -> None:
    outbox = _Outbox(max_bytes=3 * 1024)
    outbox.start()  # the response started: from now on it is bounded
    chunk = b"x" * 1024

    for _ in range(3):
        await asyncio.wait_for(outbox.put(chunk), 1)
    fourth = asyncio.create_task(outbox.put(chunk))
    await asyncio.sleep(0.05)
    assert not fourth.done(), "a stalled reader let the outbox grow past its bytes"
    assert outbox.buffered_bytes == 3 * 1024

    assert await outbox.get() == chunk  # the reader takes one: the writer goes on
    await asyncio.wait_for(fourth, 1)
    assert outbox.buffered_bytes == 3 * 1024


async def test_outbox_lets_one_chunk_larger_than_its_bound_through() -> None:
    outbox = _Outbox(max_bytes=100)
    outbox.start()
    big = b"y" * 1000
    await asyncio.wait_for(outbox.put(big), 1)
    blocked = asyncio.create_task(outbox.put(b"z"))
    await asyncio.sleep(0.05)
    assert not blocked.done()
    assert await outbox.get() == big
    await asyncio.wait_for(blocked, 1)
    assert await outbox.get() == b"z"


async def test_outbox_before_start_never_blocks_a_connect_handler() -> None:
    outbox = _Outbox(max_bytes=10)
    for i in range(5):
        await asyncio.wait_for(outbox.put(b"%d-early-message" % i), 1)
    assert outbox.start() == b"".join(b"%d-early-message" % i for i in range(5))
