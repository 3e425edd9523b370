"""``GET /v1/ws`` against a real server process (contract section 4)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from websockets.exceptions import ConnectionClosed

from eventhub_log import EventHub

from .server import Server
from .wsclient import ws_connect, ws_url


def url(server: Server, query: str = "") -> str:
    return ws_url(server.url, "/v1/ws" + (f"?{query}" if query else ""))


async def rows_of(database_url: str, subscriber: str) -> list[str]:
    async with EventHub(database_url) as hub:
        return await hub.subscriptions(subscriber)


async def wait_rows_gone(database_url: str, subscriber: str, within: float = 3.0) -> float:
    started = time.monotonic()
    async with EventHub(database_url) as hub:
        while await hub.subscriptions(subscriber):
            assert time.monotonic() - started < within, "rows were not removed"
            await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_subscribe_publish_and_ids(server: Server, database_url: str) -> None:
    async with ws_connect(url(server, "subscriber=alice")) as alice, ws_connect(url(server)) as bob:
        ready = await alice.recv()
        assert ready["type"] == "ready"
        assert ready["subscriber"] == "alice"
        assert ready["topics"] == []
        assert ready["id"].isdigit()
        assert (await bob.recv())["type"] == "ready"

        ack = await alice.request({"op": "subscribe", "topic": "room:lobby"})
        assert ack["type"] == "ack"
        assert ack["op"] == "subscribe"
        assert ack["topic"] == "room:lobby"
        assert await rows_of(database_url, "alice") == ["room:lobby"]

        published = await bob.request(
            {"op": "publish", "topic": "room:lobby", "payload": {"text": "hi"}}
        )
        assert published["type"] == "ack"
        assert published["seq"] == 1
        (event,) = await alice.events(1)
        assert event == {
            "type": "event",
            "id": published["id"],
            "topic": "room:lobby",
            "seq": 1,
            "payload": {"text": "hi"},
            "published_at": published["published_at"],
        }
        async with EventHub(database_url) as hub:
            (stored,) = await hub.history("room:lobby")
        assert stored.id == event["id"]

        ack = await alice.request({"op": "unsubscribe", "topic": "room:lobby"})
        assert ack == {
            "type": "ack",
            "op": "unsubscribe",
            "topic": "room:lobby",
            "removed": True,
            "ref": ack["ref"],
        }
        await bob.request({"op": "publish", "topic": "room:lobby", "payload": 2})
        assert await alice.quiet() == []


async def test_exclude_self(server: Server) -> None:
    query = "subscriber={}&topic=room:a"
    async with (
        ws_connect(url(server, query.format("s1"))) as s1,
        ws_connect(url(server, query.format("s2"))) as s2,
    ):
        await s1.recv_type("ready")
        await s2.recv_type("ready")
        await s1.request(
            {"op": "publish", "topic": "room:a", "payload": "not to me", "exclude_self": True}
        )
        await s1.request({"op": "publish", "topic": "room:a", "payload": "to all"})
        got2 = await s2.events(2)
        assert [e["payload"] for e in got2] == ["not to me", "to all"]
        (got1,) = await s1.events(1)
        assert got1["payload"] == "to all"
        assert await s1.quiet() == []
        # Excluded on replay too.
        async with ws_connect(url(server, "subscriber=s1&topic=room:a&last_event_id=0")) as again:
            await again.recv_type("ready")
            (replayed,) = await again.events(1)
            assert replayed["payload"] == "to all"
            assert await again.quiet() == []


@pytest.fixture
def small_frames_server(database_url: str) -> Iterator[Server]:
    running = Server(
        database_url,
        env={
            "EVENTHUB_WS_MAX_FRAME": "1000",
            "EVENTHUB_WS_FRAME_BURST": "100",
            "EVENTHUB_WS_FRAME_RATE": "50",
        },
    ).start()
    yield running
    running.kill()


async def test_bad_frames_get_error_frames_and_the_connection_stays(
    small_frames_server: Server, database_url: str
) -> None:
    server = small_frames_server
    async with ws_connect(url(server, "subscriber=bad")) as ws:
        await ws.recv_type("ready")
        cases: list[tuple[str | dict[str, object], str]] = [
            ("{not json", "invalid_json"),
            ("[1, 2]", "invalid_frame"),
            ({"op": "dance"}, "unknown_op"),
            ({"nop": 1}, "unknown_op"),
            ({"op": "subscribe", "topic": "bad topic!"}, "invalid_topic"),
            ({"op": "subscribe"}, "invalid_topic"),
            ({"op": "subscribe", "topic": "a", "extra": 1}, "invalid_frame"),
            ({"op": "publish", "topic": "/x/", "payload": 1}, "invalid_topic"),
            ({"op": "publish", "topic": "ok"}, "invalid_request"),
            (
                {"op": "publish", "topic": "ok", "payload": 1, "exclude_self": "y"},
                "invalid_request",
            ),
            ({"op": "resume", "after": "abc"}, "invalid_cursor"),
            ({"op": "resume", "after": "99999999"}, "invalid_cursor"),
            ({"op": "resume"}, "invalid_cursor"),
            ("x" * 2000, "frame_too_large"),
        ]
        for frame, code in cases:
            await ws.send(frame)
            error = await ws.recv()
            assert error["type"] == "error", frame
            assert error["code"] == code, (frame, error)
            assert error["message"]
        ack = await ws.request({"op": "subscribe", "topic": "still:here"})
        assert ack["type"] == "ack"
    async with EventHub(database_url) as hub:
        assert [t.topic for t in await hub.topics()] == []  # nothing was written


async def test_flooding_client_is_closed_alone(small_frames_server: Server) -> None:
    server = small_frames_server
    async with (
        ws_connect(url(server, "subscriber=calm&topic=t")) as calm,
        ws_connect(url(server, "subscriber=flood")) as flood,
    ):
        await calm.recv_type("ready")
        await flood.recv_type("ready")

        # Frames the server answers without touching the database, as fast as
        # the socket takes them. (Frames that do work, such as publishes, are
        # held back by the server reading no faster than it can do that work.)
        async def flood_it() -> None:
            for _ in range(5000):
                await flood.send({"op": "subscribe", "topic": "not a topic"})
            await flood.quiet(5)
            await flood.recv(5)

        with pytest.raises(ConnectionClosed) as closed:
            await flood_it()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code in (1008, 1009)
        ack = await calm.request({"op": "publish", "topic": "t", "payload": "fine"})
        assert ack["type"] == "ack"
        (event,) = await calm.events(1)
        assert event["payload"] == "fine"


async def test_protocol_oversize_frame_closes_with_1009(server: Server) -> None:
    async with ws_connect(url(server), max_size=None) as ws:
        await ws.recv_type("ready")

        async def send_huge() -> None:
            await ws.send("x" * (17 * 1024 * 1024))
            await ws.recv(10)

        with pytest.raises(ConnectionClosed) as closed:
            await send_huge()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009


async def test_resume_replays_then_goes_live(server: Server, database_url: str) -> None:
    async with ws_connect(url(server, "subscriber=pub")) as pub:
        await pub.recv_type("ready")
        acks = [
            await pub.request({"op": "publish", "topic": f"r:{i % 2}", "payload": i})
            for i in range(6)
        ]
        async with ws_connect(url(server, "subscriber=reader&topic=r:0&topic=r:1")) as reader:
            ready = await reader.recv_type("ready")
            assert ready["id"] == acks[-1]["id"]
            ack = await reader.request({"op": "resume", "after": acks[1]["id"]})
            assert ack["type"] == "ack"
            assert ack["topics"] == ["r:0", "r:1"]
            replayed = await reader.events(4)
            assert [e["payload"] for e in replayed] == [2, 3, 4, 5]
            await pub.request({"op": "publish", "topic": "r:1", "payload": "live"})
            (live,) = await reader.events(1)
            assert live["payload"] == "live"
        # The same by query parameter, as a reconnecting client does (once the
        # old connection's rows are gone: a new stream of a subscriber takes on
        # every topic that subscriber still has).
        await wait_rows_gone(database_url, "reader")
        async with ws_connect(
            url(server, f"subscriber=reader&topic=r:0&last_event_id={acks[3]['id']}")
        ) as reader:
            ready = await reader.recv_type("ready")
            assert ready["id"] == acks[3]["id"]
            assert [e["payload"] for e in await reader.events(1)] == [4]
            assert await reader.quiet() == []


async def test_close_removes_rows_promptly(server: Server, database_url: str) -> None:
    async with ws_connect(url(server, "subscriber=leaver&topic=a&topic=b")) as ws:
        await ws.recv_type("ready")
        await ws.request({"op": "subscribe", "topic": "c"})
        assert await rows_of(database_url, "leaver") == ["a", "b", "c"]
    assert await wait_rows_gone(database_url, "leaver") < 1.0


async def test_slow_socket_blocks_nobody_and_loses_nothing(server: Server) -> None:
    count = 1500
    async with (
        ws_connect(url(server, "subscriber=slow&topic=busy"), max_queue=1) as slow,
        ws_connect(url(server, "subscriber=fast&topic=busy")) as fast,
        ws_connect(url(server, "subscriber=pub")) as pub,
    ):
        await slow.recv_type("ready")
        await fast.recv_type("ready")
        await pub.recv_type("ready")
        payload = "x" * 4000

        async def publish() -> None:
            async def drain_acks() -> None:
                for _ in range(count):
                    assert (await pub.recv(30))["type"] == "ack"

            drainer = asyncio.create_task(drain_acks())
            for i in range(count):
                await pub.send({"op": "publish", "topic": "busy", "payload": [i, payload]})
            await drainer

        started = time.monotonic()
        publisher = asyncio.create_task(publish())
        got_fast = await fast.events(count, timeout=60)
        await publisher
        fast_time = time.monotonic() - started
        assert [e["payload"][0] for e in got_fast] == list(range(count))
        # The slow socket has not read a thing yet; now it reads everything, in order.
        got_slow = await slow.events(count, timeout=30)
        assert [e["payload"][0] for e in got_slow] == list(range(count))
        assert [e["id"] for e in got_slow] == [e["id"] for e in got_fast]
        assert fast_time < 60


async def test_ws_and_sse_get_the_same_events(server: Server) -> None:
    import httpx

    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream("GET", f"{server.url}/v1/stream", params={"topic": "same"}) as sse,
        ws_connect(url(server, "topic=same")) as ws,
    ):
        assert sse.status_code == 200
        lines = sse.aiter_lines()
        events: list[tuple[str, dict[str, object]]] = []
        current: dict[str, str] = {}

        async def next_sse() -> tuple[str | None, str | None, str]:
            current.clear()
            async for line in lines:
                if line == "":
                    if "data" in current:
                        return current.get("event"), current.get("id"), current["data"]
                    current.clear()
                    continue
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(":")
                current[name] = value.removeprefix(" ")
            raise AssertionError("stream ended")

        kind, _, _ = await asyncio.wait_for(next_sse(), 10)
        assert kind == "ready"
        await ws.recv_type("ready")
        acks = [
            await ws.request({"op": "publish", "topic": "same", "payload": {"n": i}})
            for i in range(5)
        ]
        got_ws = await ws.events(5)
        for _ in range(5):
            kind, event_id, data = await asyncio.wait_for(next_sse(), 10)
            assert kind is None
            assert event_id is not None
            events.append((event_id, json.loads(data)))
    assert [a["id"] for a in acks] == [e["id"] for e in got_ws] == [i for i, _ in events]
    assert [e["payload"] for e in got_ws] == [d["payload"] for _, d in events]
    assert [e["seq"] for e in got_ws] == [d["seq"] for _, d in events]


async def test_rows_of_a_crashed_server_are_swept(database_url: str) -> None:
    """Topics added by a subscribe frame belong to the socket's stream and this
    instance, so the next server removes them when this one dies."""
    env = {"EVENTHUB_INSTANCE_HEARTBEAT": "0.2", "EVENTHUB_INSTANCE_TTL": "1"}
    first = Server(database_url, env=env).start()
    try:
        async with ws_connect(url(first, "subscriber=crash&topic=a")) as ws:
            await ws.recv_type("ready")
            await ws.request({"op": "subscribe", "topic": "b"})
            assert await rows_of(database_url, "crash") == ["a", "b"]
            first.kill()
    finally:
        first.kill()
    second = Server(database_url, env=env).start()
    try:
        await wait_rows_gone(database_url, "crash", within=10)
    finally:
        second.kill()


def prune(database_url: str, topic: str, keep: int) -> None:
    subprocess.run(
        [sys.executable, "-m", "eventhub_log.cli", "prune", "--keep", str(keep), "--topic", topic,
         "--database-url", database_url],
        check=True,
        capture_output=True,
    )  # fmt: skip


async def test_resume_past_retention_gets_a_gap_frame(server: Server, database_url: str) -> None:
    async with ws_connect(url(server)) as pub:
        await pub.recv_type("ready")
        for n in range(5):
            await pub.request({"op": "publish", "topic": "old", "payload": n})
    await asyncio.to_thread(prune, database_url, "old", 2)
    async with ws_connect(url(server, "topic=old&last_event_id=0")) as ws:
        await ws.recv_type("ready")
        gap = await ws.recv()
        assert gap == {"type": "gap", "topic": "old", "from_seq": 1, "to_seq": 3}
        assert [e["seq"] for e in await ws.events(2)] == [4, 5]
    async with ws_connect(url(server, "topic=old")) as ws:
        await ws.recv_type("ready")
        ack = await ws.request({"op": "resume", "after": "0"})
        assert ack["type"] == "ack"
        assert (await ws.recv())["type"] == "gap"
        assert [e["payload"] for e in await ws.events(2)] == [3, 4]
