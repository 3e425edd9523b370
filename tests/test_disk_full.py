"""Disk full on SQLite: a real server whose database runs out of space.

The database lives on a small tmpfs the test mounts (as root), or, where it
cannot mount, in a file whose page count every connection caps with SQLite's
``PRAGMA max_page_count`` (``tests/page_limit/sitecustomize.py``, loaded by the
server process). Publishers (single events, atomic batches, idempotency-keyed
publishes) run concurrently until space is gone, then space is freed while the
server keeps running. What a client must see:

- a refused publish is a 507 (or 503) with the contract's error body, never a
  500, and names neither the driver nor its words;
- every acknowledged event is in history, once, and nothing refused is; seqs of
  each topic run 1..N with no gap or duplicate;
- once space is back, publishing, history, streams and ``/readyz`` work again
  without a restart, and seqs carry on from N + 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from .server import Server

TOPICS = ["disk/a", "disk/b", "disk/c"]
PAD = "x" * 6000  # an event of about 6 KB: a few hundred fill the space
PUBLISHERS = 8
REFUSALS_WANTED = 40  # refusals seen before the publishers stop
MAX_REQUESTS = 5000  # if the space never runs out, the test fails rather than spins
DRIVER_WORDS = ("sqlite", "disk is full", "operationalerror", "traceback", "sqlalchemy")
PAGE_LIMIT_DIR = Path(__file__).resolve().parent / "page_limit"


@dataclass
class SmallDisk:
    """Where the database goes, and how to give it room again."""

    directory: Path
    free_space: Callable[[], None]
    env: dict[str, str] = field(default_factory=dict)


def _mount_tmpfs(where: Path, size: str) -> str | None:
    """Mount a tmpfs of ``size`` at ``where``; why not, when it cannot."""
    if os.geteuid() != 0:
        return "not root: cannot mount a tmpfs"
    if shutil.which("mount") is None:
        return "no mount command"
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        return f"mount -t tmpfs failed: {done.stderr.strip()}"
    return None


@pytest.fixture(params=["tmpfs", "max_page_count"])
def small_disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SmallDisk]:
    if request.param == "tmpfs":
        where = tmp_path / "small-fs"
        problem = _mount_tmpfs(where, "6m")
        if problem is not None:
            pytest.skip(f"{problem}; the max_page_count case covers disk full without it")

        def grow() -> None:
            subprocess.run(["mount", "-o", "remount,size=64m", str(where)], check=True)

        try:
            yield SmallDisk(where, grow)
        finally:
            if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(where)], check=False)
        return
    # Without a filesystem of its own: SQLite's page cap, re-read from this file by
    # every connection as it leaves the pool, so raising it frees space live.
    limit = tmp_path / "max_page_count"
    limit.write_text("1200")  # 4 KiB pages: about 4.7 MiB

    def raise_limit() -> None:
        limit.write_text("1073741823")

    pythonpath = os.pathsep.join(
        [str(PAGE_LIMIT_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    yield SmallDisk(
        tmp_path,
        raise_limit,
        {"PYTHONPATH": pythonpath, "EVENTHUB_TEST_MAX_PAGE_COUNT_FILE": str(limit)},
    )


@dataclass
class Outcomes:
    acked: dict[str, dict[int, str]] = field(default_factory=dict)  # topic -> seq -> mark
    refused: set[str] = field(default_factory=set)
    refused_keyed: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    bad: list[str] = field(default_factory=list)
    requests: int = 0

    def ack(self, topic: str, seq: int, mark: str) -> None:
        seqs = self.acked.setdefault(topic, {})
        if seq in seqs:
            self.bad.append(f"{topic} seq {seq} acknowledged twice: {seqs[seq]} and {mark}")
        seqs[seq] = mark


def _check_refusal(status: int, body: bytes, outcomes: Outcomes) -> None:
    if status not in (503, 507):
        outcomes.bad.append(f"status {status}: {body[:300]!r}")
        return
    try:
        error = json.loads(body)["error"]
        shaped = isinstance(error["code"], str) and isinstance(error["message"], str)
    except (ValueError, KeyError, TypeError):
        shaped = False
    if not shaped:
        outcomes.bad.append(f"{status} without the contract's error body: {body[:300]!r}")
        return
    if any(word in body.decode(errors="replace").lower() for word in DRIVER_WORDS):
        outcomes.bad.append(f"{status} body carries driver text: {body[:300]!r}")


async def _publisher(client: httpx.AsyncClient, number: int, outcomes: Outcomes) -> None:
    turn = 0
    while len(outcomes.refused) < REFUSALS_WANTED and outcomes.requests < MAX_REQUESTS:
        outcomes.requests += 1
        turn += 1
        mark = f"p{number}-{turn}"
        kind = turn % 3
        headers: dict[str, str] = {}
        if kind == 1:  # an atomic batch over every topic
            marks = [f"{mark}/{topic}" for topic in TOPICS]
            items = [
                {"topic": topic, "payload": {"mark": item_mark, "pad": PAD}}
                for topic, item_mark in zip(TOPICS, marks, strict=True)
            ]
            response = await client.post("/v1/events", json={"events": items})
        else:
            topic = TOPICS[(number + turn) % len(TOPICS)]
            body: dict[str, Any] = {"payload": {"mark": mark, "pad": PAD}}
            if kind == 2:
                headers["Idempotency-Key"] = f"key-{mark}"
            response = await client.post(f"/v1/topics/{topic}/events", json=body, headers=headers)
            marks = [mark]
        status = response.status_code
        outcomes.statuses[status] = outcomes.statuses.get(status, 0) + 1
        if status == 201:
            answer = response.json()
            events = answer["events"] if kind == 1 else [answer]
            for event, event_mark in zip(events, marks, strict=True):
                outcomes.ack(event["topic"], event["seq"], event_mark)
        else:
            _check_refusal(status, response.content, outcomes)
            outcomes.refused.update(marks)
            if kind == 2:
                outcomes.refused_keyed.append((headers["Idempotency-Key"], body))


async def _fill(url: str) -> Outcomes:
    outcomes = Outcomes()
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        await asyncio.gather(*(_publisher(client, n, outcomes) for n in range(PUBLISHERS)))
    return outcomes


def _history(client: httpx.Client, topic: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1/topics/{topic}/events", headers={"Accept": "application/x-ndjson"})
    assert response.status_code == 200, response.text[:300]
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def _check_history(client: httpx.Client, outcomes: Outcomes) -> dict[str, int]:
    """Every topic's history is exactly what was acknowledged; its last seq."""
    last: dict[str, int] = {}
    for topic in TOPICS:
        events = _history(client, topic)
        seqs = [event["seq"] for event in events]
        assert seqs == list(range(1, len(seqs) + 1)), f"{topic}: seqs with gaps: {seqs[:50]}"
        stored = {event["seq"]: event["payload"]["mark"] for event in events}
        acked = outcomes.acked.get(topic, {})
        missing = {seq: mark for seq, mark in acked.items() if stored.get(seq) != mark}
        assert not missing, f"{topic}: acknowledged but not in history: {missing}"
        extra = [mark for mark in stored.values() if mark in outcomes.refused]
        assert not extra, f"{topic}: refused publishes in history: {extra}"
        assert len(stored) == len(acked), f"{topic}: {len(stored)} stored, {len(acked)} acked"
        last[topic] = len(seqs)
    return last


