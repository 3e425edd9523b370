"""The REST half of the HTTP API, against a real ``eventhub-log serve``."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from . import hashes
from .server import Server

TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")


@pytest.fixture
def client(server: Server) -> httpx.Client:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        yield http  # type: ignore[misc]


def test_publish_one_event_and_read_it_back(client: httpx.Client) -> None:
    response = client.post("/v1/topics/room:lobby/events", json={"payload": {"text": "hi"}})
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"topic", "seq", "id", "published_at"}
    assert body["topic"] == "room:lobby"
    assert body["seq"] == 1
    assert TIMESTAMP.fullmatch(body["published_at"])
    second = client.post(
        "/v1/topics/room:lobby/events", json={"payload": None, "exclude": "ch-1"}
    ).json()
    assert second["seq"] == 2
    history = client.get("/v1/topics/room:lobby/events").json()
    assert history["next"] is None
    assert history["events"] == [
        {
            "topic": "room:lobby",
            "seq": 1,
            "id": body["id"],
            "payload": {"text": "hi"},
            "published_at": body["published_at"],
            "exclude": None,
            "publisher": None,
            "hash": hashes.chain(history["events"])[0],
        },
        {
            "topic": "room:lobby",
            "seq": 2,
            "id": second["id"],
            "payload": None,
            "published_at": second["published_at"],
            "exclude": "ch-1",
            "publisher": None,
            "hash": hashes.chain(history["events"])[1],
        },
    ]


def test_topics_with_slashes_resolve_on_every_route(client: httpx.Client) -> None:
    for topic in ("a/b", "a/b/events", "x/subscribers", "org@x/team:1/events"):
        assert client.post(f"/v1/topics/{topic}/events", json={"payload": 1}).status_code == 201
        events = client.get(f"/v1/topics/{topic}/events").json()["events"]
        assert [e["topic"] for e in events] == [topic]
        assert client.put(f"/v1/subscriptions/s1/topics/{topic}").status_code == 200
        assert client.get(f"/v1/topics/{topic}/subscribers").json() == {
            "topic": topic,
            "subscribers": ["s1"],
        }
    assert client.get("/v1/subscriptions/s1").json()["topics"] == sorted(
        ["a/b", "a/b/events", "x/subscribers", "org@x/team:1/events"]
    )
    assert client.delete("/v1/subscriptions/s1/topics/a/b/events").status_code == 204


def test_batch_is_atomic_and_ordered(client: httpx.Client) -> None:
    batch = {
        "events": [
            {"topic": "t1", "payload": {"n": 1}},
            {"topic": "t2", "payload": {"n": 2}, "exclude": "me"},
            {"topic": "t1", "payload": {"n": 3}},
        ]
    }
    response = client.post("/v1/events", json=batch)
    assert response.status_code == 201
    events = response.json()["events"]
    assert [(e["topic"], e["seq"], e["payload"]["n"]) for e in events] == [
        ("t1", 1, 1),
        ("t2", 1, 2),
        ("t1", 2, 3),
    ]
    assert events[1]["exclude"] == "me"
    assert [int(e["id"]) for e in events] == sorted(int(e["id"]) for e in events)

    bad = {"events": [{"topic": "t1", "payload": 4}, {"topic": "bad topic", "payload": 5}]}
    rejected = client.post("/v1/events", json=bad)
    assert rejected.status_code == 400
    assert rejected.json()["error"]["code"] == "invalid_topic"
    assert client.post("/v1/events", json={"events": []}).status_code == 422
    too_many = {"events": [{"topic": "t1", "payload": i} for i in range(1001)]}
    assert client.post("/v1/events", json=too_many).status_code == 422
    assert len(client.get("/v1/topics/t1/events").json()["events"]) == 2


def test_idempotency_key(client: httpx.Client) -> None:
    headers = {"Idempotency-Key": "order-42"}
    first = client.post("/v1/topics/orders/events", json={"payload": {"a": 1}}, headers=headers)
    assert first.status_code == 201
    retry = client.post("/v1/topics/orders/events", json={"payload": {"a": 1}}, headers=headers)
    assert retry.status_code == 200
    assert retry.json() == first.json()
    other = client.post("/v1/topics/orders/events", json={"payload": {"a": 2}}, headers=headers)
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_conflict"
    assert "already used" in other.json()["error"]["message"]

    batch = {"events": [{"topic": "orders", "payload": 1}, {"topic": "audit", "payload": 2}]}
    key = {"Idempotency-Key": "batch-1"}
    stored = client.post("/v1/events", json=batch, headers=key)
    assert stored.status_code == 201
    again = client.post("/v1/events", json=batch, headers=key)
    assert (again.status_code, again.json()) == (200, stored.json())
    assert len(client.get("/v1/topics/orders/events").json()["events"]) == 2
    bad_key = client.post("/v1/events", json=batch, headers={"Idempotency-Key": "x" * 300})
    assert bad_key.status_code == 400


def test_concurrent_retries_with_one_key_append_once(server: Server) -> None:
    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            return await asyncio.gather(
                *(
                    http.post(
                        "/v1/topics/race/events",
                        json={"payload": {"x": 1}},
                        headers={"Idempotency-Key": "same"},
                    )
                    for _ in range(16)
                )
            )

    responses = asyncio.run(run())
    assert sorted(r.status_code for r in responses) == [200] * 15 + [201]
    assert len({r.json()["id"] for r in responses}) == 1
    assert len(httpx.get(f"{server.url}/v1/topics/race/events").json()["events"]) == 1


def test_history_paging_filters_and_export(client: httpx.Client) -> None:
    batch = {"events": [{"topic": "audit", "payload": {"n": n}} for n in range(1, 26)]}
    assert client.post("/v1/events", json=batch).status_code == 201
    client.post("/v1/topics/other/events", json={"payload": 0})

    seen: list[int] = []
    link: str | None = "/v1/topics/audit/events?limit=10"
    while link is not None:
        assert not link.startswith("http")
        page = client.get(link).json()
        seen += [e["seq"] for e in page["events"]]
        link = page["next"]
    assert seen == list(range(1, 26))

    seen = []
    link = "/v1/topics/audit/events?limit=7&order=desc&after_seq=3"
    while link is not None:
        page = client.get(link).json()
        seen += [e["seq"] for e in page["events"]]
        link = page["next"]
    assert seen == list(range(25, 3, -1))

    window = client.get("/v1/topics/audit/events", params={"after_seq": 5, "before_seq": 9})
    assert [e["seq"] for e in window.json()["events"]] == [6, 7, 8]
    first = client.get("/v1/topics/audit/events?limit=1").json()["events"][0]
    stamp = first["published_at"]
    moment = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    later = (moment + timedelta(microseconds=1)).isoformat()
    assert (
        len(client.get("/v1/topics/audit/events", params={"since": stamp}).json()["events"]) == 25
    )
    assert client.get("/v1/topics/audit/events", params={"until": stamp}).json()["events"] == []
    assert (
        len(
            client.get("/v1/topics/audit/events", params={"until": later, "limit": 1000}).json()[
                "events"
            ]
        )
        == 25
    )

    with client.stream(
        "GET",
        "/v1/topics/audit/events?limit=2&order=desc&before_seq=20",
        headers={"Accept": "application/x-ndjson"},
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert [e["seq"] for e in lines] == list(range(19, 0, -1))
    assert list(lines[0]) == [
        "topic",
        "seq",
        "id",
        "payload",
        "published_at",
        "exclude",
        "publisher",
        "hash",
    ]
    assert lines[0]["payload"] == {"n": 19}


def test_topic_list(client: httpx.Client) -> None:
    assert client.get("/v1/topics").json() == {"topics": [], "next": None}
    client.post("/v1/topics/b/events", json={"payload": 1})
    client.post("/v1/topics/b/events", json={"payload": 2})
    client.post("/v1/topics/a/events", json={"payload": 3})
    client.put("/v1/subscriptions/s1/topics/b")
    client.put("/v1/subscriptions/s2/topics/b")
    client.put("/v1/subscriptions/s2/topics/quiet")
    topics = client.get("/v1/topics").json()["topics"]
    by_name = {t["topic"]: t for t in topics}
    assert [t["topic"] for t in topics] == ["a", "b"]
    assert by_name["b"]["last_seq"] == 2
    assert by_name["b"]["event_count"] == 2
    assert by_name["b"]["subscriber_count"] == 2
    assert by_name["a"]["subscriber_count"] == 0
    assert TIMESTAMP.fullmatch(by_name["b"]["first_published_at"])
    assert by_name["b"]["first_published_at"] <= by_name["b"]["last_published_at"]


def test_subscriptions(client: httpx.Client) -> None:
    assert client.get("/v1/subscriptions/ch-1").json() == {"subscriber": "ch-1", "topics": []}
    for _ in range(2):  # idempotent
        put = client.put("/v1/subscriptions/ch-1/topics/room:lobby")
        assert put.status_code == 200
        body = put.json()
        assert {"subscriber": "ch-1", "topic": "room:lobby"}.items() < body.items()
        # No stream holds it: it expires unless one takes it over.
        assert TIMESTAMP.fullmatch(body["expires_at"])
    client.put("/v1/subscriptions/ch-1/topics/user:123")
    client.put("/v1/subscriptions/ch-2/topics/room:lobby")
    assert client.get("/v1/subscriptions/ch-1").json()["topics"] == ["room:lobby", "user:123"]
    assert client.get("/v1/topics/room:lobby/subscribers").json()["subscribers"] == [
        "ch-1",
        "ch-2",
    ]
    assert client.delete("/v1/subscriptions/ch-2/topics/room:lobby").status_code == 204
    missing = client.delete("/v1/subscriptions/ch-2/topics/room:lobby")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_subscribed"
    removed = client.delete("/v1/subscriptions/ch-1")
    assert removed.json() == {"subscriber": "ch-1", "removed": 2}
    assert client.get("/v1/subscriptions/ch-1").json()["topics"] == []
    assert client.get("/v1/topics/room:lobby/subscribers").json()["subscribers"] == []


def test_metrics(client: httpx.Client) -> None:
    client.post("/v1/topics/m/events", json={"payload": 1})
    client.post("/v1/events", json={"events": [{"topic": "m", "payload": 2}]})
    client.get("/v1/topics/nope%20nope/events")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "eventhub_events_published_total 2.0" in text
    assert "eventhub_open_streams 0.0" in text
    assert "eventhub_publish_latency_seconds_count 2.0" in text
    assert (
        'eventhub_http_requests_total{method="POST",route="/v1/topics/{topic:path}/events",'
        'status="201"} 1.0'
    ) in text
    assert 'route="/v1/topics/{topic:path}/events",status="400"} 1.0' in text


def test_openapi_describes_every_route(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path, method in [
        ("/v1/topics/{topic}/events", "post"),
        ("/v1/topics/{topic}/events", "get"),
        ("/v1/events", "post"),
        ("/v1/topics", "get"),
        ("/v1/topics/{topic}/subscribers", "get"),
        ("/v1/subscriptions/{subscriber}/topics/{topic}", "put"),
        ("/v1/subscriptions/{subscriber}/topics/{topic}", "delete"),
        ("/v1/subscriptions/{subscriber}", "get"),
        ("/v1/subscriptions/{subscriber}", "delete"),
        ("/metrics", "get"),
    ]:
        assert method in paths[path], (path, method)
    publish = paths["/v1/topics/{topic}/events"]["post"]
    assert {"201", "200", "409", "413", "422"} <= set(publish["responses"])
    assert client.get("/docs").status_code == 200


def test_rest_subscriptions_reach_an_open_stream(server: Server) -> None:
    from httpx_sse import aconnect_sse

    async def run() -> list[tuple[str, object]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            params = {"topic": "room:a", "subscriber": "reader"}
            async with aconnect_sse(http, "GET", "/v1/stream", params=params) as source:
                events = source.aiter_sse()
                ready = await anext(events)
                assert ready.event == "ready"
                assert (await http.put("/v1/subscriptions/reader/topics/room:b")).status_code == 200
                listed = (await http.get("/v1/topics/room:b/subscribers")).json()
                assert listed["subscribers"] == ["reader"]
                await http.post("/v1/topics/room:b/events", json={"payload": "b1"})
                await http.post("/v1/topics/room:a/events", json={"payload": "a1"})
                got = [await anext(events) for _ in range(2)]
                deleted = await http.delete("/v1/subscriptions/reader/topics/room:b")
                assert deleted.status_code == 204
                await http.post("/v1/topics/room:b/events", json={"payload": "b2"})
                await http.post("/v1/topics/room:a/events", json={"payload": "a2"})
                got.append(await anext(events))
                return [(json.loads(e.data)["topic"], json.loads(e.data)["payload"]) for e in got]

    assert asyncio.run(run()) == [("room:b", "b1"), ("room:a", "a1"), ("room:a", "a2")]


def test_topic_list_pages(client: httpx.Client) -> None:
    names = [f"t{n:03d}" for n in range(25)]
    batch = {"events": [{"topic": name, "payload": 1} for name in names]}
    assert client.post("/v1/events", json=batch).status_code == 201
    seen: list[str] = []
    link: str | None = "/v1/topics?limit=10"
    pages = 0
    while link is not None:
        page = client.get(link).json()
        assert len(page["topics"]) <= 10
        seen += [item["topic"] for item in page["topics"]]
        link = page["next"]
        pages += 1
    assert seen == names
    assert pages == 3
    after = client.get("/v1/topics", params={"after": "t020", "limit": 100}).json()
    assert [item["topic"] for item in after["topics"]] == names[21:]
    assert after["next"] is None
    for bad in ({"limit": 0}, {"limit": 1001}, {"after": "x" * 256}):
        assert client.get("/v1/topics", params=bad).status_code == 422
