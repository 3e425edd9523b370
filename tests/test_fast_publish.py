"""The publish routes' fast path (api/fast_publish.py) answers exactly as the
FastAPI routes do, and hands every other request to them untouched."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest

from api import fast_publish
from api.app import EventHubApp, create_app
from api.settings import Settings
from eventhub_log import DatabaseUnavailable
from eventhub_log.notify.postgres import asyncpg_dsn

from .server import Server

BODY = b'{"payload": {"text": "hello"}, "exclude": null}'
FAST = "application/json"
# Valid, and left to the route: the fast path takes only the bare media type.
ROUTE = "application/json; charset=utf-8"
TEMPLATE = "/v1/topics/{topic:path}/events"


def raw_post(
    port: int, path: str, body: bytes | list[bytes], headers: dict[str, str] | None = None
) -> bytes:
    """The response bytes, as they left the server; a list of parts is sent chunked,
    a pause between them, so that the app receives them as separate messages."""
    head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    head += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if isinstance(body, list):
        head.append("Transfer-Encoding: chunked")
    elif "Content-Length" not in (headers or {}):
        head.append(f"Content-Length: {len(body)}")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        if isinstance(body, list):
            for part in body:
                sock.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                time.sleep(0.05)
            sock.sendall(b"0\r\n\r\n")
        else:
            sock.sendall(body)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def normalised(response: bytes) -> bytes:
    """What differs between two publishes of the same request: the time, the id
    (and so the length), and the hash, which covers the time, topic and seq."""
    response = re.sub(rb"date: [^\r]*", b"date: -", response)
    response = re.sub(rb"content-length: \d+", b"content-length: -", response)
    response = re.sub(rb'"id":"[^"]*"', b'"id":"-"', response)
    response = re.sub(rb'"hash":"[0-9a-f]{64}"', b'"hash":"-"', response)
    return re.sub(rb'"published_at":"[^"]*"', b'"published_at":"-"', response)


def test_fast_path_and_route_answer_byte_for_byte_alike(server: Server) -> None:
    port = server.port
    fast = raw_post(port, "/v1/topics/a/events", BODY, {"Content-Type": FAST})
    route = raw_post(port, "/v1/topics/b/events", BODY, {"Content-Type": ROUTE})
    assert fast.startswith(b"HTTP/1.1 201 ")
    assert normalised(fast).replace(b'"topic":"a"', b'"topic":"b"') == normalised(route)

    # An idempotent publish and its retries, each way.
    first = raw_post(
        port, "/v1/topics/c/events", BODY, {"Content-Type": FAST, "Idempotency-Key": "k1"}
    )
    assert first.startswith(b"HTTP/1.1 201 ")
    retries = [
        raw_post(port, "/v1/topics/c/events", BODY, {"Content-Type": kind, "Idempotency-Key": "k1"})
        for kind in (FAST, ROUTE)
    ]
    assert retries[0].startswith(b"HTTP/1.1 200 ")
    assert normalised(retries[0]) == normalised(retries[1])
    assert retries[0].split(b"\r\n\r\n")[1] == first.split(b"\r\n\r\n")[1]
    other = raw_post(
        port, "/v1/topics/d/events", BODY, {"Content-Type": ROUTE, "Idempotency-Key": "k2"}
    )
    assert normalised(first).replace(b'"topic":"c"', b'"topic":"d"') == normalised(other)

    # A chunked body with no Content-Length.
    parts = [BODY[:10], BODY[10:30], BODY[30:]]
    fast = raw_post(port, "/v1/topics/e/events", parts, {"Content-Type": FAST})
    route = raw_post(port, "/v1/topics/f/events", parts, {"Content-Type": ROUTE})
    assert fast.startswith(b"HTTP/1.1 201 ")
    assert normalised(fast).replace(b'"topic":"e"', b'"topic":"f"') == normalised(route)

    # The batch route.
    batch = b'{"events": [{"topic": "g", "payload": 1}, {"topic": "h", "payload": 2}]}'
    fast = raw_post(port, "/v1/events", batch, {"Content-Type": FAST})
    route = raw_post(port, "/v1/events", batch, {"Content-Type": ROUTE})
    assert fast.startswith(b"HTTP/1.1 201 ")
    seqs = normalised(route).replace(b'"seq":2', b'"seq":1')
    assert normalised(fast) == seqs

    # A hub error (the topic) from the fast path, and from the route.
    fast = raw_post(port, "/v1/topics/x//y/events", BODY, {"Content-Type": FAST})
    route = raw_post(port, "/v1/topics/x//y/events", BODY, {"Content-Type": ROUTE})
    assert fast.startswith(b"HTTP/1.1 400 ")
    assert normalised(fast) == normalised(route)

    events = httpx.get(f"{server.url}/v1/topics/c/events").json()["events"]
    assert len(events) == 1


@pytest.fixture
def small_limit_server(database_url: str) -> Iterator[Server]:
    running = Server(database_url, args=["--body-limit", "100"]).start()
    yield running
    running.kill()


def test_body_over_the_limit_gets_the_contract_413_and_writes_nothing(
    small_limit_server: Server,
) -> None:
    port = small_limit_server.port
    exact = b'{"payload": "' + b"x" * (100 - 15) + b'"}'
    assert len(exact) == 100
    over = exact.replace(b'"x', b'"xx')
    headers = {"Content-Type": FAST}
    # Told by its Content-Length, the server answers before reading the body (so
    # none is sent: unread bytes at close would reset the connection), or
    # chunked, once the bytes pass the limit.
    head_only = {**headers, "Content-Length": str(len(over))}
    bodies = set()
    for body, sent in ((b"", head_only), ([over[:50], over[50:]], headers)):
        answer = raw_post(port, "/v1/topics/big/events", body, sent)
        assert answer.startswith(b"HTTP/1.1 413 "), answer
        bodies.add(answer.split(b"\r\n\r\n", 1)[1])
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {
            "error": {
                "code": "body_too_large",
                "message": "request body is larger than the limit of 100 bytes",
            }
        }
    assert len(bodies) == 1, bodies  # the same bytes, however the limit was found
    url = small_limit_server.url
    assert httpx.get(f"{url}/v1/topics/big/events").json()["events"] == []
    # Up to the limit is fine, either way.
    assert raw_post(port, "/v1/topics/big/events", exact, headers).startswith(b"HTTP/1.1 201 ")
    parts = [exact[:60], exact[60:]]
    assert raw_post(port, "/v1/topics/big/events", parts, headers).startswith(b"HTTP/1.1 201 ")
    assert len(httpx.get(f"{url}/v1/topics/big/events").json()["events"]) == 2


def _count(metrics: str, status: int, route: str = TEMPLATE) -> float:
    line = f'eventhub_http_requests_total{{method="POST",route="{route}",status="{status}"}} '
    for row in metrics.splitlines():
        if row.startswith(line):
            return float(row.removeprefix(line))
    return 0.0


def test_metrics_count_fast_path_requests_under_the_route_template(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for i in range(3):
            assert client.post("/v1/topics/m/events", json={"payload": i}).status_code == 201
        batch = {"events": [{"topic": "m", "payload": 9}]}
        assert client.post("/v1/events", json=batch).status_code == 201
        assert client.post("/v1/topics/m/events", json={"nope": 1}).status_code == 422
        assert client.post("/v1/topics/a//b/events", json={"payload": 1}).status_code == 400
        metrics = client.get("/metrics").text
    assert _count(metrics, 201) == 3
    assert _count(metrics, 201, "/v1/events") == 1
    assert _count(metrics, 422) == 1
    assert _count(metrics, 400) == 1
    assert "eventhub_publish_latency_seconds_count 4.0" in metrics
    assert "eventhub_events_published_total 4.0" in metrics
    duration = 'eventhub_http_request_duration_seconds_count{method="POST",route="%s"} 5.0'
    assert duration % TEMPLATE in metrics


# In the process: which way each request went, and hub failures on demand.


@asynccontextmanager
async def running_app(database_url: str) -> AsyncIterator[tuple[EventHubApp, httpx.AsyncClient]]:
    app = create_app(Settings(database_url=database_url, auto_migrate=True, gc_freeze=False))
    assert isinstance(app, EventHubApp)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield app, client


@pytest.fixture
def handed_over(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths of the requests the fast path left to the full app."""
    paths: list[str] = []
    original = fast_publish.FastPublish._hand_over

    async def counting(scope: Any, *args: Any) -> None:
        paths.append(scope["path"])
        await original(scope, *args)

    monkeypatch.setattr(fast_publish.FastPublish, "_hand_over", staticmethod(counting))
    return paths


