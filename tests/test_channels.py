"""Channels: the library's handlers and lifecycle, then both transports on a real server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from pydantic import BaseModel
from websockets.exceptions import ConnectionClosed

from eventhub_log import EventHub, InvalidCursor
from eventhub_log.channels import (
    Channel,
    ChannelConnection,
    ChannelError,
    ChannelRoute,
    ConnectionInfo,
    HandlerFailed,
    InvalidMessage,
    InvalidOpeningData,
    Session,
    open_channel,
)

from .examples_util import ExampleServer, sse
from .test_ws import prune
from .wsclient import ws_connect

# The library -------------------------------------------------------------------


class Room(BaseModel):
    room: str


class Say(BaseModel):
    text: str


def make_route(calls: list[str]) -> ChannelRoute[Room]:
    route: ChannelRoute[Room] = ChannelRoute(
        "chat",
        opening=Room,
        session=lambda info: Session(user_id=info.headers.get("x-user")),
    )

    @route.on_connect
    async def connect(hub: EventHub, channel: Channel[Room], session: Session) -> Any:
        calls.append(f"connect {channel.channel_id} {session.user_id}")
        await hub.subscribe(f"room:{channel.opening_data.room}", channel.channel_id)
        return {"welcome": channel.opening_data.room}

    @route.on_message("say")
    async def say(hub: EventHub, channel: Channel[Room], session: Session, data: Say) -> Any:
        event = await hub.publish(
            f"room:{channel.opening_data.room}", channel.channel_id, {"text": data.text}
        )
        return {"id": event.id}

    @route.on_message("boom")
    async def boom(hub: EventHub, channel: Channel[Room], session: Session, data: Any) -> Any:
        raise RuntimeError("boom")

    @route.on_message("refuse")
    async def refuse(hub: EventHub, channel: Channel[Room], session: Session, data: Any) -> Any:
        raise ChannelError("no", code="nope")

    @route.on_disconnect
    async def disconnect(hub: EventHub, channel: Channel[Room], session: Session) -> None:
        calls.append(f"disconnect {channel.channel_id}")
        await hub.subscribe("elsewhere", channel.channel_id)
        raise RuntimeError("the disconnect handler fails too")

    return route


async def _ignore(_: Any) -> None:
    return None


def _open(hub: EventHub, route: ChannelRoute[Room], channel_id: str, **kwargs: Any) -> Any:
    return open_channel(
        hub,
        route,
        channel_id,
        {"room": "lobby"},
        _ignore,
        info=ConnectionInfo(channel_id, headers={"x-user": "u-" + channel_id}),
        **kwargs,
    )


async def test_handlers_get_hub_channel_session_and_typed_input(hub: EventHub) -> None:
    calls: list[str] = []
    route = make_route(calls)
    async with _open(hub, route, "a") as a, _open(hub, route, "b") as b:
        assert calls == ["connect a u-a", "connect b u-b"]
        assert a.welcome == {"welcome": "lobby"}
        reply = await a.handle({"action": "say", "data": {"text": "hi"}, "ref": 7})
        assert reply is not None
        assert reply.ref == 7
        assert b.feed is not None
        event = await b.feed.next(timeout=5)
        assert event is not None
        assert event.payload == {"text": "hi"}
        assert event.id == reply.data["id"]
        assert a.feed is not None
        assert await a.feed.next(timeout=0.2) is None  # the sender is excluded
        with pytest.raises(InvalidMessage, match="text"):
            await a.handle({"action": "say", "data": {"txt": "hi"}})
        with pytest.raises(InvalidMessage, match="no action"):
            await a.handle({"action": "dance"})
        with pytest.raises(InvalidMessage):
            await a.handle(["not", "an", "object"])
        with pytest.raises(HandlerFailed, match="RuntimeError"):
            await a.handle({"action": "boom"})
        with pytest.raises(ChannelError) as refused:
            await a.handle({"action": "refuse"})
        assert refused.value.code == "nope"
        # Still working after all that.
        assert await a.handle({"action": "say", "data": {"text": "again"}}) is not None
    assert calls[-2:] == ["disconnect a", "disconnect b"] or calls[-2:] == [
        "disconnect b",
        "disconnect a",
    ]
    # Whatever the disconnect handler did (it even subscribed, then raised).
    assert await hub.subscriptions("a") == []
    assert await hub.subscriptions("b") == []
    assert await hub.subscribers("room:lobby") == []


async def test_bad_opening_data_and_cursor_are_refused_before_anything(hub: EventHub) -> None:
    calls: list[str] = []
    route = make_route(calls)
    with pytest.raises(InvalidOpeningData, match="room"):
        async with open_channel(hub, route, "x", {"rom": "lobby"}, _ignore):
            pass
    with pytest.raises(InvalidCursor):
        async with _open(hub, route, "x", after="not-a-cursor"):
            pass
    with pytest.raises(InvalidCursor, match="ahead"):
        async with _open(hub, route, "x", after="999999"):
            pass
    assert calls == []
    assert await hub.subscriptions("x") == []


async def test_a_failing_connect_handler_leaves_no_rows(hub: EventHub) -> None:
    route: ChannelRoute[Room] = ChannelRoute("failing", opening=Room)

    @route.on_connect
    async def connect(hub: EventHub, channel: Channel[Room], session: Session) -> Any:
        await hub.subscribe("room:a", channel.channel_id)
        await hub.subscribe("room:b", channel.channel_id)
        raise RuntimeError("no")

    with pytest.raises(HandlerFailed):
        async with open_channel(hub, route, "f", {"room": "a"}, _ignore):
            pass
    assert await hub.subscriptions("f") == []


async def test_reconnect_runs_connect_again_and_resumes_from_the_cursor(hub: EventHub) -> None:
    calls: list[str] = []
    route = make_route(calls)
    async with _open(hub, route, "reader") as reader:
        assert reader.feed is not None
        last_seen = reader.start_cursor
    missed = [await hub.publish("room:lobby", None, {"n": n}) for n in range(5)]
    async with _open(hub, route, "reader", after=last_seen) as again:
        assert calls.count("connect reader u-reader") == 2
        assert again.feed is not None
        got = [await again.feed.next(timeout=5) for _ in missed]
        assert [e.id for e in got if e is not None] == [e.id for e in missed]
        live = await hub.publish("room:lobby", None, "live")
        event = await again.feed.next(timeout=5)
        assert event is not None
        assert event.id == live.id


async def test_rows_are_removed_in_one_transaction(hub: EventHub) -> None:
    """The channel's rows go by one DELETE, not one per topic."""
    route: ChannelRoute[Room] = ChannelRoute("many", opening=Room)

    @route.on_connect
    async def connect(hub: EventHub, channel: Channel[Room], session: Session) -> Any:
        for n in range(20):
            await hub.subscribe(f"topic:{n}", channel.channel_id)

    statements: list[str] = []
    from sqlalchemy import event as sa_event

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    engine = hub.database.engine.sync_engine
    async with open_channel(hub, route, "m", {"room": "x"}, _ignore) as channel:
        assert len(await hub.subscriptions("m")) == 20
        assert isinstance(channel, ChannelConnection)
        sa_event.listen(engine, "before_cursor_execute", record)
    sa_event.remove(engine, "before_cursor_execute", record)
    deletes = [s for s in statements if s.lstrip().upper().startswith("DELETE FROM SUBSCRIPTIONS")]
    assert len(deletes) == 1, statements
    assert await hub.subscriptions("m") == []


