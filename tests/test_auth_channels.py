"""Channels with a key: a channel id is a subscriber id, so only its owner may
open it (WebSocket or SSE) or post messages to it. A real server, both databases."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from eventhub_log.tokens import mint_token

from .examples_util import ExampleServer
from .wsclient import ws_connect

SECRET = "channel-secret-" + "x" * 32


def bearer(sub: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(sub, {}, secret=SECRET)}"}


@pytest.fixture
def app_server(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ExampleServer]:
    monkeypatch.setenv("EVENTHUB_AUTH_SECRET", SECRET)
    running = ExampleServer("tests.channel_app", database_url).start()
    yield running
    running.kill()


async def test_only_the_owner_opens_a_channel_or_posts_to_it(app_server: ExampleServer) -> None:
    path = "/v1/channels/testing/alice:1"
    for headers, status in (({}, 401), (bearer("bob"), 403)):
        with pytest.raises(InvalidStatus) as refused:
            async with ws_connect(app_server.ws + path, additional_headers=headers):
                pass
        assert refused.value.response.status_code == status
    async with (
        httpx.AsyncClient(base_url=app_server.url, timeout=10) as client,
        ws_connect(app_server.ws + path, additional_headers=bearer("alice")) as ws,
    ):
        assert (await ws.recv_type("welcome"))["channel_id"] == "alice:1"
        # Over SSE: the same rule.
        for headers, status in (({}, 401), (bearer("bob"), 403)):
            response = await client.get(path, headers=headers)
            assert response.status_code == status
        # Posting as someone else's channel is refused, and so is a body a
        # cross-site form could send.
        message = {"action": "echo", "data": {"n": 2}}
        refused = await client.post(f"{path}/messages", json=message, headers=bearer("bob"))
        assert refused.status_code == 403
        assert (await client.post(f"{path}/messages", json=message)).status_code == 401
        form = await client.post(
            f"{path}/messages",
            content=b'{"action": "echo", "data": {"n": 2}}',
            headers={**bearer("alice"), "Content-Type": "text/plain"},
        )
        assert form.status_code == 415
        assert await ws.quiet(0.3) == []  # none of those reached the channel
        allowed = await client.post(f"{path}/messages", json=message, headers=bearer("alice"))
        assert allowed.status_code == 200
        assert allowed.json()["reply"] == {"n": 4}


async def test_a_busy_channel_stream_still_ends_at_its_tokens_expiry(
    app_server: ExampleServer,
) -> None:
    short = {"Authorization": f"Bearer {mint_token('alice', {}, secret=SECRET, ttl=2)}"}
    admin = {"Authorization": f"Bearer {mint_token('root', {'admin': True}, secret=SECRET)}"}
    async with httpx.AsyncClient(base_url=app_server.url, timeout=10) as client:

        async def busy() -> None:
            while True:  # an event every 0.2 s: the stream is never idle
                await client.post("/v1/topics/t:test/events", json={"payload": 1}, headers=admin)
                await asyncio.sleep(0.2)

        opened = time.monotonic()
        publisher = asyncio.create_task(busy())
        try:
            async with client.stream("GET", "/v1/channels/testing/alice:2", headers=short) as sse:
                assert sse.status_code == 200
                events = 0
                async for line in sse.aiter_lines():
                    events += line.startswith("id:")
                    assert time.monotonic() - opened < 8, "the stream outlived its token"
        finally:
            publisher.cancel()
        assert events > 3
        assert 1.0 <= time.monotonic() - opened < 5
