"""Tamper-evident history (contract section 8): every append path links its events
into the topic's chain, verification finds the first broken link, retention keeps
the anchor, and revision 0006 gives old events the hashes fresh appends would get.
Expected hashes come from tests/hashes.py (hashlib and rfc8785), not the project."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import rfc8785
from sqlalchemy import text

from eventhub_log import EventHub, InvalidPayload
from eventhub_log.audit import verify_topic
from eventhub_log.retention import prune
from eventhub_log.store.database import open_database

from . import hashes
from .server import Server
from .test_schema import _upgrade_to, empty_database, empty_postgres  # noqa: F401
from .wsclient import ws_connect, ws_url

ROOT = Path(__file__).resolve().parent.parent


async def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The command, in a thread: the test's own hub keeps its event loop. A
    blocked loop can leave one of the hub's SQLite write transactions open, and
    the command then waits out the busy timeout."""
    return await asyncio.to_thread(_run_cli, *args)


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventhub_log.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def verify_export(path: Path) -> subprocess.CompletedProcess[str]:
    script = ROOT / "examples" / "verify_export.py"
    return subprocess.run(
        [sys.executable, str(script), str(path)], capture_output=True, text=True, timeout=60
    )


async def history_dicts(hub: EventHub, topic: str) -> list[dict[str, Any]]:
    return [event.to_dict() for event in await hub.history(topic)]


async def sql(hub: EventHub, statement: str, **params: Any) -> None:
    async with hub.database.engine.begin() as conn:
        await conn.execute(text(statement), params)


async def test_a_known_event_has_the_hash_the_contract_defines(hub: EventHub) -> None:
    payload = {"z": [1, 2.5, -0.0, 1e21], "a": 'ünï \u2028 \x07 "q"', "\U0001f600": True}
    event = await hub.publish("room:lobby", "ch-1", payload, publisher="alice")
    # Written out by hand from section 8, with the stored event's own fields.
    published_at = event.to_dict()["published_at"]
    canonical = rfc8785.dumps(
        {
            "topic": "room:lobby",
            "seq": 1,
            "published_at": published_at,
            "exclude": "ch-1",
            "publisher": "alice",
            "payload": payload,
        }
    )
    expected = hashlib.sha256(("0" * 64 + "\n").encode() + canonical).hexdigest()
    assert event.hash == expected
    (stored,) = await hub.history("room:lobby")
    assert stored.hash == expected
    assert stored.to_dict()["hash"] == expected

    second = await hub.publish("room:lobby", None, "next")
    canonical = rfc8785.dumps(
        {
            "topic": "room:lobby",
            "seq": 2,
            "published_at": second.to_dict()["published_at"],
            "exclude": None,
            "publisher": None,
            "payload": "next",
        }
    )
    assert second.hash == hashlib.sha256((expected + "\n").encode() + canonical).hexdigest()


@pytest.mark.parametrize(
    "payload",
    [
        {"b": 1, "a": 2, "é": 3, "\ue000": 4, "\U00010000": 5},
        [0.1, 1.0, 1e-7, 123456789012345680000.0, 5e-324, -1.5e300],
        "controls \x00\x1f\x7f \\ / \u2028\u2029 \U0001f600",
        {"nested": [{"y": None, "x": [True, False, {}]}], "n": -(2**53 - 1)},
    ],
)
async def test_the_writers_canonical_text_is_rfc8785(hub: EventHub, payload: Any) -> None:
    await hub.publish("t", None, payload)
    await hub.publish_many([("t", "x", payload), ("t", None, payload)], publisher="p\u00e9")
    events = await history_dicts(hub, "t")
    assert [e["hash"] for e in events] == hashes.chain(events)


