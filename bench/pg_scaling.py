"""What one PostgreSQL primary carries: appends through the ``log_head`` lock from
several instances, topics partitioned across databases, and cross-instance delivery
to 1,000 SSE streams.

    .venv/bin/python bench/pg_scaling.py            # about 10 minutes
    .venv/bin/python bench/pg_scaling.py --quick    # a smoke run, about 2 minutes
    .venv/bin/python bench/pg_scaling.py --only appends|delivery

Everything runs in scratch databases on the server of ``--url`` (a migrated
template, cloned for every case, all dropped at the end). Markdown tables on stdout.

1. Appends. 1, 2 and 4 publishing instances, each a hub in its own process
   (stateless mode) with 100 concurrent ``publish()`` tasks, on one database:
   all on one topic, then spread over 100 topics. Beside them, the partitioned
   layout: the same 100 topics hashed (a stable hash of the name) across 2 or 4
   databases of the same server, one instance per database publishing only its
   own topics. For each case: events/s committed, append transactions (batches)
   per second and events per batch (``pg_stat_user_functions`` on
   ``eventhub_log_append``, ``track_functions = pl`` set on the scratch
   database), the mean time inside that function per batch (with several
   instances it includes waiting for the lock), how many backends were waiting
   on a lock (sampled every 20 ms from ``pg_stat_activity``), and where the CPU
   went (the publishers, the database's backends, other work on the machine).
2. Delivery. Two ``eventhub-log serve --mode stateless`` servers, A and B, on one
   fresh database; SSE clients held by reader processes on B
   (``sse_readers.py``; one stream in five timed); this process publishes on A
   over HTTP at a steady 200 events/s, each payload carrying its send time, so a
   delay is send to receive: A's request and commit, the NOTIFY, B's read of
   the log, its fan-out and the client's read. Phases: (a) 1 stream on B, (b)
   1,000 streams on B, (c) the same 1,000 streams, published on B itself (no
   NOTIFY: the local writer hands the batch over). A probe in this process
   LISTENs too and, on each signal, reads the new events on its own connection:
   its two figures split the delay into "committed and signalled" and "read by a
   follower", what B adds on top is B's own (its loop, the fan-out, the socket).
   In (b) and (c) the 1,000 streams follow ``--topics-served`` topics evenly
   (default 40: 25 streams a topic) and the events go round them, so each stream
   gets 5 events/s, the rate of the 10,000-stream benchmark, and B delivers 5,000
   events/s. (All 1,000 on the one topic, 200,000 deliveries/s, is more than
   the reader processes can parse on this machine, and measured them instead.)

The machine is shared: the load average is printed with every table, and rounds
give ranges.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.engine import make_url

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
DEFAULT_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MANY_TOPICS = [f"room:{n}" for n in range(100)]


def dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def with_database(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def partition_of(topic: str, partitions: int) -> int:
    """A stable hash of the topic's name: the same partition on every instance and run."""
    return int.from_bytes(hashlib.sha256(topic.encode()).digest()[:8], "big") % partitions


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def loadavg() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def process_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy() -> float:
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def spread(values: list[float], fmt: str = "{:,.0f}") -> str:
    """A median with the range of the rounds beside it."""
    if not values:
        return "-"
    mid = fmt.format(statistics.median(values))
    if len(values) == 1:
        return mid
    return f"{mid} ({fmt.format(min(values))}-{fmt.format(max(values))})"


# Databases -------------------------------------------------------------------


