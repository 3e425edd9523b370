"""``GET /v1/stream``'s fast path (api/fast_stream.py) answers exactly as the
FastAPI route does, and leaves every request out of the ordinary to it.

The route is reached by adding an ``Origin`` header (the fast path leaves
browsers' requests to the CORS middleware; with no origins configured none is
installed, so the answer is otherwise the same), which makes a differential
test: the same request both ways, byte for byte.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from api.app import EventHubApp, create_app
from api.settings import Settings
from eventhub_log.tokens import mint_token

from .server import Server

SECRET = "fast-stream-secret-" + "x" * 32
ORIGIN = {"Origin": "http://elsewhere.example"}


def token(sub: str, grant: dict[str, Any]) -> str:
    return mint_token(sub, grant, secret=SECRET, ttl=600)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


READER = token("alice", {"subscribe": ["room:*"]})
ADMIN = token("root", {"admin": True})


@pytest.fixture
def auth_server(database_url: str) -> Iterator[Server]:
    running = Server(
        database_url,
        env={"EVENTHUB_AUTH_SECRET": SECRET, "EVENTHUB_MAX_TOPICS_PER_STREAM": "3"},
    ).start()
    yield running
    running.kill()


def raw_get(port: int, target: str, headers: dict[str, str]) -> bytes:
    """The whole answer to a GET that the server ends (a refusal)."""
    head = [f"GET {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return re.sub(rb"date: [^\r]*", b"date: -", received)


def opening(
    port: int, target: str, headers: dict[str, str], keep: list[socket.socket] | None = None
) -> tuple[bytes, bytes]:
    """The head and the first frame of a stream the server keeps open; the socket
    is closed, or left open in ``keep``."""
    head = [f"GET {target} HTTP/1.1", "Host: 127.0.0.1"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        received = b""
        deadline = time.monotonic() + 10
        while b"\r\n\r\n" not in received or b"\n\n" not in received.split(b"\r\n\r\n", 1)[1]:
            assert time.monotonic() < deadline, received
            chunk = sock.recv(65536)
            assert chunk, received
            received += chunk
    finally:
        if keep is None:
            sock.close()
        else:
            keep.append(sock)
    response_head, body = received.split(b"\r\n\r\n", 1)
    return re.sub(rb"date: [^\r]*", b"date: -", response_head), body.split(b"\n\n", 1)[0]


# (what is wrong, query, headers): each refused, before anything is sent.
REFUSED = [
    ("no topic", "", bearer(READER)),
    ("an empty topic", "topic=", bearer(READER)),
    ("an invalid topic", "topic=room:1&topic=a//b", bearer(READER)),
    ("too many topics", "topic=room:1&topic=room:2&topic=room:3&topic=room:4", bearer(READER)),
    ("an unknown from", "topic=room:1&from=latest", bearer(READER)),
    ("a cursor that is not one", "topic=room:1&last_event_id=nope", bearer(READER)),
    ("a bad Last-Event-ID", "topic=room:1", {**bearer(READER), "Last-Event-ID": "x"}),
    ("no token", "topic=room:1", {}),
    ("a bad token", "topic=room:1", bearer("not-a-token")),
    ("no subscribe right", "topic=ops:1", bearer(READER)),
    ("another's subscriber id", "topic=room:1&subscriber=bob", bearer(READER)),
    ("an invalid subscriber id", "topic=room:1&subscriber=a%0Ab", bearer(READER)),
]


@pytest.mark.parametrize(("case", "query", "headers"), REFUSED, ids=[c[0] for c in REFUSED])
def test_a_refusal_is_the_routes_byte_for_byte(
    auth_server: Server, case: str, query: str, headers: dict[str, str]
) -> None:
    target = f"/v1/stream?{query}"
    fast = raw_get(auth_server.port, target, headers)
    route = raw_get(auth_server.port, target, {**headers, **ORIGIN})
    assert fast.split(b"\r\n", 1)[0][9:12] in (b"400", b"401", b"403", b"422"), (case, fast)
    assert fast == route, case
    # Nothing was subscribed by any of them.
    rows = httpx.get(f"{auth_server.url}/v1/subscriptions/alice", headers=bearer(ADMIN)).json()
    assert rows.get("topics", []) == [], rows


def test_a_stream_opens_alike_both_ways_and_is_counted_under_the_route(
    auth_server: Server,
) -> None:
    target = "/v1/stream?topic=room:1&subscriber=alice:fast"
    fast_head, fast_ready = opening(auth_server.port, target, bearer(READER))
    route_head, route_ready = opening(
        auth_server.port, target.replace("fast", "slow"), {**bearer(READER), **ORIGIN}
    )
    assert fast_head.startswith(b"HTTP/1.1 200 ")
    assert fast_head == route_head
    assert fast_ready.replace(b"alice:fast", b"alice:slow") == route_ready
    assert b"\r\nevent: ready\nid: " in fast_ready
    metrics = httpx.get(f"{auth_server.url}/metrics", headers=bearer(ADMIN)).text
    line = 'eventhub_http_requests_total{method="GET",route="/v1/stream",status="200"} '
    counted = [float(row[len(line) :]) for row in metrics.splitlines() if row.startswith(line)]
    assert counted == [2.0], metrics


def test_a_stream_over_the_limit_is_refused_by_the_fast_path_and_counted(
    database_url: str,
) -> None:
    running = Server(database_url, env={"EVENTHUB_MAX_CONNECTIONS_PER_CLIENT": "1"}).start()
    open_streams: list[socket.socket] = []
    try:
        head, _ = opening(running.port, "/v1/stream?topic=t", {}, keep=open_streams)
        assert head.startswith(b"HTTP/1.1 200 ")
        refused = raw_get(running.port, "/v1/stream?topic=t", {})
        assert refused.startswith(b"HTTP/1.1 429 "), refused
        assert b'"code":"too_many_connections"' in refused
        metrics = httpx.get(f"{running.url}/metrics").text
        assert 'route="/v1/stream",status="429"} 1.0' in metrics, metrics
    finally:
        for sock in open_streams:
            sock.close()
        running.kill()


# Which way each request goes, in the process.


def ordinary_scope(query: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> Any:
    return {
        "type": "http",
        "method": "GET",
        "path": "/v1/stream",
        "root_path": "",
        "query_string": query,
        "headers": headers or [],
        "client": ("127.0.0.1", 1234),
    }


async def test_only_the_ordinary_request_takes_the_fast_path(database_url: str) -> None:
    app = create_app(Settings(database_url=database_url, auto_migrate=True, gc_freeze=False))
    assert isinstance(app, EventHubApp)
    async with app.router.lifespan_context(app):
        fast = app.fast_stream
        assert fast is not None
        taken = [
            b"topic=a",
            b"topic=a&topic=b&subscriber=s1",
            b"topic=a&from=earliest",
            b"topic=a&last_event_id=0&other=ignored",
        ]
        for query in taken:
            assert fast._response(ordinary_scope(query)) is not None, query
        cursor = [(b"last-event-id", b"0")]
        assert fast._response(ordinary_scope(b"topic=a", cursor)) is not None
        empty_body = [(b"content-length", b"0")]
        assert fast._response(ordinary_scope(b"topic=a", empty_body)) is not None
        left = [
            ordinary_scope(b"topic=a&subscriber=s1&subscriber=s2"),  # which one is the route's
            ordinary_scope(b"topic=a&from="),
            ordinary_scope(b"topic=a", cursor + cursor),
            ordinary_scope(b"topic=a", [(b"origin", b"http://x")]),
            ordinary_scope(b"topic=a", [(b"content-length", b"5")]),
            ordinary_scope(b"topic=a", [(b"transfer-encoding", b"chunked")]),
        ]
        for scope in left:
            assert fast._response(scope) is None, scope
        assert not fast.serves({**ordinary_scope(b"topic=a"), "method": "HEAD"})
        assert not fast.serves({**ordinary_scope(b"topic=a"), "root_path": "/hub"})
        assert not fast.serves({**ordinary_scope(b"topic=a"), "path": "/v1/stream/"})


async def test_the_fast_path_writes_chunks_straight_to_uvicorn_and_the_route_does_not(
    database_url: str,
) -> None:
    """Served by uvicorn's own protocol, a fast-path stream hands uvicorn's send
    down to the stream, whose chunks then skip the ASGI send (api/direct_writes.py);
    through the route (here: a browser's ``Origin``) the middleware wraps the send
    and every chunk takes the ASGI way. The events arrive alike either way."""
    import asyncio

    import uvicorn
    from uvicorn.server import ServerState

    from api.http_protocol import HeaderDeadlineProtocol

    app = create_app(Settings(database_url=database_url, auto_migrate=True, gc_freeze=False))
    config = uvicorn.Config(app, http=HeaderDeadlineProtocol, lifespan="off", log_level="error")
    config.load()
    loop = asyncio.get_running_loop()

    async def open_stream(headers: bytes) -> tuple[socket.socket, bytes]:
        ours, client = socket.socketpair()
        client.setblocking(False)
        protocol = HeaderDeadlineProtocol(config=config, server_state=ServerState(), app_state={})
        await loop.connect_accepted_socket(lambda: protocol, ours)
        request = b"GET /v1/stream?topic=room:a HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n"
        await loop.sock_sendall(client, request)
        return client, await read_until(client, b"event: ready")

    async def read_until(client: socket.socket, marker: bytes, received: bytes = b"") -> bytes:
        while marker not in received:
            part = await asyncio.wait_for(loop.sock_recv(client, 65536), 10)
            assert part, received
            received += part
        return received

    async with app.router.lifespan_context(app):
        fast, fast_head = await open_stream(b"")
        routed, routed_head = await open_stream(b"Origin: http://elsewhere.example\r\n")
        for head in (fast_head, routed_head):
            assert b"transfer-encoding: chunked" in head.lower()
        streams = list(app.state.sse_streams._streams)
        assert len(streams) == 2
        direct = sorted(stream._direct is not None for stream in streams)
        assert direct == [False, True]  # the fast path's is direct, the route's is not

        event = await app.state.hub.publish("room:a", None, {"n": 1})
        frame = f"id: {event.id}\n".encode()
        for client in (fast, routed):
            assert frame in await read_until(client, b'"n":1')
            client.close()