async def test_every_library_append_path_continues_the_chain(hub: EventHub) -> None:
    await hub.publish("a", None, 1)
    await hub.publish_many([("a", None, 2), ("b", None, 1), ("a", "x", 3)], publisher="bob")
    await hub.publish_once("key-1", [("a", None, 4), ("b", None, 2)])
    replayed, was_replay = await hub.publish_once("key-1", [("a", None, 4), ("b", None, 2)])
    assert was_replay
    async with hub.transaction() as conn:
        inside = await hub.publish_in(conn, "a", None, 5)
    await asyncio.gather(*(hub.publish("a", None, n) for n in range(6, 30)))
    for topic in ("a", "b"):
        events = await history_dicts(hub, topic)
        assert [e["hash"] for e in events] == hashes.chain(events), topic
        verified = await verify_topic(hub.database, topic)
        assert verified is not None
        assert verified.ok
        assert verified.head_hash == events[-1]["hash"]
        assert verified.through_seq == events[-1]["seq"]
    a_events = {e["seq"]: e["hash"] for e in await history_dicts(hub, "a")}
    assert inside.hash == a_events[inside.seq]
    # A replay answers with the hashes the first call stored.
    assert [e.hash for e in replayed] == [a_events[4], (await hub.history("b"))[1].hash]


async def test_verify_finds_a_changed_payload_and_a_renumbered_gap(hub: EventHub) -> None:
    for n in range(1, 8):
        await hub.publish("t", None, {"n": n})
    result = await verify_topic(hub.database, "t", page=3)
    assert result is not None
    assert (result.ok, result.from_seq, result.through_seq, result.first_bad_seq) == (
        True,
        1,
        7,
        None,
    )
    assert result.head_hash == (await hub.history("t"))[-1].hash
    assert await verify_topic(hub.database, "nope") is None

    # An edit made in the database, behind the hub's back.
    await sql(hub, "UPDATE events SET payload = :p WHERE topic = 't' AND seq = 4", p='{"n":40}')
    result = await verify_topic(hub.database, "t", page=3)
    assert result is not None
    assert (result.ok, result.through_seq, result.first_bad_seq) == (False, 3, 4)
    assert result.head_hash == (await hub.history("t"))[2].hash
    await sql(hub, "UPDATE events SET payload = :p WHERE topic = 't' AND seq = 4", p='{"n":4}')
    ok = await verify_topic(hub.database, "t")
    assert ok is not None
    assert ok.ok

    # Delete one, shift the later ones down: every remaining row is an honest row.
    await sql(hub, "DELETE FROM events WHERE topic = 't' AND seq = 5")
    for seq in (6, 7):
        await sql(hub, f"UPDATE events SET seq = {seq - 1} WHERE topic = 't' AND seq = {seq}")
    await sql(hub, "UPDATE topics SET last_seq = 6 WHERE topic = 't'")
    result = await verify_topic(hub.database, "t")
    assert result is not None
    assert (result.ok, result.through_seq, result.first_bad_seq) == (False, 4, 5)

    # A plain deletion is a gap; a cut tail too.
    await sql(hub, "DELETE FROM events WHERE topic = 't' AND seq >= 5")
    result = await verify_topic(hub.database, "t")
    assert result is not None
    assert (result.ok, result.through_seq, result.first_bad_seq) == (False, 4, 5)
    await sql(hub, "DELETE FROM events WHERE topic = 't' AND seq = 2")
    result = await verify_topic(hub.database, "t")
    assert result is not None
    assert (result.ok, result.through_seq, result.first_bad_seq) == (False, 1, 2)


