"""How fast ``eventhub-log verify`` recomputes a large log, and in how much memory.

    .venv/bin/python bench/verify.py [--events 1000000] [--topics 10] [--database-url URL]

Builds a log of ``--events`` events (a small JSON payload each, spread over
``--topics`` topics) through the library's own atomic batches, so every hash is
the one the writer computes, then runs ``eventhub-log verify`` on it as a
separate process and reports its wall time, events/s and peak RSS (the child's
``ru_maxrss``). Without ``--database-url`` the log is a fresh SQLite file in a
temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from eventhub_log import EventHub

BATCH = 1000


async def build(url: str, events: int, topics: int) -> float:
    hub = EventHub(url)
    await hub.start()
    started = time.perf_counter()
    try:
        queue = iter(range(0, events, BATCH))

        async def worker() -> None:
            for first in queue:
                count = min(BATCH, events - first)
                await hub.publish_many(
                    (f"bench:{(first + i) % topics}", None, {"n": first + i, "text": "é✓ event"})
                    for i in range(count)
                )

        await asyncio.gather(*(worker() for _ in range(4)))
    finally:
        await hub.close()
    return time.perf_counter() - started


def verify(url: str) -> tuple[float, int, str]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "eventhub_log.cli", "verify", "--database-url", url],
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"verify failed ({done.returncode}): {done.stdout}{done.stderr}")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return elapsed, peak_kib, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--topics", type=int, default=10)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite+aiosqlite:///{Path(tmp) / 'verify.db'}"
        built = asyncio.run(build(url, args.events, args.topics))
        elapsed, peak_kib, out = verify(url)
    ok = out.count(": ok")
    print(f"load average {os.getloadavg()[0]:.1f}; {args.topics} topics, {ok} verified ok\n")
    print("| figure | value |")
    print("| --- | ---: |")
    print(f"| events | {args.events:,} |")
    print(f"| build (publish_many, 4 tasks) | {built:.1f} s |")
    print(f"| verify wall time (a new process) | {elapsed:.1f} s |")
    print(f"| verify events/s | {args.events / elapsed:,.0f} |")
    print(f"| verify peak RSS | {peak_kib / 1024:.1f} MiB |")


if __name__ == "__main__":
    main()
