"""The examples, each started with its one command, driven by real WebSocket and SSE clients."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from eventhub_log import EventHub

from .examples_util import ExampleServer, sse
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
    async with (
        ws_connect(f"{base}/alice-1?room=lobby&user=alice") as alice,
        ws_connect(f"{base}/bob-1?room=lobby&user=bob") as bob,
        ws_connect(f"{base}/carol-1?room=kitchen&user=carol") as carol,
        sse(
            client,
            f"{chat_server.url}/v1/channels/chat/dave-1",
            params={"room": "lobby", "user": "dave"},
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
            f"{chat_server.url}/v1/channels/chat/dave-1/messages",
            json={"action": "say", "data": {"text": "hi, from SSE"}},
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
    await no_rows(database_url, "alice-1", "bob-1", "carol-1", "dave-1")
    async with EventHub(database_url) as hub:
        assert await hub.subscribers("room:lobby") == []


@pytest.mark.slow
async def test_chat_client_dropped_for_ten_seconds_misses_nothing(
    chat_server: ExampleServer, client: httpx.AsyncClient
) -> None:
    """A WebSocket and an SSE chat client drop for ten seconds while the room talks."""
    base = f"{chat_server.ws}/v1/channels/chat"
    sse_url = f"{chat_server.url}/v1/channels/chat/sse-reader"
    opening = {"room": "lobby", "user": "sse-reader"}
    async with ws_connect(f"{base}/talker?room=lobby&user=talker") as talker:
        await talker.recv()
        async with ws_connect(f"{base}/ws-reader?room=lobby&user=reader") as reader:
            ws_cursor = (await reader.recv())["id"]
            async with sse(client, sse_url, params=opening) as stream:
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

        async with (
            ws_connect(f"{base}/ws-reader?room=lobby&user=reader&last_event_id={ws_cursor}") as r,
            sse(client, sse_url, params=opening, headers={"Last-Event-ID": str(sse_cursor)}) as s,
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
    async with sse(
        client, f"{presence_server.url}/v1/stream", params={"topic": "presence:updates"}
    ) as watcher:
        kind, _, _ = await watcher.next()
        assert kind == "ready"
        async with ws_connect(f"{base}/p-ann?user=ann") as ann:
            assert (await ann.recv())["data"] == {"online": []}
            _, _, joined = await watcher.next()
            assert joined["payload"] == {"type": "joined", "user": "ann", "channel_id": "p-ann"}

            async with sse(
                client, f"{presence_server.url}/v1/channels/presence/p-ben", params={"user": "ben"}
            ) as ben:
                _, _, welcome = await ben.next()
                assert welcome["data"] == {"online": ["p-ann"]}
                _, _, joined = await watcher.next()
                assert joined["payload"]["user"] == "ben"
                assert (await ann.recv())["payload"]["user"] == "ben"

                await ann.send({"action": "status", "data": {"status": "away"}})
                await ann.send({"action": "status", "data": {"status": "asleep"}})
                frames = {frame["type"]: frame for frame in [await ann.recv(), await ann.recv()]}
                assert frames["error"]["code"] == "invalid_message"
                status = {"type": "status", "user": "ann", "channel_id": "p-ann", "status": "away"}
                assert frames["event"]["payload"] == status
                assert (await ben.next())[2]["payload"] == status
                assert (await watcher.next())[2]["payload"] == status
            left = {"type": "left", "user": "ben", "channel_id": "p-ben"}
            assert (await watcher.next())[2]["payload"] == left
            assert (await ann.recv())["payload"] == left
        assert (await watcher.next())[2]["payload"]["type"] == "left"
    await no_rows(database_url, "p-ann", "p-ben")


# Notifications -----------------------------------------------------------------


async def test_notifications_from_a_rest_function(
    notifications_server: ExampleServer, client: httpx.AsyncClient, database_url: str
) -> None:
    server = notifications_server
    async with (
        ws_connect(
            f"{server.ws}/v1/channels/notifications/n-ws", additional_headers={"X-User-Id": "42"}
        ) as user42,
        sse(client, f"{server.url}/v1/channels/notifications/n-sse", params={"user": "7"}) as user7,
    ):
        assert (await user42.recv())["data"] == {"user_id": "42"}
        assert (await user7.next())[2]["data"] == {"user_id": "7"}

        placed = await client.post(f"{server.url}/orders", json={"user_id": "42", "item": "book"})
        assert placed.status_code == 201
        event = await user42.recv()
        assert event["topic"] == "notifications:42"
        assert event["id"] == placed.json()["notification_id"]
        assert event["payload"] == {
            "type": "order_placed",
            "order_id": placed.json()["order_id"],
            "item": "book",
        }
        placed = await client.post(f"{server.url}/orders", json={"user_id": "7", "item": "pen"})
        _, event_id, data = await user7.next()
        assert event_id == placed.json()["notification_id"]
        assert data["topic"] == "notifications:7"
        assert await user42.quiet() == []

        bad = await client.post(f"{server.url}/orders", json={"user_id": "a b", "item": "x"})
        assert bad.status_code == 422

    # Offline: the notification waits in the log for the next connection.
    cursor = event_id
    await no_rows(database_url, "n-sse")
    placed = await client.post(f"{server.url}/orders", json={"user_id": "7", "item": "lamp"})
    async with sse(
        client,
        f"{server.url}/v1/channels/notifications/n-sse",
        params={"user": "7"},
        headers={"Last-Event-ID": str(cursor)},
    ) as user7:
        await user7.next()
        _, event_id, data = await user7.next()
        assert event_id == placed.json()["notification_id"]
        assert data["payload"]["item"] == "lamp"


async def test_notifications_need_a_user(
    notifications_server: ExampleServer, client: httpx.AsyncClient
) -> None:
    server = notifications_server
    async with ws_connect(f"{server.ws}/v1/channels/notifications/anon") as anon:
        error = await anon.recv()
        assert error["code"] == "unauthenticated"
        with pytest.raises(ConnectionClosed):
            await anon.recv()
    response = await client.get(f"{server.url}/v1/channels/notifications/anon")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "unauthenticated"
