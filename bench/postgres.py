"""PostgreSQL and several instances: publish throughput against raw asyncpg,
cross-instance latency, and what a second publishing instance adds.

    .venv/bin/python bench/postgres.py [--seconds 3] [--rounds 2] [--rate 200]
        [--url postgresql+asyncpg://postgres@127.0.0.1:5432/postgres] [--update-docs]

Three measurements, each in fresh databases cloned from a migrated template
(created on the server of ``--url`` and dropped at the end):

- throughput: 100 concurrent ``publish()`` tasks on one hub, beside raw asyncpg
  inserting the same event rows 100 a transaction on one connection (the
  ceiling: no position or seq allocation, no validation, no delivery). Rounds
  alternate the two, so a busy machine slows both alike;
- latency: a hub in another process publishes at a steady rate, each payload
  carrying its wall-clock send time; a stateless hub here follows a feed and
  records publish-to-receive delays (LISTEN/NOTIFY wakes it; the safety-net poll
  is pushed to 30 s so that it cannot help);
- scale-out: one process with 100 publishers, then two such processes at once on
  one database; events/s of each setup.

The table is printed; with ``--update-docs`` it also replaces (or appends) the
section of ``docs/benchmarks.md`` named below.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.engine import make_url

from eventhub_log import EventHub
from eventhub_log.migrations import ensure_schema
from eventhub_log.store.database import open_database

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## PostgreSQL and several instances (bench/postgres.py)"
DEFAULT_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
TOPICS = [f"room:{n}" for n in range(10)]
PUBLISHERS = 100
RAW_BATCH = 100
# The raw rows carry a hash-sized text, not a computed hash (as in bench/publish.py):
# the raw case is the driver's ceiling, and the chain's cost is the library's work.
RAW_HASH = "0" * 64


def payload(n: int) -> dict[str, object]:
    return {"type": "message", "text": "hello, world", "n": n}


def dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def with_database(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


# Databases -------------------------------------------------------------------


class Databases:
    """A migrated template on the server, cloned for every measurement."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.template = f"eventhub_bench_template_{uuid.uuid4().hex[:8]}"
        self.made: list[str] = [self.template]

    async def _admin(self, sql: str) -> None:
        conn = await asyncpg.connect(dsn(self.url))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def prepare(self) -> None:
        await self._admin(f'CREATE DATABASE "{self.template}"')
        database = open_database(with_database(self.url, self.template))
        try:
            await ensure_schema(database, upgrade=True)
        finally:
            await database.engine.dispose()

    async def fresh(self) -> str:
        name = f"eventhub_bench_{uuid.uuid4().hex[:12]}"
        await self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        self.made.append(name)
        return with_database(self.url, name)

    async def drop_all(self) -> None:
        for name in reversed(self.made):
            await self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# Throughput ------------------------------------------------------------------


async def raw_asyncpg(url: str, seconds: float) -> tuple[int, float]:
    """The same event rows, 100 a transaction, on one connection."""
    conn = await asyncpg.connect(dsn(url))
    try:
        seq = dict.fromkeys(TOPICS, 0)
        position = 0
        started = time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline:
            rows = []
            now = datetime.now(UTC).replace(tzinfo=None)
            for _ in range(RAW_BATCH):
                topic = TOPICS[position % len(TOPICS)]
                position += 1
                seq[topic] += 1
                text = json.dumps(payload(position), separators=(",", ":"))
                rows.append((topic, seq[topic], position, text, None, now, RAW_HASH))
            async with conn.transaction():
                await conn.executemany(
                    "INSERT INTO events"
                    " (topic, seq, position, payload, exclude_id, published_at, hash)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    rows,
                )
        return position, time.perf_counter() - started
    finally:
        await conn.close()


async def hub_publishers(
    url: str, seconds: float, *, start_at: float | None = None, mode: str = "stateful"
) -> tuple[int, float]:
    async with EventHub(url, mode=mode) as hub:  # type: ignore[arg-type]
        if start_at is not None:
            await asyncio.sleep(max(0.0, start_at - time.time()))
        started = time.perf_counter()
        deadline = started + seconds
        counts = [0] * PUBLISHERS

        async def publisher(index: int) -> None:
            n = 0
            while time.perf_counter() < deadline:
                await hub.publish(TOPICS[(index + n) % len(TOPICS)], None, payload(n))
                n += 1
            counts[index] = n

        await asyncio.gather(*(publisher(i) for i in range(PUBLISHERS)))
        return sum(counts), time.perf_counter() - started