class Databases:
    """A migrated template on the server, cloned for every case; all dropped at the end."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.prefix = f"bench_scaling_{uuid.uuid4().hex[:8]}"
        self.template = f"{self.prefix}_template"
        self.made: list[str] = []

    async def admin(self, sql: str) -> None:
        conn = await asyncpg.connect(dsn(self.url))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def prepare(self) -> None:
        from eventhub_log.migrations import ensure_schema
        from eventhub_log.store.database import open_database

        await self.admin(f'CREATE DATABASE "{self.template}"')
        self.made.append(self.template)
        database = open_database(with_database(self.url, self.template))
        try:
            await ensure_schema(database, upgrade=True)
        finally:
            await database.engine.dispose()

    async def fresh(self) -> str:
        """A new database with the schema; the append function's calls are counted."""
        name = f"{self.prefix}_{len(self.made)}"
        await self.admin(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        self.made.append(name)
        await self.admin(f'ALTER DATABASE "{name}" SET track_functions = pl')
        return with_database(self.url, name)

    async def drop_cases(self) -> None:
        """Every database but the template."""
        for name in reversed(self.made):
            if name != self.template:
                with contextlib.suppress(Exception):
                    await self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.made = [self.template]

    async def drop_all(self) -> None:
        await self.drop_cases()
        with contextlib.suppress(Exception):
            await self.admin(f'DROP DATABASE IF EXISTS "{self.template}" WITH (FORCE)')
        self.made = []


async def append_calls(url: str) -> tuple[int, float]:
    """Calls of ``eventhub_log_append`` in this database and their total time (ms)."""
    conn = await asyncpg.connect(dsn(url))
    try:
        row = await conn.fetchrow(
            "SELECT coalesce(sum(calls), 0) AS calls, coalesce(sum(total_time), 0) AS ms"
            " FROM pg_stat_user_functions WHERE funcname = 'eventhub_log_append'"
        )
        return int(row["calls"]), float(row["ms"])
    finally:
        await conn.close()


async def commit_latency(url: str, count: int = 100) -> float:
    """Mean time of a one-row write transaction here (mostly the WAL flush), ms."""
    conn = await asyncpg.connect(dsn(url))
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS bench_probe (x integer)")
        started = time.perf_counter()
        for n in range(count):
            await conn.execute("INSERT INTO bench_probe VALUES ($1)", n)
        return (time.perf_counter() - started) / count * 1000
    finally:
        await conn.close()


class Sampler:
    """Every 20 ms: backends of the given databases waiting on a lock; at the window's
    edges, the CPU of those databases' backends and of the machine."""

    def __init__(self, conn: asyncpg.Connection, names: list[str]) -> None:
        self.conn = conn
        self.names = names
        self.samples: list[tuple[int, int]] = []  # (on a row, on the NOTIFY queue)
        self.cpu: dict[str, float] = {}

    async def backend_cpu(self) -> dict[int, float]:
        rows = await self.conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = ANY($1::text[])", self.names
        )
        return {row["pid"]: process_cpu(row["pid"]) for row in rows}

    async def run(self, start_at: float, seconds: float) -> None:
        await asyncio.sleep(max(0.0, start_at - time.time()) + 0.3)
        t0, m0, own0 = time.time(), machine_busy(), own_cpu()
        b0 = await self.backend_cpu()
        end = start_at + seconds - 0.3
        while time.time() < end:
            # Locks not granted to these databases' backends: a row lock (log_head's)
            # is waited for as its holder's transaction id or as the tuple; the
            # notifications of a commit are queued under one lock of the whole
            # cluster (PreCommit_Notify: an object lock on pg_database, object 0).
            row = await self.conn.fetchrow(
                "SELECT count(*) FILTER (WHERE l.locktype IN ('transactionid', 'tuple')) AS r,"
                " count(*) FILTER (WHERE l.locktype = 'object'"
                " AND l.classid = 'pg_database'::regclass AND l.objid = 0) AS n"
                " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE NOT l.granted AND a.datname = ANY($1::text[])",
                self.names,
            )
            self.samples.append((int(row["r"]), int(row["n"])))
            await asyncio.sleep(0.02)
        b1 = await self.backend_cpu()
        wall = time.time() - t0
        database = sum(b1.get(pid, cpu) - cpu for pid, cpu in b0.items())
        self.cpu = {
            "wall": wall,
            "machine": (machine_busy() - m0) / wall,
            "database": database / wall,
            "harness": (own_cpu() - own0) / wall,
        }


# 1. Appends ------------------------------------------------------------------


@dataclass
class AppendCase:
    label: str
    databases: int
    instances: int  # in all
    topics: list[str]


@dataclass
class AppendResult:
    events: int
    seconds: float
    batches: int
    function_ms: float
    waiting: list[tuple[int, int]]
    cpu: dict[str, float]
    publishers_cpu: float  # cores

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def batch_rate(self) -> float:
        return self.batches / self.seconds


def spawn_publisher(
    url: str, topics: list[str], publishers: int, seconds: float
) -> subprocess.Popen[str]:
    """An instance in its own process; it says ``ready`` once its hub is open, then
    waits for the start time on its stdin."""
    return subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--role",
            "publisher",
            "--url",
            url,
            "--topics",
            ",".join(topics),
            "--publishers",
            str(publishers),
            "--seconds",
            str(seconds),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


