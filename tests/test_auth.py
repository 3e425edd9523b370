"""Who may do what, against a real ``eventhub-log serve`` with a key, on both databases.

For each route and WebSocket op: a token that may, one that may not, and none.
Every refusal is checked to have written nothing (the topics with their counts
and the subscription rows, read with an admin token, are the same before and after).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest
from httpx_sse import aconnect_sse
from websockets.exceptions import ConnectionClosed, InvalidStatus

from eventhub_log.tokens import mint_token

from .server import Server
from .wsclient import ws_connect, ws_url

SECRET = "test-secret-" + "x" * 32
ADMIN = {"admin": True}


def token(sub: str, grant: dict[str, Any], ttl: float | None = 600) -> str:
    return mint_token(sub, grant, secret=SECRET, ttl=ttl)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


@pytest.fixture
def auth_server(database_url: str) -> Iterator[Server]:
    running = Server(
        database_url, env={"EVENTHUB_AUTH_SECRET": SECRET, "EVENTHUB_AUTH_LEEWAY": "0"}
    ).start()
    yield running
    running.kill()


@pytest.fixture
def admin(auth_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=auth_server.url, timeout=10, headers=bearer(token("root", ADMIN))
    ) as client:
        yield client


def snapshot(admin: httpx.Client) -> Any:
    """What a refused request must not change."""
    topics = admin.get("/v1/topics").json()
    rows = {who: admin.get(f"/v1/subscriptions/{who}").json() for who in ("alice", "bob")}
    return topics, rows


@dataclass
class Case:
    name: str
    method: str
    path: str
    may: dict[str, Any]
    may_not: dict[str, Any]
    kwargs: dict[str, Any] = field(default_factory=dict)
    stream: bool = False


CASES = [
    Case(
        "publish",
        "POST",
        "/v1/topics/room:1/events",
        may={"publish": ["room:*"]},
        may_not={"subscribe": ["room:*"], "history": ["*"]},
        kwargs={"json": {"payload": {"n": 1}}},
    ),
    Case(
        "publish a batch (all or nothing)",
        "POST",
        "/v1/events",
        may={"publish": ["room:*", "ops:*"]},
        may_not={"publish": ["room:*"]},  # the ops:1 event is refused: so is room:1's
        kwargs={
            "json": {
                "events": [{"topic": "room:1", "payload": 1}, {"topic": "ops:1", "payload": 2}]
            }
        },
    ),
    Case(
        "publish with an idempotency key",
        "POST",
        "/v1/topics/room:1/events",
        may={"publish": ["room:1"]},
        may_not={"publish": ["room:2"]},
        kwargs={"json": {"payload": 3}, "headers": {"Idempotency-Key": "k-1"}},
    ),
    Case(
        "history",
        "GET",
        "/v1/topics/room:1/events",
        may={"history": ["room:*"]},
        may_not={"subscribe": ["room:*"], "publish": ["room:*"]},
    ),
    Case(
        "NDJSON export",
        "GET",
        "/v1/topics/room:1/events",
        may={"history": ["room:1"]},
        may_not={"history": ["ops:*"]},
        kwargs={"headers": {"Accept": "application/x-ndjson"}},
    ),
    Case(
        "subscribers of a topic",
        "GET",
        "/v1/topics/room:1/subscribers",
        may={"subscribe": ["room:*"]},
        may_not={"history": ["room:*"]},
    ),
    Case(
        "subscribe over REST",
        "PUT",
        "/v1/subscriptions/alice/topics/room:1",
        may={"subscribe": ["room:*"]},
        may_not={"history": ["room:*"]},
    ),
    Case(
        "subscribe another subscriber id",
        "PUT",
        "/v1/subscriptions/bob/topics/room:1",
        may={"subscribe": ["room:*"], "subscribers": ["bob"]},
        may_not={"subscribe": ["room:*"]},
    ),
    Case(
        "unsubscribe someone else's row (muting them)",
        "DELETE",
        "/v1/subscriptions/bob/topics/room:1",
        may={"subscribers": ["bob"]},
        may_not={"subscribe": ["*"], "history": ["*"]},
    ),
    Case(
        "read someone else's subscriptions",
        "GET",
        "/v1/subscriptions/bob",
        may={"subscribers": ["b*"]},
        may_not={"subscribers": ["alice"]},
    ),
    Case(
        "remove all of someone else's rows",
        "DELETE",
        "/v1/subscriptions/bob",
        may={"subscribers": ["{sub}", "bob"]},
        may_not={"subscribers": ["{sub}:*"]},
    ),
    Case(
        "metrics",
        "GET",
        "/metrics",
        may=ADMIN,
        may_not={"publish": ["*"], "subscribe": ["*"], "history": ["*"], "subscribers": ["*"]},
    ),
    Case(
        "SSE stream",
        "GET",
        "/v1/stream?topic=room:1&topic=ops:1",
        may={"subscribe": ["room:*", "ops:1"]},
        may_not={"subscribe": ["room:*"], "history": ["ops:1"]},
        stream=True,
    ),
    Case(
        "SSE stream as another subscriber",
        "GET",
        "/v1/stream?topic=room:1&subscriber=bob",
        may={"subscribe": ["room:*"], "subscribers": ["bob"]},
        may_not={"subscribe": ["room:*"]},
        stream=True,
    ),
]


def _send(client: httpx.Client, case: Case, headers: dict[str, str]) -> httpx.Response:
    kwargs = dict(case.kwargs)
    kwargs["headers"] = {**kwargs.get("headers", {}), **headers}
    if not case.stream:
        return client.request(case.method, case.path, **kwargs)
    with client.stream(case.method, case.path, **kwargs) as response:
        if response.status_code == 200:
            first = next(response.iter_lines())
            assert first == "event: ready"
        else:
            response.read()
        return response


def test_who_may_do_what_on_every_route(auth_server: Server, admin: httpx.Client) -> None:
    with httpx.Client(base_url=auth_server.url, timeout=10) as client:
        for case in CASES:
            # The scene: one event on each topic, and bob subscribed to room:1.
            assert admin.post("/v1/topics/room:1/events", json={"payload": 0}).status_code == 201
            assert admin.post("/v1/topics/ops:1/events", json={"payload": 0}).status_code == 201
            assert admin.put("/v1/subscriptions/bob/topics/room:1").status_code == 200
            before = snapshot(admin)

            anonymous = _send(client, case, {})
            assert anonymous.status_code == 401, (case.name, anonymous.text)
            assert anonymous.json()["error"]["code"] == "unauthorized"
            assert anonymous.headers["www-authenticate"].startswith("Bearer"), case.name

            refused = _send(client, case, bearer(token("alice", case.may_not)))
            assert refused.status_code == 403, (case.name, refused.text)
            assert refused.json()["error"]["code"] == "forbidden"

            bad = _send(client, case, bearer(token("alice", case.may)[:-3] + "abc"))
            assert bad.status_code == 401, case.name
            assert "error=" in bad.headers["www-authenticate"]

            assert snapshot(admin) == before, f"{case.name}: a refusal wrote something"

            allowed = _send(client, case, bearer(token("alice", case.may)))
            assert allowed.status_code in (200, 201, 204), (case.name, allowed.text)


def test_open_routes_need_no_token(auth_server: Server) -> None:
    with httpx.Client(base_url=auth_server.url, timeout=10) as client:
        for path in ("/healthz", "/readyz", "/docs", "/openapi.json"):
            assert client.get(path).status_code == 200, path
        schema = client.get("/openapi.json").json()
        schemes = schema["components"]["securitySchemes"]
        assert any(s.get("scheme") == "bearer" for s in schemes.values())
        publish = schema["paths"]["/v1/topics/{topic}/events"]["post"]
        assert {"401", "403", "415"} <= set(publish["responses"])


def test_bad_tokens_are_401_and_never_echoed(auth_server: Server) -> None:
    now = int(time.time())

    cases = {
        "expired": jwt.encode({"sub": "a", "exp": now - 30, "eventhub": ADMIN}, SECRET, "HS256"),
        "no sub": jwt.encode({"eventhub": ADMIN}, SECRET, "HS256"),
        "other key": jwt.encode({"sub": "a", "eventhub": ADMIN}, "y" * 40, "HS256"),
        "malformed": "not.a.token",
        "bad grant": jwt.encode({"sub": "a", "eventhub": {"admin": "yes"}}, SECRET, "HS256"),
    }
    with httpx.Client(base_url=auth_server.url, timeout=10) as client:
        for name, value in cases.items():
            for headers, params in (
                (bearer(value), {}),
                ({}, {"access_token": value}),
                ({"Cookie": f"eventhub_token={value}"}, {}),
            ):
                response = client.get("/v1/topics/room:1/events", headers=headers, params=params)
                assert response.status_code == 401, (name, response.text)
                assert value not in response.text
                assert response.headers["www-authenticate"].startswith("Bearer")
        basic = client.get("/v1/topics", headers={"Authorization": "Basic YTpi"})
        assert basic.status_code == 401


def test_publisher_is_the_tokens_sub_and_tokens_stay_out_of_links(
    auth_server: Server, admin: httpx.Client
) -> None:
    alice = token("alice", {"publish": ["room:*"], "history": ["room:*"]})
    with httpx.Client(base_url=auth_server.url, timeout=10) as client:
        one = client.post("/v1/topics/room:1/events", json={"payload": 1}, headers=bearer(alice))
        assert one.status_code == 201
        batch = client.post(
            "/v1/events",
            json={"events": [{"topic": "room:1", "payload": 2}]},
            params={"access_token": alice},
        )
        assert batch.status_code == 201, batch.text
        assert batch.json()["events"][0]["publisher"] == "alice"
        page = client.get(
            "/v1/topics/room:1/events", params={"limit": 1, "access_token": alice}
        ).json()
        assert page["events"][0]["publisher"] == "alice"
        assert page["next"] is not None
        assert "access_token" not in page["next"]
        assert alice not in page["next"]
    assert admin.post("/v1/topics/room:1/events", json={"payload": 3}).status_code == 201
    events = admin.get("/v1/topics/room:1/events").json()["events"]
    assert [event["publisher"] for event in events] == ["alice", "alice", "root"]


def test_topic_list_shows_only_what_the_token_may_read(
    auth_server: Server, admin: httpx.Client
) -> None:
    for topic in ("room:1", "ops:1", "notifications:alice", "notifications:bob", "secret"):
        assert admin.post(f"/v1/topics/{topic}/events", json={"payload": 0}).status_code == 201
    reader = token("alice", {"subscribe": ["notifications:{sub}"], "history": ["room:*"]})
    with httpx.Client(base_url=auth_server.url, timeout=10) as client:
        listed = client.get("/v1/topics", headers=bearer(reader)).json()["topics"]
        assert sorted(item["topic"] for item in listed) == ["notifications:alice", "room:1"]
        assert client.get("/v1/topics", headers=bearer(token("carol", {}))).json() == {
            "topics": [],
            "next": None,
        }
        assert client.get("/v1/topics").status_code == 401
    assert len(admin.get("/v1/topics").json()["topics"]) == 5


async def test_nobody_can_mute_another_persons_stream(auth_server: Server) -> None:
    alice = token("alice", {"subscribe": ["room:*"]})
    bob = token("bob", {"subscribe": ["room:*"], "publish": ["room:*"]})
    async with (
        httpx.AsyncClient(base_url=auth_server.url, timeout=10) as client,
        aconnect_sse(
            client, "GET", "/v1/stream", params={"topic": "room:1"}, headers=bearer(alice)
        ) as source,
    ):
        events = source.aiter_sse()
        ready = await anext(events)
        subscriber = json.loads(ready.data)["subscriber"]
        assert subscriber.startswith("alice:")  # {sub}:<random>
        for path in (
            f"/v1/subscriptions/{subscriber}/topics/room:1",
            f"/v1/subscriptions/{subscriber}",
        ):
            refused = await client.delete(path, headers=bearer(bob))
            assert refused.status_code == 403
            assert subscriber in refused.json()["error"]["message"]
        sent = await client.post(
            "/v1/topics/room:1/events", json={"payload": "still here"}, headers=bearer(bob)
        )
        assert sent.status_code == 201
        event = await asyncio.wait_for(anext(events), 10)
        assert json.loads(event.data)["payload"] == "still here"


async def test_websocket_handshake_and_frames(auth_server: Server, admin: httpx.Client) -> None:
    url = ws_url(auth_server.url, "/v1/ws")
    alice = token("alice", {"subscribe": ["room:*"], "publish": ["room:1"]})
    for headers, query, status in (
        ({}, "?topic=room:1", 401),
        (bearer("garbage"), "?topic=room:1", 401),
        (bearer(alice), "?topic=secret", 403),
        (bearer(alice), "?topic=room:1&subscriber=bob", 403),
    ):
        with pytest.raises(InvalidStatus) as refused:
            async with ws_connect(url + query, additional_headers=headers):
                pass
        assert refused.value.response.status_code == status
    before = snapshot(admin)
    async with ws_connect(url + "?topic=room:1", additional_headers=bearer(alice)) as ws:
        ready = await ws.recv_type("ready")
        assert ready["subscriber"].startswith("alice:")
        denied = await ws.request({"op": "subscribe", "topic": "secret"})
        assert (denied["type"], denied["code"]) == ("error", "forbidden")
        denied = await ws.request({"op": "publish", "topic": "room:2", "payload": 1})
        assert (denied["type"], denied["code"]) == ("error", "forbidden")
        assert snapshot(admin) == before
        # The socket stayed open: an allowed frame still works.
        ack = await ws.request({"op": "subscribe", "topic": "room:3"})
        assert ack["type"] == "ack"
        ack = await ws.request({"op": "publish", "topic": "room:1", "payload": {"n": 1}})
        assert ack["type"] == "ack"
        (event,) = await ws.events(1)
        assert event["payload"] == {"n": 1}
    history = (await asyncio.to_thread(admin.get, "/v1/topics/room:1/events")).json()["events"]
    assert history[-1]["publisher"] == "alice"
    # The access_token query parameter works for a handshake too.
    async with ws_connect(url + f"?topic=room:1&access_token={alice}") as ws:
        assert (await ws.recv_type("ready"))["subscriber"].startswith("alice:")


async def test_websocket_cookie_needs_the_hubs_own_origin(auth_server: Server) -> None:
    url = ws_url(auth_server.url, "/v1/ws?topic=room:1")
    cookie = {"Cookie": f"eventhub_token={token('alice', {'subscribe': ['room:*']})}"}
    host = auth_server.url.removeprefix("http://")
    async with ws_connect(url, additional_headers=cookie, origin=f"http://{host}") as ws:  # type: ignore[arg-type]
        assert (await ws.recv_type("ready"))["type"] == "ready"
    with pytest.raises(InvalidStatus) as refused:
        async with ws_connect(url, additional_headers=cookie, origin="http://evil.example"):  # type: ignore[arg-type]
            pass
    assert refused.value.response.status_code == 403


async def test_an_expired_stream_closes_and_resumes_with_a_fresh_token(
    auth_server: Server, admin: httpx.Client
) -> None:
    grant = {"subscribe": ["room:*"]}
    published: list[str] = []

    def publish(n: int) -> None:
        response = admin.post("/v1/topics/room:1/events", json={"payload": n})
        published.append(response.json()["id"])

    received: list[tuple[str, int]] = []
    async with httpx.AsyncClient(base_url=auth_server.url, timeout=20) as client:
        params = {"topic": "room:1", "subscriber": "alice:tab"}
        short = token("alice", grant, ttl=3)
        opened = time.time()
        async with aconnect_sse(
            client, "GET", "/v1/stream", params=params, headers=bearer(short)
        ) as source:
            async for sse in source.aiter_sse():
                if sse.event == "ready":
                    publish(1)
                    publish(2)
                    continue
                received.append((sse.id, json.loads(sse.data)["payload"]))
        closed = time.time()
        # Ended by the server at the token's exp (3 s, rounded to a second), not before.
        assert 1.5 <= closed - opened <= 6.0
        assert [n for _, n in received] == [1, 2]
        # Its rows went, as on any disconnect.
        rows = None
        for _ in range(50):
            rows = (await asyncio.to_thread(admin.get, "/v1/subscriptions/alice:tab")).json()
            if rows["topics"] == []:
                break
            await asyncio.sleep(0.1)
        assert rows == {"subscriber": "alice:tab", "topics": []}
        publish(3)
        publish(4)
        # The expired token is refused; a fresh one resumes exactly after the last id.
        expired = await client.get("/v1/stream", params=params, headers=bearer(short))
        assert expired.status_code == 401
        fresh = token("alice", grant)
        headers = {**bearer(fresh), "Last-Event-ID": received[-1][0]}
        async with aconnect_sse(
            client, "GET", "/v1/stream", params=params, headers=headers
        ) as source:
            async for sse in source.aiter_sse():
                if sse.event == "ready":
                    continue
                received.append((sse.id, json.loads(sse.data)["payload"]))
                if len(received) == 4:
                    break
    assert [n for _, n in received] == [1, 2, 3, 4]
    assert [event_id for event_id, _ in received] == published


async def test_an_expired_socket_is_closed(auth_server: Server) -> None:
    url = ws_url(auth_server.url, "/v1/ws?topic=room:1")
    short = token("alice", {"subscribe": ["room:*"]}, ttl=2)
    opened = time.time()
    async with ws_connect(url, additional_headers=bearer(short)) as ws:
        await ws.recv_type("ready")

        async def drain() -> None:
            while True:
                await ws.conn.recv()

        with pytest.raises(ConnectionClosed) as closed:
            await drain()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1008
    assert 0.5 <= time.time() - opened <= 5.0


def test_anonymous_grant_serves_public_topics(database_url: str) -> None:
    server = Server(
        database_url,
        env={
            "EVENTHUB_AUTH_SECRET": SECRET,
            "EVENTHUB_AUTH_ANONYMOUS": json.dumps(
                {"subscribe": ["public:*"], "history": ["public:*"]}
            ),
        },
    ).start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            root = bearer(token("root", ADMIN))
            assert client.post("/v1/topics/public:news/events", json={"payload": 1}, headers=root)
            assert client.get("/v1/topics/public:news/events").status_code == 200
            private = client.get("/v1/topics/room:1/events")
            assert private.status_code == 401  # beyond the anonymous grant: a token is needed
            assert (
                client.post("/v1/topics/public:news/events", json={"payload": 2}).status_code == 401
            )
            with client.stream("GET", "/v1/stream", params={"topic": "public:news"}) as stream:
                assert stream.status_code == 200
                lines = stream.iter_lines()
                assert next(lines) == "event: ready"
                next(lines)
                ready = json.loads(next(lines).removeprefix("data: "))
                assert ready["subscriber"]  # server-assigned
            # {sub} means nothing for an anonymous client.
            assert client.get("/v1/subscriptions/sub-1").status_code == 401
            listed = client.get("/v1/topics").json()["topics"]
            assert [item["topic"] for item in listed] == ["public:news"]
    finally:
        server.kill()


def test_cors_preflight_origin_and_json_only_publishing(database_url: str) -> None:
    origin = "http://app.example"
    server = Server(
        database_url,
        env={"EVENTHUB_AUTH_SECRET": SECRET, "EVENTHUB_CORS_ORIGINS": origin},
    ).start()
    try:
        alice = token("alice", {"publish": ["room:*"], "history": ["room:*"]})
        with httpx.Client(base_url=server.url, timeout=10) as client:
            preflight = client.options(
                "/v1/topics/room:1/events",
                headers={
                    "Origin": origin,
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "authorization,content-type",
                },
            )
            assert preflight.status_code == 200  # answered without a token
            assert preflight.headers["access-control-allow-origin"] == origin
            assert preflight.headers["access-control-allow-credentials"] == "true"
            other = client.options(
                "/v1/topics/room:1/events",
                headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
            )
            assert "access-control-allow-origin" not in other.headers
            sent = client.post(
                "/v1/topics/room:1/events",
                json={"payload": 1},
                headers={**bearer(alice), "Origin": origin},
            )
            assert sent.status_code == 201
            assert sent.headers["access-control-allow-origin"] == origin
            # What a cross-site form or a preflight-free fetch can send: refused.
            for content_type in (None, "text/plain", "application/x-www-form-urlencoded"):
                headers = bearer(alice)
                if content_type is not None:
                    headers["Content-Type"] = content_type
                refused = client.post(
                    "/v1/topics/room:1/events", content=b'{"payload": 2}', headers=headers
                )
                assert refused.status_code == 415, content_type
            events = client.get("/v1/topics/room:1/events", headers=bearer(alice)).json()
            assert [event["payload"] for event in events["events"]] == [1]
    finally:
        server.kill()


async def test_websocket_origin_is_checked_against_the_cors_list(database_url: str) -> None:
    server = Server(
        database_url,
        env={"EVENTHUB_AUTH_SECRET": SECRET, "EVENTHUB_CORS_ORIGINS": "http://app.example"},
    ).start()
    try:
        url = ws_url(server.url, "/v1/ws?topic=room:1")
        headers = bearer(token("alice", {"subscribe": ["room:*"]}))
        async with ws_connect(url, additional_headers=headers, origin="http://app.example") as ws:  # type: ignore[arg-type]
            await ws.recv_type("ready")
        async with ws_connect(url, additional_headers=headers) as ws:  # no Origin: not a browser
            await ws.recv_type("ready")
        with pytest.raises(InvalidStatus) as refused:
            async with ws_connect(url, additional_headers=headers, origin="http://evil.example"):  # type: ignore[arg-type]
                pass
        assert refused.value.response.status_code == 403
    finally:
        server.kill()


def test_filtered_topic_pages_hold_only_readable_topics(
    auth_server: Server, admin: httpx.Client
) -> None:
    names = [f"{'pub' if n % 3 == 0 else 'priv'}:{n:02d}" for n in range(30)]
    batch = {"events": [{"topic": name, "payload": 1} for name in names]}
    assert admin.post("/v1/events", json=batch).status_code == 201
    reader = bearer(token("alice", {"history": ["pub:*"]}))
    seen: list[str] = []
    link: str | None = "/v1/topics?limit=4"
    with httpx.Client(base_url=auth_server.url, timeout=10, headers=reader) as client:
        while link is not None:
            page = client.get(link).json()
            assert len(page["topics"]) <= 4
            seen += [item["topic"] for item in page["topics"]]
            link = page["next"]
    assert seen == sorted(name for name in names if name.startswith("pub:"))
