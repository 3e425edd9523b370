"""Memory bounded in bytes wherever a client can make it grow (contract section 7):
the frame caches, a feed's live buffer and catch-up pages, a WebSocket's outbox
and the writer's queue."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Collection, Iterator
from datetime import UTC, datetime
from types import SimpleNamespace

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest
from httpx_sse import aconnect_sse
from sqlalchemy.engine import make_url

from api import sse, websocket
from eventhub_log import EventHub
from eventhub_log.delivery import Feed
from eventhub_log.errors import DatabaseUnavailable, Overloaded
from eventhub_log.model import Event

from .server import Server

MiB = 1024 * 1024


def event(position: int, size: int, topic: str = "t") -> Event:
    """An event whose payload JSON is ``size`` characters long."""
    prefix = f'{{"i":{position},"pad":"'
    payload = prefix + "x" * max(0, size - len(prefix) - 2) + '"}'
    return Event(
        topic=topic,
        seq=position,
        position=position,
        payload_json=payload,
        exclude_id=None,
        published_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# Unit: the byte accounting ---------------------------------------------------


def test_sse_frame_cache_is_bounded_in_bytes() -> None:
    cache = sse.FrameCache(size=1000, max_bytes=10_000)
    for position in range(1, 41):
        cache.frame(event(position, 1000))
    assert cache.bytes <= 10_000
    assert cache.bytes == sum(len(frame) for frame in cache._frames.values())
    assert list(cache._frames)[-1] == 40  # the newest are kept
    # A frame larger than the whole cache is encoded, never kept.
    big = event(41, 20_000)
    assert cache.frame(big) == sse.encode_event(big)
    assert 41 not in cache._frames
    # The count bound still holds for small frames.
    small = sse.FrameCache(size=3, max_bytes=10 * MiB)
    for position in range(1, 10):
        small.frame(event(position, 10))
    assert list(small._frames) == [7, 8, 9]


def test_ws_frame_cache_is_bounded_in_bytes() -> None:
    cache = websocket.FrameCache(size=1000, max_bytes=10_000)
    for position in range(1, 41):
        cache.frame(event(position, 1000))
    assert cache.bytes <= 10_000
    assert cache.bytes == sum(len(frame) for frame in cache._frames.values())
    assert 40 in cache._frames


async def _no_log(
    after_position: int, topic_names: Collection[str] | None, subscriber_id: str | None, limit: int
) -> list[Event]:
    return []


async def test_feed_live_buffer_overflows_on_bytes() -> None:
    feed = Feed(_no_log, "s", ["t"], max_buffer=1000, max_buffer_bytes=10_000)
    feed.start(0, replay=False)
    assert feed.offer_run([event(1, 4000), event(2, 4000)], ())
    assert feed.buffered_bytes == 8000
    assert not feed.offer_run([event(3, 4000)], ())  # over the budget: catch up instead
    assert feed.overflows == 1
    assert feed.buffered_bytes == 0
    # The catch-up page is sized for events like the ones that overflowed.
    assert feed._page == 2


async def test_feed_takes_within_a_byte_limit_and_accounts_exactly() -> None:
    feed = Feed(_no_log, "s", ["t"], max_buffer=1000, max_buffer_bytes=MiB)
    feed.start(0, replay=False)
    assert feed.offer_run([event(n, 1000) for n in range(1, 11)], ())
    assert feed.offer(event(11, 1000))
    assert feed.buffered_bytes == 11_000
    taken = feed.take_ready(100, 3500)
    assert [e.position for e in taken] == [1, 2, 3]
    assert feed.buffered_bytes == 8000
    assert [e.position for e in feed.take_ready(2)] == [4, 5]
    # Taken without a byte limit: still counted (never less than what is held)
    # until an offer finds the buffer empty.
    assert feed.buffered_bytes == 8000
    assert feed.has_ready
    assert [e.position for e in feed.take_ready(100)] == [6, 7, 8, 9, 10, 11]
    assert feed.buffered_bytes == 0
    assert not feed.has_ready
    # One event larger than the limit still goes, alone.
    assert feed.offer(event(12, 5000))
    assert feed.buffered_bytes == 5000
    assert [e.position for e in feed.take_ready(100, 100)] == [12]


async def test_catch_up_pages_stay_within_the_byte_budget() -> None:
    log = [event(n, 10_000) for n in range(1, 201)]
    limits: list[int] = []

    async def reader(
        after_position: int,
        topic_names: Collection[str] | None,
        subscriber_id: str | None,
        limit: int,
    ) -> list[Event]:
        limits.append(limit)
        return [e for e in log if e.position > after_position][:limit]

    feed = Feed(reader, "s", ["t"], max_buffer=1000, max_buffer_bytes=50_000)
    feed.start(0, replay=True)
    seen: list[int] = []
    while len(seen) < len(log):
        got = await asyncio.wait_for(feed.next(), 5)
        assert got is not None
        seen.append(got.position)
        assert feed.buffered_bytes <= 50_000
    assert seen == list(range(1, 201))
    # The first page is small, the rest sized by the budget.
    assert limits[0] <= 16
    assert max(limits[1:]) <= 5


async def test_catch_up_page_is_cut_at_the_budget_when_events_grow() -> None:
    log = [event(n, 100) for n in range(1, 51)] + [event(n, 20_000) for n in range(51, 101)]

    async def reader(
        after_position: int,
        topic_names: Collection[str] | None,
        subscriber_id: str | None,
        limit: int,
    ) -> list[Event]:
        return [e for e in log if e.position > after_position][:limit]

    feed = Feed(reader, "s", ["t"], max_buffer=1000, max_buffer_bytes=50_000)
    feed.start(0, replay=True)
    seen: list[int] = []
    while len(seen) < len(log):
        got = await asyncio.wait_for(feed.next(), 5)
        assert got is not None
        seen.append(got.position)
        assert feed.buffered_bytes <= 50_000
    assert seen == list(range(1, 101))


class _StalledSocket:
    """Enough of a Starlette WebSocket for ``Connection``: its writes never finish."""

    def __init__(self) -> None:
        self.app = SimpleNamespace(state=SimpleNamespace())
        self.sent: list[str] = []
        self.release = asyncio.Event()
        self.application_state = None

    async def send_text(self, frame: str) -> None:
        await self.release.wait()
        self.sent.append(frame)


async def test_ws_outbox_is_bounded_in_bytes() -> None:
    ws = _StalledSocket()
    limits = websocket.Limits(send_queue=1000, send_queue_bytes=10_000)
    async with websocket.Connection(ws, limits) as conn:  # type: ignore[arg-type]
        frames = ["x" * 3000 for _ in range(10)]
        queued = 0
        for frame in frames:
            if not conn.send_nowait(frame):
                break
            queued += 1
        assert queued == 3  # 9,000 bytes: a fourth would pass 10,000
        assert conn.queued_bytes <= 10_000
        blocked = asyncio.ensure_future(conn.send(frames[queued]))
        await asyncio.sleep(0.05)
        assert not blocked.done()  # that is the backpressure
        ws.release.set()
        await asyncio.wait_for(blocked, 2)
        for frame in frames[queued + 1 :]:
            await asyncio.wait_for(conn.send(frame), 2)
    assert ws.sent == frames


# Library: a feed over its byte budget, and a full writer queue -----------------


async def test_feed_over_its_byte_budget_catches_up_with_nothing_lost(database_url: str) -> None:
    budget = 64 * 1024
    hub = EventHub(database_url, auto_migrate=True, stream_buffer_bytes=budget)
    async with hub, hub.stream(["big"], "reader") as feed:
        pad = "y" * 10_000
        for start in range(0, 60, 6):
            await hub.publish_many(
                [("big", None, {"i": i, "pad": pad}) for i in range(start, start + 6)]
            )
        await asyncio.sleep(0.1)  # the fan-out runs on the loop's next turn
        assert feed.overflows > 0
        assert feed.buffered_bytes <= budget
        seen: list[int] = []
        while len(seen) < 60:
            got = await asyncio.wait_for(feed.next(), 10)
            assert got is not None
            assert feed.buffered_bytes <= budget + 10_100
            seen.append(got.payload["i"])
        assert seen == list(range(60))


@contextlib.asynccontextmanager
async def database_held(database_url: str) -> AsyncIterator[None]:
    """The log's write lock held by another connection until the block ends."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        conn = sqlite3.connect(str(url.database), isolation_level=None, timeout=10)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    pg = await asyncpg.connect(dsn)
    try:
        tx = pg.transaction()
        await tx.start()
        await pg.execute("SELECT position FROM log_head FOR UPDATE")
        try:
            yield
        finally:
            await tx.rollback()
    finally:
        await pg.close()


