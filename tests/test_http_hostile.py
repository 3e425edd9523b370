"""Hostile requests: each gets a 4xx with the contract's error body, never a 5xx,
and nothing is written."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .server import Server

LONG = "t" * 256
JSON = {"Content-Type": "application/json"}


def _nested(depth: int) -> str:
    return '{"payload": ' + "[" * depth + "]" * depth + "}"


# (name, method, path, request options, allowed statuses)
CASES: list[tuple[str, str, str, dict[str, Any], set[int]]] = [
    # Bad topics in the path.
    ("empty segment", "POST", "/v1/topics/a//b/events", {"json": {"payload": 1}}, {400}),
    ("leading slash", "POST", "/v1/topics//a/events", {"json": {"payload": 1}}, {400}),
    ("trailing slash", "POST", "/v1/topics/a//events", {"json": {"payload": 1}}, {400}),
    ("dot-dot encoded", "POST", "/v1/topics/a/%2E%2E/b/events", {"json": {"payload": 1}}, {400}),
    ("dot-dot alone", "POST", "/v1/topics/%2E%2E/events", {"json": {"payload": 1}}, {400}),
    ("dot segment", "POST", "/v1/topics/a/%2E/events", {"json": {"payload": 1}}, {400}),
    ("256 chars", "POST", f"/v1/topics/{LONG}/events", {"json": {"payload": 1}}, {400}),
    ("space", "POST", "/v1/topics/a%20b/events", {"json": {"payload": 1}}, {400}),
    ("non-ascii", "POST", "/v1/topics/caf%C3%A9/events", {"json": {"payload": 1}}, {400}),
    ("nul byte", "POST", "/v1/topics/a%00b/events", {"json": {"payload": 1}}, {400}),
    # Starlette's path patterns do not match a newline: no route, a 404.
    ("newline", "POST", "/v1/topics/a%0Ab/events", {"json": {"payload": 1}}, {400, 404}),
    ("history bad topic", "GET", "/v1/topics/a//b/events", {}, {400}),
    ("subscribers bad topic", "GET", "/v1/topics/a%20b/subscribers", {}, {400}),
    # Bad topics in a batch.
    (
        "batch empty segment",
        "POST",
        "/v1/events",
        {"json": {"events": [{"topic": "ok", "payload": 1}, {"topic": "a//b", "payload": 2}]}},
        {400},
    ),
    (
        "batch topic not a string",
        "POST",
        "/v1/events",
        {"json": {"events": [{"topic": 12, "payload": 1}]}},
        {400, 422},
    ),
    ("batch empty", "POST", "/v1/events", {"json": {"events": []}}, {400, 422}),
    (
        "batch too large",
        "POST",
        "/v1/events",
        {"json": {"events": [{"topic": "ok", "payload": i} for i in range(1001)]}},
        {400, 422},
    ),
    ("batch not a list", "POST", "/v1/events", {"json": {"events": {"topic": "ok"}}}, {422}),
    # Bad JSON and bodies.
    (
        "truncated JSON",
        "POST",
        "/v1/topics/ok/events",
        {"content": b'{"payload":', "headers": JSON},
        {400, 422},
    ),
    (
        "not JSON",
        "POST",
        "/v1/topics/ok/events",
        {"content": b"hello", "headers": JSON},
        {400, 422},
    ),
    ("empty body", "POST", "/v1/topics/ok/events", {"content": b"", "headers": JSON}, {400, 422}),
    ("JSON array body", "POST", "/v1/topics/ok/events", {"json": [1, 2]}, {400, 422}),
    ("JSON string body", "POST", "/v1/topics/ok/events", {"json": "payload"}, {400, 422}),
    (
        "wrong content type",
        "POST",
        "/v1/topics/ok/events",
        {"content": b'{"payload": 1}', "headers": {"Content-Type": "text/plain"}},
        {400, 415, 422},
    ),
    (
        "form body",
        "POST",
        "/v1/topics/ok/events",
        {"data": {"payload": "1"}},
        {400, 415, 422},
    ),
    ("missing payload", "POST", "/v1/topics/ok/events", {"json": {}}, {400, 422}),
    (
        "unknown field",
        "POST",
        "/v1/topics/ok/events",
        {"json": {"payload": 1, "extra": 2}},
        {400, 422},
    ),
    (
        "misspelt exclude",
        "POST",
        "/v1/topics/ok/events",
        {"json": {"payload": 1, "exclud": "me"}},
        {400, 422},
    ),
    (
        "unknown field in a batch item",
        "POST",
        "/v1/events",
        {"json": {"events": [{"topic": "ok", "payload": 1, "colour": "red"}]}},
        {400, 422},
    ),
    (
        "unknown batch field",
        "POST",
        "/v1/events",
        {"json": {"events": [], "atomic": False}},
        {400, 422},
    ),
    (
        "NaN payload",
        "POST",
        "/v1/topics/ok/events",
        {"content": b'{"payload": NaN}', "headers": JSON},
        {400, 422},
    ),
    (
        "Infinity payload",
        "POST",
        "/v1/topics/ok/events",
        {"content": b'{"payload": 1e999}', "headers": JSON},
        {400, 422},
    ),
    (
        "huge integer",
        "POST",
        "/v1/topics/ok/events",
        {"content": b'{"payload": ' + b"9" * 5000 + b"}", "headers": JSON},
        {400, 422},
    ),
    (
        "deep nesting",
        "POST",
        "/v1/topics/ok/events",
        {"content": _nested(5000).encode(), "headers": JSON},
        {400, 422},
    ),
    (
        "lone surrogate",
        "POST",
        "/v1/topics/ok/events",
        {"content": b'{"payload": {"k": "\\ud800"}}', "headers": JSON},
        {400, 422},
    ),
    (
        "exclude too long",
        "POST",
        "/v1/topics/ok/events",
        {"json": {"payload": 1, "exclude": LONG}},
        {400},
    ),
    (
        "exclude empty",
        "POST",
        "/v1/topics/ok/events",
        {"json": {"payload": 1, "exclude": ""}},
        {400},
    ),
    (
        "exclude not a string",
        "POST",
        "/v1/topics/ok/events",
        {"json": {"payload": 1, "exclude": 5}},
        {400, 422},
    ),
    (
        "invalid UTF-8",
        "POST",
        "/v1/topics/ok/events",
        {"content": b'{"payload": "\xff\xfe"}', "headers": JSON},
        {400, 422},
    ),
    (
        "idempotency key too long",
        "POST",
        "/v1/topics/ok/events",
        {"json": {"payload": 1}, "headers": {"Idempotency-Key": "k" * 300}},
        {400},
    ),
    (
        "idempotency key empty",
        "POST",
        "/v1/topics/ok/events",
        {"json": {"payload": 1}, "headers": {"Idempotency-Key": ""}},
        {400},
    ),
    # Huge bodies.
    (
        "huge body",
        "POST",
        "/v1/topics/ok/events",
        {"content": b'{"payload": "' + b"x" * (1024 * 1024 + 10) + b'"}', "headers": JSON},
        {413},
    ),
    (
        "huge batch body",
        "POST",
        "/v1/events",
        {"json": {"events": [{"topic": "ok", "payload": "x" * 2000}] * 600}},
        {413},
    ),
    # Absurd history queries.
    ("limit zero", "GET", "/v1/topics/ok/events?limit=0", {}, {400, 422}),
    ("limit too large", "GET", "/v1/topics/ok/events?limit=1001", {}, {400, 422}),
    ("limit negative", "GET", "/v1/topics/ok/events?limit=-5", {}, {400, 422}),
    ("limit not a number", "GET", "/v1/topics/ok/events?limit=lots", {}, {400, 422}),
    ("limit float", "GET", "/v1/topics/ok/events?limit=2.5", {}, {400, 422}),
    ("limit enormous", "GET", "/v1/topics/ok/events?limit=" + "9" * 40, {}, {400, 422}),
    ("after_seq negative", "GET", "/v1/topics/ok/events?after_seq=-1", {}, {400, 422}),
    ("after_seq text", "GET", "/v1/topics/ok/events?after_seq=abc", {}, {400, 422}),
    ("after_seq overflow", "GET", "/v1/topics/ok/events?after_seq=" + "9" * 25, {}, {400, 422}),
    (
        "before_seq overflow",
        "GET",
        "/v1/topics/ok/events?before_seq=9223372036854775808",
        {},
        {400, 422},
    ),
    ("order sideways", "GET", "/v1/topics/ok/events?order=sideways", {}, {400, 422}),
    ("since words", "GET", "/v1/topics/ok/events?since=yesterday", {}, {400, 422}),
    ("since month 13", "GET", "/v1/topics/ok/events?since=2026-13-01T00:00:00Z", {}, {400, 422}),
    ("since date only", "GET", "/v1/topics/ok/events?since=2026-01-01", {}, {400, 422}),
    ("since no offset", "GET", "/v1/topics/ok/events?since=2026-01-01T00:00:00", {}, {400, 422}),
    ("since epoch number", "GET", "/v1/topics/ok/events?since=1700000000", {}, {400, 422}),
    ("until hour 25", "GET", "/v1/topics/ok/events?until=2026-01-01T25:00:00Z", {}, {400, 422}),
    (
        "until bad offset",
        "GET",
        "/v1/topics/ok/events?until=2026-01-01T00:00:00%2B99:00",
        {},
        {400, 422},
    ),
    (
        "ndjson with bad filter",
        "GET",
        "/v1/topics/ok/events?since=soon",
        {"headers": {"Accept": "application/x-ndjson"}},
        {400, 422},
    ),
    # Subscriptions.
    ("subscribe bad topic", "PUT", "/v1/subscriptions/s1/topics/a//b", {}, {400}),
    ("subscribe dot-dot", "PUT", "/v1/subscriptions/s1/topics/%2E%2E", {}, {400}),
    ("subscribe long subscriber", "PUT", f"/v1/subscriptions/{LONG}/topics/ok", {}, {400}),
    ("subscribe control char", "PUT", "/v1/subscriptions/s%01x/topics/ok", {}, {400}),
    ("unsubscribe bad topic", "DELETE", "/v1/subscriptions/s1/topics/a%20b", {}, {400}),
    ("list control char", "GET", "/v1/subscriptions/s%01x", {}, {400}),
    # Wrong methods and paths.
    ("patch events", "PATCH", "/v1/topics/ok/events", {"json": {"payload": 1}}, {405}),
    ("put batch", "PUT", "/v1/events", {"json": {"events": []}}, {405}),
    ("unknown path", "POST", "/v1/topic/ok/events", {"json": {"payload": 1}}, {404}),
]


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        yield http


def test_hostile_requests_get_4xx_with_error_body_and_write_nothing(client: httpx.Client) -> None:
    problems: list[str] = []
    for name, method, path, options, allowed in CASES:
        response = client.request(method, path, **options)
        try:
            body = response.json()
            error = body["error"]
            well_formed = isinstance(error["code"], str) and isinstance(error["message"], str)
        except (ValueError, KeyError, TypeError):
            well_formed = False
        if response.status_code not in allowed or not well_formed:
            problems.append(f"{name}: {response.status_code} {response.text[:200]}")
    # A chunked body with no Content-Length is cut off at the limit as well.
    chunks = (b"x" * 65536 for _ in range(20))
    streamed = client.post("/v1/topics/ok/events", content=chunks, headers=JSON)
    if streamed.status_code != 413:
        problems.append(f"chunked huge body: {streamed.status_code}")
    assert not problems, "\n".join(problems)

    assert client.get("/v1/topics").json() == {"topics": [], "next": None}
    assert client.get("/v1/topics/ok/events").json() == {"events": [], "next": None}
    assert client.get("/v1/subscriptions/s1").json()["topics"] == []
    assert client.get("/v1/topics/ok/subscribers").json()["subscribers"] == []


def test_error_messages_name_the_rule(client: httpx.Client) -> None:
    topic = client.post("/v1/topics/a//b/events", json={"payload": 1}).json()["error"]
    assert topic["code"] == "invalid_topic"
    assert "no leading or trailing '/'" in topic["message"]
    since = client.get("/v1/topics/ok/events?since=yesterday").json()["error"]
    assert since["code"] == "invalid_time"
    assert "RFC 3339" in since["message"]
    limit = client.get("/v1/topics/ok/events?limit=5000").json()["error"]
    assert "limit" in limit["message"]
    unknown = client.post("/v1/topics/ok/events", json={"payload": 1, "extra": 2}).json()
    assert "extra" in unknown["error"]["message"]
    big = client.post("/v1/topics/ok/events", content=b"x" * (2 * 1024 * 1024), headers=JSON)
    assert big.json()["error"]["code"] == "body_too_large"
    assert json.loads(big.text)["error"]["message"].startswith("request body is larger")
