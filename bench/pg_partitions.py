"""A prototype of topics partitioned across PostgreSQL databases: exact resume with a
cursor that is a vector of per-partition positions.

    .venv/bin/python bench/pg_partitions.py [--partitions 2] [--events 4000]

Each partition is a database of its own on the server of ``--url`` (created from a
migrated template, dropped at the end) with an unchanged ``EventHub`` on it; a
topic lives in exactly one partition, chosen by a stable hash of its name
(``pg_scaling.partition_of``). Nothing here replaces the database or the hub: the
router picks the hub for a publish, and a stream over topics of several
partitions is one feed per partition, merged as events arrive.

The cursor of the merged stream is the vector of the last position taken from each
partition, tagged with the partition map (``p2.<pos0>.<pos1>``): resuming opens
each partition's feed after its own component, so what was handed out is never
handed out again and nothing published is skipped, per topic and per partition,
exactly as with one database. What it does not give is one order across
partitions: the merge interleaves them as they come, which the hub never promised
across topics anyway (two topics' events are ordered by position only because one
``log_head`` numbers them all).

The run publishes from several tasks to 20 topics while a reader takes the merged
stream, drops it after a random number of events and resumes from its cursor, over
and over; then it checks every topic's seqs arrived once each, in order, and counts
how often the merged order disagreed with the commit order across partitions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import random
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from typing import Any

from pg_scaling import DEFAULT_URL, Databases, loadavg, partition_of

from eventhub_log import EventHub
from eventhub_log.model import Event

TOPICS = [f"room:{n}" for n in range(20)]


class PartitionedHub:
    """Hubs, one per partition; a topic's hub is fixed by its name."""

    def __init__(self, hubs: Sequence[EventHub]) -> None:
        self.hubs = list(hubs)

    def partition(self, topic: str) -> int:
        return partition_of(topic, len(self.hubs))

    async def publish(self, topic: str, payload: Any) -> tuple[int, Event]:
        index = self.partition(topic)
        return index, await self.hubs[index].publish(topic, None, payload)

    def initial_cursor(self) -> str:
        return encode([0] * len(self.hubs))

    @contextlib.asynccontextmanager
    async def stream(
        self, topics: Sequence[str], cursor: str
    ) -> AsyncIterator[AsyncIterator[tuple[str, int, Event]]]:
        """The merged stream: ``(cursor after this event, partition, event)``."""
        vector = decode(cursor, len(self.hubs))
        by_partition: dict[int, list[str]] = defaultdict(list)
        for topic in topics:
            by_partition[self.partition(topic)].append(topic)
        queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue(maxsize=1000)
        async with contextlib.AsyncExitStack() as stack:
            feeds = {
                index: await stack.enter_async_context(
                    self.hubs[index].stream(mine, after=str(vector[index]))
                )
                for index, mine in by_partition.items()
            }

            async def pump(index: int) -> None:
                async for event in feeds[index]:
                    await queue.put((index, event))

            pumps = [asyncio.create_task(pump(index)) for index in feeds]

            async def merged() -> AsyncIterator[tuple[str, int, Event]]:
                while True:
                    index, event = await queue.get()
                    vector[index] = event.position
                    yield encode(vector), index, event

            try:
                yield merged()
            finally:
                for task in pumps:
                    task.cancel()
                for task in pumps:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task


def encode(vector: Sequence[int]) -> str:
    """``p<partitions>.<pos>.<pos>...``: the partition count names the map; a
    cursor made under another map is refused rather than misread."""
    return f"p{len(vector)}." + ".".join(str(p) for p in vector)


def decode(cursor: str, partitions: int) -> list[int]:
    head, _, rest = cursor.partition(".")
    if head != f"p{partitions}":
        raise ValueError(f"cursor {cursor!r} is not of a {partitions}-partition map")
    vector = [int(p) for p in rest.split(".")]
    if len(vector) != partitions or min(vector) < 0:
        raise ValueError(f"bad cursor {cursor!r}")
    return vector


