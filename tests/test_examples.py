"""The examples, each started with its one command, driven by real WebSocket and SSE clients.

Every example requires tokens; clients get theirs from its demo login."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from eventhub_log import EventHub

from .examples_util import ExampleServer, bearer, sse, token_for
from .wsclient import ws_connect


def running(module: str, database_url: str) -> Iterator[ExampleServer]:
    server = ExampleServer(module, database_url).start()
    yield server
    server.kill()


@pytest.fixture
def chat_server(database_url: str) -> Iterator[ExampleServer]:
    yield from running("examples.chat", database_url)


@pytest.fixture
def presence_server(database_url: str) -> Iterator[ExampleServer]:
    yield from running("examples.presence", database_url)


@pytest.fixture
def notifications_server(database_url: str) -> Iterator[ExampleServer]:
    yield from running("examples.notifications", database_url)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as http:
        yield http


async def no_rows(database_url: str, *channel_ids: str, within: float = 3.0) -> None:
    started = time.monotonic()
    async with EventHub(database_url) as hub:
        for channel_id in channel_ids:
            while await hub.subscriptions(channel_id):
                assert time.monotonic() - started < within, channel_id
                await asyncio.sleep(0.02)


# Chat --------------------------------------------------------------------------


async def test_chat_room_broadcasts_to_the_room_except_the_sender(
    chat_server: ExampleServer, client: httpx.AsyncClient, database_url: str
) -> None:
    base = f"{chat_server.ws}/v1/channels/chat"
    tokens = {
        name: await token_for(client, chat_server, name)
        for name in ("alice", "bob", "carol", "dave")
    }
    async with (
        ws_connect(
            f"{base}/alice:1?room=lobby", additional_headers=bearer(tokens["alice"])
        ) as alice,
        ws_connect(f"{base}/bob:1?room=lobby", additional_headers=bearer(tokens["bob"])) as bob,
        ws_connect(
            f"{base}/carol:1?room=kitchen", additional_headers=bearer(tokens["carol"])
        ) as carol,
        sse(
            client,
            f"{chat_server.url}/v1/channels/chat/dave:1",
            params={"room": "lobby"},
            headers=bearer(tokens["dave"]),
        ) as dave,
    ):
        for ws in (alice, bob, carol):
            assert (await ws.recv())["type"] == "welcome"
        kind, _, welcome = await dave.next()
        assert (kind, welcome["data"]) == ("welcome", {"room": "lobby", "user": "dave"})

        await alice.send({"action": "say", "data": {"text": "hello lobby"}})
        reply = await alice.recv()
        assert reply["type"] == "reply"
        assert reply["data"]["text"] == "hello lobby"
        event = await bob.recv()
        assert event["type"] == "event"
        assert event["id"] == reply["data"]["id"]
        assert event["payload"] == {"type": "message", "user": "alice", "text": "hello lobby"}
        _, event_id, data = await dave.next()
        assert event_id == event["id"]
        assert data["payload"] == event["payload"]

        # Dave talks by POST; the WebSocket users hear him, he does not hear himself.
        response = await client.post(
            f"{chat_server.url}/v1/channels/chat/dave:1/messages",
            json={"action": "say", "data": {"text": "hi, from SSE"}},
            headers=bearer(tokens["dave"]),
        )
        assert response.status_code == 200
        for ws in (alice, bob):
            heard = await ws.recv()
            assert heard["payload"] == {"type": "message", "user": "dave", "text": "hi, from SSE"}
            assert heard["id"] == response.json()["reply"]["id"]

        # Nothing crossed rooms, nobody heard themselves.
        assert await carol.quiet() == []
        assert await alice.quiet() == []

        # Bad input: an error frame, the connection stays.
        await bob.send({"action": "say", "data": {"text": ""}})
        assert (await bob.recv())["code"] == "invalid_message"
        await bob.send({"action": "say", "data": {"text": "still here"}})
        assert (await bob.recv())["type"] == "reply"
    await no_rows(database_url, "alice:1", "bob:1", "carol:1", "dave:1")
    async with EventHub(database_url) as hub:
        assert await hub.subscribers("room:lobby") == []


async def test_chat_needs_a_token_of_ones_own(
    chat_server: ExampleServer, client: httpx.AsyncClient
) -> None:
    base = f"{chat_server.ws}/v1/channels/chat"
    with pytest.raises(InvalidStatus) as refused:
        async with ws_connect(f"{base}/alice:1?room=lobby"):
            pass
    assert refused.value.response.status_code == 401
    anonymous = await client.get(f"{chat_server.url}/v1/channels/chat/alice:1?room=lobby")
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Bearer")

    # Bob's token may not act as Alice's channel, nor post as her.
    bob = bearer(await token_for(client, chat_server, "bob"))
    with pytest.raises(InvalidStatus) as refused:
        async with ws_connect(f"{base}/alice:1?room=lobby", additional_headers=bob):
            pass
    assert refused.value.response.status_code == 403
    posted = await client.post(
        f"{chat_server.url}/v1/channels/chat/alice:1/messages",
        json={"action": "say", "data": {"text": "I am alice"}},
        headers=bob,
    )
    assert posted.status_code == 403
    # Nor read or publish outside the chat rooms.
    assert (
        await client.get(f"{chat_server.url}/v1/topics/orders/events", headers=bob)
    ).status_code == 403


async def test_chat_login_sets_a_strict_httponly_cookie(chat_server: ExampleServer) -> None:
    async with httpx.AsyncClient(timeout=10) as browser:
        response = await browser.post(f"{chat_server.url}/login", json={"user": "erin"})
        assert response.status_code == 200
        assert response.json()["sub"] == "erin"
        assert "token" not in response.json()  # for a page, the cookie only
        cookie = response.headers["set-cookie"].lower()
        assert cookie.startswith("eventhub_token=")
        assert "httponly" in cookie
        assert "samesite=strict" in cookie
        assert "path=/" in cookie
        # The cookie alone opens a stream (an EventSource's way).
        async with sse(
            browser, f"{chat_server.url}/v1/channels/chat/erin:tab", params={"room": "lobby"}
        ) as stream:
            kind, _, welcome = await stream.next()
            assert (kind, welcome["data"]["user"]) == ("welcome", "erin")
        assert (await browser.post(f"{chat_server.url}/logout")).status_code == 204
        assert "eventhub_token" not in browser.cookies
        after = await browser.get(f"{chat_server.url}/v1/channels/chat/erin:tab?room=lobby")
        assert after.status_code == 401
    refused = await client_post(chat_server, "/login", {"user": "no spaces"})
    assert refused.status_code == 422


async def client_post(server: ExampleServer, path: str, body: object) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.post(f"{server.url}{path}", json=body)


@pytest.mark.slow
async def test_chat_client_dropped_for_ten_seconds_misses_nothing(
    chat_server: ExampleServer, client: httpx.AsyncClient
) -> None:
    """A WebSocket and an SSE chat client drop for ten seconds while the room talks."""
    base = f"{chat_server.ws}/v1/channels/chat"
    sse_url = f"{chat_server.url}/v1/channels/chat/reader:sse"
    opening = {"room": "lobby"}
    talks = bearer(await token_for(client, chat_server, "talker"))
    reads = bearer(await token_for(client, chat_server, "reader"))
    async with ws_connect(f"{base}/talker:1?room=lobby", additional_headers=talks) as talker:
        await talker.recv()
        async with ws_connect(f"{base}/reader:ws?room=lobby", additional_headers=reads) as reader:
            ws_cursor = (await reader.recv())["id"]
            async with sse(client, sse_url, params=opening, headers=reads) as stream:
                _, sse_cursor, _ = await stream.next()
                await talker.send({"action": "say", "data": {"text": "before"}})
                await talker.recv()
                ws_cursor = (await reader.recv())["id"]
                _, sse_cursor, _ = await stream.next()

        # Both readers are gone; the room goes on talking for ten seconds.
        said: list[str] = []
        started = time.monotonic()
        while time.monotonic() - started < 10:
            text = f"while away {len(said)}"
            await talker.send({"action": "say", "data": {"text": text}})
            assert (await talker.recv())["type"] == "reply"
            said.append(text)
            await asyncio.sleep(0.5)

        resume = {**reads, "Last-Event-ID": str(sse_cursor)}
        async with (
            ws_connect(
                f"{base}/reader:ws?room=lobby&last_event_id={ws_cursor}", additional_headers=reads
            ) as r,
            sse(client, sse_url, params=opening, headers=resume) as s,
        ):
            welcome = await r.recv()
            assert welcome["type"] == "welcome"  # the connect handler ran again
            assert welcome["id"] == ws_cursor
            got_ws = [(await r.recv())["payload"]["text"] for _ in said]
            kind, _, _ = await s.next()
            assert kind == "welcome"
            got_sse = [(await s.next())[2]["payload"]["text"] for _ in said]
            assert got_ws == said
            assert got_sse == said
            # And live again.
            await talker.send({"action": "say", "data": {"text": "welcome back"}})
            assert (await r.recv())["payload"]["text"] == "welcome back"
            assert (await s.next())[2]["payload"]["text"] == "welcome back"
            assert await r.quiet() == []


# Presence ----------------------------------------------------------------------


async def test_presence_updates_for_everyone_watching(
    presence_server: ExampleServer, client: httpx.AsyncClient, database_url: str
) -> None:
    base = f"{presence_server.ws}/v1/channels/presence"
    ann_token = bearer(await token_for(client, presence_server, "ann"))
    ben_token = bearer(await token_for(client, presence_server, "ben"))
    # The watcher has no token: the anonymous grant lets anyone follow the updates.
    async with sse(
        client, f"{presence_server.url}/v1/stream", params={"topic": "presence:updates"}
    ) as watcher:
        kind, _, _ = await watcher.next()
        assert kind == "ready"
        async with ws_connect(f"{base}/ann:p", additional_headers=ann_token) as ann:
            assert (await ann.recv())["data"] == {"online": []}
            _, _, joined = await watcher.next()
            assert joined["payload"] == {"type": "joined", "user": "ann", "channel_id": "ann:p"}

            async with sse(
                client, f"{presence_server.url}/v1/channels/presence/ben:p", headers=ben_token
            ) as ben:
                _, _, welcome = await ben.next()
                assert welcome["data"] == {"online": ["ann:p"]}
                _, _, joined = await watcher.next()
                assert joined["payload"]["user"] == "ben"
                assert (await ann.recv())["payload"]["user"] == "ben"

                await ann.send({"action": "status", "data": {"status": "away"}})
                await ann.send({"action": "status", "data": {"status": "asleep"}})
                frames = {frame["type"]: frame for frame in [await ann.recv(), await ann.recv()]}
                assert frames["error"]["code"] == "invalid_message"
                status = {"type": "status", "user": "ann", "channel_id": "ann:p", "status": "away"}
                assert frames["event"]["payload"] == status
                assert (await ben.next())[2]["payload"] == status
                assert (await watcher.next())[2]["payload"] == status
            left = {"type": "left", "user": "ben", "channel_id": "ben:p"}
            assert (await watcher.next())[2]["payload"] == left
            assert (await ann.recv())["payload"] == left
        assert (await watcher.next())[2]["payload"]["type"] == "left"
    await no_rows(database_url, "ann:p", "ben:p")


async def test_presence_needs_a_token_to_be_present(
    presence_server: ExampleServer, client: httpx.AsyncClient
) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with ws_connect(f"{presence_server.ws}/v1/channels/presence/ann:p"):
            pass
    assert refused.value.response.status_code == 401
    # The anonymous grant is for watching only: no other topic, no publishing.
    other = await client.get(f"{presence_server.url}/v1/stream", params={"topic": "room:x"})
    assert other.status_code == 401
    published = await client.post(
        f"{presence_server.url}/v1/topics/presence:updates/events", json={"payload": {}}
    )
    assert published.status_code == 401


# Notifications -----------------------------------------------------------------


async def test_notifications_from_a_rest_function(
    notifications_server: ExampleServer, client: httpx.AsyncClient, database_url: str
) -> None:
    server = notifications_server
    user42 = bearer(await token_for(client, server, "42"))
    user7 = bearer(await token_for(client, server, "7"))
    async with (
        ws_connect(
            f"{server.ws}/v1/channels/notifications/42:ws", additional_headers=user42
        ) as ws42,
        sse(client, f"{server.url}/v1/channels/notifications/7:sse", headers=user7) as sse7,
    ):
        assert (await ws42.recv())["data"] == {"user_id": "42"}
        assert (await sse7.next())[2]["data"] == {"user_id": "7"}

        placed = await client.post(f"{server.url}/orders", json={"item": "book"}, headers=user42)
        assert placed.status_code == 201
        event = await ws42.recv()
        assert event["topic"] == "notifications:42"
        assert event["id"] == placed.json()["notification_id"]
        assert event["payload"] == {
            "type": "order_placed",
            "order_id": placed.json()["order_id"],
            "item": "book",
        }
        placed = await client.post(f"{server.url}/orders", json={"item": "pen"}, headers=user7)
        _, event_id, data = await sse7.next()
        assert event_id == placed.json()["notification_id"]
        assert data["topic"] == "notifications:7"
        assert await ws42.quiet() == []

        bad = await client.post(f"{server.url}/orders", json={"item": ""}, headers=user7)
        assert bad.status_code == 422

    # Offline: the notification waits in the log for the next connection.
    cursor = event_id
    await no_rows(database_url, "7:sse")
    placed = await client.post(f"{server.url}/orders", json={"item": "lamp"}, headers=user7)
    async with sse(
        client,
        f"{server.url}/v1/channels/notifications/7:sse",
        headers={**user7, "Last-Event-ID": str(cursor)},
    ) as again:
        await again.next()
        _, event_id, data = await again.next()
        assert event_id == placed.json()["notification_id"]
        assert data["payload"]["item"] == "lamp"
    async with EventHub(database_url) as hub:
        history = await hub.history("notifications:7", after_seq=0, limit=10, order="asc")
    assert {event.publisher for event in history} == {"7"}


async def test_notifications_are_private(
    notifications_server: ExampleServer, client: httpx.AsyncClient
) -> None:
    server = notifications_server
    with pytest.raises(InvalidStatus) as refused:
        async with ws_connect(f"{server.ws}/v1/channels/notifications/42:ws"):
            pass
    assert refused.value.response.status_code == 401
    assert (await client.post(f"{server.url}/orders", json={"item": "x"})).status_code == 401
    # User 7 may neither follow 42's topic nor act as 42's channel.
    user7 = bearer(await token_for(client, server, "7"))
    spying = await client.get(
        f"{server.url}/v1/stream", params={"topic": "notifications:42"}, headers=user7
    )
    assert spying.status_code == 403
    posing = await client.get(f"{server.url}/v1/channels/notifications/42:ws", headers=user7)
    assert posing.status_code == 403
