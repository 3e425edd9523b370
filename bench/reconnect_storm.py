"""A crowd reconnecting at once: N SSE clients opening together.

One command, a markdown table on stdout:

    .venv/bin/python bench/reconnect_storm.py            # 1,000 streams, 3 rounds
    .venv/bin/python bench/reconnect_storm.py --streams 200 --rounds 1
    .venv/bin/python bench/reconnect_storm.py --database-url postgresql+asyncpg://postgres@127.0.0.1:5432/postgres

Every round starts a fresh ``eventhub-log serve`` (a new SQLite file, or with
``--database-url`` a new database on that PostgreSQL server, migrated, dropped
at the end) and a fresh peer (``peer_broadcaster.py``: sse-starlette +
broadcaster, memory backend). Reader processes (``sse_readers.storm_main``)
hold the streams; each is told a wall-clock instant and opens its whole share
at that instant, with no gate, so the server sees every open arrive together.

(a) fresh opens: N streams (subscriber ``storm-<i>``, one topic), the time from
    the instant until the last one has its ``ready`` frame, and opens/s; the
    peer the same way;
(b) resume: the streams are closed, 10 events published, and the N streams
    reopen with ``Last-Event-ID`` of the cursor before them; the time until the
    last one has its 10 events. Every stream must get exactly its events, in
    order, or the run ends with an error.

The hub's per-client connection limit is lifted for the run (every reader
comes from 127.0.0.1), as ``http_bench.py`` does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from http_bench import PUBLISH_BODY, Server
from http_wire import request_once
from sse_readers import storm_main

TOPIC = "storm"
BEHIND = 10
START_DELAY = 0.5  # seconds from sending the instant to it: every process is listening by then


class StormServer(Server):
    """``eventhub-log serve`` on a given database URL (``Server`` makes a SQLite file)."""

    def __init__(self, name: str, kind: str, workdir: Path, database_url: str | None) -> None:
        super().__init__(name, kind, workdir)
        self.database_url = database_url

    def argv(self) -> list[str]:
        argv = super().argv()
        if self.kind == "eventhub" and self.database_url is not None:
            argv[argv.index("--database-url") + 1] = self.database_url
        return argv


class Crowd:
    def __init__(self, port: int, streams: int, processes: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.processes = []
        self.shares: list[list[int]] = [
            list(range(i, streams, processes)) for i in range(processes)
        ]
        for _ in range(processes):
            parent, child = context.Pipe()
            process = context.Process(target=storm_main, args=(child, port))
            process.start()
            self.pipes.append(parent)
            self.processes.append(process)

    def storm(self, path: Any, last_event_id: str | None, expected: int) -> dict[str, Any]:
        """Open every stream at one instant; the round's combined report."""
        go_at = time.time() + START_DELAY
        for pipe, share in zip(self.pipes, self.shares, strict=True):
            pipe.send(("open", [path(i) for i in share], last_event_id, expected, go_at))
        reports = []
        for pipe in self.pipes:
            if not pipe.poll(180):
                raise RuntimeError("the readers did not report within 180 s")
            reports.append(pipe.recv())
        errors = [e for r in reports for e in r["errors"]]
        return {
            "opened": sum(r["opened"] for r in reports),
            "errors": errors,
            "wrong": sum(r["wrong"] for r in reports),
            "ready_s": max(r["last_ready"] for r in reports) - go_at,
            "done_s": max(r["last_done"] for r in reports) - go_at,
            "reader_cpu": sum(r["cpu"] for r in reports),
        }

    def close_streams(self) -> None:
        for pipe in self.pipes:
            pipe.send("close")
        for pipe in self.pipes:
            pipe.recv()

    def stop(self) -> None:
        for pipe in self.pipes:
            pipe.send("stop")
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.kill()


@dataclass
class Round:
    fresh_s: float
    fresh_cpu: float
    resume_s: float
    resume_cpu: float
    peer_s: float


def check(report: dict[str, Any], streams: int, what: str) -> None:
    if report["opened"] != streams or report["wrong"] or report["errors"]:
        raise RuntimeError(
            f"{what}: {report['opened']}/{streams} opened, {report['wrong']} with the wrong "
            f"events; {report['errors'][:3]}"
        )


async def publish(port: int, count: int) -> None:
    for _ in range(count):
        status, body = await request_once(port, "POST", f"/v1/topics/{TOPIC}/events", PUBLISH_BODY)
        if status != 201:
            raise RuntimeError(f"publish answered {status}: {body[:200]!r}")


async def head_cursor(port: int) -> str:
    status, body = await request_once(port, "GET", f"/v1/topics/{TOPIC}/events?order=desc&limit=1")
    if status != 200:
        raise RuntimeError(f"history answered {status}: {body[:200]!r}")
    found = json.loads(body)
    events = found["events"] if isinstance(found, dict) else found
    return str(events[0]["id"])


