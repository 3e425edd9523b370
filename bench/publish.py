"""Publish throughput of EventHub beside the raw-driver figures, measured in one run.

    .venv/bin/python bench/publish.py [--seconds 2] [--rounds 3] [--database-url URL]

Four cases, each on a fresh SQLite file with the durability EventHub uses by
default (WAL, ``synchronous=FULL``, ``BEGIN IMMEDIATE`` writes):

- raw, 1 row a commit: aiosqlite inserting the same event rows, one transaction each;
- raw, 100 rows a commit: the same with 100 rows a transaction, the ceiling;
- EventHub, 1 task: one task awaiting each ``publish()`` (compare with raw 1 row);
- EventHub, 100 tasks: 100 concurrent publishers (compare with raw 100 rows).

The raw cases write into the table the hub's own migration creates (same
columns, same indexes), so the only difference is the library's work: the
position and seq allocation, validation, group commit and delivery. Each round
runs every case once for ``--seconds``; the figures are summed over the rounds.
Interleaving keeps each hub case next to its baseline in time, so a machine
that is busy with something else slows both alike. Setting up (creating the
schema, starting the hub) is not timed.

With ``--database-url postgresql+asyncpg://...`` only the two EventHub cases
run, against that database (which must be empty or disposable: the events go
into the log for good).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite

from eventhub_log import EventHub

TOPICS = [f"room:{n}" for n in range(10)]
SYNCHRONOUS = "FULL"  # EventHub's default ``sqlite_synchronous``
RAW_BATCH = 100
PUBLISHERS = 100
# The raw rows carry a hash-sized text, not a computed hash: the raw cases are
# the driver's ceiling, and the chain's cost is the library's work.
RAW_HASH = "0" * 64


@dataclass(frozen=True)
class Result:
    case: str
    events: int
    seconds: float
    baseline: str | None = None

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def payload(n: int) -> dict[str, object]:
    return {"type": "message", "text": "hello, world", "n": n}


# Raw aiosqlite ---------------------------------------------------------------


async def prepare_sqlite(path: Path) -> None:
    """Create the hub's schema in a fresh file, then close the hub."""
    async with EventHub(f"sqlite+aiosqlite:///{path}", auto_migrate=True):
        pass


async def raw_sqlite(path: Path, rows_per_commit: int, seconds: float) -> tuple[int, float]:
    await prepare_sqlite(path)
    async with aiosqlite.connect(path, isolation_level=None) as db:
        await db.execute("PRAGMA busy_timeout = 30000")
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute(f"PRAGMA synchronous = {SYNCHRONOUS}")
        seq = dict.fromkeys(TOPICS, 0)
        position = 0
        started = time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline:
            rows = []
            for _ in range(rows_per_commit):
                topic = TOPICS[position % len(TOPICS)]
                position += 1
                seq[topic] += 1
                rows.append(
                    (
                        topic,
                        seq[topic],
                        position,
                        json.dumps(payload(position), separators=(",", ":")),
                        None,
                        datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f"),
                        RAW_HASH,
                    )
                )
            await db.execute("BEGIN IMMEDIATE")
            await db.executemany(
                "INSERT INTO events (topic, seq, position, payload, exclude_id, published_at, hash)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            await db.execute("COMMIT")
        return position, time.perf_counter() - started


# EventHub --------------------------------------------------------------------


async def hub_publishers(url: str, tasks: int, seconds: float) -> tuple[int, float]:
    async with EventHub(url, auto_migrate=True) as hub:
        started = time.perf_counter()
        deadline = started + seconds
        counts = [0] * tasks

        async def publisher(index: int) -> None:
            n = 0
            while time.perf_counter() < deadline:
                await hub.publish(TOPICS[(index + n) % len(TOPICS)], None, payload(n))
                n += 1
            counts[index] = n

        await asyncio.gather(*(publisher(i) for i in range(tasks)))
        # Every publish has returned, so every event is committed.
        return sum(counts), time.perf_counter() - started


# Running ---------------------------------------------------------------------


@dataclass
class Tally:
    """One case's events and seconds, summed over the rounds."""

    case: str
    baseline: str | None = None
    events: int = 0
    seconds: float = 0.0

    async def run(self, measure: Callable[[], Awaitable[tuple[int, float]]]) -> None:
        events, seconds = await measure()
        self.events += events
        self.seconds += seconds

    def result(self) -> Result:
        return Result(self.case, self.events, self.seconds, self.baseline)


async def sqlite_cases(seconds: float, rounds: int) -> list[Result]:
    """Each round runs every case once, each on a fresh file; a hub case runs right
    after its raw baseline, so both see the same machine (other load, disk cache)."""
    raw_one = Tally("raw aiosqlite, 1 row a commit")
    hub_one = Tally("EventHub, 1 task awaiting each publish", raw_one.case)
    raw_batch = Tally(f"raw aiosqlite, {RAW_BATCH} rows a commit")
    hub_batch = Tally(f"EventHub, {PUBLISHERS} concurrent publishers", raw_batch.case)
    with tempfile.TemporaryDirectory(prefix="eventhub-bench-") as tmp:
        files = (Path(tmp) / f"{n}.db" for n in range(4 * rounds))
        for _ in range(rounds):
            await raw_one.run(lambda: raw_sqlite(next(files), 1, seconds))
            await hub_one.run(lambda: hub_publishers(sqlite_url(next(files)), 1, seconds))
            await raw_batch.run(lambda: raw_sqlite(next(files), RAW_BATCH, seconds))
            await hub_batch.run(
                lambda: hub_publishers(sqlite_url(next(files)), PUBLISHERS, seconds)
            )
    return [tally.result() for tally in (raw_one, raw_batch, hub_one, hub_batch)]


async def url_cases(url: str, seconds: float, rounds: int) -> list[Result]:
    hub_one = Tally("EventHub, 1 task awaiting each publish")
    hub_batch = Tally(f"EventHub, {PUBLISHERS} concurrent publishers")
    for _ in range(rounds):
        await hub_one.run(lambda: hub_publishers(url, 1, seconds))
        await hub_batch.run(lambda: hub_publishers(url, PUBLISHERS, seconds))
    return [hub_one.result(), hub_batch.result()]


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def table(results: list[Result]) -> str:
    rates = {result.case: result.rate for result in results}
    lines = [
        "| case | events | seconds | events/s | % of raw |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for result in results:
        share = f"{100 * result.rate / rates[result.baseline]:.0f}%" if result.baseline else ""
        lines.append(
            f"| {result.case} | {result.events:,} | {result.seconds:.2f} "
            f"| {result.rate:,.0f} | {share} |"
        )
    return "\n".join(lines)


def setting() -> str:
    return (
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"{os.cpu_count()} CPUs; WAL, synchronous={SYNCHRONOUS}. "
        "% of raw: 1 awaiting task against raw 1 row a commit, "
        f"{PUBLISHERS} publishers against raw {RAW_BATCH} rows a commit."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="duration of each case in each round"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all the cases")
    parser.add_argument(
        "--database-url",
        help="run the EventHub cases against this database instead of fresh SQLite files",
    )
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 60 or not 1 <= args.rounds <= 20:
        parser.error("--seconds must be in (0, 60] and --rounds in [1, 20]")
    if args.database_url:
        results = asyncio.run(url_cases(args.database_url, args.seconds, args.rounds))
    else:
        results = asyncio.run(sqlite_cases(args.seconds, args.rounds))
    print(table(results))
    if not args.database_url:
        print()
        print(setting())
    return 0


if __name__ == "__main__":
    sys.exit(main())
