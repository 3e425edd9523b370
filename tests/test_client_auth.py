"""The SSE client with tokens, against a real server with a key: fresh tokens
across expiries miss nothing, and refusals end the stream instead of looping."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from eventhub_log.client import (
    EventStreamClient,
    StreamEvent,
    StreamRefused,
    StreamUnauthorized,
)
from eventhub_log.tokens import mint_token

from .server import Server

SECRET = "c" * 32
TOPICS = ["t:a", "t:b"]


@pytest.fixture
def server(database_url: str) -> Iterator[Server]:
    # No leeway: a stream ends at its token's exp, so a few seconds see several.
    running = Server(
        database_url, env={"EVENTHUB_AUTH_SECRET": SECRET, "EVENTHUB_AUTH_LEEWAY": "0"}
    ).start()
    yield running
    running.kill()


def reader(sub: str = "reader", ttl: float = 3600, secret: str = SECRET) -> str:
    return mint_token(sub, {"subscribe": ["t:*"]}, secret=secret, ttl=ttl)


ADMIN = mint_token("ops", {"admin": True}, secret=SECRET, ttl=3600)


async def publish_one(server: Server, topic: str) -> Any:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            f"{server.url}/v1/topics/{topic}/events",
            json={"payload": {"x": 1}},
            headers={"Authorization": f"Bearer {ADMIN}"},
        )
    assert response.status_code == 201, response.text
    return response.json()


class Requests:
    """Counts what a client sends, and with which token."""

    def __init__(self) -> None:
        self.tokens: list[str | None] = []

    async def __call__(self, request: httpx.Request) -> None:
        self.tokens.append(request.headers.get("authorization"))

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(event_hooks={"request": [self]})


async def test_fresh_tokens_across_expiries_miss_nothing(server: Server) -> None:
    minted: list[float] = []

    async def provider() -> str:
        minted.append(time.time())
        return reader(ttl=3)  # exp is whole seconds: a life of 2 to 3 s

    published: list[str] = []
    received: list[StreamEvent] = []
    stop = asyncio.Event()

    async def publish(http: httpx.AsyncClient) -> None:
        n = 0
        while not stop.is_set():
            topic = TOPICS[n % 2]
            response = await http.post(
                f"{server.url}/v1/topics/{topic}/events",
                json={"payload": {"n": n}},
                headers={"Authorization": f"Bearer {ADMIN}"},
            )
            assert response.status_code == 201, response.text
            published.append(response.json()["id"])
            n += 1
            await asyncio.sleep(0.03)

    stream = EventStreamClient(server.url, TOPICS, token_provider=provider, min_backoff=0.05)

    async def follow() -> None:
        async for item in stream:
            assert isinstance(item, StreamEvent)
            received.append(item)

    follower = asyncio.create_task(follow())
    async with httpx.AsyncClient(timeout=10) as http:
        async with asyncio.timeout(10):
            while stream.connections == 0:  # noqa: ASYNC110 (waiting on another task)
                await asyncio.sleep(0.02)
        publisher = asyncio.create_task(publish(http))
        async with asyncio.timeout(20):
            while len(minted) < 4:  # the first token, then three expiries
                assert not follower.done(), follower
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # and events on the last token too
        stop.set()
        await publisher
        async with asyncio.timeout(15):
            while len(received) < len(published):
                assert not follower.done(), follower
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # anything extra would have arrived by now
    follower.cancel()
    await asyncio.gather(follower, return_exceptions=True)
    await stream.aclose()

    assert [event.id for event in received] == published  # in order, none twice, none lost
    assert stream.connections == len(minted)  # each fresh token resumed the stream once


async def test_a_401_without_a_provider_ends_with_an_error(server: Server) -> None:
    requests = Requests()
    async with (
        requests.client() as http,
        EventStreamClient(server.url, TOPICS, http=http) as stream,
    ):
        with pytest.raises(StreamUnauthorized) as refused:
            await anext(stream.events())
    assert refused.value.status == 401
    assert requests.tokens == [None]

    expired = reader(ttl=1)
    await asyncio.sleep(2.1)
    async with EventStreamClient(server.url, TOPICS, token=expired) as stream:
        with pytest.raises(StreamUnauthorized, match="expired"):
            await anext(stream.events())


async def test_a_provider_that_raises_ends_with_an_error(server: Server) -> None:
    def provider() -> str:
        raise RuntimeError("the login service is down")

    stale = reader(secret="x" * 32)  # the server refuses it: the provider is asked
    async with EventStreamClient(server.url, TOPICS, token=stale, token_provider=provider) as s:
        with pytest.raises(StreamUnauthorized, match="login service is down") as refused:
            await anext(s.events())
    assert isinstance(refused.value.__cause__, RuntimeError)


async def test_a_fresh_token_refused_too_is_not_retried(server: Server) -> None:
    requests = Requests()
    calls = 0

    def provider() -> str:
        nonlocal calls
        calls += 1
        return reader(secret="y" * 32)

    async with (
        requests.client() as http,
        EventStreamClient(server.url, TOPICS, http=http, token_provider=provider) as stream,
    ):
        with pytest.raises(StreamUnauthorized):
            await anext(stream.events())
    assert calls == 1
    assert len(requests.tokens) == 1


async def test_a_401_asks_the_provider_and_goes_on(server: Server) -> None:
    requests = Requests()
    fresh = reader()
    async with (
        requests.client() as http,
        EventStreamClient(
            server.url,
            TOPICS,
            http=http,
            token=reader(secret="z" * 32),
            token_provider=lambda: fresh,
            last_event_id="0",
        ) as stream,
    ):
        published = await publish_one(server, "t:a")
        async with asyncio.timeout(10):
            item = await anext(stream.events())
        assert isinstance(item, StreamEvent)
        assert item.id == published["id"]
    assert requests.tokens[-1] == f"Bearer {fresh}"
    assert len(requests.tokens) == 2


async def test_a_403_is_never_retried(server: Server) -> None:
    requests = Requests()
    calls = 0

    def provider() -> str:
        nonlocal calls
        calls += 1
        return reader()

    started = time.monotonic()
    async with (
        requests.client() as http,
        EventStreamClient(
            server.url, ["secret:x"], http=http, token=reader(), token_provider=provider
        ) as stream,
    ):
        with pytest.raises(StreamRefused) as refused:
            await anext(stream.events())
    assert not isinstance(refused.value, StreamUnauthorized)
    assert (refused.value.status, refused.value.code) == (403, "forbidden")
    assert len(requests.tokens) == 1
    assert calls == 0
    assert time.monotonic() - started < 5


async def tail(server: Server, *args: str, **env: str) -> asyncio.subprocess.Process:
    base = {name: value for name, value in os.environ.items() if name != "EVENTHUB_TOKEN"}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "eventhub_log.cli",
        "tail",
        *TOPICS,
        "--url",
        server.url,
        "--last-event-id",
        "0",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**base, **env},
    )


async def first_line(process: asyncio.subprocess.Process) -> Any:
    assert process.stdout is not None
    try:
        async with asyncio.timeout(30):
            return await process.stdout.readline()
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def test_tail_takes_a_token(server: Server) -> None:
    event = await publish_one(server, "t:b")
    by_env = await tail(server, EVENTHUB_TOKEN=reader())
    assert f'"id": "{event["id"]}"' in (await first_line(by_env)).decode()
    by_option = await tail(server, "--token", reader())
    assert f'"id": "{event["id"]}"' in (await first_line(by_option)).decode()

    refused = await tail(server)
    assert refused.stderr is not None
    async with asyncio.timeout(30):
        _, err = await refused.communicate()
    assert refused.returncode == 1
    assert "401 unauthorized" in err.decode()
    assert "Traceback" not in err.decode()
