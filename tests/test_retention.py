"""Retention at the library level: prefix deletion, its record, and the gaps a
resuming reader is told about."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from eventhub_log import EventHub, Gap, ValidationError, retention
from eventhub_log.retention import parse_duration, prune


async def _interleaved(hub: EventHub, count: int) -> dict[str, list[str]]:
    ids: dict[str, list[str]] = {"a": [], "b": []}
    for n in range(count):
        for topic in ("a", "b"):
            ids[topic].append((await hub.publish(topic, None, n)).id)
    return ids


async def test_gaps_after_pruning(hub: EventHub) -> None:
    ids = await _interleaved(hub, 10)
    assert await hub.gaps(["a", "b"], None) == []
    pruned = await prune(hub.database, keep=4, topics=["a"])
    assert [(p.topic, p.deleted, p.pruned_through_seq) for p in pruned] == [("a", 6, 6)]
    assert [e.seq for e in await hub.history("a")] == [7, 8, 9, 10]
    assert len(await hub.history("b")) == 10

    # One chunk, one mark: a reader from inside it is told from its start (never late).
    assert await hub.gaps(["a", "b"], ids["a"][2]) == [Gap("a", 1, 6)]
    assert await hub.gaps(["a", "b"], None) == [Gap("a", 1, 6)]
    assert await hub.gaps(["a", "b"], ids["a"][5]) == []  # it had seen a:6
    assert await hub.gaps(["b"], ids["a"][0]) == []


async def test_gaps_are_exact_at_mark_granularity(
    hub: EventHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "CHUNK", 1)
    ids = await _interleaved(hub, 10)
    await prune(hub.database, keep=3, topics=["a"])
    assert await hub.gaps(["a"], ids["a"][2]) == [Gap("a", 4, 7)]
    assert await hub.gaps(["a"], ids["b"][2]) == [Gap("a", 4, 7)]
    assert await hub.gaps(["a"], ids["a"][6]) == []
    # A second prune extends the same record.
    await prune(hub.database, keep=1, topics=["a"])
    assert await hub.gaps(["a"], ids["a"][6]) == [Gap("a", 8, 9)]
    assert [e.seq for e in await hub.history("a")] == [10]


async def test_prune_rules(hub: EventHub) -> None:
    await _interleaved(hub, 5)
    with pytest.raises(ValidationError):
        await prune(hub.database)
    with pytest.raises(ValidationError):
        await prune(hub.database, keep=-1)
    assert await prune(hub.database, older_than=timedelta(days=1)) == []
    dry = await prune(hub.database, keep=2, dry_run=True)
    assert [(p.topic, p.deleted) for p in dry] == [("a", 3), ("b", 3)]
    assert len(await hub.history("a")) == 5
    done = await prune(hub.database, older_than=timedelta(0), keep=10)
    assert [(p.topic, p.deleted, p.pruned_through_seq) for p in done] == [("a", 5, 5), ("b", 5, 5)]
    assert {info.topic: info.event_count for info in await hub.topics()} == {"a": 0, "b": 0}
    after = await hub.publish("a", None, "next")
    assert after.seq == 6


def test_parse_duration() -> None:
    assert parse_duration("7d") == timedelta(days=7)
    assert parse_duration("1d12h") == timedelta(days=1, hours=12)
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("2w") == timedelta(weeks=2)
    for bad in ("", "7", "d", "7x", "-1d", "1.5h", "h1"):
        with pytest.raises(ValidationError):
            parse_duration(bad)


async def test_a_replay_racing_prune_tells_every_gap(hub: EventHub) -> None:
    """Prune runs in a loop under a reading replay: every seq is delivered or told
    as a gap, in order, none twice; gaps found mid-replay are told, not skipped."""
    total = 3000
    await hub.publish_many([("race", None, {"n": n}) for n in range(total)])
    await hub.publish_many([("race", None, {"n": n}) for n in range(total, 2 * total)])
    total *= 2
    delivered: list[int] = []
    gaps: list[Gap] = []
    # Set once the pruner has removed more than a replay page past the reader, so
    # the race is certain to happen however the machine schedules the two.
    overtaken = asyncio.Event()

    async def pruner() -> None:
        keep = total
        while keep > 500:
            keep -= 250
            await prune(hub.database, keep=keep, topics=["race"])
            if keep <= total - 2500:
                overtaken.set()
            await asyncio.sleep(0.01)

    async with hub.stream(["race"], "auditor", from_earliest=True) as feed:
        pruning = asyncio.create_task(pruner())
        try:
            async for item in feed.with_gaps():
                if isinstance(item, Gap):
                    gaps.append(item)
                else:
                    delivered.append(item.seq)
                    if len(delivered) == 100:
                        await asyncio.wait_for(overtaken.wait(), 30)
                    if len(delivered) % 25 == 0:
                        await asyncio.sleep(0.002)  # a reader slower than the pruner
                if delivered and delivered[-1] == total:
                    break
        finally:
            await pruning
    assert delivered == sorted(set(delivered)), "out of order or twice"
    told = set(delivered)
    for gap in gaps:
        told.update(range(gap.from_seq, gap.to_seq + 1))
    missing = sorted(set(range(1, total + 1)) - told)
    assert missing == [], f"skipped silently: {missing[:10]}..."
    # The pruner overtook the reader after it had started: gaps came mid-replay.
    assert delivered[0] == 1
    assert gaps
