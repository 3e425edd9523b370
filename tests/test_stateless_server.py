"""Several ``eventhub-log serve`` processes on one database (stateless mode), over
real sockets: racing publishers on both, an SSE reader resuming on either,
subscriptions made on one reaching a stream on the other, a crashed instance's
rows swept, and ``--workers N`` delivering across its worker processes."""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest
from httpx_sse import ServerSentEvent, aconnect_sse

from . import databases
from .server import Server

ServerFactory = Callable[..., Server]
TOPICS = ["room:a", "room:b", "room:c"]


@pytest.fixture
def start_server(database_url: str) -> Iterator[ServerFactory]:
    """Start stateless servers on the test's database; all stopped at the end."""
    started: list[Server] = []

    def start(*args: str, **env: str) -> Server:
        server = Server(database_url, args=["--mode", "stateless", *args], env=env)
        started.append(server.start(timeout=60))
        return server

    yield start
    for server in started:
        try:
            server.stop(timeout=10)  # SIGTERM: uvicorn takes its workers down too
        except Exception:
            server.kill()


def _data(event: ServerSentEvent) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(event.data)
    return value


async def _publish(client: httpx.AsyncClient, url: str, topic: str, payload: Any) -> Any:
    response = await client.post(f"{url}/v1/topics/{topic}/events", json={"payload": payload})
    assert response.status_code == 201, response.text
    return response.json()


def _stream_params(topics: list[str], **extra: str) -> list[tuple[str, str]]:
    return [("topic", topic) for topic in topics] + list(extra.items())


async def test_racing_publishers_on_two_servers_and_a_reader_resuming_on_either(
    start_server: ServerFactory,
) -> None:
    servers = [start_server(), start_server()]
    publishers, events_each = 8, 40
    expected = publishers * events_each
    rng = random.Random(7)
    received: list[tuple[int, str, int]] = []  # (position, topic, seq)

    async def publisher(client: httpx.AsyncClient, number: int) -> None:
        local = random.Random(number)
        for i in range(events_each):
            server = servers[(number + i) % 2]
            await _publish(client, server.url, local.choice(TOPICS), {"p": number, "i": i})

    async def reader(client: httpx.AsyncClient) -> int:
        cursor, connections = "0", 0
        while len(received) < expected:
            server = rng.choice(servers)
            wanted = rng.randint(1, 60)
            async with aconnect_sse(
                client,
                "GET",
                f"{server.url}/v1/stream",
                params=_stream_params(TOPICS),
                headers={"Last-Event-ID": cursor},
            ) as source:
                assert source.response.status_code == 200
                connections += 1
                taken = 0
                async for event in source.aiter_sse():
                    if event.event == "ready":
                        assert event.id == cursor
                        continue
                    body = _data(event)
                    received.append((int(event.id), body["topic"], body["seq"]))
                    cursor = event.id
                    taken += 1
                    if taken == wanted or len(received) == expected:
                        break
        return connections

    async with httpx.AsyncClient(timeout=30) as client:
        reading = asyncio.create_task(reader(client))
        await asyncio.gather(*(publisher(client, n) for n in range(publishers)))
        connections = await asyncio.wait_for(reading, 60)

    assert connections > 5
    positions = [position for position, _, _ in received]
    assert positions == sorted(set(positions)), "an event came twice or out of order"
    seqs: dict[str, list[int]] = defaultdict(list)
    for _, topic, seq in received:
        seqs[topic].append(seq)
    for topic, got in seqs.items():
        assert got == list(range(1, len(got) + 1)), f"{topic}: missing or misordered"
    assert len(received) == expected


async def test_rest_subscription_on_one_server_reaches_a_stream_on_the_other(
    start_server: ServerFactory,
) -> None:
    holder, other = start_server(), start_server()
    async with (
        httpx.AsyncClient(timeout=20) as client,
        aconnect_sse(
            client,
            "GET",
            f"{holder.url}/v1/stream",
            params=_stream_params(["news"], subscriber="reader"),
        ) as source,
    ):
        events = source.aiter_sse()
        assert (await anext(events)).event == "ready"
        put = await client.put(f"{other.url}/v1/subscriptions/reader/topics/sport")
        assert put.status_code == 200, put.text
        published = await _publish(client, other.url, "sport", "goal")
        async with asyncio.timeout(5):
            event = await anext(events)
        assert event.id == published["id"]
        assert _data(event)["payload"] == "goal"

        gone = await client.delete(f"{other.url}/v1/subscriptions/reader/topics/news")
        assert gone.status_code == 204
        await _publish(client, other.url, "news", "not for the reader any more")
        last = await _publish(client, holder.url, "sport", "still for the reader")
        async with asyncio.timeout(5):
            event = await anext(events)
        assert event.id == last["id"]


