"""The operator commands (publish, history/export, prune) on a SQLite file, as
subprocesses, with no server."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from eventhub_log import EventHub
from eventhub_log.model import TopicInfo, format_timestamp
from eventhub_log.store.tables import events, topics

from . import hashes


def run(
    *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventhub_log.cli", *args],
        capture_output=True,
        text=True,
        input=stdin,
        check=check,
        timeout=60,
    )


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'ops.db'}"


def seed(url: str, *events: tuple[str, str]) -> None:
    """Publish ``(topic, payload JSON)`` pairs in-process: setting a scene through
    the CLI cost a process start (over a second) per event."""

    async def publish() -> None:
        async with EventHub(url, auto_migrate=True) as hub:
            for topic, payload in events:
                await hub.publish(topic, None, json.loads(payload))

    asyncio.run(publish())


def ndjson(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line]


def test_publish_then_history_and_export(url: str) -> None:
    first = json.loads(run("publish", "room:lobby", '{"text": "hi"}', "--database-url", url).stdout)
    assert (first["topic"], first["seq"], first["payload"]) == ("room:lobby", 1, {"text": "hi"})
    assert first["exclude"] is None
    assert first["publisher"] is None
    second = json.loads(
        run(
            "publish", "room:lobby", "-", "--exclude", "ch-1", "--database-url", url, stdin="[1, 2]"
        ).stdout
    )
    assert (second["seq"], second["payload"], second["exclude"]) == (2, [1, 2], "ch-1")
    seed(url, *(("room:lobby", str(n)) for n in range(3, 6)))
    keyed = ["publish", "room:lobby", '"once"', "--idempotency-key", "k1", "--database-url", url]
    assert json.loads(run(*keyed).stdout) == json.loads(run(*keyed).stdout)

    lines = ndjson(run("history", "room:lobby", "--database-url", url).stdout)
    assert [e["seq"] for e in lines] == [1, 2, 3, 4, 5, 6]
    assert lines[0] == first
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

    window = run(
        "export",
        "room:lobby",
        "--after-seq",
        "1",
        "--before-seq",
        "5",
        "--order",
        "desc",
        "--database-url",
        url,
    )
    assert [e["seq"] for e in ndjson(window.stdout)] == [4, 3, 2]
    limited = run("history", "room:lobby", "--limit", "2", "--order", "desc", "--database-url", url)
    assert [e["seq"] for e in ndjson(limited.stdout)] == [6, 5]
    since = run("history", "room:lobby", "--since", first["published_at"], "--database-url", url)
    assert len(ndjson(since.stdout)) == 6
    until = run("history", "room:lobby", "--until", first["published_at"], "--database-url", url)
    assert until.stdout == ""

    table = run("export", "room:lobby", "--format", "csv", "--database-url", url).stdout
    rows = list(csv.reader(io.StringIO(table)))
    assert rows[0] == [
        "topic",
        "seq",
        "id",
        "published_at",
        "exclude",
        "publisher",
        "hash",
        "payload",
    ]
    assert rows[2] == [
        "room:lobby",
        "2",
        second["id"],
        second["published_at"],
        "ch-1",
        "",
        second["hash"],
        "[1,2]",
    ]
    assert [row[6] for row in rows[1:]] == hashes.chain(lines)
    assert len(rows) == 7


def test_bad_input_is_refused_with_a_message(url: str) -> None:
    bad_json = run("publish", "t", "{nope", "--database-url", url, check=False)
    assert bad_json.returncode == 1
    assert "not valid JSON" in bad_json.stderr
    bad_topic = run("publish", "a//b", "1", "--database-url", url, check=False)
    assert bad_topic.returncode == 1
    assert "invalid topic" in bad_topic.stderr
    bad_time = run("history", "t", "--since", "yesterday", "--database-url", url, check=False)
    assert bad_time.returncode == 1
    assert "RFC 3339" in bad_time.stderr
    no_rule = run("prune", "--database-url", url, check=False)
    assert no_rule.returncode == 1
    assert "--older-than" in no_rule.stderr
    bad_duration = run("prune", "--older-than", "soon", "--database-url", url, check=False)
    assert bad_duration.returncode == 1
    assert "duration" in bad_duration.stderr
    assert run("history", "t", "--database-url", url).stdout == ""


async def _pruned_through(url: str) -> dict[str, int]:
    async with EventHub(url) as hub, hub.database.read() as conn:
        rows = await conn.execute(select(topics.c.topic, topics.c.pruned_through_seq))
        return {name: seq for name, seq in rows}


def test_prune_keep_records_how_far(url: str) -> None:
    seed(url, *(("a", str(n)) for n in range(10)), *(("b", str(n)) for n in range(3)))
    dry = run("prune", "--keep", "4", "--dry-run", "--database-url", url).stdout
    assert "a: would delete 6 events, pruned through seq 6" in dry
    assert len(ndjson(run("history", "a", "--database-url", url).stdout)) == 10

    out = run("prune", "--keep", "4", "--database-url", url).stdout
    assert out.splitlines() == ["a: deleted 6 events, pruned through seq 6"]
    assert [e["seq"] for e in ndjson(run("history", "a", "--database-url", url).stdout)] == [
        7,
        8,
        9,
        10,
    ]
    assert asyncio.run(_pruned_through(url)) == {"a": 6, "b": 0}
    info = asyncio.run(_topic_infos(url))["a"]
    assert (info.last_seq, info.event_count) == (10, 4)
    remaining = ndjson(run("history", "a", "--database-url", url).stdout)
    assert info.first_published_at is not None
    assert format_timestamp(info.first_published_at) == remaining[0]["published_at"]
    assert run("prune", "--keep", "4", "--database-url", url).stdout.strip() == "nothing to prune"
    # Publishing goes on after the pruned prefix.
    assert json.loads(run("publish", "a", "11", "--database-url", url).stdout)["seq"] == 11
    only_b = run("prune", "--keep", "0", "--topic", "b", "--database-url", url).stdout
    assert only_b.splitlines() == ["b: deleted 3 events, pruned through seq 3"]
    emptied = asyncio.run(_topic_infos(url))["b"]
    assert (emptied.last_seq, emptied.event_count, emptied.first_published_at) == (3, 0, None)
    assert asyncio.run(_pruned_through(url)) == {"a": 6, "b": 3}


async def _topic_infos(url: str) -> dict[str, TopicInfo]:
    async with EventHub(url) as hub:
        return {info.topic: info for info in await hub.topics()}


async def _age(url: str, topic: str, through_seq: int, days: int) -> None:
    async with EventHub(url) as hub, hub.database.write() as conn:
        await conn.execute(
            update(events)
            .where(events.c.topic == topic, events.c.seq <= through_seq)
            .values(published_at=datetime.now(UTC) - timedelta(days=days))
        )


def test_prune_older_than(url: str) -> None:
    seed(url, *(("logs", str(n)) for n in range(6)))
    asyncio.run(_age(url, "logs", 4, days=10))
    out = run("prune", "--older-than", "1w", "--database-url", url).stdout
    assert out.splitlines() == ["logs: deleted 4 events, pruned through seq 4"]
    assert [e["seq"] for e in ndjson(run("export", "logs", "--database-url", url).stdout)] == [5, 6]
    assert "nothing to prune" in run("prune", "--older-than", "1d12h", "--database-url", url).stdout
    assert asyncio.run(_pruned_through(url)) == {"logs": 4}