async def run_append_case(
    databases: Databases, case: AppendCase, seconds: float, publishers: int
) -> AppendResult:
    urls = [await databases.fresh() for _ in range(case.databases)]
    names = [make_url(u).database or "" for u in urls]
    processes = []
    for index in range(case.instances):
        partition = index % case.databases
        mine = [t for t in case.topics if partition_of(t, case.databases) == partition]
        processes.append(spawn_publisher(urls[partition], mine, publishers, seconds))
    for process in processes:  # every hub open (imports, connections, LISTEN) first
        assert process.stdout is not None
        line = await asyncio.to_thread(process.stdout.readline)
        if not line.startswith('{"ready"'):
            raise RuntimeError(f"a publisher process did not start: {line!r}")
    start_at = time.time() + 0.5
    for process in processes:
        assert process.stdin is not None
        process.stdin.write(f"{start_at}\n")
        process.stdin.flush()
    admin = await asyncpg.connect(dsn(databases.url))
    try:
        sampler = Sampler(admin, names)
        await sampler.run(start_at, seconds)
        outputs = [await asyncio.to_thread(finish, p) for p in processes]
    finally:
        await admin.close()
    reports = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    await asyncio.sleep(0.6)  # function statistics are flushed as backends exit
    batches, function_ms = 0, 0.0
    for url in urls:
        calls, ms = await append_calls(url)
        batches, function_ms = batches + calls, function_ms + ms
    span = max(float(r["seconds"]) for r in reports)
    return AppendResult(
        events=sum(int(r["events"]) for r in reports),
        seconds=span,
        batches=batches,
        function_ms=function_ms,
        waiting=sampler.samples,
        cpu=sampler.cpu,
        publishers_cpu=sum(float(r["cpu"]) for r in reports) / span,
    )


def finish(process: subprocess.Popen[str], timeout: float = 180) -> str:
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
    if process.returncode:
        raise RuntimeError(f"a publisher process failed ({process.returncode}): {out[-500:]}")
    return out


async def publisher_role(args: argparse.Namespace) -> None:
    """One instance: a stateless hub, ``--publishers`` tasks publishing flat out."""
    from eventhub_log import EventHub

    topics = args.topics.split(",")
    async with EventHub(args.url, mode="stateless") as hub:
        print(json.dumps({"ready": True}), flush=True)
        start_at = float(await asyncio.to_thread(sys.stdin.readline))
        await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu0 = own_cpu()
        started = time.perf_counter()
        deadline = started + args.seconds
        counts = [0] * args.publishers

        async def publisher(index: int) -> None:
            n = 0
            while time.perf_counter() < deadline:
                topic = topics[(index + n) % len(topics)]
                await hub.publish(topic, None, {"type": "message", "text": "hello", "n": n})
                n += 1
            counts[index] = n

        await asyncio.gather(*(publisher(i) for i in range(args.publishers)))
        seconds = time.perf_counter() - started
        cpu = own_cpu() - cpu0
    print(json.dumps({"events": sum(counts), "seconds": seconds, "cpu": cpu}), flush=True)


def append_cases(quick: bool) -> list[AppendCase]:
    one = ["room:0"]
    cases = [
        AppendCase("1 instance, 1 topic", 1, 1, one),
        AppendCase("2 instances, 1 topic", 1, 2, one),
        AppendCase("4 instances, 1 topic", 1, 4, one),
        AppendCase("1 instance, 100 topics", 1, 1, MANY_TOPICS),
        AppendCase("2 instances, 100 topics", 1, 2, MANY_TOPICS),
        AppendCase("4 instances, 100 topics", 1, 4, MANY_TOPICS),
        AppendCase("2 databases, 100 topics hashed, 1 instance each", 2, 2, MANY_TOPICS),
        AppendCase("4 databases, 100 topics hashed, 1 instance each", 4, 4, MANY_TOPICS),
    ]
    if quick:
        return [c for c in cases if c.instances <= 2]
    return cases


