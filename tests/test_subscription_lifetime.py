"""Subscription rows made with no stream have an owner and a lifetime: they are
swept when it ends, renewed by subscribing again, kept by a stream that takes them
over, and capped per owner; rows made by server code without a ttl stay."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse
from sqlalchemy import func, select, update

from eventhub_log import EventHub, ValidationError
from eventhub_log.errors import OwnerLimitReached
from eventhub_log.store.tables import subscription_changes, subscriptions
from eventhub_log.tokens import mint_token

from .server import Server

SECRET = "test-secret-" + "x" * 32


async def _row(hub: EventHub, topic: str, subscriber: str) -> dict[str, Any] | None:
    async with hub.database.read() as conn:
        found = await conn.execute(
            select(
                subscriptions.c.connection_id,
                subscriptions.c.instance_id,
                subscriptions.c.owner,
                subscriptions.c.expires_at,
            ).where(subscriptions.c.topic == topic, subscriptions.c.subscriber_id == subscriber)
        )
        row = found.one_or_none()
    return None if row is None else dict(row._mapping)


async def _removals(hub: EventHub, subscriber: str) -> list[str | None]:
    async with hub.database.read() as conn:
        found = await conn.execute(
            select(subscription_changes.c.topic)
            .where(
                subscription_changes.c.subscriber_id == subscriber,
                subscription_changes.c.added.is_(False),
            )
            .order_by(subscription_changes.c.id)
        )
        return list(found.scalars())


async def _until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


# The library ------------------------------------------------------------------


async def test_a_row_with_a_lifetime_is_swept_and_the_removal_recorded(database_url: str) -> None:
    async with EventHub(database_url, auto_migrate=True, heartbeat_interval=0.05) as hub:
        before = datetime.now(UTC)
        expires_at = await hub.subscribe("room:a", "visitor", owner="alice", ttl=0.5)
        after = datetime.now(UTC)
        assert expires_at is not None
        assert before + timedelta(seconds=0.5) <= expires_at <= after + timedelta(seconds=0.5)
        row = await _row(hub, "room:a", "visitor")
        assert row == {
            "connection_id": None,
            "instance_id": None,
            "owner": "alice",
            "expires_at": expires_at,
        }
        await hub.subscribe("room:keep", "visitor")  # server code: no lifetime

        async def gone() -> bool:
            return await hub.subscribers("room:a") == []

        await _until(gone, 5, "the expired row was not swept")
        assert datetime.now(UTC) >= expires_at
        assert await hub.subscriptions("visitor") == ["room:keep"]
        assert await _removals(hub, "visitor") == ["room:a"]


async def test_subscribing_again_renews_the_lifetime_and_the_owner(database_url: str) -> None:
    async with EventHub(database_url, auto_migrate=True, heartbeat_interval=0.05) as hub:
        first = await hub.subscribe("room:a", "visitor", owner="alice", ttl=0.6)
        for _ in range(4):  # past the first lifetime, renewed each time
            await asyncio.sleep(0.3)
            renewed = await hub.subscribe("room:a", "visitor", owner="bob", ttl=0.6)
            assert renewed is not None
            assert first is not None
            assert renewed > first
            first = renewed
        row = await _row(hub, "room:a", "visitor")
        assert row is not None
        assert (row["owner"], row["expires_at"]) == ("bob", renewed)
        assert await _removals(hub, "visitor") == []
        # Server code subscribing it with no ttl makes it a row with no lifetime.
        assert await hub.subscribe("room:a", "visitor") is None
        row = await _row(hub, "room:a", "visitor")
        assert row is not None
        assert (row["owner"], row["expires_at"]) == (None, None)


async def test_a_stream_takes_the_rows_over_and_they_go_when_it_closes(database_url: str) -> None:
    async with EventHub(database_url, auto_migrate=True, heartbeat_interval=0.05) as hub:
        await hub.subscribe("room:a", "reader", owner="alice", ttl=0.5)
        await hub.subscribe("room:b", "reader", owner="alice", ttl=0.5)
        async with hub.stream(["room:a"], "reader") as feed:
            for topic in ("room:a", "room:b"):  # its own topic, and the other row
                row = await _row(hub, topic, "reader")
                assert row is not None
                assert row["connection_id"] == feed.connection_id
                assert row["expires_at"] is None
            # A subscribe while it is open gives the row to the stream: no lifetime.
            assert await hub.subscribe("room:c", "reader", owner="alice", ttl=0.5) is None
            await asyncio.sleep(1.0)
            assert await hub.subscriptions("reader") == ["room:a", "room:b", "room:c"]
            await hub.publish("room:b", None, "still followed")
            event = await feed.next(timeout=5)
            assert event is not None
            assert event.payload == "still followed"
        assert await hub.subscriptions("reader") == []


async def test_a_swept_row_stops_reaching_a_stream_on_another_instance(database_url: str) -> None:
    quiet = {"poll_interval": 30.0} if database_url.startswith("postgresql") else {}
    async with (
        EventHub(database_url, mode="stateless", heartbeat_interval=0.05, **quiet) as elsewhere,
        EventHub(database_url, mode="stateless", **quiet) as here,
        here.stream(["news"], "reader") as feed,
    ):
        await elsewhere.subscribe("sport", "reader", owner="alice", ttl=60)
        await elsewhere.publish("sport", None, "subscribed")
        event = await feed.next(timeout=5)
        assert event is not None
        assert event.payload == "subscribed"

        async def claimed() -> bool:
            row = await _row(here, "sport", "reader")
            return row is not None and row["connection_id"] == feed.connection_id

        await _until(claimed, 5, "the stream's instance did not take the row over")
        # Had the take-over been lost (that instance stalled, say), the row would
        # still have no stream and a lifetime: make it so, already ended.
        async with here.database.write() as conn:
            await conn.execute(
                update(subscriptions)
                .where(subscriptions.c.topic == "sport")
                .values(
                    connection_id=None,
                    instance_id=None,
                    expires_at=datetime.now(UTC) - timedelta(seconds=1),
                )
            )

        async def swept() -> bool:
            return await _row(here, "sport", "reader") is None

        await _until(swept, 5, "the expired row was not swept")
        assert await _removals(here, "reader") == ["sport"]

        # The removal reaches the stream's instance like an unsubscribe does.
        async def dropped() -> bool:
            return "sport" not in feed.topics

        await _until(dropped, 5, "the stream still follows the swept topic")
        await elsewhere.publish("sport", None, "after the sweep")
        await elsewhere.publish("news", None, "still subscribed")
        event = await feed.next(timeout=5)
        assert event is not None
        assert event.payload == "still subscribed"


async def test_without_a_ttl_a_row_never_expires(database_url: str) -> None:
    async with EventHub(database_url, auto_migrate=True, heartbeat_interval=0.05) as hub:
        assert await hub.subscribe("room:a", "job") is None
        assert await hub.subscribe("room:b", "job", owner="alice") is None
        await asyncio.sleep(0.5)
        assert await hub.subscriptions("job") == ["room:a", "room:b"]
        assert await _row(hub, "room:a", "job") == {
            "connection_id": None,
            "instance_id": None,
            "owner": None,
            "expires_at": None,
        }


async def test_the_owner_cap_refuses_and_writes_nothing(hub: EventHub) -> None:
    for n in range(3):
        await hub.subscribe(f"t:{n}", "s", owner="alice", ttl=60, max_owned=3)
    changes = await _changes(hub)
    with pytest.raises(OwnerLimitReached) as refused:
        await hub.subscribe("t:3", "s", owner="alice", ttl=60, max_owned=3)
    assert refused.value.limit == 3
    assert await hub.subscriptions("s") == ["t:0", "t:1", "t:2"]
    assert await _changes(hub) == changes
    # Renewing one it has adds nothing: allowed at the cap.
    assert await hub.subscribe("t:0", "s", owner="alice", ttl=60, max_owned=3) is not None
    # Other owners, and rows with no owner (an open hub), are counted apart.
    await hub.subscribe("t:3", "s", owner="bob", ttl=60, max_owned=3)
    for n in range(4, 8):
        await hub.subscribe(f"t:{n}", "s", ttl=60, max_owned=3)
    # Once a stream holds them, they are not the owner's to count.
    async with hub.stream(["t:0"], "s"):
        await hub.subscribe("t:9", "other", owner="alice", ttl=60, max_owned=3)


async def _changes(hub: EventHub) -> int:
    async with hub.database.read() as conn:
        return int(
            (await conn.execute(select(func.count()).select_from(subscription_changes))).scalar()
            or 0
        )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ttl": 0},
        {"ttl": -1},
        {"ttl": float("nan")},
        {"ttl": float("inf")},
        {"ttl": 1e300},
        {"ttl": 3e11},  # beyond the year 9999
        {"ttl": True},
        {"ttl": "60"},
        {"owner": ""},
        {"owner": "x" * 256},
        {"owner": "a\nb"},
        {"owner": 7},
    ],
)
async def test_bad_ttl_and_owner_are_refused(hub: EventHub, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        await hub.subscribe("room:a", "s", **kwargs)
    assert await hub.subscriptions("s") == []


# Over HTTP ------------------------------------------------------------------


def _bearer(sub: str) -> dict[str, str]:
    grant = {"subscribe": ["*"], "subscribers": ["{sub}:*"]}
    return {"Authorization": f"Bearer {mint_token(sub, grant, secret=SECRET, ttl=600)}"}


@pytest.fixture
def lifetime_server(database_url: str) -> Iterator[Server]:
    running = Server(
        database_url,
        env={
            "EVENTHUB_AUTH_SECRET": SECRET,
            "EVENTHUB_INSTANCE_HEARTBEAT": "0.1",
            "EVENTHUB_SUBSCRIPTION_TTL": "1.5",
            "EVENTHUB_MAX_SUBSCRIPTIONS_PER_CLIENT": "3",
        },
    ).start()
    yield running
    running.kill()


def _expiry(answer: httpx.Response) -> datetime:
    assert answer.status_code == 200, answer.text
    text = answer.json()["expires_at"]
    assert text.endswith("Z")
    return datetime.fromisoformat(text)


async def test_a_rest_subscription_expires_is_renewed_and_kept_by_a_stream(
    lifetime_server: Server,
) -> None:
    alice = _bearer("alice")
    async with httpx.AsyncClient(base_url=lifetime_server.url, timeout=10) as client:
        path = "/v1/subscriptions/alice:x/topics/room:a"
        before = datetime.now(UTC)
        first = _expiry(await client.put(path, headers=alice))
        assert before + timedelta(seconds=1.5) <= first <= before + timedelta(seconds=3)
        await asyncio.sleep(0.5)
        renewed = _expiry(await client.put(path, headers=alice))
        assert renewed > first

        async def topics(subscriber: str) -> list[str]:
            answer = await client.get(f"/v1/subscriptions/{subscriber}", headers=alice)
            return list(answer.json()["topics"])

        assert await topics("alice:x") == ["room:a"]

        async def gone() -> bool:
            return await topics("alice:x") == []

        await _until(gone, 6, "the REST subscription was not swept")
        assert datetime.now(UTC) >= renewed

        # A stream of the subscriber takes its rows over: they no longer expire.
        _expiry(await client.put("/v1/subscriptions/alice:y/topics/room:b", headers=alice))
        params = {"topic": "room:c", "subscriber": "alice:y"}
        async with (
            httpx.AsyncClient(base_url=lifetime_server.url, timeout=10) as streaming,
            aconnect_sse(streaming, "GET", "/v1/stream", params=params, headers=alice) as source,
        ):
            events = source.aiter_sse()
            ready = await anext(events)
            assert json.loads(ready.data)["subscriber"] == "alice:y"
            held = await client.put("/v1/subscriptions/alice:y/topics/room:b", headers=alice)
            assert held.status_code == 200
            assert held.json() == {"subscriber": "alice:y", "topic": "room:b", "expires_at": None}
            await asyncio.sleep(2.0)  # past the lifetime, several sweeps
            assert await topics("alice:y") == ["room:b", "room:c"]
        # Closing the stream removes them, as it always did.

        async def closed() -> bool:
            return await topics("alice:y") == []

        await _until(closed, 5, "the stream's rows outlived it")


def test_the_per_client_cap_answers_429_and_writes_nothing(
    lifetime_server: Server,
) -> None:
    alice, bob = _bearer("alice"), _bearer("bob")
    with httpx.Client(base_url=lifetime_server.url, timeout=10) as client:
        for path in ("alice:1/topics/a", "alice:1/topics/b", "alice:2/topics/a"):
            assert client.put(f"/v1/subscriptions/{path}", headers=alice).status_code == 200
        refused = client.put("/v1/subscriptions/alice:2/topics/b", headers=alice)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "too_many_subscriptions"
        assert client.get("/v1/subscriptions/alice:2", headers=alice).json()["topics"] == ["a"]
        # Renewing one it holds is not one more.
        assert client.put("/v1/subscriptions/alice:1/topics/a", headers=alice).status_code == 200
        # Another client has a cap of its own; removing one frees a place.
        assert client.put("/v1/subscriptions/bob:1/topics/a", headers=bob).status_code == 200
        assert client.delete("/v1/subscriptions/alice:1/topics/b", headers=alice).status_code == 204
        assert client.put("/v1/subscriptions/alice:2/topics/b", headers=alice).status_code == 200
