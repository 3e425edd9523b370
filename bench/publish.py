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

``--chain-compare`` also runs each EventHub case with the hash chain switched
off by ``chain_off()``, a measurement aid of this benchmark only (the library
has no such switch), interleaved with the real cases, and prints the chain's
cost as the ratio of the two in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite

from eventhub_log import EventHub, validation
from eventhub_log.store import postgresql, queries

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


# MEASUREMENT AID: the hub with its hash chain switched off ----------------------
#
# Only for measuring what the chain costs, in the same run as the real thing: the
# library has no way to append without the chain, and must not have one. Inside
# ``chain_off()`` validation makes no canonical text and the writer links nothing
# (every event gets the same placeholder hash; on SQLite the topics' head hash is
# still written, a column of the topics upsert the append makes anyway), and
# PostgreSQL runs the single-statement append of before the chain (no sha256, no
# head update). The databases written with it hold no valid chain: throw them away.

# The pre-chain PostgreSQL append (store/postgresql.py before revision 0006), with
# the placeholder hash and the chained statement's parameters and result columns.
_UNCHAINED_APPEND = f"""
WITH input AS (
    SELECT topic, payload, exclude_id, publisher, ord
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
        WITH ORDINALITY AS i(topic, payload, exclude_id, publisher, ord)
), unused AS (
    SELECT cardinality($5::bytea[]) + cardinality($6::bytea[])
), n AS (
    SELECT cardinality($1::text[]) AS n
), head AS (
    UPDATE log_head SET position = position + (SELECT n FROM n) WHERE id = 1 RETURNING position
), counts AS (
    SELECT topic, count(*) AS n FROM input GROUP BY topic
), bumped AS (
    INSERT INTO topics AS t (topic, last_seq, created_at, last_published_at)
    SELECT c.topic, c.n, $7::timestamp, $7::timestamp FROM counts c CROSS JOIN head
    ON CONFLICT (topic) DO UPDATE
        SET last_seq = t.last_seq + excluded.last_seq,
            last_published_at = excluded.last_published_at
    RETURNING t.topic, t.last_seq
), notified AS (
    SELECT pg_notify('{postgresql.EVENTS_CHANNEL}', position::text) FROM head
), inserted AS (
    INSERT INTO events (topic, seq, position, payload, exclude_id, publisher, published_at, hash)
    SELECT i.topic,
           b.last_seq - c.n + row_number() OVER (PARTITION BY i.topic ORDER BY i.ord),
           h.position - (SELECT n FROM n) + i.ord, i.payload, i.exclude_id, i.publisher,
           $7::timestamp, '{RAW_HASH}'
    FROM input i
        JOIN bumped b ON b.topic = i.topic
        JOIN counts c ON c.topic = i.topic
        CROSS JOIN head h
        CROSS JOIN notified
    RETURNING seq, hash, position
)
SELECT seq AS out_seq, hash AS out_hash, position AS out_position
FROM inserted ORDER BY position
"""


@contextlib.contextmanager
def chain_off() -> Iterator[None]:
    """MEASUREMENT AID: the hub as it was before the hash chain (see above)."""
    replacements: list[tuple[object, str, object]] = [
        (validation, "_encode_sorted", lambda payload: ""),
        (queries, "link", lambda *args: RAW_HASH),
        (postgresql, "envelope", lambda *args: ("", "")),
        (postgresql, "_APPEND", _UNCHAINED_APPEND),
    ]
    saved = [(module, name, getattr(module, name)) for module, name, _ in replacements]
    for module, name, value in replacements:
        setattr(module, name, value)
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


async def unchained(measure: Callable[[], Awaitable[tuple[int, float]]]) -> tuple[int, float]:
    with chain_off():
        return await measure()


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


CHAIN_OFF = " (chain off: measurement aid)"