def hub_round(
    streams: int, processes: int, workdir: Path, database_url: str | None
) -> tuple[float, float, float, float]:
    server = StormServer("eventhub-log", "eventhub", workdir, database_url).start()
    crowd = Crowd(server.port, streams, processes)
    try:
        # One event first, so that the cursor of (b) is a real position.
        asyncio.run(publish(server.port, 1))
        cpu0 = server.cpu()
        fresh = crowd.storm(lambda i: f"/v1/stream?topic={TOPIC}&subscriber=storm-{i}", None, 0)
        fresh_cpu = server.cpu() - cpu0
        check(fresh, streams, "fresh opens")
        crowd.close_streams()
        time.sleep(1.0)  # the closes' row deletes
        cursor = asyncio.run(head_cursor(server.port))
        asyncio.run(publish(server.port, BEHIND))
        time.sleep(0.3)
        cpu0 = server.cpu()
        resumed = crowd.storm(
            lambda i: f"/v1/stream?topic={TOPIC}&subscriber=storm-{i}", cursor, BEHIND
        )
        resume_cpu = server.cpu() - cpu0
        check(resumed, streams, "resumes")
        crowd.close_streams()
        return fresh["ready_s"], fresh_cpu, resumed["done_s"], resume_cpu
    finally:
        crowd.stop()
        server.stop()


def peer_round(streams: int, processes: int, workdir: Path) -> float:
    server = StormServer("peer", "peer", workdir, None).start()
    crowd = Crowd(server.port, streams, processes)
    try:
        fresh = crowd.storm(lambda i: f"/v1/stream?topic={TOPIC}", None, 0)
        check(fresh, streams, "peer opens")
        crowd.close_streams()
        return float(fresh["ready_s"])
    finally:
        crowd.stop()
        server.stop()


class PostgresDatabases:
    """A fresh, migrated database per round on the server of ``url``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.names: list[str] = []

    async def _admin(self, sql: str) -> None:
        import asyncpg  # type: ignore[import-untyped]
        from sqlalchemy.engine import make_url

        dsn = make_url(self.url).set(drivername="postgresql").render_as_string(False)
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def fresh(self) -> str:
        from sqlalchemy.engine import make_url

        from eventhub_log.migrations import ensure_schema
        from eventhub_log.store.database import open_database

        name = f"eventhub_storm_{uuid.uuid4().hex[:12]}"
        await self._admin(f'CREATE DATABASE "{name}"')
        self.names.append(name)
        url = make_url(self.url).set(database=name).render_as_string(False)
        database = open_database(url)
        try:
            await ensure_schema(database, upgrade=True)
        finally:
            await database.engine.dispose()
        return url

    async def drop_all(self) -> None:
        for name in self.names:
            await self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def spread(values: list[float], digits: int = 2) -> str:
    low, high = min(values), max(values)
    if f"{low:.{digits}f}" == f"{high:.{digits}f}":
        return f"{low:,.{digits}f}"
    return f"{low:,.{digits}f}-{high:,.{digits}f}"


def table(rounds: list[Round], streams: int, backend: str) -> str:
    n = streams
    fresh = [r.fresh_s for r in rounds]
    resume = [r.resume_s for r in rounds]
    peer = [r.peer_s for r in rounds]
    lines = [
        f"{n:,} streams opening at one instant, {len(rounds)} round(s), eventhub-log on {backend}:",
        "",
        "| | all ready (s) | opens/s | server CPU (s) |",
        "|---|---|---|---|",
        f"| (a) eventhub-log, fresh opens | {spread(fresh)} | "
        f"{spread([n / s for s in fresh], 0)} | {spread([r.fresh_cpu for r in rounds])} |",
        f"| (a) peer (sse-starlette + broadcaster) | {spread(peer)} | "
        f"{spread([n / s for s in peer], 0)} | |",
        f"| (b) eventhub-log, resume {BEHIND} behind (all {BEHIND} events in) | {spread(resume)} "
        f"| {spread([n / s for s in resume], 0)} | {spread([r.resume_cpu for r in rounds])} |",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=4, help="reader processes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--database-url", help="a PostgreSQL server: each round gets a fresh database on it"
    )
    parser.add_argument("--no-peer", action="store_true", help="skip the peer")
    args = parser.parse_args()
    postgres = PostgresDatabases(args.database_url) if args.database_url else None
    rounds = []
    try:
        with tempfile.TemporaryDirectory(prefix="eventhub-storm-") as tmp:
            workdir = Path(tmp)
            for number in range(args.rounds):
                url = asyncio.run(postgres.fresh()) if postgres else None
                fresh_s, fresh_cpu, resume_s, resume_cpu = hub_round(
                    args.streams, args.processes, workdir, url
                )
                peer_s = (
                    float("nan")
                    if args.no_peer
                    else peer_round(args.streams, args.processes, workdir)
                )
                rounds.append(Round(fresh_s, fresh_cpu, resume_s, resume_cpu, peer_s))
                print(
                    f"round {number + 1}: fresh {fresh_s:.2f} s, resume {resume_s:.2f} s, "
                    f"peer {peer_s:.2f} s",
                    file=sys.stderr,
                )
    finally:
        if postgres:
            asyncio.run(postgres.drop_all())
    backend = "PostgreSQL" if postgres else "SQLite"
    print(table(rounds, args.streams, backend))
    load = os.getloadavg()
    print(
        f"\n{platform.python_version()}, {os.cpu_count()} cores, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