async def test_ordinary_publishes_take_the_fast_path_and_the_rest_the_route(
    database_url: str, handed_over: list[str]
) -> None:
    async with running_app(database_url) as (_, client):
        ok = await client.post("/v1/topics/t/events", json={"payload": 1})
        keyed = await client.post(
            "/v1/topics/t/events", json={"payload": 2}, headers={"Idempotency-Key": "k"}
        )
        batch = await client.post("/v1/events", json={"events": [{"topic": "t", "payload": 3}]})
        bad_topic = await client.post("/v1/topics/a//b/events", json={"payload": 1})
        assert [r.status_code for r in (ok, keyed, batch, bad_topic)] == [201, 201, 201, 400]
        assert handed_over == []

        invalid = await client.post("/v1/topics/t/events", json={"payload": 1, "extra": 2})
        plain = await client.post(
            "/v1/topics/t/events", content=b'{"payload": 1}', headers={"Content-Type": ROUTE}
        )
        text = await client.post(
            "/v1/topics/t/events", content=b'{"payload": 1}', headers={"Content-Type": "text/plain"}
        )
        two_keys = await client.post(
            "/v1/topics/t/events",
            content=b'{"payload": 1}',
            headers=[("Content-Type", FAST), ("Idempotency-Key", "a"), ("Idempotency-Key", "b")],
        )
        assert [r.status_code for r in (invalid, plain, text, two_keys)] == [422, 201, 415, 201]
        assert invalid.json()["error"]["code"] == "validation_error"
        assert text.json()["error"]["code"] == "unsupported_media_type"
        assert len(handed_over) == 4
        history = (await client.get("/v1/topics/t/events")).json()["events"]
        assert [event["payload"] for event in history] == [1, 2, 3, 1, 1]