async def run(args: argparse.Namespace) -> str:
    databases = Databases(args.url)
    await databases.prepare()
    try:
        urls = [await databases.fresh() for _ in range(args.partitions)]
        async with contextlib.AsyncExitStack() as stack:
            hubs = [await stack.enter_async_context(EventHub(u, mode="stateless")) for u in urls]
            return await exercise(PartitionedHub(hubs), args)
    finally:
        await databases.drop_all()


async def exercise(hub: PartitionedHub, args: argparse.Namespace) -> str:
    rng = random.Random(12)
    committed: dict[str, list[int]] = defaultdict(list)  # topic -> seqs acknowledged
    ack_order: dict[tuple[str, int], int] = {}  # (topic, seq) -> acknowledgement rank
    received: list[tuple[int, Event]] = []
    resumes = 0
    cursor = hub.initial_cursor()
    published_all = asyncio.Event()

    async def publisher(number: int) -> None:
        local = random.Random(number)
        for n in range(args.events // args.publishers):
            topic = local.choice(TOPICS)
            _, event = await hub.publish(topic, {"p": number, "n": n})
            committed[topic].append(event.seq)
            ack_order[(topic, event.seq)] = len(ack_order)
            if local.random() < 0.2:
                await asyncio.sleep(local.random() * 0.002)

    async def reader() -> None:
        nonlocal cursor, resumes
        total = args.events // args.publishers * args.publishers
        while len(received) < total:
            wanted = rng.randint(1, 400)
            async with hub.stream(TOPICS, cursor) as events:
                taken = 0
                async for after, index, event in events:
                    received.append((index, event))
                    cursor = after
                    taken += 1
                    if taken == wanted or len(received) == total:
                        break
            resumes += 1
            if published_all.is_set() and len(received) < total:
                await asyncio.sleep(0)

    started = time.perf_counter()
    reading = asyncio.create_task(reader())
    await asyncio.gather(*(publisher(n) for n in range(args.publishers)))
    published_all.set()
    await asyncio.wait_for(reading, 120)
    seconds = time.perf_counter() - started

    got: dict[str, list[int]] = defaultdict(list)
    per_partition: dict[int, list[int]] = defaultdict(list)
    for index, event in received:
        got[event.topic].append(event.seq)
        per_partition[index].append(event.position)
    exact = all(got[t] == sorted(committed[t]) == list(range(1, len(got[t]) + 1)) for t in TOPICS)
    partitions_in_order = all(p == sorted(set(p)) for p in per_partition.values())
    inversions = sum(
        1
        for (ia, a), (ib, b) in itertools.pairwise(received)
        if ia != ib and ack_order[(a.topic, a.seq)] > ack_order[(b.topic, b.seq)]
    )
    cross = sum(1 for (ia, _), (ib, _) in itertools.pairwise(received) if ia != ib)
    topics_at = defaultdict(list)
    for topic in TOPICS:
        topics_at[hub.partition(topic)].append(topic)
    rows = [
        ("partitions (databases)", str(len(hub.hubs))),
        ("topics per partition", ", ".join(str(len(topics_at[i])) for i in range(len(hub.hubs)))),
        ("events published and acknowledged", f"{sum(len(s) for s in committed.values()):,}"),
        ("events received over the merged stream", f"{len(received):,}"),
        ("streams opened (resumes from the vector cursor)", f"{resumes:,}"),
        ("every topic's seqs once each, in order", "yes" if exact else "NO"),
        ("each partition's positions once each, in order", "yes" if partitions_in_order else "NO"),
        (
            "adjacent events from different partitions out of commit order",
            f"{inversions:,} of {cross:,}",
        ),
        ("last cursor", f"`{cursor}`"),
        ("seconds", f"{seconds:.1f}"),
    ]
    lines = ["| check | result |", "| --- | --- |"] + [f"| {a} | {b} |" for a, b in rows]
    if not (exact and partitions_in_order):
        raise SystemExit("\n".join(lines) + "\n\nresume was not exact")
    return "\n".join(lines) + f"\n\nLoad average {loadavg()}."


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("EVENTHUB_BENCH_PG_URL", DEFAULT_URL))
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--events", type=int, default=4000)
    parser.add_argument("--publishers", type=int, default=20)
    args = parser.parse_args()
    print(asyncio.run(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