async def appends(args: argparse.Namespace) -> str:
    databases = Databases(args.url)
    await databases.prepare()
    cases = append_cases(args.quick)
    results: dict[str, list[AppendResult]] = {c.label: [] for c in cases}
    load_before = loadavg()
    try:
        commit_ms = await commit_latency(await databases.fresh())
        for round_number in range(args.rounds):
            for case in cases:
                result = await run_append_case(databases, case, args.seconds, args.publishers)
                results[case.label].append(result)
                log(
                    f"appends round {round_number + 1}: {case.label}: {result.rate:,.0f} events/s, "
                    f"{result.batch_rate:,.0f} batches/s, load {loadavg()}"
                )
                await databases.drop_cases()
    finally:
        await databases.drop_all()
    base = {
        "1": statistics.median(r.rate for r in results["1 instance, 1 topic"]),
        "100": statistics.median(r.rate for r in results["1 instance, 100 topics"]),
    }

    def fn_ms(rs: list[AppendResult]) -> float:
        return statistics.median(r.function_ms / r.batches for r in rs if r.batches)

    pure = {
        "1": fn_ms(results["1 instance, 1 topic"]),
        "100": fn_ms(results["1 instance, 100 topics"]),
    }
    lines = [
        "| case | events/s | x one instance | batches/s | events a batch "
        "| ms in the append function a batch | log_head held (est.) "
        "| backends waiting: on log_head / on the NOTIFY queue (mean) "
        "| CPU: publishers / database / other work (cores) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for case in cases:
        rs = results[case.label]
        rates = [r.rate for r in rs]
        layout = "1" if len(case.topics) == 1 else "100"
        ratio = statistics.median(rates) / base[layout]
        on_row = [statistics.mean(w[0] for w in r.waiting) if r.waiting else 0.0 for r in rs]
        on_notify = [statistics.mean(w[1] for w in r.waiting) if r.waiting else 0.0 for r in rs]
        per_batch = [r.events / r.batches for r in rs if r.batches]
        fns = [r.function_ms / r.batches for r in rs if r.batches]
        # One writer per database: the function's time is the lock's (no waiting in
        # it). Several: it includes the wait, so take the lone writer's figure.
        hold = (fn_ms(rs) if case.instances == case.databases else pure[layout]) + commit_ms
        held = [r.batch_rate / case.databases * hold / 1000 for r in rs]
        cpu_pub = statistics.median(r.publishers_cpu for r in rs)
        cpu_db = statistics.median(r.cpu.get("database", 0.0) for r in rs)
        cpu_other = statistics.median(
            max(0.0, r.cpu.get("machine", 0) - r.publishers_cpu - r.cpu.get("database", 0))
            for r in rs
        )
        lines.append(
            f"| {case.label} | {spread(rates)} | {ratio:.2f}x "
            f"| {spread([r.batch_rate for r in rs])} | {spread(per_batch, '{:,.1f}')} "
            f"| {spread(fns, '{:.2f}')} | {spread(held, '{:.0%}')} "
            f"| {spread(on_row, '{:.2f}')} / {spread(on_notify, '{:.2f}')} "
            f"| {cpu_pub:.2f} / {cpu_db:.2f} / {cpu_other:.2f} |"
        )
    return (
        "\n".join(lines)
        + f"\n\n{args.publishers} publishing tasks per instance, {args.rounds} rounds of "
        f"{args.seconds:g} s per case (median, range in brackets); a one-row commit on this "
        f"server took {commit_ms:.2f} ms; log_head held = batches/s a database x (the lone "
        f"writer's ms in the function + that commit), the share of time the row is locked; "
        f"load average (1/5/15 min) {load_before} before, {loadavg()} after."
    )


# 2. Delivery -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _raise_fd_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))


@dataclass
class Serve:
    """``eventhub-log serve --mode stateless`` on a free loopback port."""

    url: str
    name: str
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Serve:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTHUB_")}
        env.update(EVENTHUB_MAX_CONNECTIONS_PER_CLIENT="100000", EVENTHUB_LOG_LEVEL="warning")
        argv = [
            str(Path(sys.executable).parent / "eventhub-log"),
            "serve",
            "--mode",
            "stateless",
            "--port",
            str(self.port),
            "--database-url",
            self.url,
            "--log-level",
            "warning",
        ]
        self.process = subprocess.Popen(argv, env=env, cwd=ROOT, preexec_fn=_raise_fd_limit)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server {self.name} exited with {self.process.returncode}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as r,
            ):
                if r.status == 200:
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"server {self.name} not ready within 60 s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def cpu(self) -> float:
        return process_cpu(self.process.pid) if self.process else 0.0


@contextlib.contextmanager
def serving(url: str, name: str) -> Iterator[Serve]:
    server = Serve(url, name)
    try:
        yield server.start()
    finally:
        server.stop()


