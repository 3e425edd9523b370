"""Idempotency keys across a crash: a server killed with SIGKILL in the middle of
keyed publishes, then started again; clients retry every request with its key.
Each key's event is in the log exactly once, and a retry of an acknowledged
request gets the answer the first one got."""

from __future__ import annotations

import asyncio
import time

import httpx

from .server import Server


def test_retries_after_a_crash_append_each_key_once(database_url: str) -> None:
    server = Server(database_url).start()
    keys = [f"order-{n}" for n in range(300)]
    first_answers: dict[str, dict[str, object]] = {}

    async def storm() -> None:
        gate = asyncio.Semaphore(32)
        killing: list[asyncio.Future[None]] = []
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:

            async def one(key: str) -> None:
                async with gate:
                    try:
                        response = await http.post(
                            "/v1/topics/orders/events",
                            json={"payload": {"key": key}},
                            headers={"Idempotency-Key": key},
                        )
                    except httpx.HTTPError:
                        return
                if response.status_code == 201:
                    first_answers[key] = response.json()
                if len(first_answers) >= 60 and not killing:
                    # Mid-storm: 32 requests are in flight, the rest not yet sent.
                    loop = asyncio.get_running_loop()
                    killing.append(loop.run_in_executor(None, server.kill))

            await asyncio.gather(*(one(key) for key in keys))
            await asyncio.gather(*killing)

    started = time.monotonic()
    asyncio.run(storm())
    assert time.monotonic() - started < 60
    assert 60 <= len(first_answers) < len(keys)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            for key in keys:
                response = http.post(
                    "/v1/topics/orders/events",
                    json={"payload": {"key": key}},
                    headers={"Idempotency-Key": key},
                )
                assert response.status_code in (200, 201), response.text
                if key in first_answers:
                    assert response.status_code == 200
                    assert response.json() == first_answers[key]
            history = http.get(
                "/v1/topics/orders/events", headers={"Accept": "application/x-ndjson"}
            )
            stored = [line for line in history.text.splitlines() if line]
        payload_keys = [
            httpx.Response(200, content=line).json()["payload"]["key"] for line in stored
        ]
        assert sorted(payload_keys) == sorted(keys)
    finally:
        server.kill()
