"""Several hubs on one database (stateless mode): each instance delivers what any
other appended, cursors stay exact under racing publishers, subscription changes
cross instances, and a crashed instance's rows are swept."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import select

from eventhub_log import Event, EventHub
from eventhub_log.notify.postgres import PostgresNotifier, asyncpg_dsn
from eventhub_log.store import queries
from eventhub_log.store.tables import subscriptions

ROOT = Path(__file__).resolve().parent.parent


def _quiet_poll(database_url: str) -> dict[str, Any]:
    """On PostgreSQL, push the safety-net poll far away so that only NOTIFY can be
    what delivers promptly; SQLite keeps its 50 ms poll, its only signal."""
    return {"poll_interval": 30.0} if database_url.startswith("postgresql") else {}


class Worker:
    """``tests/instance_worker.py`` in a subprocess, read line by line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def line(self, timeout: float = 30) -> dict[str, Any]:
        assert self.process.stdout is not None
        raw = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not raw:
            err = b""
            if self.process.stderr is not None:
                err = await self.process.stderr.read()
            raise AssertionError(f"worker ended early: {err.decode()[-2000:]}")
        return dict(json.loads(raw))

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)


@asynccontextmanager
async def worker(*args: str) -> AsyncIterator[Worker]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.instance_worker",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    running = Worker(process)
    try:
        yield running
    finally:
        running.kill()
        await process.wait()


async def test_publish_from_another_process_reaches_a_feed_promptly(database_url: str) -> None:
    async with (
        EventHub(database_url, mode="stateless", **_quiet_poll(database_url)) as hub,
        hub.stream(["news"]) as feed,
        worker("timed", database_url, "--topic", "news", "--count", "20") as publisher,
    ):
        assert (await publisher.line())["ready"]
        latencies = []
        received: list[int] = []
        for _ in range(20):
            event = await feed.next(timeout=10)
            assert event is not None, f"only {len(received)} of 20 events arrived"
            latencies.append(time.time() - event.payload["sent"])
            received.append(event.seq)
        assert received == list(range(1, 21))
        assert (await publisher.line())["done"]
    # Far below the 30 s poll on PostgreSQL: the NOTIFY woke this hub.
    assert max(latencies) < 0.5, latencies


async def test_racing_publishers_on_several_instances_resume_exactly(database_url: str) -> None:
    """Two publisher processes and two in-process hubs publish at once; a reader
    re-opens its feed at random points, on either hub, from its last cursor."""
    topics = ["room:a", "room:b", "room:c"]
    per_worker, local_publishers, events_each = 20 * 30, 8, 30
    expected = 2 * per_worker + 2 * local_publishers * events_each
    rng = random.Random(4)
    received: list[Event] = []

    async def publish_locally(hub: EventHub, number: int) -> None:
        local = random.Random(number)
        for i in range(events_each):
            await hub.publish(local.choice(topics), None, {"local": number, "i": i})
            await asyncio.sleep(local.random() * 0.004)

    async def read(hubs: list[EventHub]) -> int:
        cursor, reopened = "0", 0
        while len(received) < expected:
            hub = rng.choice(hubs)
            async with hub.stream(topics, after=cursor) as feed:
                for _ in range(rng.randint(1, 150)):
                    event = await feed.next(timeout=20)
                    assert event is not None, f"stalled after {len(received)} of {expected}"
                    received.append(event)
                    cursor = event.id
                    if len(received) == expected:
                        break
            reopened += 1
        return reopened

    args = ["--topics", ",".join(topics), "--publishers", "20", "--events", "30"]
    async with (
        EventHub(database_url, mode="stateless") as hub_a,
        EventHub(database_url, mode="stateless") as hub_b,
        worker("publish", database_url, *args) as first,
        worker("publish", database_url, *args) as second,
    ):
        reader = asyncio.create_task(read([hub_a, hub_b]))
        await asyncio.gather(
            *(publish_locally(hub, n) for hub in (hub_a, hub_b) for n in range(local_publishers))
        )
        for process in (first, second):
            assert (await process.line())["ready"]
            assert (await process.line(timeout=60))["acked"] == per_worker
        reopened = await asyncio.wait_for(reader, 60)
        # Nothing more arrives after the last expected event.
        async with hub_a.stream(topics, after=received[-1].id) as feed:
            assert await feed.next(timeout=0.5) is None

    assert reopened > 10
    positions = [event.position for event in received]
    assert positions == sorted(set(positions)), "an event came twice or out of order"
    seqs: dict[str, list[int]] = defaultdict(list)
    for event in received:
        seqs[event.topic].append(event.seq)
    for topic, got in seqs.items():
        assert got == list(range(1, len(got) + 1)), f"{topic}: missing or misordered"
    assert sum(len(got) for got in seqs.values()) == expected