class Probe:
    """LISTENs like an instance; on each signal reads the new events on its own
    connection, as a follower does, and notes for each event when its signal came
    and when the read returned, against the send time in its payload."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.through = 0
        self.heard: list[float] = []  # signal arrival minus send time, s
        self.read: list[float] = []  # read returned minus send time, s
        self.read_ms: list[float] = []  # the read's own round trip
        self._pending = asyncio.Event()
        self._signals: collections.deque[tuple[int, float]] = collections.deque()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.listen = await asyncpg.connect(dsn(self.url))
        self.reader = await asyncpg.connect(dsn(self.url))
        self.through = await self.reader.fetchval("SELECT position FROM log_head WHERE id = 1")
        await self.listen.add_listener("eventhub_log_events", self._heard)
        self._task = asyncio.create_task(self._run())

    def _heard(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self._signals.append((int(payload), time.time()))
        self._pending.set()

    def _signal_of(self, position: int) -> float:
        """When the first signal covering ``position`` (a head at or past it) came."""
        signals = self._signals
        while signals and signals[0][0] < position:
            signals.popleft()
        return signals[0][1] if signals else float("nan")

    async def _run(self) -> None:
        while True:
            await self._pending.wait()
            self._pending.clear()
            started = time.perf_counter()
            rows = await self.reader.fetch(
                "SELECT position, payload FROM events WHERE position > $1 ORDER BY position",
                self.through,
            )
            done = time.time()
            self.read_ms.append((time.perf_counter() - started) * 1000)
            for row in rows:
                self.through = max(self.through, row["position"])
                sent = _sent(row["payload"])
                if sent is not None:
                    self.heard.append(self._signal_of(row["position"]) - sent)
                    self.read.append(done - sent)

    def take(self) -> tuple[list[float], list[float], list[float]]:
        taken = (self.heard, self.read, self.read_ms)
        self.heard, self.read, self.read_ms = [], [], []
        return taken

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.listen.close()
        await self.reader.close()


def _sent(payload: str) -> float | None:
    try:
        mark = json.loads(payload).get("bench", "")
        return float(mark.split(":", 1)[1])
    except (ValueError, AttributeError, IndexError):
        return None


def pct(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@dataclass
class PhaseResult:
    label: str
    accepted: int
    expected: int
    delivered: int
    latencies: list[float]  # s, the timed streams'
    acks: list[float]  # publish answered, s
    heard: list[float]
    read: list[float]
    read_ms: list[float]
    b_cpu: float  # cores
    a_cpu: float
    readers_cpu: float
    database_cpu: float
    machine: float
    load: str
    rate: float  # events/s the publisher achieved
    late: float  # its worst lag behind the schedule, s
    b_cpu_total: float  # B's CPU seconds from the first publish until the last delivery
    span: float  # that span, s

    @property
    def b_us_per_delivery(self) -> float:
        return self.b_cpu_total / self.delivered * 1e6 if self.delivered else float("nan")


async def run_phase(
    label: str,
    phase: int,
    publish_to: Serve,
    a: Serve,
    b: Serve,
    readers: Any,
    streams: int,
    probe: Probe,
    rate: float,
    seconds: float,
    names: list[str],
    topics: int = 0,
) -> PhaseResult:
    """One phase; with ``topics`` the events go round that many topics, and each
    reaches the ``streams // topics`` streams that follow it."""
    from http_bench import drain
    from http_load import publish_paced

    admin = await asyncpg.connect(dsn(probe.url))
    try:
        rows = await admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = ANY($1::text[])", names
        )
        pids = [row["pid"] for row in rows]
        b0 = {pid: process_cpu(pid) for pid in pids}
    finally:
        await admin.close()
    probe.take()
    t0, m0, a0, bb0, r0 = time.time(), machine_busy(), a.cpu(), b.cpu(), readers.cpu()
    own0 = own_cpu()
    # Open loop, with connections enough that slow answers do not hold the schedule.
    published = await publish_paced(
        publish_to.port,
        "/v1/topics/bench-{n}/events" if topics else "/v1/topics/bench/events",
        phase=phase,
        rate=rate,
        seconds=seconds,
        connections=64,
        topics=topics,
    )
    wall = time.time() - t0
    cpu = {
        "machine": (machine_busy() - m0) / wall,
        "a": (a.cpu() - a0) / wall,
        "b": (b.cpu() - bb0) / wall,
        "readers": (readers.cpu() - r0) / wall,
        "database": sum(process_cpu(pid) - c for pid, c in b0.items()) / wall,
        "harness": (own_cpu() - own0) / wall,
    }
    expected = published.accepted * (streams // topics if topics else streams)
    await asyncio.to_thread(drain, readers, phase, expected, 60)
    b_cpu_total, span = b.cpu() - bb0, time.time() - t0
    await asyncio.sleep(0.3)
    heard, read, read_ms = probe.take()
    return PhaseResult(
        label=label,
        accepted=published.accepted,
        expected=expected,
        delivered=0,
        latencies=[],
        acks=list(published.latencies),
        heard=heard,
        read=read,
        read_ms=read_ms,
        b_cpu=cpu["b"],
        a_cpu=cpu["a"],
        readers_cpu=cpu["readers"],
        database_cpu=cpu["database"],
        machine=cpu["machine"],
        load=loadavg(),
        rate=published.rate,
        late=published.late,
        b_cpu_total=b_cpu_total,
        span=span,
    )


def collect(readers: Any, phases: dict[int, PhaseResult]) -> None:
    from array import array

    reports = readers.stop()
    for number, phase in phases.items():
        latencies = array("d")
        for report in reports:
            stats = report["phases"].get(number)
            if stats:
                latencies.frombytes(stats["latencies"])
                phase.delivered += stats["count"]
        phase.latencies = list(latencies)


async def delivery_round(
    databases: Databases, streams: int, processes: int, rate: float, seconds: float, topics: int
) -> list[PhaseResult]:
    from http_bench import Readers

    url = await databases.fresh()
    names = [make_url(url).database or ""]
    path = "/v1/stream?topic=bench"
    # The served streams follow ``topics`` topics, ``streams // topics`` each, and
    # the events go round them: each stream gets ``rate / topics`` events/s.
    spread = "/v1/stream?topic=bench-{n}"
    share = f"{streams // topics:,} a topic, {rate / topics:g} events/s each"
    results: list[PhaseResult] = []
    with serving(url, "A") as a, serving(url, "B") as b:
        probe = Probe(url)
        await probe.start()
        try:
            one = Readers(b.port, path, 1, 1)
            try:
                one.wait_ready(60)
                await asyncio.sleep(1)
                phase = await run_phase(
                    "cross-instance, 1 stream on B", 1, a, a, b, one, 1, probe,
                    rate, seconds, names,
                )  # fmt: skip
                collect(one, {1: phase})
                results.append(phase)
            finally:
                one.kill()
            many = Readers(b.port, spread, streams, processes, topics=topics)
            try:
                ready = many.wait_ready(180)
                log(f"  {ready['ready']} streams ready on B in {ready['seconds']:.1f} s")
                if ready["ready"] != streams or streams % topics:
                    raise RuntimeError(f"{ready['ready']} of {streams} streams opened: {ready}")
                await asyncio.sleep(2)
                phases: dict[int, PhaseResult] = {}
                phases[2] = await run_phase(
                    f"cross-instance, {streams:,} streams on B ({share})", 2, a, a, b, many,
                    streams, probe, rate, seconds, names, topics,
                )  # fmt: skip
                await asyncio.sleep(1)
                phases[3] = await run_phase(
                    f"same instance (published on B), {streams:,} streams ({share})", 3, b, a,
                    b, many, streams, probe, rate, seconds, names, topics,
                )  # fmt: skip
                collect(many, phases)
                results += phases.values()
            finally:
                many.kill()
        finally:
            await probe.stop()
    return results


async def delivery(args: argparse.Namespace) -> str:
    databases = Databases(args.url)
    await databases.prepare()
    rounds: list[list[PhaseResult]] = []
    load_before = loadavg()
    try:
        for round_number in range(args.delivery_rounds):
            log(f"delivery round {round_number + 1} of {args.delivery_rounds}")
            phases = await delivery_round(
                databases,
                args.streams,
                args.reader_processes,
                args.rate,
                args.delivery_seconds,
                args.topics_served,
            )
            for p in phases:
                log(
                    f"  {p.label}: p50 {pct(p.latencies, 0.5) * 1e3:.1f} ms, "
                    f"p99 {pct(p.latencies, 0.99) * 1e3:.1f} ms, "
                    f"{p.delivered:,} of {p.expected:,}, load {p.load}"
                )
            rounds.append(phases)
    finally:
        await databases.drop_all()
    lines = [
        "| phase (200 events/s published) | delivered / expected | p50 ms | p99 ms | max ms "
        "| publish answered p50 / p99 ms | probe: signal heard p50 / p99 ms "
        "| probe: follower read done p50 / p99 ms | published events/s (worst lag s) "
        "| B CPU us a delivery | CPU while publishing: B / A / readers / database "
        "| machine busy (cores) | load average |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | --- |",
    ]
    for phases in rounds:
        for p in phases:
            ms = 1e3
            lines.append(
                f"| {p.label} | {p.delivered:,} / {p.expected:,} "
                f"| {pct(p.latencies, 0.5) * ms:.1f} | {pct(p.latencies, 0.99) * ms:.1f} "
                f"| {max(p.latencies, default=float('nan')) * ms:.1f} "
                f"| {pct(p.acks, 0.5) * ms:.1f} / {pct(p.acks, 0.99) * ms:.1f} "
                f"| {pct(p.heard, 0.5) * ms:.1f} / {pct(p.heard, 0.99) * ms:.1f} "
                f"| {pct(p.read, 0.5) * ms:.1f} / {pct(p.read, 0.99) * ms:.1f} "
                f"| {p.rate:.0f} ({p.late:.2f}) | {p.b_us_per_delivery:.1f} "
                f"| {p.b_cpu:.2f} / {p.a_cpu:.2f} / {p.readers_cpu:.2f} / {p.database_cpu:.2f} "
                f"| {p.machine:.2f} | {p.load} |"
            )
    summary = []
    for index, p in enumerate(rounds[0]):
        p99s = [pct(r[index].latencies, 0.99) * 1e3 for r in rounds]
        summary.append(f"{p.label}: p99 {spread(p99s, '{:.1f}')} ms")
    return (
        "\n".join(lines)
        + f"\n\n{len(rounds)} rounds, {args.delivery_seconds:g} s a phase at {args.rate:g} "
        f"events/s, readers in {args.reader_processes} processes (one stream in five timed); "
        f"CPU in cores (1.00 = one core); load average (1/5/15 min) {load_before} before, "
        f"{loadavg()} after.\n\n" + "; ".join(summary) + "."
    )


# Main -----------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> str:
    conn = await asyncpg.connect(dsn(args.url))
    try:
        version = await conn.fetchval("SHOW server_version")
        settings = {
            name: await conn.fetchval(f"SHOW {name}")
            for name in ("max_connections", "synchronous_commit", "shared_buffers")
        }
    finally:
        await conn.close()
    shown = ", ".join(f"{k}={v}" for k, v in settings.items())
    out = [
        f"PostgreSQL {version} on 127.0.0.1 ({shown}), "
        f"{os.cpu_count()} cores shared by the database, the instances and the clients; "
        f"Python {platform.python_version()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}."
    ]
    if args.only in (None, "appends"):
        out += ["", "### Appends through the log_head lock", "", await appends(args)]
    if args.only in (None, "delivery"):
        out += ["", "### Cross-instance delivery", "", await delivery(args)]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("EVENTHUB_BENCH_PG_URL", DEFAULT_URL))
    parser.add_argument("--only", choices=["appends", "delivery"])
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--seconds", type=float, default=5.0, help="appends: per case")
    parser.add_argument("--rounds", type=int, default=3, help="appends: rounds")
    parser.add_argument("--publishers", type=int, default=100, help="tasks per instance")
    parser.add_argument("--rate", type=float, default=200.0, help="delivery: events/s")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument(
        "--topics-served",
        type=int,
        default=40,
        help="delivery: topics the streams on B follow, evenly (default 40: 5 events/s a stream)",
    )
    parser.add_argument("--reader-processes", type=int, default=4)
    parser.add_argument("--delivery-seconds", type=float, default=10.0)
    parser.add_argument("--delivery-rounds", type=int, default=2)
    parser.add_argument("--role", choices=["main", "publisher"], default="main")
    parser.add_argument("--topics", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "publisher":
        asyncio.run(publisher_role(args))
        return 0
    if args.quick:
        args.seconds, args.rounds = 2.0, 1
        args.streams, args.reader_processes = 200, 2
        args.delivery_seconds, args.delivery_rounds = 3.0, 1
    sys.path.insert(0, str(BENCH))
    from http_wire import use_uvloop

    use_uvloop()
    print(asyncio.run(main_async(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