def _first_live_event(url: str, topic: str, publish: Callable[[], None]) -> dict[str, Any]:
    """Open a stream with a subscriber (rows written), publish, return what it delivers."""
    path = f"/v1/stream?topic={topic}&subscriber=after-disk-full"
    with (
        httpx.Client(base_url=url, timeout=10) as client,
        client.stream("GET", path, headers={"Accept": "text/event-stream"}) as stream,
    ):
        assert stream.status_code == 200, stream.read()[:300]
        published = False
        for line in stream.iter_lines():
            if line.startswith("event: ready") and not published:
                publish()
                published = True
            if line.startswith("data:") and published and '"seq"' in line:
                found: dict[str, Any] = json.loads(line[5:])
                if found.get("topic") == topic:
                    return found
    raise AssertionError("the stream ended before the event came")


def test_disk_full_refuses_cleanly_and_recovers(small_disk: SmallDisk) -> None:
    url = f"sqlite+aiosqlite:///{small_disk.directory / 'eventhub.db'}"
    server = Server(url, env=small_disk.env).start()
    try:
        outcomes = asyncio.run(_fill(server.url))
        assert not outcomes.bad, outcomes.bad[:5]
        assert outcomes.refused, f"the space never ran out: {outcomes.statuses}"
        assert outcomes.acked, f"nothing was acknowledged before the space ran out: {outcomes}"
        assert 500 not in outcomes.statuses
        assert outcomes.statuses.get(507, 0) > 0, outcomes.statuses  # said as what it is
        assert server.process is not None
        assert server.process.poll() is None, "the server died"

        with httpx.Client(base_url=server.url, timeout=30) as client:
            last = _check_history(client, outcomes)  # reads work while full
            # A stream with a subscriber writes its rows (the grouped writer): it
            # opens, or is refused like a publish, never with a 500.
            path = f"/v1/stream?topic={TOPICS[0]}&subscriber=during-disk-full"
            with client.stream("GET", path, headers={"Accept": "text/event-stream"}) as stream:
                if stream.status_code != 200:
                    _check_refusal(stream.status_code, stream.read(), outcomes)
                    assert not outcomes.bad, outcomes.bad

            small_disk.free_space()

            # No restart: the next publish of each topic lands, right after the last.
            for topic in TOPICS:
                response = client.post(f"/v1/topics/{topic}/events", json={"payload": {"n": 1}})
                assert response.status_code == 201, response.text[:300]
                assert response.json()["seq"] == last[topic] + 1
            batch = client.post(
                "/v1/events",
                json={"events": [{"topic": t, "payload": {"n": 2}} for t in TOPICS]},
            )
            assert batch.status_code == 201, batch.text[:300]
            assert [e["seq"] for e in batch.json()["events"]] == [last[t] + 2 for t in TOPICS]
            # A keyed publish refused for lack of space was not stored under its
            # key: the same request again is appended (201), not replayed (200).
            assert outcomes.refused_keyed, "no keyed publish was refused"
            key, body = outcomes.refused_keyed[0]
            retried = client.post(
                f"/v1/topics/{TOPICS[0]}/events", json=body, headers={"Idempotency-Key": key}
            )
            assert retried.status_code == 201, retried.text[:300]
            assert retried.json()["seq"] == last[TOPICS[0]] + 3

            def publish_live() -> None:
                answer = client.post(f"/v1/topics/{TOPICS[1]}/events", json={"payload": {"n": 4}})
                assert answer.status_code == 201, answer.text[:300]

            live = _first_live_event(server.url, TOPICS[1], publish_live)
            assert live["seq"] == last[TOPICS[1]] + 3
            assert live["payload"] == {"n": 4}

            for topic in TOPICS:
                seqs = [event["seq"] for event in _history(client, topic)]
                assert seqs == list(range(1, len(seqs) + 1))
            ready = client.get("/readyz")
            assert ready.status_code == 200, ready.text
        server.stop()
    finally:
        server.kill()
    # What the failed commits left in the WAL did not damage the database.
    with contextlib.closing(sqlite3.connect(small_disk.directory / "eventhub.db")) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        total = sum(last.values()) + len(TOPICS) * 2 + 2
        assert db.execute("SELECT count(*) FROM events").fetchone() == (total,)
