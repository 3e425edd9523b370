"""``GET /v1/stream`` over real sockets: a real ``eventhub-log serve``, httpx and an SSE parser.

Every test runs on SQLite and on PostgreSQL (``database_url`` is parametrized).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from httpx_sse import ServerSentEvent, aconnect_sse

from eventhub_log import retention
from eventhub_log.client import EventStreamClient, StreamEvent, StreamRefused
from eventhub_log.store import queries
from eventhub_log.store.database import Database, open_database

from .server import Server

ServerFactory = Callable[..., Server]


@pytest.fixture
def make_server(database_url: str) -> Iterator[ServerFactory]:
    """Start servers with extra options on the test's database; all killed at the end."""
    started: list[Server] = []

    def start(*args: str, port: int | None = None, **env: str) -> Server:
        server = Server(database_url, args=args, env=env)
        if port is not None:
            server.port = port
        started.append(server.start(timeout=60))
        return server

    yield start
    for server in started:
        server.kill()


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    """The server's database, read directly: the truth the HTTP answers are checked against."""
    db = open_database(database_url)
    yield db
    await db.engine.dispose()


async def publish(
    client: httpx.AsyncClient, url: str, topic: str, payload: Any, exclude: str | None = None
) -> dict[str, Any]:
    response = await client.post(
        f"{url}/v1/topics/{topic}/events", json={"payload": payload, "exclude": exclude}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


@asynccontextmanager
async def sse(
    client: httpx.AsyncClient,
    url: str,
    topics: list[str],
    *,
    headers: dict[str, str] | None = None,
    **params: str,
) -> AsyncIterator[AsyncIterator[ServerSentEvent]]:
    query = [("topic", topic) for topic in topics]
    query += [(name.rstrip("_"), value) for name, value in params.items()]
    async with aconnect_sse(
        client, "GET", f"{url}/v1/stream", params=query, headers=headers or {}
    ) as source:
        assert source.response.status_code == 200, await source.response.aread()
        assert source.response.headers["content-type"].startswith("text/event-stream")
        yield source.aiter_sse()


async def take(events: AsyncIterator[ServerSentEvent], count: int) -> list[ServerSentEvent]:
    async with asyncio.timeout(20):
        return [await anext(events) for _ in range(count)]


async def subscribers(database: Database, topic: str) -> list[str]:
    async with database.read() as conn:
        return await queries.topic_subscribers(conn, topic)


def data(event: ServerSentEvent) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(event.data)
    return value


# The contract, piece by piece ----------------------------------------------------


async def test_ready_first_then_live_events_with_exclusion(server: Server) -> None:
    async with (
        httpx.AsyncClient(timeout=20) as client,
        sse(client, server.url, ["room:a", "room:b"], subscriber="s1") as events,
    ):
        (ready,) = await take(events, 1)
        assert ready.event == "ready"
        assert ready.id == "0"
        assert data(ready) == {"subscriber": "s1", "topics": ["room:a", "room:b"]}

        first = await publish(client, server.url, "room:a", {"n": 1})
        await publish(client, server.url, "room:b", {"n": 2}, exclude="s1")
        await publish(client, server.url, "room:other", {"n": 3})
        third = await publish(client, server.url, "room:b", ["x", "é", None])
        received = await take(events, 2)

    assert [event.event for event in received] == ["message", "message"]  # no event: line
    assert [event.id for event in received] == [first["id"], third["id"]]
    assert data(received[0]) == {
        "topic": "room:a",
        "seq": 1,
        "payload": {"n": 1},
        "published_at": first["published_at"],
    }
    assert data(received[1])["topic"] == "room:b"
    assert data(received[1])["seq"] == 2
    assert data(received[1])["payload"] == ["x", "é", None]


async def test_server_assigns_a_subscriber_and_ready_id_is_the_head(server: Server) -> None:
    async with httpx.AsyncClient(timeout=20) as client:
        last = None
        for n in range(3):
            last = await publish(client, server.url, "t", n)
        assert last is not None
        async with sse(client, server.url, ["t"]) as events:
            (ready,) = await take(events, 1)
            assert ready.event == "ready"
            assert ready.id == last["id"]
            assert data(ready)["subscriber"]
            after = await publish(client, server.url, "t", "live")
            (event,) = await take(events, 1)
            assert event.id == after["id"]


async def test_resume_by_header_by_query_and_from_earliest(server: Server) -> None:
    async with httpx.AsyncClient(timeout=20) as client:
        published = [
            await publish(client, server.url, "a", 0),
            await publish(client, server.url, "other", "x"),
            await publish(client, server.url, "a", 1),
            await publish(client, server.url, "a", 2, exclude="me"),
            await publish(client, server.url, "a", 3),
        ]
        ids = [event["id"] for event in published]
        # The other topic and the excluded event are left out.
        expected_after_first = [ids[2], ids[4]]

        for how in ("header", "query"):
            headers = {"Last-Event-ID": ids[0]} if how == "header" else None
            params = {"last_event_id": ids[0]} if how == "query" else {}
            async with sse(
                client, server.url, ["a"], headers=headers, subscriber="me", **params
            ) as events:
                ready, *received = await take(events, 1 + len(expected_after_first))
                assert ready.event == "ready"
                assert ready.id == ids[0]  # the position the stream starts after
                assert [event.id for event in received] == expected_after_first
                tail = await publish(client, server.url, "a", 4)
                assert [event.id for event in await take(events, 1)] == [tail["id"]]
                expected_after_first.append(tail["id"])

        # The header is the newer position (EventSource adds it on reconnect).
        async with sse(
            client,
            server.url,
            ["a"],
            headers={"Last-Event-ID": ids[2]},
            last_event_id=ids[0],
            subscriber="me",
        ) as events:
            ready, event = await take(events, 2)
            assert ready.id == ids[2]
            assert event.id == ids[4]

        async with sse(client, server.url, ["a"], subscriber="me", from_="earliest") as events:
            ready, *received = await take(events, 5)
            assert ready.event == "ready"
            assert [data(event)["seq"] for event in received] == [1, 2, 4, 5]
            assert all(data(event)["topic"] == "a" for event in received)

        # A reconnecting from=earliest stream resumes rather than replaying again.
        async with sse(
            client,
            server.url,
            ["a"],
            headers={"Last-Event-ID": ids[4]},
            subscriber="me",
            from_="earliest",
        ) as events:
            ready, event = await take(events, 2)
            assert ready.id == ids[4]
            assert data(event)["seq"] == 5


async def test_gap_is_announced_where_retention_removed_what_a_resume_needs(
    server: Server, database: Database
) -> None:
    async with httpx.AsyncClient(timeout=20) as client:
        ids = [(await publish(client, server.url, "kept", n))["id"] for n in range(6)]
        await publish(client, server.url, "untouched", "x")
        pruned = await retention.prune(database, keep=2, topics=["kept"])
        assert [(p.topic, p.pruned_through_seq) for p in pruned] == [("kept", 4)]

        async with sse(client, server.url, ["kept", "untouched"], from_="earliest") as events:
            ready, gap, *received = await take(events, 5)
        assert ready.event == "ready"
        assert gap.event == "gap"
        assert data(gap) == {"topic": "kept", "from_seq": 1, "to_seq": 4}
        assert [(data(e)["topic"], data(e)["seq"]) for e in received] == [
            ("kept", 5),
            ("kept", 6),
            ("untouched", 1),
        ]

        async with sse(client, server.url, ["kept"], headers={"Last-Event-ID": ids[1]}) as events:
            ready, gap, event = await take(events, 3)
        assert gap.event == "gap"
        assert data(gap)["topic"] == "kept"
        assert data(gap)["from_seq"] <= 3  # may start early, never late
        assert data(gap)["to_seq"] == 4
        assert data(event)["seq"] == 5

        # Resuming after the pruned range owes nothing that is gone: no gap.
        async with sse(client, server.url, ["kept"], headers={"Last-Event-ID": ids[4]}) as events:
            ready, event = await take(events, 2)
        assert ready.event == "ready"
        assert event.event == "message"
        assert data(event)["seq"] == 6


REFUSALS: list[tuple[str, dict[str, str], int, str]] = [
    ("topic=a&last_event_id=abc", {}, 400, "invalid_cursor"),
    ("topic=a", {"Last-Event-ID": "-1"}, 400, "invalid_cursor"),
    ("topic=a", {"Last-Event-ID": "1" * 30}, 400, "invalid_cursor"),
    ("topic=a&last_event_id=999999", {}, 400, "invalid_cursor"),  # not issued here
    ("topic=/a", {}, 400, "invalid_topic"),
    ("topic=a&topic=a%20b", {}, 400, "invalid_topic"),
    ("topic=a&subscriber=" + "s" * 300, {}, 400, "invalid_subscriber"),
    ("", {}, 422, "validation_error"),
    ("topic=a&from=latest", {}, 422, "validation_error"),
]


async def test_refusals_are_4xx_with_the_error_body(server: Server, database: Database) -> None:
    async with httpx.AsyncClient(timeout=20) as client:
        for query, headers, status, code in REFUSALS:
            response = await client.get(f"{server.url}/v1/stream?{query}", headers=headers)
            assert response.status_code == status, query
            assert response.headers["content-type"] == "application/json"
            assert response.json()["error"]["code"] == code, query
            assert response.json()["error"]["message"]
    assert await subscribers(database, "a") == []  # nothing left behind


async def test_heartbeats_keep_an_idle_stream_open(make_server: ServerFactory) -> None:
    server = make_server("--heartbeat-interval", "0.2")
    async with (
        httpx.AsyncClient(timeout=20) as client,
        client.stream("GET", f"{server.url}/v1/stream?topic=quiet") as response,
    ):
        lines: list[str] = []
        started = time.monotonic()
        async with asyncio.timeout(10):
            async for line in response.aiter_lines():
                lines.append(line)
                if lines.count(": ping") == 3:
                    break
        elapsed = time.monotonic() - started
    assert lines[0] == "event: ready"
    assert 0.3 < elapsed < 5


async def test_disconnect_removes_the_rows_promptly(server: Server, database: Database) -> None:
    async with httpx.AsyncClient(timeout=20) as client:
        async with sse(client, server.url, ["room:x", "room:y"], subscriber="leaver") as events:
            await take(events, 1)
            # Once ready is sent the rows exist.
            assert await subscribers(database, "room:x") == ["leaver"]
            assert await subscribers(database, "room:y") == ["leaver"]
        dropped = time.monotonic()  # leaving the block closed the socket
        while await subscribers(database, "room:x") or await subscribers(database, "room:y"):
            assert time.monotonic() - dropped < 1.0, "rows still there a second after the drop"
            await asyncio.sleep(0.01)
    assert time.monotonic() - dropped < 1.0


async def test_disconnect_of_a_busy_stream_removes_the_rows(
    server: Server, database: Database
) -> None:
    async with httpx.AsyncClient(timeout=20) as client:
        for n in range(300):
            await publish(client, server.url, "busy", n)
        async with sse(client, server.url, ["busy"], subscriber="b1", from_="earliest") as ev:
            await take(ev, 5)
        dropped = time.monotonic()
        while await subscribers(database, "busy"):
            assert time.monotonic() - dropped < 1.0
            await asyncio.sleep(0.01)


# Slow readers -------------------------------------------------------------------


def _stalled_reader(port: int, topic: str, subscriber: str) -> socket.socket:
    """A client that asks for a stream and then never reads a byte."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        f"GET /v1/stream?topic={topic}&subscriber={subscriber} HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    return sock


async def test_slow_reader_blocks_nobody_and_loses_nothing(
    make_server: ServerFactory, database: Database
) -> None:
    server = make_server(EVENTHUB_STREAM_BUFFER="20")
    total = 400
    blob = "x" * 20_000  # 8 MB in all: more than the socket buffers hold
    async with (
        httpx.AsyncClient(timeout=20) as client,
        httpx.AsyncClient(timeout=20) as slow,
        sse(client, server.url, ["flood"], subscriber="fast") as fast_events,
        sse(slow, server.url, ["flood"], subscriber="slow") as slow_events,
    ):
        await take(fast_events, 1)
        await take(slow_events, 1)
        latencies: list[float] = []
        published: list[str] = []
        # The slow stream is not read at all while everything is published.
        for n in range(total):
            started = time.monotonic()
            published.append((await publish(client, server.url, "flood", [n, blob]))["id"])
            latencies.append(time.monotonic() - started)
        fast = [event.id for event in await take(fast_events, total)]
        assert fast == published
        await asyncio.sleep(0.5)
        # Now it reads: everything is there, in order (caught up from the log).
        late = [event.id for event in await take(slow_events, total)]
        assert late == published
    assert sorted(latencies)[int(total * 0.99)] < 2.0


async def test_coalesced_writes_lose_nothing_and_keep_order(make_server: ServerFactory) -> None:
    server = make_server(EVENTHUB_STREAM_COALESCE="0.2")
    async with (
        httpx.AsyncClient(timeout=20) as client,
        sse(client, server.url, ["gather", "other"], subscriber="gathering") as events,
    ):
        await take(events, 1)
        first = (await publish(client, server.url, "gather", "alone"))["id"]
        # Right after a write: these are held back and go out together.
        ids = [first] + [
            (await publish(client, server.url, ("gather", "other")[n % 2], n))["id"]
            for n in range(40)
        ]
        assert [event.id for event in await take(events, len(ids))] == ids


async def test_a_stream_blocked_on_a_full_socket_is_cut_off(
    make_server: ServerFactory, database: Database
) -> None:
    server = make_server(EVENTHUB_STREAM_WRITE_TIMEOUT="1", EVENTHUB_STREAM_BUFFER="50")
    stalled = _stalled_reader(server.port, "pipe", "stuck")
    try:
        async with (
            httpx.AsyncClient(timeout=20) as client,
            sse(client, server.url, ["pipe"], subscriber="keeps-up") as events,
        ):
            await take(events, 1)
            deadline = time.monotonic() + 20
            while "stuck" not in await subscribers(database, "pipe"):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            blob = "y" * 50_000
            count = 120  # 6 MB: more than the socket buffers hold
            reading = asyncio.create_task(take(events, count))  # this one keeps reading
            ids = [
                (await publish(client, server.url, "pipe", [n, blob]))["id"] for n in range(count)
            ]
            assert [event.id for event in await reading] == ids
            while "stuck" in await subscribers(database, "pipe"):
                assert time.monotonic() < deadline, "the stalled stream was never cut off"
                await asyncio.sleep(0.1)
            assert await subscribers(database, "pipe") == ["keeps-up"]
    finally:
        stalled.close()


# Shutdown, crashes and races ------------------------------------------------------


async def test_sigterm_ends_open_streams_and_clients_resume(
    make_server: ServerFactory, database: Database
) -> None:
    server = make_server()
    async with httpx.AsyncClient(timeout=20) as client:
        first = await publish(client, server.url, "news", "before")
        async with contextlib.AsyncExitStack() as stack:
            opened = [
                await stack.enter_async_context(
                    sse(client, server.url, ["news"], subscriber=f"r{n}", last_event_id="0")
                )
                for n in range(5)
            ]
            for events in opened:
                _, event = await take(events, 2)
                assert event.id == first["id"]
            started = time.monotonic()
            await asyncio.to_thread(server.stop, 10)
            assert time.monotonic() - started < 5
            for events in opened:
                with pytest.raises(StopAsyncIteration):  # ended cleanly, not broken off
                    await take(events, 1)

        again = await asyncio.to_thread(make_server, port=server.port)
        second = await publish(client, again.url, "news", "after")
        async with sse(
            client, again.url, ["news"], headers={"Last-Event-ID": first["id"]}
        ) as events:
            _, event = await take(events, 2)
            assert event.id == second["id"]
    async with asyncio.timeout(1):  # the streams ended by SIGTERM left no rows either
        while await subscribers(database, "news"):  # noqa: ASYNC110 (polling the database)
            await asyncio.sleep(0.02)


async def test_random_disconnects_while_eight_publishers_race(server: Server) -> None:
    await _race([server.url])


async def test_resume_on_another_instance_while_publishers_race_on_both(
    make_server: ServerFactory,
) -> None:
    """Two servers on one database: publishers on both, and the reader reconnects
    to the other one each time, resuming with the id the previous one sent."""
    first = make_server("--mode", "stateless")
    second = make_server("--mode", "stateless")
    await _race([first.url, second.url])


async def _race(urls: list[str]) -> None:
    topics = ["race:1", "race:2", "race:3"]
    per_publisher = 40
    total = 8 * per_publisher
    acked: list[dict[str, Any]] = []
    received: list[dict[str, Any]] = []
    rng = random.Random(7)
    reader_ready = asyncio.Event()  # its first stream starts at the head: publish after it

    async def publisher(client: httpx.AsyncClient, n: int) -> None:
        await reader_ready.wait()
        for i in range(per_publisher):
            topic = rng.choice(topics)
            acked.append(await publish(client, urls[n % len(urls)], topic, {"p": n, "i": i}))
            if rng.random() < 0.3:
                await asyncio.sleep(rng.random() / 100)

    async def reader(client: httpx.AsyncClient) -> int:
        last_id: str | None = None
        connections = 0
        while len(received) < total:
            connections += 1
            headers = {"Last-Event-ID": last_id} if last_id is not None else None
            budget = rng.choice([0, 1, 2, 5, 20, 100])
            try:
                async with asyncio.timeout(rng.random() / 5):  # drop at a random moment
                    url = urls[connections % len(urls)]
                    async with sse(client, url, topics, headers=headers) as events:
                        async for event in events:
                            if event.event == "ready":
                                last_id = event.id  # resume from here even if nothing comes
                                reader_ready.set()
                                continue
                            received.append({"id": event.id, **data(event)})
                            last_id = event.id
                            budget -= 1
                            if budget <= 0:
                                break
            except TimeoutError:
                pass
        return connections

    async with httpx.AsyncClient(timeout=30) as client, httpx.AsyncClient(timeout=30) as rclient:
        read = asyncio.create_task(reader(rclient))
        await asyncio.gather(*(publisher(client, n) for n in range(8)))
        async with asyncio.timeout(60):
            connections = await read

    assert connections > 10
    assert len(received) == total
    assert sorted(e["id"] for e in received) == sorted(e["id"] for e in acked)
    assert len({e["id"] for e in received}) == total
    for topic in topics:
        seqs = [e["seq"] for e in received if e["topic"] == topic]
        assert seqs == list(range(1, len(seqs) + 1))
    positions = [int(e["id"]) for e in received]
    assert positions == sorted(positions)


async def test_sigkill_mid_storm_then_restart_loses_nothing_acknowledged(
    make_server: ServerFactory, database: Database
) -> None:
    topics = ["storm:a", "storm:b", "storm:c"]
    server = make_server()
    acked: list[dict[str, Any]] = []
    received: list[StreamEvent] = []
    stop_publishing = asyncio.Event()

    async def publisher(client: httpx.AsyncClient, n: int) -> None:
        i = 0
        while not stop_publishing.is_set():
            topic = topics[(n + i) % 3]
            try:
                response = await client.post(
                    f"{server.url}/v1/topics/{topic}/events", json={"payload": [n, i]}
                )
            except httpx.HTTPError:
                return  # the server is gone
            if response.status_code == 201:
                acked.append(response.json())
            i += 1

    async def follow(stream: EventStreamClient) -> None:
        async for item in stream:
            assert isinstance(item, StreamEvent)
            received.append(item)

    stream = EventStreamClient(server.url, topics, min_backoff=0.05, max_backoff=0.5)
    follower = asyncio.create_task(follow(stream))
    async with httpx.AsyncClient(timeout=10) as client:
        deadline = time.monotonic() + 30
        while stream.connections == 0:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        publishers = [asyncio.create_task(publisher(client, n)) for n in range(8)]
        while len(acked) < 200 or len(received) < 50:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        await asyncio.to_thread(server.kill)  # mid-storm
        stop_publishing.set()
        await asyncio.gather(*publishers)
        seen_before_crash = len(received)

        again = await asyncio.to_thread(make_server, port=server.port)
        tail = [await publish(client, again.url, topic, "after") for topic in topics]

        async with database.read() as conn:
            log = await queries.read_after(conn, 0, topics, None, 100_000)
        logged = {event.id for event in log}
        assert {event["id"] for event in acked} <= logged  # every 2xx is in the history
        assert {event["id"] for event in tail} <= logged

        async with asyncio.timeout(30):
            while len(received) < len(log):  # noqa: ASYNC110 (polling a list another task fills)
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
    follower.cancel()
    await asyncio.gather(follower, return_exceptions=True)
    await stream.aclose()

    assert seen_before_crash < len(log)
    assert stream.connections >= 2  # it did resume
    assert [event.id for event in received] == [event.id for event in log]
    assert [(e.topic, e.seq) for e in received] == [(e.topic, e.seq) for e in log]


# The client and the tail command --------------------------------------------------


async def test_client_raises_on_a_refused_cursor(server: Server) -> None:
    async with EventStreamClient(server.url, ["t"], last_event_id="nope") as stream:
        with pytest.raises(StreamRefused) as refused:
            await anext(stream.events())
    assert refused.value.status == 400
    assert refused.value.code == "invalid_cursor"


async def test_tail_follows_and_resumes_across_a_restart(
    make_server: ServerFactory, database_url: str
) -> None:
    server = make_server()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "eventhub_log.cli",
        "tail",
        "log:a",
        "log:b",
        "--url",
        server.url,
        "--last-event-id",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None

    async def line() -> dict[str, Any]:
        assert process.stdout is not None
        async with asyncio.timeout(30):
            value: dict[str, Any] = json.loads(await process.stdout.readline())
            return value

    try:
        async with httpx.AsyncClient(timeout=20) as client:
            first = await publish(client, server.url, "log:a", {"n": 1})
            await publish(client, server.url, "log:zzz", "not followed")
            second = await publish(client, server.url, "log:b", {"n": 2})
            assert await line() == {
                "id": first["id"],
                "topic": "log:a",
                "seq": 1,
                "payload": {"n": 1},
                "published_at": first["published_at"],
            }
            assert (await line())["id"] == second["id"]

            await asyncio.to_thread(server.stop)
            again = await asyncio.to_thread(make_server, port=server.port)
            third = await publish(client, again.url, "log:a", {"n": 3})
            assert (await line())["id"] == third["id"]
    finally:
        process.terminate()
        await process.wait()