# Over the wire -----------------------------------------------------------------


@pytest.fixture
def app_server(database_url: str) -> Iterator[ExampleServer]:
    running = ExampleServer("tests.channel_app", database_url).start()
    yield running
    running.kill()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as http:
        yield http


async def wait_no_rows(database_url: str, channel_id: str, within: float = 3.0) -> float:
    started = time.monotonic()
    async with EventHub(database_url) as hub:
        while await hub.subscriptions(channel_id):
            assert time.monotonic() - started < within, await hub.subscriptions(channel_id)
            await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_websocket_channel(app_server: ExampleServer, database_url: str) -> None:
    url = f"{app_server.ws}/v1/channels/testing/ws-1?topic=t:one"
    async with (
        ws_connect(url, additional_headers={"X-User-Id": "u1"}) as ws,
        ws_connect(f"{app_server.ws}/v1/channels/testing/ws-2?topic=t:one") as other,
    ):
        hello = await ws.recv()
        assert hello == {"type": "message", "data": {"hello": "u1"}}
        welcome = await ws.recv()
        assert welcome["type"] == "welcome"
        assert welcome["channel_id"] == "ws-1"
        assert welcome["data"] == {"user": "u1", "topic": "t:one"}
        await other.recv_type("welcome")
        await ws.send({"action": "echo", "data": {"n": 21}, "ref": "e1"})
        assert await ws.recv() == {
            "type": "reply",
            "action": "echo",
            "data": {"n": 42},
            "ref": "e1",
        }
        bad: list[tuple[Any, str]] = [
            ("{oops", "invalid_json"),
            ({"action": "echo", "data": {"n": "many"}}, "invalid_message"),
            ({"action": "nope"}, "invalid_message"),
            ({"data": 1}, "invalid_message"),
            ({"action": "boom"}, "handler_error"),
            ({"action": "refuse"}, "forbidden"),
        ]
        for frame, code in bad:
            await ws.send(frame)
            error = await ws.recv()
            assert error["type"] == "error", frame
            assert error["code"] == code, (frame, error)
        # Up, and publishing to everyone but itself.
        await ws.send({"action": "publish", "data": {"n": 1}})
        reply = await ws.recv()
        event = await other.recv_type("event")
        assert event["id"] == reply["data"]["id"]
        assert event["payload"] == {"n": 1}
        assert await ws.quiet() == []
        await ws.send({"action": "silent"})
        assert await ws.quiet() == []  # no reply when the handler returns None
        async with EventHub(database_url) as hub:
            assert await hub.subscriptions("ws-1") == ["t:also", "t:extra", "t:one"]
    assert await wait_no_rows(database_url, "ws-1") < 1.0
    assert await wait_no_rows(database_url, "ws-2") < 1.0