async def test_rows_of_a_killed_server_are_swept_by_the_other(start_server: ServerFactory) -> None:
    # Generous: a loaded machine may stall a server's event loop for a second.
    heartbeat, ttl = 0.5, 4.0
    env = {"EVENTHUB_INSTANCE_HEARTBEAT": str(heartbeat), "EVENTHUB_INSTANCE_TTL": str(ttl)}
    survivor, doomed = start_server(**env), start_server(**env)
    listing = f"{survivor.url}/v1/topics/room:x/subscribers"
    async with httpx.AsyncClient(timeout=20) as client:
        async with aconnect_sse(
            client,
            "GET",
            f"{doomed.url}/v1/stream",
            params=_stream_params(["room:x"], subscriber="on-doomed"),
        ) as source:
            events = source.aiter_sse()  # kept: a dropped iterator closes the stream
            assert (await anext(events)).event == "ready"
            assert (await client.get(listing)).json()["subscribers"] == ["on-doomed"]
            await asyncio.sleep(ttl + 0.5)  # alive: its rows stay
            assert (await client.get(listing)).json()["subscribers"] == ["on-doomed"]
            doomed.kill()
            killed = time.monotonic()
        while (await client.get(listing)).json()["subscribers"]:
            assert time.monotonic() - killed < ttl + 10.0, "rows of the dead server remain"
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - killed
    assert elapsed <= ttl + 2 * heartbeat + 1.5, elapsed


async def test_serve_with_several_workers_delivers_across_them(database_url: str) -> None:
    # No --mode: several workers must choose the stateless mode by themselves.
    server = Server(database_url, args=["--workers", "2"]).start(timeout=60)
    try:
        # A fresh connection per request, so that both workers take publishes.
        fresh = httpx.Limits(max_keepalive_connections=0)
        async with (
            httpx.AsyncClient(timeout=20) as reader,
            httpx.AsyncClient(timeout=20, limits=fresh) as client,
        ):
            ready = await client.get(f"{server.url}/readyz")
            assert ready.json()["mode"] == "stateless"
            async with aconnect_sse(
                reader, "GET", f"{server.url}/v1/stream", params=_stream_params(["t"])
            ) as source:
                events = source.aiter_sse()
                assert (await anext(events)).event == "ready"
                delays = []
                for n in range(30):
                    published = await _publish(client, server.url, "t", n)
                    sent = time.monotonic()
                    async with asyncio.timeout(5):
                        event = await anext(events)
                    delays.append(time.monotonic() - sent)
                    assert event.id == published["id"]
        # A worker in the stateful mode would see the other's publishes only at its
        # 1 s poll; stateless workers wake within the 50 ms poll or a NOTIFY.
        assert max(delays) < 0.5, delays
    finally:
        server.stop(timeout=15)


@pytest.mark.usefixtures("postgres_template")  # skips, or fails, with the reason
async def test_migrate_then_two_servers_on_an_empty_postgres_database() -> None:
    """``eventhub-log migrate`` run from two processes at once on an empty database
    (as several instances deploying together would), then two servers on it."""
    name = f"eventhub_empty_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(databases._admin_dsn())
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = databases._database_url(name)
    servers: list[Server] = []
    try:
        command = ["-m", "eventhub_log.cli", "migrate", "--database-url", url]
        migrations = [
            await asyncio.create_subprocess_exec(
                sys.executable, *command, stdout=asyncio.subprocess.PIPE
            )
            for _ in "ab"
        ]
        for process in migrations:
            out, _ = await asyncio.wait_for(process.communicate(), 60)
            assert process.returncode == 0
            assert b"schema at revision" in out
        servers = [Server(url, args=["--workers", "1"]).start(timeout=60) for _ in "ab"]
        async with httpx.AsyncClient(timeout=20) as client:
            first = await _publish(client, servers[0].url, "t", 1)
            second = await _publish(client, servers[1].url, "t", 2)
            history = await client.get(f"{servers[0].url}/v1/topics/t/events")
        assert [event["id"] for event in history.json()["events"]] == [first["id"], second["id"]]
    finally:
        for server in servers:
            server.kill()
        await databases.drop_pg_database(name)