async def test_subscription_change_reaches_a_stream_on_another_instance(
    database_url: str,
) -> None:
    quiet = _quiet_poll(database_url)
    async with (
        EventHub(database_url, mode="stateless", **quiet) as elsewhere,
        EventHub(database_url, mode="stateless", **quiet) as here,
        here.stream(["news"], "reader") as feed,
    ):
        await elsewhere.publish("sport", None, "before the subscription")
        await elsewhere.subscribe("sport", "reader")
        await elsewhere.publish("sport", None, "after the subscription")
        event = await feed.next(timeout=5)
        assert event is not None
        assert event.payload == "after the subscription"
        # The row is the stream's now: it goes with the stream, or with this
        # instance if it dies, rather than being owned by nobody.
        deadline = time.monotonic() + 5
        while await _owner(here, "sport", "reader") != here.instance_id:
            assert time.monotonic() < deadline, "the stream's instance did not take the row"
            await asyncio.sleep(0.05)

        assert await elsewhere.unsubscribe("news", "reader")
        await elsewhere.publish("news", None, "after the unsubscribe")
        await elsewhere.publish("sport", None, "still subscribed")
        event = await feed.next(timeout=5)
        assert event is not None
        assert event.payload == "still subscribed"

        assert await elsewhere.unsubscribe_all("reader") >= 1
        await elsewhere.publish("sport", None, "after removing everything")
        await here.publish("news", None, "nor this")
        assert await feed.next(timeout=1.0) is None


async def test_a_change_made_before_a_stream_opened_does_not_undo_its_topics(
    database_url: str,
) -> None:
    # No timer reads: `here` learns of the change when told (NOTIFY) or asked.
    async with (
        EventHub(database_url, mode="stateless", poll_interval=30.0) as elsewhere,
        EventHub(database_url, mode="stateless", poll_interval=30.0) as here,
    ):
        await elsewhere.subscribe("sport", "reader")
        await elsewhere.unsubscribe_all("reader")
        async with here.stream(["news"], "reader") as feed:
            # On SQLite `here` reads the unsubscribe-all only now, after the
            # stream opened; it must not take the stream's own topic away.
            await here._subscription_sync.apply_new()
            await here.publish("news", None, "for the new stream")
            event = await feed.next(timeout=5)
            assert event is not None
            assert event.payload == "for the new stream"


async def _owner(hub: EventHub, topic: str, subscriber: str) -> str | None:
    async with hub.database.read() as conn:
        rows = await conn.execute(
            select(subscriptions.c.instance_id).where(
                subscriptions.c.topic == topic, subscriptions.c.subscriber_id == subscriber
            )
        )
        return rows.scalar_one_or_none()


async def test_rows_of_a_killed_instance_are_swept_within_the_bound(database_url: str) -> None:
    # Generous: a loaded machine may stall an event loop for a second.
    heartbeat, ttl = 0.25, 3.0
    async with (
        EventHub(database_url, heartbeat_interval=heartbeat, instance_ttl=ttl) as live,
        live.stream(["room:x"], "survivor"),
        worker(
            "stream", database_url, "--topic", "room:x", "--subscriber", "doomed",
            "--heartbeat", str(heartbeat),
        ) as doomed,
    ):  # fmt: skip
        assert (await doomed.line())["ready"]
        assert await live.subscribers("room:x") == ["doomed", "survivor"]
        # A live instance keeps its rows however long it lives.
        await asyncio.sleep(ttl + 1.0)
        assert await live.subscribers("room:x") == ["doomed", "survivor"]

        doomed.kill()
        killed = time.monotonic()
        while "doomed" in await live.subscribers("room:x"):
            assert time.monotonic() - killed < ttl + 5 * heartbeat + 2.0, "rows not swept"
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - killed
        assert await live.subscribers("room:x") == ["survivor"]
    # The bound: the ttl, plus the heartbeat it may have just renewed, plus one
    # sweep interval (with room for a loaded machine).
    assert ttl - heartbeat - 0.2 <= elapsed <= ttl + 2 * heartbeat + 1.5, elapsed


async def test_listener_reconnects_after_its_connection_is_killed(pg_database_url: str) -> None:
    database_url = pg_database_url
    async with (
        EventHub(database_url, mode="stateless", poll_interval=30.0) as here,
        EventHub(database_url, mode="stateless", poll_interval=30.0) as elsewhere,
        here.stream(["news"]) as feed,
    ):
        listener = next(n for n in here._notifiers if isinstance(n, PostgresNotifier))
        await asyncio.wait_for(listener.listening.wait(), 10)
        admin = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = $1",
                f"eventhub-log listen {here.instance_id}",
            )
        finally:
            await admin.close()
        assert killed == 1
        # Well before the periodic check (5 s): the drop itself is noticed.
        deadline = time.monotonic() + 2
        while listener.connections < 2:
            assert time.monotonic() < deadline, "the listener did not come back"
            await asyncio.sleep(0.02)
        await asyncio.wait_for(listener.listening.wait(), 10)
        await asyncio.sleep(0.5)
        assert listener.connections == 2  # one reconnect, no churn
        sent = time.monotonic()
        await elsewhere.publish("news", None, "after the reconnect")
        event = await feed.next(timeout=5)
        assert event is not None
        assert event.payload == "after the reconnect"
        assert time.monotonic() - sent < 1.0


async def test_an_instance_swept_while_alive_restores_its_rows(database_url: str) -> None:
    async with (
        EventHub(database_url, heartbeat_interval=0.2, instance_ttl=30) as hub,
        hub.stream(["room:y"], "stalled"),
    ):
        assert await hub.subscribers("room:y") == ["stalled"]
        # What a live instance does to one whose heartbeat looks expired (as after
        # a stall longer than the ttl): its row and its streams' rows go.
        async with hub.database.write() as conn:
            await queries.sweep_expired(conn, datetime.now(UTC) + timedelta(hours=1))
        assert await hub.subscribers("room:y") == []
        swept = time.monotonic()
        while await hub.subscribers("room:y") != ["stalled"]:
            assert time.monotonic() - swept < 5, "the stream's rows did not come back"
            await asyncio.sleep(0.05)