async def test_websocket_channel_refused(app_server: ExampleServer, database_url: str) -> None:
    cases = [
        ("/v1/channels/nosuch/c1", "unknown_channel", 1008),
        ("/v1/channels/testing/c1?fail_connect=maybe", "invalid_opening_data", 1008),
        ("/v1/channels/testing/c1?last_event_id=x", "invalid_cursor", 1008),
        ("/v1/channels/testing/c1?fail_connect=true", "handler_error", 1011),
    ]
    for path, code, close_code in cases:
        async with ws_connect(app_server.ws + path) as ws:
            error = await ws.recv()
            assert error["type"] == "error"
            assert error["code"] == code, path
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == close_code
    assert await wait_no_rows(database_url, "c1") < 1.0


async def test_sse_channel_with_posted_messages(
    app_server: ExampleServer, database_url: str, client: httpx.AsyncClient
) -> None:
    base = f"{app_server.url}/v1/channels/testing/sse-1"
    async with (
        sse(client, base, params={"topic": "t:two"}, headers={"X-User-Id": "u2"}) as stream,
        ws_connect(f"{app_server.ws}/v1/channels/testing/ws-3?topic=t:two") as ws,
    ):
        assert stream.response.status_code == 200
        assert await stream.next() == ("message", None, {"data": {"hello": "u2"}})
        kind, cursor, welcome = await stream.next()
        assert kind == "welcome"
        assert cursor == welcome["id"]
        assert welcome["data"] == {"user": "u2", "topic": "t:two"}
        await ws.recv_type("welcome")

        response = await client.post(f"{base}/messages", json={"action": "echo", "data": {"n": 2}})
        assert response.status_code == 200
        assert response.json() == {"action": "echo", "reply": {"n": 4}}
        response = await client.post(
            f"{base}/messages", json={"action": "publish", "data": {"n": 5}}
        )
        published = response.json()["reply"]["id"]
        event = await ws.recv_type("event")
        assert event["id"] == published

        await ws.send({"action": "publish", "data": {"n": 6}})
        reply = await ws.recv_type("reply")
        kind, event_id, data = await stream.next()
        assert kind is None
        assert event_id == reply["data"]["id"]
        assert data["payload"] == {"n": 6}

        for body, status, code in [
            ({"action": "boom"}, 500, "handler_error"),
            ({"action": "refuse"}, 400, "forbidden"),
            ({"action": "echo", "data": {"n": "x"}}, 422, "invalid_message"),
            ({"action": "nope"}, 422, "invalid_message"),
            ({"action": "echo", "extra": 1}, 422, "validation_error"),
        ]:
            response = await client.post(f"{base}/messages", json=body)
            assert response.status_code == status, body
            assert response.json()["error"]["code"] == code
        response = await client.post(
            f"{app_server.url}/v1/channels/testing/not-here/messages", json={"action": "echo"}
        )
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "channel_not_connected"
        # Still up.
        response = await client.post(f"{base}/messages", json={"action": "echo", "data": {"n": 1}})
        assert response.json()["reply"] == {"n": 2}
    assert await wait_no_rows(database_url, "sse-1") < 1.0