async def test_full_writer_queue_refuses_before_queueing(database_url: str) -> None:
    async with EventHub(
        database_url, auto_migrate=True, write_queue_events=3, write_queue_bytes=64 * 1024
    ) as hub:
        await hub.publish("q", None, {"warm": True})
        async with database_held(database_url):
            first = asyncio.ensure_future(hub.publish("q", None, {"n": 1}))
            await asyncio.sleep(0.2)  # taken by the writer, which waits on the lock
            queued = asyncio.ensure_future(hub.publish_many([("q", None, {"n": 2})] * 2))
            await asyncio.sleep(0.05)
            with pytest.raises(Overloaded) as refused:  # over the bytes
                await hub.publish("q", None, {"pad": "z" * 100_000})
            assert isinstance(refused.value, DatabaseUnavailable)  # a retryable 503
            with pytest.raises(Overloaded):  # over the events
                await hub.publish_many([("q", None, {"refused": True})] * 2)
            with pytest.raises(Overloaded):
                await hub.publish_once("key", [("q", None, {"refused": True})] * 2)
            last = asyncio.ensure_future(hub.publish("q", None, {"n": 3}))  # fits
            await asyncio.sleep(0.05)
        assert (await first).seq == 2
        assert [e.seq for e in await queued] == [3, 4]
        assert (await last).seq == 5
        stored = await hub.history("q", limit=100)
        assert [e.payload for e in stored][1:] == [{"n": 1}, {"n": 2}, {"n": 2}, {"n": 3}]
        # Drained: the queue takes publishes again.
        await hub.publish_many([("q", None, {"n": 4})] * 3)