async def test_a_pruned_topic_verifies_from_its_first_kept_event(
    hub: EventHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("eventhub_log.retention.CHUNK", 3)  # several chunk transactions
    for n in range(1, 11):
        await hub.publish("t", None, n)
    before = {e.seq: e.hash for e in await hub.history("t")}
    await prune(hub.database, keep=3, topics=["t"])
    result = await verify_topic(hub.database, "t")
    assert result is not None
    assert (result.ok, result.from_seq, result.through_seq) == (True, 8, 10)
    assert result.head_hash == before[10]
    async with hub.database.read() as conn:
        anchor = (
            await conn.execute(text("SELECT pruned_hash FROM topics WHERE topic = 't'"))
        ).scalar()
    assert anchor == before[7]
    await hub.publish("t", None, 11)
    await prune(hub.database, keep=0, topics=["t"])
    result = await verify_topic(hub.database, "t")
    assert result is not None
    assert (result.ok, result.from_seq, result.through_seq) == (True, 12, 11)
    after = await hub.publish("t", None, 12)
    result = await verify_topic(hub.database, "t")
    assert result is not None
    assert result.ok
    assert result.head_hash == after.hash


async def test_payloads_rfc8785_cannot_hold_are_refused_before_anything_is_written(
    hub: EventHub,
) -> None:
    for bad in (2**53, -(2**53), {"x": [10**30]}, float("nan"), float("inf"), "\ud800"):
        with pytest.raises(InvalidPayload):
            await hub.publish("t", None, bad)
        with pytest.raises(InvalidPayload):
            await hub.publish_many([("t", None, 1), ("t", None, bad)])
    good, refused = await asyncio.gather(
        hub.publish("t", None, 1), hub.publish("t", None, 2**60), return_exceptions=True
    )
    assert isinstance(refused, InvalidPayload)
    assert "2**53" in str(refused)
    assert [e.payload for e in await hub.history("t")] == [1]
    assert not isinstance(good, BaseException)
    assert good.seq == 1


async def test_0006_gives_old_events_the_hashes_of_fresh_appends(
    empty_database: str,  # noqa: F811 (the fixture imported above)
) -> None:
    url = empty_database
    await _upgrade_to(url, "0005")
    at = datetime(2026, 1, 2, 3, 4, 5, 6)
    rows = [  # topic, seq, position, payload, exclude, publisher
        ("old", 1, 1, '{"b":1,"a":[1.0,2]}', None, None),
        ("old", 2, 2, '"\\u00e9"', "ch-1", "alice"),
        ("other", 1, 3, "null", None, None),
        ("old", 3, 4, "3", None, None),
        ("pruned", 2, 5, '{"kept":true}', None, None),
    ]
    database = open_database(url)
    try:
        async with database.write() as conn:
            await conn.execute(text("UPDATE log_head SET position = 5 WHERE id = 1"))
            for topic, last, pruned in (("old", 3, 0), ("other", 1, 0), ("pruned", 2, 1)):
                await conn.execute(
                    text(
                        "INSERT INTO topics (topic, last_seq, created_at, last_published_at, "
                        "pruned_through_seq) VALUES (:topic, :last, :at, :at, :pruned)"
                    ),
                    {"topic": topic, "last": last, "at": at, "pruned": pruned},
                )
            for topic, seq, position, payload, exclude, publisher in rows:
                await conn.execute(
                    text(
                        "INSERT INTO events (topic, seq, position, payload, exclude_id, "
                        "publisher, published_at) VALUES (:topic, :seq, :position, :payload, "
                        ":exclude, :publisher, :at)"
                    ),
                    {
                        "topic": topic,
                        "seq": seq,
                        "position": position,
                        "payload": payload,
                        "exclude": exclude,
                        "publisher": publisher,
                        "at": at,
                    },
                )
    finally:
        await database.engine.dispose()

    async with EventHub(url, auto_migrate=True) as hub:
        old = await history_dicts(hub, "old")
        assert old[0]["published_at"] == "2026-01-02T03:04:05.000006Z"
        assert [e["hash"] for e in old] == hashes.chain(old)
        other = await history_dicts(hub, "other")
        assert [e["hash"] for e in other] == hashes.chain(other)
        # Pruned before the chain existed: it starts afresh at the first kept event.
        pruned = await history_dicts(hub, "pruned")
        assert [e["hash"] for e in pruned] == hashes.chain(pruned)
        # Fresh appends continue the backfilled chains.
        await hub.publish("old", None, 4)
        await hub.publish("pruned", None, 3)
        for topic, first in (("old", 1), ("other", 1), ("pruned", 2)):
            result = await verify_topic(hub.database, topic)
            assert result is not None, topic
            assert result.ok, topic
            assert result.from_seq == first
        old = await history_dicts(hub, "old")
        assert [e["hash"] for e in old] == hashes.chain(old)


async def test_http_and_websocket_appends_verify_and_tampering_is_found(
    server: Server, database_url: str, tmp_path: Path
) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        one = await client.post("/v1/topics/room:a/events", json={"payload": {"n": 1}})
        assert one.status_code == 201
        batch = await client.post(
            "/v1/events",
            json={"events": [{"topic": "room:a", "payload": 2}, {"topic": "room:b", "payload": 1}]},
        )
        assert batch.status_code == 201
        keyed = await client.post(
            "/v1/topics/room:a/events", json={"payload": 3}, headers={"Idempotency-Key": "k"}
        )
        assert keyed.status_code == 201
        async with ws_connect(ws_url(server.url, "/v1/ws")) as ws:
            assert (await ws.recv())["type"] == "ready"
            ack = await ws.request({"op": "publish", "topic": "room:a", "payload": {"n": 4}})
            assert ack["type"] == "ack"
            assert ack["seq"] == 4

        for bad in (b'{"payload": 9007199254740992}', b'{"payload": NaN}'):
            refused = await client.post(
                "/v1/topics/room:a/events",
                content=bad,
                headers={"content-type": "application/json"},
            )
            assert refused.status_code == 400, refused.text
        history = (await client.get("/v1/topics/room:a/events")).json()["events"]
        assert [e["seq"] for e in history] == [1, 2, 3, 4]
        assert [e["hash"] for e in history] == hashes.chain(history)
        assert batch.json()["events"][0]["hash"] == history[1]["hash"]

        verified = await client.get("/v1/topics/room:a/verify")
        assert verified.status_code == 200
        assert verified.json() == {
            "topic": "room:a",
            "ok": True,
            "from_seq": 1,
            "through_seq": 4,
            "head_hash": history[-1]["hash"],
            "first_bad_seq": None,
        }
        missing = await client.get("/v1/topics/room:none/verify")
        assert missing.status_code == 404
        assert "error" in missing.json()

        done = await cli("verify", "--database-url", database_url)
        assert done.returncode == 0, done.stderr
        assert "room:a: ok" in done.stdout
        assert "room:b: ok" in done.stdout

        database = open_database(database_url)
        try:
            async with database.engine.begin() as conn:
                await conn.execute(
                    text("UPDATE events SET payload = '2000' WHERE topic = 'room:a' AND seq = 2")
                )
        finally:
            await database.engine.dispose()
        broken = (await client.get("/v1/topics/room:a/verify")).json()
        assert (broken["ok"], broken["through_seq"], broken["first_bad_seq"]) == (False, 1, 2)
        assert broken["head_hash"] == history[0]["hash"]

    failed = await cli("verify", "--database-url", database_url)
    assert failed.returncode == 1
    assert "room:a: BROKEN at seq 2" in failed.stdout
    assert "room:b: ok" in failed.stdout
    only_b = await cli("verify", "--topic", "room:b", "--database-url", database_url)
    assert only_b.returncode == 0, only_b.stderr
    assert "room:a" not in only_b.stdout


async def test_the_standalone_script_verifies_a_cli_export(hub: EventHub, tmp_path: Path) -> None:
    for n in range(5):
        await hub.publish("room:x", "ch-1" if n == 2 else None, {"n": n, "f": n / 3})
    await hub.publish("room:y", None, "other topic")
    url = str(hub.database.engine.url.render_as_string(hide_password=False))
    export = tmp_path / "export.ndjson"
    lines = []
    for topic in ("room:x", "room:y"):
        run = await cli("export", topic, "--database-url", url)
        assert run.returncode == 0, run.stderr
        lines.append(run.stdout)
    export.write_text("".join(lines))
    good = verify_export(export)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "room:x" in good.stdout

    events = [json.loads(line) for line in export.read_text().splitlines()]
    events[3]["payload"] = {"n": 30}
    tampered = tmp_path / "tampered.ndjson"
    tampered.write_text("".join(json.dumps(event) + "\n" for event in events))
    bad = verify_export(tampered)
    assert bad.returncode == 1
    assert "room:x" in bad.stdout
    assert "seq 4" in bad.stdout