# Latency ---------------------------------------------------------------------


async def steady_publisher(url: str, rate: float, seconds: float, start_at: float) -> None:
    async with EventHub(url, mode="stateless") as hub:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        interval = 1 / rate
        begin = time.monotonic()
        for n in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, begin + n * interval - time.monotonic()))
            await hub.publish("latency", None, {"n": n, "sent": time.time()})


async def cross_instance_delays(url: str, rate: float, seconds: float) -> list[float]:
    expected = int(rate * seconds)
    delays: list[float] = []
    async with (
        EventHub(url, mode="stateless", poll_interval=30.0) as hub,
        hub.stream(["latency"]) as feed,
    ):
        start_at = time.time() + 3.0  # the other process imports and connects first
        publisher = spawn("steady", url, "--rate", str(rate), "--seconds", str(seconds),
                          "--start-at", str(start_at))  # fmt: skip
        try:
            while len(delays) < expected:
                event = await feed.next(timeout=30)
                if event is None:
                    raise RuntimeError(f"only {len(delays)} of {expected} events arrived")
                delays.append(time.time() - event.payload["sent"])
        finally:
            finish(publisher)
    return delays


def percentiles(delays: list[float]) -> dict[str, float]:
    ordered = sorted(delays)
    return {
        "events": float(len(delays)),
        "p50": statistics.median(ordered) * 1000,
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        "max": ordered[-1] * 1000,
    }


# Scale-out -------------------------------------------------------------------


def spawn(role: str, url: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--role", role, "--url", url, *args],
        stdout=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str], timeout: float = 120) -> str:
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
    return out


async def instances_publishing(url: str, count: int, seconds: float) -> tuple[int, float]:
    """``count`` processes, each a hub with 100 publishers, started together."""
    start_at = time.time() + 3.0
    processes = [
        spawn("publisher", url, "--seconds", str(seconds), "--start-at", str(start_at))
        for _ in range(count)
    ]
    results = [json.loads(await asyncio.to_thread(finish, p)) for p in processes]
    events = sum(int(r["events"]) for r in results)
    return events, max(float(r["seconds"]) for r in results)


# Report ----------------------------------------------------------------------