# A real server --------------------------------------------------------------


def test_full_writer_queue_is_a_503_with_retry_after(database_url: str) -> None:
    server = Server(database_url, env={"EVENTHUB_WRITE_QUEUE_EVENTS": "1"}).start()
    try:
        asyncio.run(_full_queue(server, database_url))
    finally:
        server.kill()


async def _full_queue(server: Server, database_url: str) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:

        def post(n: int) -> Awaitable[httpx.Response]:
            return client.post("/v1/topics/q/events", json={"payload": {"n": n}})

        assert (await post(0)).status_code == 201
        async with database_held(database_url):
            first = asyncio.ensure_future(post(1))
            await asyncio.sleep(0.3)
            second = asyncio.ensure_future(post(2))
            await asyncio.sleep(0.3)
            refused = await post(3)
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["code"] == "overloaded"
            # The batch route too, before anything is queued.
            batch = await client.post("/v1/events", json={"events": [{"topic": "q", "payload": 4}]})
            assert batch.status_code == 503
        assert (await first).status_code == 201
        assert (await second).status_code == 201
        history = await client.get("/v1/topics/q/events", params={"limit": 100})
        assert [e["payload"] for e in history.json()["events"]] == [{"n": 0}, {"n": 1}, {"n": 2}]


FRAME_CACHE_BYTES = 8 * MiB
STREAM_BUFFER_BYTES = 2 * MiB
EVENTS = 200
EVENT_BYTES = 512 * 1024


@pytest.fixture
def bounded(database_url: str) -> Iterator[Server]:
    server = Server(
        database_url,
        env={
            "EVENTHUB_FRAME_CACHE_BYTES": str(FRAME_CACHE_BYTES),
            "EVENTHUB_STREAM_BUFFER_BYTES": str(STREAM_BUFFER_BYTES),
            # Stalled on purpose for longer than the default allows.
            "EVENTHUB_STREAM_WRITE_TIMEOUT": "300",
        },
    ).start()
    yield server
    server.kill()


def test_a_stalled_reader_of_large_events_costs_bounded_memory(bounded: Server) -> None:
    asyncio.run(_stalled_reader(bounded))


async def _stalled_reader(server: Server) -> None:
    assert server.process is not None
    pid = server.process.pid
    pad = "p" * (EVENT_BYTES - 20)
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        # Warm up the publish path with one event of the same size, so that the
        # baseline includes what any publish of that size allocates.
        sent = await client.post("/v1/topics/warm/events", json={"payload": {"pad": pad}})
        assert sent.status_code == 201
        async with aconnect_sse(client, "GET", "/v1/stream", params={"topic": "big"}) as source:
            events = source.aiter_sse()
            assert (await anext(events)).event == "ready"
            await asyncio.sleep(0.3)
            baseline = peak = rss_bytes(pid)
            # The reader reads nothing while all of it is published.
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as publisher:
                for i in range(EVENTS):
                    body = {"payload": {"i": i, "pad": pad}}
                    sent = await publisher.post("/v1/topics/big/events", json=body)
                    assert sent.status_code == 201
                    peak = max(peak, rss_bytes(pid))
                await asyncio.sleep(0.5)
                peak = max(peak, rss_bytes(pid))
            # What the server may hold for the stalled stream: the frame cache,
            # the feed's buffer and catch-up page, one write, and the transient
            # copies of a request (body, parsed payload, its JSON, a frame).
            allowed = FRAME_CACHE_BYTES + 3 * STREAM_BUFFER_BYTES + 16 * EVENT_BYTES + 40 * MiB
            grown = peak - baseline
            assert grown < allowed, (
                f"server RSS grew by {grown / MiB:.0f} MiB (allowed {allowed / MiB:.0f} MiB) "
                f"while {EVENTS * EVENT_BYTES / MiB:.0f} MiB went to a reader that did not read"
            )
            seen: list[int] = []
            started = time.monotonic()
            while len(seen) < EVENTS:
                message = await asyncio.wait_for(anext(events), 30)
                if message.event != "message":
                    continue
                data = json.loads(message.data)
                seen.append(data["payload"]["i"])
                if len(seen) % 10 == 0:  # catching up from the log is bounded too
                    peak = max(peak, rss_bytes(pid))
                assert time.monotonic() - started < 60
            assert seen == list(range(EVENTS))
            assert peak - baseline < allowed, f"RSS grew by {(peak - baseline) / MiB:.0f} MiB"