async def test_sse_channel_refused_with_4xx(
    app_server: ExampleServer, client: httpx.AsyncClient
) -> None:
    for path, status, code in [
        ("/v1/channels/nosuch/c2", 404, "unknown_channel"),
        ("/v1/channels/testing/c2?fail_connect=maybe", 422, "invalid_opening_data"),
        ("/v1/channels/testing/c2?last_event_id=abc", 400, "invalid_cursor"),
        ("/v1/channels/testing/c2?fail_connect=true", 500, "handler_error"),
    ]:
        response = await client.get(app_server.url + path)
        assert response.status_code == status, path
        assert response.json()["error"]["code"] == code


async def test_sse_channel_resumes_with_last_event_id(
    app_server: ExampleServer, client: httpx.AsyncClient, database_url: str
) -> None:
    base = f"{app_server.url}/v1/channels/testing/sse-2"
    async with sse(client, base) as stream:
        await stream.next()
        _, cursor, _ = await stream.next()
    await wait_no_rows(database_url, "sse-2")
    async with EventHub(database_url) as hub:
        missed = [await hub.publish("t:test", None, n) for n in range(3)]
    async with sse(client, base, headers={"Last-Event-ID": str(cursor)}) as stream:
        await stream.next()
        kind, _, welcome = await stream.next()
        assert kind == "welcome"
        assert welcome["id"] == cursor
        got = [await stream.next() for _ in missed]
        assert [event_id for _, event_id, _ in got] == [e.id for e in missed]


async def test_sigterm_ends_open_channels_promptly(
    app_server: ExampleServer, client: httpx.AsyncClient, database_url: str
) -> None:
    async with (
        ws_connect(f"{app_server.ws}/v1/channels/testing/term-ws") as ws,
        sse(client, f"{app_server.url}/v1/channels/testing/term-sse") as stream,
    ):
        await ws.recv_type("welcome")
        await stream.next()
        await stream.next()
        started = time.monotonic()
        await asyncio.to_thread(app_server.stop)
        assert time.monotonic() - started < 3
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code in (1001, 1012)
        with pytest.raises(EOFError):
            await stream.next()
    async with EventHub(database_url) as hub:
        assert await hub.subscriptions("term-ws") == []
        assert await hub.subscriptions("term-sse") == []


async def test_channel_resume_past_retention_gets_a_gap(
    app_server: ExampleServer, client: httpx.AsyncClient, database_url: str
) -> None:
    async with EventHub(database_url) as hub:
        for n in range(4):
            await hub.publish("t:test", None, n)
    await asyncio.to_thread(prune, database_url, "t:test", 1)
    base = f"{app_server.url}/v1/channels/testing/gappy"
    async with sse(client, base, headers={"Last-Event-ID": "0"}) as stream:
        assert (await stream.next())[0] == "message"
        assert (await stream.next())[0] == "welcome"
        assert await stream.next() == (
            "gap",
            None,
            {"topic": "t:test", "from_seq": 1, "to_seq": 3},
        )
        _, _, event = await stream.next()
        assert event["seq"] == 4
    async with ws_connect(f"{app_server.ws}/v1/channels/testing/gappy-ws?last_event_id=0") as ws:
        await ws.recv_type("welcome")
        assert await ws.recv() == {"type": "gap", "topic": "t:test", "from_seq": 1, "to_seq": 3}
        assert (await ws.recv())["seq"] == 4