async def test_a_hub_error_once_publishing_is_answered_and_not_retried(
    database_url: str, handed_over: list[str]
) -> None:
    async with running_app(database_url) as (app, client):
        hub = app.state.hub
        calls: list[str] = []

        async def down(*args: Any, **_kwargs: Any) -> Any:
            calls.append(args[0])
            raise DatabaseUnavailable("database unavailable: the test pulled the plug")

        for name, kwargs in [
            ("publish", {"json": {"payload": 1}}),
            ("publish_once", {"json": {"payload": 1}, "headers": {"Idempotency-Key": "k"}}),
        ]:
            calls.clear()
            original = getattr(hub, name)
            setattr(hub, name, down)
            try:
                response = await client.post("/v1/topics/t/events", **kwargs)
            finally:
                setattr(hub, name, original)
            assert len(calls) == 1, name
            assert response.status_code == 503
            assert response.headers["retry-after"] == "1"
            error = response.json()["error"]
            assert error["code"] == "database_unavailable"
            # What a client can act on, and an id to find the rest in the log; the
            # library's own words stay out of the answer.
            retry = "the database is unavailable or busy; retry shortly"
            assert error["message"] == f"{retry} (request {error['request_id']})"
            assert "pulled the plug" not in response.text
        assert handed_over == []
        metrics = (await client.get("/metrics")).text
        assert _count(metrics, 503) == 2
        assert (await client.get("/v1/topics/t/events")).json()["events"] == []


def test_a_database_outage_answers_503s_that_append_nothing_then_recovers(
    pg_database_url: str,
) -> None:
    # No heartbeat in the way: the publish is the first to find its connection dead.
    env = {"EVENTHUB_INSTANCE_HEARTBEAT": "60", "EVENTHUB_INSTANCE_TTL": "600"}
    server = Server(pg_database_url, env=env).start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert client.post("/v1/topics/t/events", json={"payload": 0}).status_code == 201

            async def terminate() -> int:
                admin = await asyncpg.connect(asyncpg_dsn(pg_database_url))
                try:
                    killed: int = await admin.fetchval(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                    return killed
                finally:
                    await admin.close()

            assert asyncio.run(terminate()) >= 1
            # A dead pooled connection fails the request that meets it, then a
            # fresh one serves. Whether a publish meets one is a race: the hub's
            # own readers (the LISTEN connection reconnecting, the head poll) may
            # find the dead connections first and have the pool replaced. So any
            # number of 503s may come, each with the contract's body; none of
            # them stores anything, and the metrics count each once.
            # (test_a_hub_error_once_publishing_is_answered_and_not_retried shows the
            # 503 itself deterministically.)
            refused = 0
            for attempt in range(1, 50):
                answer = client.post("/v1/topics/t/events", json={"payload": attempt})
                if answer.status_code == 201:
                    break
                assert answer.status_code == 503, answer.text
                assert answer.headers["retry-after"] == "1"
                assert answer.json()["error"]["code"] == "database_unavailable"
                refused += 1
            assert answer.status_code == 201, "the server did not recover"
            events = client.get("/v1/topics/t/events").json()["events"]
            assert [event["payload"] for event in events] == [0, attempt]
            assert _count(client.get("/metrics").text, 503) == refused
    finally:
        server.kill()
