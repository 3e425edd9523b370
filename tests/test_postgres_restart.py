"""The PostgreSQL server restarted under load: the service answers 503 while it is
down, recovers by itself, and loses no acknowledged event.

It stops the shared PostgreSQL server for about a second, so it is marked
``restarts_postgres`` (collected after every other test of the run) and skipped
unless the server is a local cluster that ``pg_ctlcluster`` controls.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest
from httpx_sse import aconnect_sse

from eventhub_log.notify.postgres import asyncpg_dsn

from .server import Server

TOPICS = ["load:0", "load:1", "load:2"]


def _cluster() -> list[str] | None:
    """``pg_ctlcluster`` arguments for the local cluster, if there is exactly one."""
    root = Path("/etc/postgresql")
    if shutil.which("pg_ctlcluster") is None or not root.is_dir():
        return None
    versions = sorted(path.name for path in root.iterdir() if (path / "main").is_dir())
    if len(versions) != 1:
        return None
    return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[0], "main"]


def _pg_ctl(cluster: list[str], action: str) -> None:
    extra = ["-m", "fast"] if action == "stop" else []
    subprocess.run([*cluster, action, *extra], check=True, capture_output=True, timeout=60)


async def _wait_until_up(database_url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = await asyncpg.connect(asyncpg_dsn(database_url), timeout=2)
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
            continue
        await conn.close()
        return


@pytest.mark.restarts_postgres
@pytest.mark.slow
async def test_postgres_restart_under_load(pg_database_url: str) -> None:
    database_url = pg_database_url
    cluster = _cluster()
    if cluster is None:
        pytest.skip("no local PostgreSQL cluster under pg_ctlcluster's control")

    env = {"EVENTHUB_INSTANCE_HEARTBEAT": "0.5", "EVENTHUB_INSTANCE_TTL": "30"}
    publishing = Server(database_url, args=["--mode", "stateless"], env=env).start(timeout=60)
    streaming = Server(database_url, args=["--mode", "stateless"], env=env).start(timeout=60)
    acknowledged: list[str] = []
    statuses: Counter[int | str] = Counter()
    received: list[tuple[int, str, int]] = []
    stop_publishing = asyncio.Event()

    async def publisher(client: httpx.AsyncClient, number: int) -> None:
        i = 0
        while not stop_publishing.is_set():
            i += 1
            topic = TOPICS[(number + i) % len(TOPICS)]
            try:
                response = await client.post(
                    f"{publishing.url}/v1/topics/{topic}/events",
                    json={"payload": {"p": number, "i": i}},
                )
            except httpx.TransportError:
                statuses["transport"] += 1
                await asyncio.sleep(0.05)
                continue
            statuses[response.status_code] += 1
            if response.status_code == 201:
                acknowledged.append(response.json()["id"])
            else:
                assert response.status_code == 503, response.text
                assert response.json()["error"]["code"] == "database_unavailable"
                await asyncio.sleep(0.05)

    async def reader(client: httpx.AsyncClient, until: asyncio.Future[int]) -> None:
        """Follows the stream on the other server, resuming whenever it drops."""
        cursor = "0"
        while not (until.done() and int(cursor) >= until.result()):
            try:
                async with aconnect_sse(
                    client,
                    "GET",
                    f"{streaming.url}/v1/stream",
                    params=[("topic", topic) for topic in TOPICS],
                    headers={"Last-Event-ID": cursor},
                ) as source:
                    if source.response.status_code != 200:
                        await asyncio.sleep(0.1)
                        continue
                    async for event in source.aiter_sse():
                        if event.event != "message" or not event.data:
                            continue  # ready, or a ping comment (the parser yields those)
                        body = json.loads(event.data)
                        received.append((int(event.id), body["topic"], body["seq"]))
                        cursor = event.id
                        if until.done() and int(cursor) >= until.result():
                            return
            except httpx.HTTPError:
                await asyncio.sleep(0.1)

    try:
        async with (
            httpx.AsyncClient(timeout=10) as client,
            httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as stream_client,
        ):
            final_head: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            reading = asyncio.create_task(reader(stream_client, final_head))
            load = [asyncio.create_task(publisher(client, n)) for n in range(6)]
            await asyncio.sleep(1.5)
            before = len(acknowledged)
            assert before > 0

            await asyncio.to_thread(_pg_ctl, cluster, "stop")
            try:
                down_since = time.monotonic()
                probe = await client.post(
                    f"{publishing.url}/v1/topics/probe/events", json={"payload": "down"}
                )
                assert probe.status_code == 503, probe.text
                assert probe.json()["error"]["code"] == "database_unavailable"
                assert "Retry-After" in probe.headers
                assert (await client.get(f"{publishing.url}/readyz")).status_code == 503
                await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - down_since)))
            finally:
                await asyncio.to_thread(_pg_ctl, cluster, "start")
            await _wait_until_up(database_url, 30)
            up_again = time.monotonic()
            at_restart = len(acknowledged)

            # Recovers by itself: publishes are acknowledged again, soon.
            while len(acknowledged) == at_restart:
                assert time.monotonic() - up_again < 20, f"no recovery: {statuses}"
                await asyncio.sleep(0.05)
            recovered_after = time.monotonic() - up_again
            after = len(acknowledged)
            await asyncio.sleep(1.0)
            assert len(acknowledged) > after
            stop_publishing.set()
            await asyncio.gather(*load)

            conn = await asyncpg.connect(asyncpg_dsn(database_url))
            try:
                rows = await conn.fetch(
                    "SELECT position, topic, seq FROM events WHERE topic = ANY($1::text[]) "
                    "ORDER BY position",
                    TOPICS,
                )
            finally:
                await conn.close()
            stored = [(row["position"], row["topic"], row["seq"]) for row in rows]
            final_head.set_result(stored[-1][0])
            deadline = time.monotonic() + 30
            while not received or received[-1][0] < stored[-1][0]:
                assert time.monotonic() < deadline, "the reader did not catch up"
                assert not reading.done(), reading
                await asyncio.sleep(0.05)
            reading.cancel()
    finally:
        publishing.kill()
        streaming.kill()

    assert statuses[503] > 0 or statuses["transport"] > 0, statuses
    assert recovered_after < 10
    # No acknowledged event was lost.
    positions = {str(position) for position, _, _ in stored}
    assert set(acknowledged) <= positions
    # The reader on the other server saw exactly the log, across the outage.
    assert received == stored
    _report(statuses, recovered_after)


def _report(statuses: Counter[Any], recovered_after: float) -> None:
    print(f"statuses {dict(statuses)}; publishing again {recovered_after:.2f} s after restart")
