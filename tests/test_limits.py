"""Per-client limits and hostile input (contract section 7), against a real server."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack

import httpx
import pytest
from httpx_sse import aconnect_sse
from websockets.exceptions import InvalidStatus

from eventhub_log.tokens import mint_token

from .server import Server
from .wsclient import ws_connect, ws_url

SECRET = "limits-secret-" + "x" * 32
GRANT = {"subscribe": ["*"], "publish": ["*"], "history": ["*"]}


def bearer(sub: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(sub, GRANT, secret=SECRET)}"}


@pytest.fixture
def limited(database_url: str) -> Iterator[Server]:
    server = Server(
        database_url,
        env={
            "EVENTHUB_AUTH_SECRET": SECRET,
            "EVENTHUB_MAX_CONNECTIONS_PER_CLIENT": "3",
            "EVENTHUB_MAX_TOPICS_PER_STREAM": "2",
        },
    ).start()
    yield server
    server.kill()


@pytest.fixture
async def client(limited: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=limited.url, timeout=10) as http:
        yield http


async def _open(stack: AsyncExitStack, client: httpx.AsyncClient, who: str) -> None:
    source = await stack.enter_async_context(
        aconnect_sse(client, "GET", "/v1/stream", params={"topic": "t"}, headers=bearer(who))
    )
    assert source.response.status_code == 200
    events = source.aiter_sse()
    assert (await anext(events)).event == "ready"
    # Held until the stack closes: a collected iterator would close the response.
    stack.push_async_callback(events.aclose)


async def test_connections_per_client(limited: Server, client: httpx.AsyncClient) -> None:
    url = ws_url(limited.url, "/v1/ws?topic=t")
    async with AsyncExitStack() as stack:
        for _ in range(2):
            await _open(stack, client, "alice")
        ws = await stack.enter_async_context(ws_connect(url, additional_headers=bearer("alice")))
        await ws.recv_type("ready")
        refused = await client.get("/v1/stream", params={"topic": "t"}, headers=bearer("alice"))
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "too_many_connections"
        assert "retry-after" in refused.headers
        with pytest.raises(InvalidStatus) as denied:
            async with ws_connect(url, additional_headers=bearer("alice")):
                pass
        assert denied.value.response.status_code == 429
        # Another client is not affected, and history exports do not count.
        await _open(stack, client, "bob")
        export = await client.get(
            "/v1/topics/t/events", headers={**bearer("alice"), "Accept": "application/x-ndjson"}
        )
        assert export.status_code == 200
    # Closed: alice's places are free again (the server notices the disconnects).
    for _ in range(50):
        answers = []
        async with AsyncExitStack() as stack:
            for _ in range(3):
                answers.append(
                    await stack.enter_async_context(
                        client.stream(
                            "GET", "/v1/stream", params={"topic": "t"}, headers=bearer("alice")
                        )
                    )
                )
            if all(answer.status_code == 200 for answer in answers):
                return
        await asyncio.sleep(0.1)
    pytest.fail("closed streams did not give their places back")


async def test_topics_per_stream_socket_and_subscriber(
    limited: Server, client: httpx.AsyncClient
) -> None:
    alice = bearer("alice")
    refused = await client.get("/v1/stream", params={"topic": ["a", "b", "c"]}, headers=alice)
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "too_many_topics"
    async with ws_connect(
        ws_url(limited.url, "/v1/ws?topic=a&subscriber=alice:ws"), additional_headers=alice
    ) as ws:
        await ws.recv_type("ready")
        assert (await ws.request({"op": "subscribe", "topic": "b"}))["type"] == "ack"
        over = await ws.request({"op": "subscribe", "topic": "c"})
        assert (over["type"], over["code"]) == ("error", "too_many_topics")
        # Subscribing again to one it has is no growth; the socket stays usable.
        assert (await ws.request({"op": "subscribe", "topic": "a"}))["type"] == "ack"
    for topic in ("x", "y"):
        put = await client.put(f"/v1/subscriptions/alice/topics/{topic}", headers=alice)
        assert put.status_code == 200
    over_rest = await client.put("/v1/subscriptions/alice/topics/z", headers=alice)
    assert over_rest.status_code == 400
    assert over_rest.json()["error"]["code"] == "too_many_topics"
    rows = (await client.get("/v1/subscriptions/alice", headers=alice)).json()["topics"]
    assert sorted(rows) == ["x", "y"]


async def test_bad_input_is_never_a_5xx(limited: Server, client: httpx.AsyncClient) -> None:
    alice = bearer("alice")
    for name, value in (
        ("since", "0001-01-01T00:00:00+23:59"),
        ("until", "9999-12-31T23:59:59-23:59"),
    ):
        response = await client.get("/v1/topics/t/events", params={name: value}, headers=alice)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "invalid_time"
    async with ws_connect(ws_url(limited.url, "/v1/ws?topic=t"), additional_headers=alice) as ws:
        await ws.recv_type("ready")
        await ws.send("[" * 100_000)
        error = await ws.recv_type("error")
        assert error["code"] == "invalid_json"
        assert (await ws.request({"op": "subscribe", "topic": "t2"}))["type"] == "ack"


def test_trickled_request_headers_are_cut_off(database_url: str) -> None:
    server = Server(database_url, env={"EVENTHUB_HEADER_TIMEOUT": "1"}).start()
    try:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as slow:
            slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            answer = b""
            with contextlib.suppress(OSError):
                for byte in b"X-Slow: " + b"y" * 40:
                    slow.sendall(bytes([byte]))
                    time.sleep(0.1)
                    slow.setblocking(False)
                    with contextlib.suppress(BlockingIOError):
                        chunk = slow.recv(4096)
                        if not chunk:
                            break
                        answer += chunk
                    slow.setblocking(True)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert time.monotonic() - started < 3
        # A connection that says nothing at all is closed too.
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as silent:
            assert silent.recv(4096).startswith(b"HTTP/1.1 408")
        # Ordinary requests, and streams that outlive the deadline, are unaffected.
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert client.get("/healthz").status_code == 200
            with client.stream("GET", "/v1/stream", params={"topic": "t"}) as stream:
                lines = stream.iter_lines()
                assert next(lines) == "event: ready"
                time.sleep(1.5)
                assert client.post("/v1/topics/t/events", json={"payload": 1}).status_code == 201
                assert any(line.startswith("data:") and '"payload":1' in line for line in lines)
    finally:
        server.kill()


async def test_exports_nobody_reads_starve_nothing(
    limited: Server, client: httpx.AsyncClient
) -> None:
    """Exports whose readers never read hold no pooled connection: history,
    publishing and /readyz keep answering promptly."""
    alice = bearer("alice")
    payload = {"text": "x" * 2000}
    for _ in range(12):  # about 10 MB: far more than the sockets' buffers
        batch = {"events": [{"topic": "big", "payload": payload} for _ in range(400)]}
        assert (await client.post("/v1/events", json=batch, headers=alice)).status_code == 201
    request = (
        "GET /v1/topics/big/events HTTP/1.1\r\nHost: x\r\nAccept: application/x-ndjson\r\n"
        f"Authorization: {alice['Authorization']}\r\n\r\n"
    ).encode()
    stalled = []
    try:
        for _ in range(30):
            sock = socket.create_connection(("127.0.0.1", limited.port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(request)
            stalled.append(sock)  # never read: the server's writes back up
        await asyncio.sleep(1.0)
        for _ in range(3):
            started = time.monotonic()
            page = await client.get("/v1/topics/big/events", params={"limit": 5}, headers=alice)
            assert page.status_code == 200
            sent = await client.post("/v1/topics/t/events", json={"payload": 1}, headers=alice)
            assert sent.status_code == 201
            assert (await client.get("/readyz")).status_code == 200
            assert time.monotonic() - started < 3.0
    finally:
        for sock in stalled:
            sock.close()