def table(rows: list[tuple[str, str, str]]) -> str:
    lines = ["| measurement | result | against |", "| --- | ---: | --- |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> str:
    databases = Databases(args.url)
    await databases.prepare()
    try:
        raw_events = raw_seconds = hub_events = hub_seconds = 0.0
        for _ in range(args.rounds):
            events, seconds = await raw_asyncpg(await databases.fresh(), args.seconds)
            raw_events, raw_seconds = raw_events + events, raw_seconds + seconds
            events, seconds = await hub_publishers(await databases.fresh(), args.seconds)
            hub_events, hub_seconds = hub_events + events, hub_seconds + seconds
        raw_rate, hub_rate = raw_events / raw_seconds, hub_events / hub_seconds

        delays: list[float] = []
        one_events = one_seconds = two_events = two_seconds = 0.0
        for _ in range(args.rounds):
            url = await databases.fresh()
            delays += await cross_instance_delays(url, args.rate, args.seconds)
            events, seconds = await instances_publishing(await databases.fresh(), 1, args.seconds)
            one_events, one_seconds = one_events + events, one_seconds + seconds
            events, seconds = await instances_publishing(await databases.fresh(), 2, args.seconds)
            two_events, two_seconds = two_events + events, two_seconds + seconds
        latency = percentiles(delays)
        one_rate, two_rate = one_events / one_seconds, two_events / two_seconds
    finally:
        await databases.drop_all()

    conn = await asyncpg.connect(dsn(args.url))
    try:
        server_version = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    rows = [
        (f"raw asyncpg, {RAW_BATCH} rows a transaction", f"{raw_rate:,.0f} events/s", "ceiling"),
        (
            f"EventHub, {PUBLISHERS} concurrent publishers",
            f"{hub_rate:,.0f} events/s",
            f"{100 * hub_rate / raw_rate:.0f}% of raw (target 40%)",
        ),
        (
            f"cross-instance latency at {args.rate:g} events/s, p50 / p99 / max",
            f"{latency['p50']:.1f} / {latency['p99']:.1f} / {latency['max']:.1f} ms",
            f"{int(latency['events'])} events; target p99 < 100 ms",
        ),
        ("1 instance publishing (100 publishers)", f"{one_rate:,.0f} events/s", ""),
        (
            "2 instances publishing (100 publishers each)",
            f"{two_rate:,.0f} events/s",
            f"{two_rate / one_rate:.2f}x one instance",
        ),
    ]
    load = os.getloadavg()
    return (
        table(rows)
        + "\n\n"
        + f"PostgreSQL {server_version} on 127.0.0.1 (default settings, synchronous_commit on), "
        f"{os.cpu_count()} cores shared by the database, the publishers and the readers; "
        f"Python {platform.python_version()}; {args.rounds} rounds of {args.seconds:g} s "
        f"for each measurement (summed, latencies pooled); load average at the end "
        f"{load[0]:.2f}. Reproduce: `.venv/bin/python bench/postgres.py`."
    )


EXPLANATION = """\
```
.venv/bin/python bench/postgres.py --update-docs    # --seconds 3 --rounds 2 by default
```

- **raw asyncpg**: one connection inserting the hub's event rows (topic, seq,
  position, payload, published_at) into its own `events` table, 100 rows a
  transaction (`executemany`): the ceiling. **EventHub**: 100 tasks calling
  `publish()` on one hub; a figure counts only publishes that returned
  (committed). The two alternate for the rounds, each in a fresh database.
- **Cross-instance latency**: a hub in another process publishes at a steady
  rate; a stateless hub here follows the topic. Delay = receive time minus the
  wall-clock time the publisher put in the payload before calling `publish()`,
  so it includes the publisher's commit, its NOTIFY, the reader's read of the
  log and its hand-out. The reader's safety-net poll is 30 s: NOTIFY alone.
- **Scale-out**: one process with 100 publishers, then two at once on one
  database (alternating over the rounds, like the rest). Writers of all
  instances serialise on the `log_head` row; group commit keeps that to one
  short statement per batch, so a second instance adds throughput until the
  CPU (here two cores for everything) runs out.

The PostgreSQL writer appends a batch in one statement (positions and seqs
numbered in SQL from the `log_head` bump, which takes the row lock first, and
the NOTIFY sent with the commit), and the pool does not pre-ping (asyncpg's ping
was three round trips a checkout); before those changes the same run gave 23%
of raw. All of these figures come from a 2-core machine that other work kept at
a load average of 5 to 12, and they move with it. Over eight runs in one
evening after the changes: EventHub 48% to 99% of raw; cross-instance p99 from
24 ms to 243 ms (p50 7 to 36 ms), the tail made of whole-process stalls that
show up as runs of late events, one after another; two publishing instances
0.45x to 1.81x one instance, about 1.0x in the calmer runs. That last figure is
the price of commit-ordered positions: the `log_head` row lock is held through
each batch's commit (its fsync included), so the writers of all instances take
turns, and a second instance adds throughput only where one alone left the
lock idle between batches. More instances scale delivery (streams, reads), not
appends; one instance's group commit already fills the lock.
"""


def update_docs(body: str) -> None:
    section = f"{SECTION}\n\n{EXPLANATION}\n{body}\n"
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    start = text.find(SECTION + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start] + section + (text[end:] if end >= 0 else "")
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("EVENTHUB_BENCH_PG_URL", DEFAULT_URL))
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rate", type=float, default=200.0, help="latency: events/s")
    parser.add_argument("--update-docs", action="store_true", help=f"write {DOCS.name}")
    parser.add_argument("--role", choices=["main", "publisher", "steady"], default="main")
    parser.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "publisher":
        events, seconds = asyncio.run(
            hub_publishers(args.url, args.seconds, start_at=args.start_at, mode="stateless")
        )
        print(json.dumps({"events": events, "seconds": seconds}))
        return 0
    if args.role == "steady":
        asyncio.run(steady_publisher(args.url, args.rate, args.seconds, args.start_at))
        return 0
    body = asyncio.run(run(args))
    print(body)
    if args.update_docs:
        update_docs(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