async def sqlite_cases(seconds: float, rounds: int, chain_compare: bool) -> list[Result]:
    """Each round runs every case once, each on a fresh file; a hub case runs right
    after its raw baseline, so both see the same machine (other load, disk cache);
    with ``chain_compare`` the chain-off case right after the real one."""
    raw_one = Tally("raw aiosqlite, 1 row a commit")
    hub_one = Tally("EventHub, 1 task awaiting each publish", raw_one.case)
    hub_one_off = Tally(hub_one.case + CHAIN_OFF, raw_one.case)
    raw_batch = Tally(f"raw aiosqlite, {RAW_BATCH} rows a commit")
    hub_batch = Tally(f"EventHub, {PUBLISHERS} concurrent publishers", raw_batch.case)
    hub_batch_off = Tally(hub_batch.case + CHAIN_OFF, raw_batch.case)
    with tempfile.TemporaryDirectory(prefix="eventhub-bench-") as tmp:
        files = (Path(tmp) / f"{n}.db" for n in range(6 * rounds))
        for _ in range(rounds):
            await raw_one.run(lambda: raw_sqlite(next(files), 1, seconds))
            await hub_one.run(lambda: hub_publishers(sqlite_url(next(files)), 1, seconds))
            if chain_compare:
                await hub_one_off.run(
                    lambda: unchained(lambda: hub_publishers(sqlite_url(next(files)), 1, seconds))
                )
            await raw_batch.run(lambda: raw_sqlite(next(files), RAW_BATCH, seconds))
            await hub_batch.run(
                lambda: hub_publishers(sqlite_url(next(files)), PUBLISHERS, seconds)
            )
            if chain_compare:
                await hub_batch_off.run(
                    lambda: unchained(
                        lambda: hub_publishers(sqlite_url(next(files)), PUBLISHERS, seconds)
                    )
                )
    tallies = [raw_one, raw_batch, hub_one, hub_batch]
    if chain_compare:
        tallies += [hub_one_off, hub_batch_off]
    return [tally.result() for tally in tallies]


async def url_cases(url: str, seconds: float, rounds: int, chain_compare: bool) -> list[Result]:
    hub_one = Tally("EventHub, 1 task awaiting each publish")
    hub_one_off = Tally(hub_one.case + CHAIN_OFF)
    hub_batch = Tally(f"EventHub, {PUBLISHERS} concurrent publishers")
    hub_batch_off = Tally(hub_batch.case + CHAIN_OFF)
    for _ in range(rounds):
        await hub_one.run(lambda: hub_publishers(url, 1, seconds))
        if chain_compare:
            await hub_one_off.run(lambda: unchained(lambda: hub_publishers(url, 1, seconds)))
        await hub_batch.run(lambda: hub_publishers(url, PUBLISHERS, seconds))
        if chain_compare:
            await hub_batch_off.run(
                lambda: unchained(lambda: hub_publishers(url, PUBLISHERS, seconds))
            )
    tallies = [hub_one, hub_batch]
    if chain_compare:
        tallies += [hub_one_off, hub_batch_off]
    return [tally.result() for tally in tallies]


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
    chained = [r for r in results if r.case + CHAIN_OFF in rates]
    if chained:
        lines += [
            "",
            "| hash chain | on, events/s | off, events/s | on / off | chain's cost |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for result in chained:
            off = rates[result.case + CHAIN_OFF]
            lines.append(
                f"| {result.case} | {result.rate:,.0f} | {off:,.0f} "
                f"| {100 * result.rate / off:.0f}% | {100 * (1 - result.rate / off):.1f}% |"
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
    parser.add_argument(
        "--chain-compare",
        action="store_true",
        help="also run each EventHub case with the hash chain off (a measurement aid)",
    )
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 60 or not 1 <= args.rounds <= 20:
        parser.error("--seconds must be in (0, 60] and --rounds in [1, 20]")
    if args.database_url:
        results = asyncio.run(
            url_cases(args.database_url, args.seconds, args.rounds, args.chain_compare)
        )
    else:
        results = asyncio.run(sqlite_cases(args.seconds, args.rounds, args.chain_compare))
    print(table(results))
    if not args.database_url:
        print()
        print(setting())
    print(f"Load average at the end: {os.getloadavg()[0]:.2f}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
