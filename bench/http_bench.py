"""HTTP and SSE benchmarks of ``eventhub-log serve``, beside the HTTP ceiling and the peer.

One command, markdown tables on stdout:

    .venv/bin/python bench/http_bench.py            # the full run, a few minutes
    .venv/bin/python bench/http_bench.py --quick    # a smoke run, under a minute
    .venv/bin/python bench/http_bench.py --update-docs   # also rewrite docs/benchmarks.md
    .venv/bin/python bench/http_bench.py --auth-compare  # REST and fan-out, auth off and on
    .venv/bin/python bench/http_bench.py --chain-compare # REST, hash chain off and on

Every server is its own uvicorn process, one worker, on a free 127.0.0.1 port:
``eventhub-log serve`` over a fresh SQLite file; ``http_ceiling.py`` (FastAPI
answering 201 with no database); ``peer_broadcaster.py`` (sse-starlette +
encode/broadcaster, memory backend, nothing persisted). Load comes from other
processes: ``wrk`` for the REST runs when installed (``apt-get install wrk``;
otherwise processes of the raw asyncio client in ``http_wire.py``), reader
processes for the SSE streams, and this process as publisher. Server and client
CPU seconds are reported beside each figure. Everything is bounded in time.

1. REST publish: requests/s with 64 connections, as a share of the ceiling.
2. SSE fan-out: N streams on one topic; a paced phase (100 events/s) and a
   flat-out phase (as fast as the server acknowledges 8 concurrent publishers);
   delivered events/s and publish-to-receive latency from the send time carried
   in each payload, beside how long the publish requests took to be answered.
3. Resume: 100,000 events published, then one stream with ``Last-Event-ID`` from
   before them; catch-up events/s.
4. Memory per idle stream: the server's RSS before and after opening the streams.

``--auth-compare`` runs only 1 and 2 against ``eventhub-log serve``, each with
auth off and with auth on (``EVENTHUB_AUTH_SECRET`` set for the server, a token
minted for the run on every request and stream), interleaved, and prints one
table of the two side by side against the targets. Any answer other than 2xx,
or a stream that did not open, ends the run with an error: a refused request is
fast, and must not pass for a fast publish.

``--chain-compare`` runs only 1, against ``eventhub-log serve`` and against the
same command with the hash chain switched off (``serve_unchained.py``, a
measurement aid of the benchmarks only), interleaved, and prints the chain's
cost as the ratio of the two. Each server's last event is read back: the chained
one must carry a real hash and the unchained one the placeholder, so that a
comparison of two identical servers cannot pass for a measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from http_load import LoadResult, PublishResult, publish_flat_out, publish_paced, rest_load
from http_wire import request_once, use_uvloop
from sse_readers import EAGER_EVERY, catch_up_main, reader_main

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## HTTP and SSE"
AUTH_SECTION = "## Auth on and off"
AUTH_TOPIC = "bench"
HUB_KINDS = ("eventhub", "eventhub-unchained")
MAX_STREAMS = 100_000  # the hub's per-client limit during a run
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
PUBLISH_BODY = json.dumps(
    {"payload": {"type": "message", "text": "hello, benchmark"}, "exclude": None}
).encode()


@dataclass
class Profile:
    rest_seconds: float
    rest_connections: int
    streams: int
    reader_processes: int
    paced_rate: float
    paced_seconds: float
    flat_seconds: float
    resume_events: int


FULL = Profile(10, 64, 1000, 4, 100, 10, 10, 100_000)
QUICK = Profile(3, 64, 200, 2, 100, 3, 3, 20_000)


# --- servers ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_cpu(pid: int) -> float:
    """CPU seconds used so far by a live process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))


@dataclass(frozen=True)
class RunAuth:
    """A secret for the server and tokens minted with it for one run."""

    secret: str
    publisher: str  # may publish on the benchmark topic
    reader: str  # may subscribe to it (streams, ``GET /v1/topics``)

    @classmethod
    def mint(cls, topic: str, ttl: float = 4 * 3600) -> RunAuth:
        from eventhub_log.tokens import mint_token

        secret = os.urandom(32).hex()
        return cls(
            secret=secret,
            publisher=mint_token("bench-publisher", {"publish": [topic]}, secret=secret, ttl=ttl),
            reader=mint_token("bench-reader", {"subscribe": [topic]}, secret=secret, ttl=ttl),
        )

    @property
    def publish_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.publisher}"}

    @property
    def read_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.reader}"}


def publish_headers(auth: RunAuth | None) -> dict[str, str] | None:
    return None if auth is None else auth.publish_headers


def read_headers(auth: RunAuth | None) -> dict[str, str] | None:
    return None if auth is None else auth.read_headers


class Server:
    """A uvicorn server process (one worker) on a free loopback port.

    ``EVENTHUB_AUTH_*`` variables of the calling shell are not passed on: the
    hub runs with auth on only when ``auth`` is given, with its secret. The
    per-client connection limit is lifted: the readers stand for a thousand
    clients but all come from one address (and, with auth on, one token)."""

    def __init__(self, name: str, kind: str, workdir: Path, auth: RunAuth | None = None) -> None:
        self.name = name
        self.kind = kind
        self.workdir = workdir
        self.auth = auth
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"{kind}-{self.port}.log"

    def argv(self) -> list[str]:
        bin_dir = Path(sys.executable).parent
        if self.kind in HUB_KINDS:
            database = self.workdir / f"bench-{self.port}.db"
            command = (
                [str(bin_dir / "eventhub-log")]
                if self.kind == "eventhub"
                else [sys.executable, str(BENCH / "serve_unchained.py")]
            )
            return [
                *command,
                "serve",
                "--port",
                str(self.port),
                "--database-url",
                f"sqlite+aiosqlite:///{database}",
                "--log-level",
                "warning",
            ]
        module = {"ceiling": "http_ceiling", "peer": "peer_broadcaster"}[self.kind]
        return [
            sys.executable,
            "-m",
            "uvicorn",
            f"{module}:app",
            "--app-dir",
            str(BENCH),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--no-access-log",
            "--log-level",
            "warning",
        ]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTHUB_AUTH_")}
        if self.auth is not None:
            env["EVENTHUB_AUTH_SECRET"] = self.auth.secret
        env["EVENTHUB_MAX_CONNECTIONS_PER_CLIENT"] = str(MAX_STREAMS)
        return env

    def start(self) -> Server:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                self.argv(),
                cwd=self.workdir,
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_raise_fd_limit,
            )
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log.read_text()[-2000:]}")
            try:
                status, _ = asyncio.run(request_once(self.port, "GET", "/healthz"))
                if status == 200:
                    if self.kind in HUB_KINDS:
                        self.check_auth()
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer /healthz within 30 s")

    def check_auth(self) -> None:
        """That the hub has auth on exactly when it should: a publish without a token
        (to a topic of its own) is refused with 401, or accepted with 201 on an open hub,
        and with auth on the run's publisher token is accepted."""
        path = "/v1/topics/auth-probe/events"
        status, body = asyncio.run(request_once(self.port, "POST", path, PUBLISH_BODY))
        expected = 401 if self.auth is not None else 201
        if status != expected:
            raise RuntimeError(
                f"{self.name}: a publish without a token answered {status} "
                f"(expected {expected}): {body[:300]!r}"
            )
        if self.auth is not None:
            status, body = asyncio.run(
                request_once(self.port, "POST", path, PUBLISH_BODY, {"Authorization": "Bearer x"})
            )
            if status != 401:
                raise RuntimeError(f"{self.name}: a bad token answered {status}: {body[:300]!r}")
            topic_path = f"/v1/topics/{AUTH_TOPIC}/events"
            for token_path, headers, want in [
                (path, self.auth.publish_headers, 403),  # the grant is for the topic only
                (topic_path, self.auth.read_headers, 403),  # no publish right
            ]:
                status, body = asyncio.run(
                    request_once(self.port, "POST", token_path, PUBLISH_BODY, headers)
                )
                if status != want:
                    raise RuntimeError(
                        f"{self.name}: POST {token_path} answered {status} (expected {want}): "
                        f"{body[:300]!r}"
                    )

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _pids(self) -> list[int]:
        assert self.process is not None
        pids = [self.process.pid]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError):
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    if int(fields[1]) == self.process.pid:
                        pids.append(int(entry.name))
        return pids

    def cpu(self) -> float:
        """CPU seconds used so far by the server (and any children)."""
        return sum(process_cpu(pid) for pid in self._pids())

    def rss_kib(self) -> int:
        total = 0
        for pid in self._pids():
            with contextlib.suppress(OSError):
                total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KIB
        return total


@contextlib.contextmanager
def running(name: str, kind: str, workdir: Path, auth: RunAuth | None = None) -> Iterator[Server]:
    server = Server(name, kind, workdir, auth)
    try:
        yield server.start()
    finally:
        server.stop()


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def own_cpu() -> float:
    """CPU seconds of this process and its finished children (load tools, readers)."""
    self_usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return self_usage.ru_utime + self_usage.ru_stime + children.ru_utime + children.ru_stime


class CpuWatch:
    """Splits the machine's busy time over an interval into ours and everybody else's.

    Other work on the machine (tests, builds) takes cores from the server and skews
    the figures, so each table says how much of it there was.
    """

    def __init__(self, server: Server, clients: Callable[[], float] = lambda: 0.0) -> None:
        self.server = server
        self.clients = clients
        self.machine0 = machine_busy()
        self.server0 = server.cpu()
        self.own0 = own_cpu()
        self.clients0 = clients()
        self.wall0 = time.time()

    def stop(self) -> dict[str, float]:
        wall = time.time() - self.wall0
        machine = machine_busy() - self.machine0
        server = self.server.cpu() - self.server0
        clients = self.clients() - self.clients0
        own = own_cpu() - self.own0 + clients
        return {
            "wall": wall,
            "server": server,
            "clients": clients,
            "others": max(0.0, machine - server - own),
        }


def wait_for_quiet(limit: float = 8.0, threshold: float = 0.25) -> float:
    """Wait (at most ``limit`` s) until other work uses under ``threshold`` of a core."""
    started = time.time()
    while True:
        before = machine_busy()
        time.sleep(1.0)
        busy = machine_busy() - before
        if busy < threshold or time.time() - started > limit:
            return busy


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: Any, fraction: float) -> float:
    if not len(values):
        return float("nan")
    return float(values[min(len(values) - 1, int(fraction * len(values)))])


# --- 1. REST publish ---------------------------------------------------------------------


@dataclass
class RestRow:
    name: str
    result: LoadResult
    server_cpu: float
    others_share: float  # other work's CPU over the measured interval, in cores
    stored: int | None = None


def rest_benchmark(
    profile: Profile, workdir: Path, tool: str, kinds: list[str], rounds: int = 1
) -> list[RestRow]:
    """Each target ``rounds`` times, interleaved; the best round of each is kept, since
    other work on a shared machine only ever makes a round slower."""
    targets = [
        ("FastAPI `POST /empty`, 201, no body read (ceiling)", "ceiling", "/empty"),
        (
            "FastAPI, same body model and response, no database",
            "ceiling",
            "/v1/topics/bench/events",
        ),
        (
            "sse-starlette + broadcaster peer (memory, no persistence)",
            "peer",
            "/v1/topics/bench/events",
        ),
        ("eventhub-log serve, SQLite (every 201 committed)", "eventhub", "/v1/topics/bench/events"),
    ]
    best: dict[str, RestRow] = {}
    for round_number in range(rounds):
        for name, kind, path in targets:
            if kind not in kinds:
                continue
            with running(name, kind, workdir) as server:
                log(f"REST: {name} (round {round_number + 1} of {rounds})")
                row = rest_round(server, name, path, profile, tool)
                if name not in best or row.result.rps > best[name].result.rps:
                    best[name] = row
    rows = [best[name] for name, _, _ in targets if name in best]
    return rows


def rest_round(
    server: Server, name: str, path: str, profile: Profile, tool: str, auth: RunAuth | None = None
) -> RestRow:
    """One measured REST load against a running server, after a short warm-up."""
    headers = publish_headers(auth)
    rest_load(
        server.port, path, PUBLISH_BODY, connections=16, seconds=1, tool=tool, headers=headers
    )
    wait_for_quiet()
    hub = server.kind in HUB_KINDS
    stored_before = stored_events(server.port, AUTH_TOPIC, read_headers(auth)) if hub else 0
    watch = CpuWatch(server)
    result = rest_load(
        server.port,
        path,
        PUBLISH_BODY,
        connections=profile.rest_connections,
        seconds=profile.rest_seconds,
        tool=tool,
        headers=headers,
    )
    cpu = watch.stop()
    row = RestRow(name, result, cpu["server"], cpu["others"] / cpu["wall"])
    if hub:
        stored_after = stored_events(server.port, AUTH_TOPIC, read_headers(auth)) or 0
        row.stored = stored_after - (stored_before or 0)
    return row


def stored_events(port: int, topic: str, headers: dict[str, str] | None = None) -> int | None:
    status, body = asyncio.run(request_once(port, "GET", "/v1/topics", None, headers))
    if status != 200:
        return None
    for info in json.loads(body).get("topics", []):
        if info.get("topic") == topic:
            return int(info.get("event_count", 0))
    return 0


# --- 2. SSE fan-out and 4. memory per idle stream ---------------------------------------------


@dataclass
class Phase:
    name: str
    published: PublishResult
    streams: int
    delivered: int = 0
    delivered_in_window: int = 0
    drain_seconds: float = 0.0
    last_receive: float = 0.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def expected(self) -> int:
        return self.published.accepted * self.streams

    @property
    def window_rate(self) -> float:
        return self.delivered_in_window / self.published.seconds if self.published.seconds else 0

    @property
    def overall_rate(self) -> float:
        span = self.last_receive - self.published.started
        return self.delivered / span if span > 0 else 0.0


@dataclass
class FanOut:
    name: str
    streams: int
    connect_seconds: float
    rss_before: int
    rss_after: int
    phases: list[Phase]
    readers_cpu: float  # CPU seconds of all reader processes while publishing and draining
    seconds: float  # how long that lasted
    reconnects: int
    errors: list[str]

    @property
    def kib_per_stream(self) -> float:
        return (self.rss_after - self.rss_before) / self.streams if self.streams else 0.0


class Readers:
    def __init__(
        self,
        port: int,
        path: str,
        streams: int,
        processes: int,
        headers: dict[str, str] | None = None,
        eager_every: int = EAGER_EVERY,
        topics: int = 0,
    ) -> None:
        """``eager_every``: every how many streams one reads eagerly and is timed
        (``sse_readers``; 1 times every stream). ``topics``: spread the streams over
        that many topics, a ``{n}`` in ``path`` (``sse_readers``)."""
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.processes = []
        shares = [streams // processes + (i < streams % processes) for i in range(processes)]
        first = 0
        for share in shares:
            parent, child = context.Pipe()
            process = context.Process(
                target=reader_main,
                args=(child, port, path, share, headers, eager_every, first, topics),
            )
            first += share
            process.start()
            self.pipes.append(parent)
            self.processes.append(process)

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        ready, errors, seconds = 0, [], 0.0
        self.ready_cpu = 0.0
        for pipe in self.pipes:
            if not pipe.poll(timeout):
                raise RuntimeError("SSE readers did not get ready in time")
            report = pipe.recv()
            ready += report["ready"]
            errors += report["errors"]
            seconds = max(seconds, report["seconds"])
            self.ready_cpu += report["cpu"]
        return {"ready": ready, "errors": errors, "seconds": seconds}

    def cpu(self) -> float:
        return sum(process_cpu(p.pid) for p in self.processes if p.pid is not None)

    def counts(self) -> dict[int, int]:
        for pipe in self.pipes:
            pipe.send("counts")
        total: dict[int, int] = {}
        for pipe in self.pipes:
            for phase, count in pipe.recv().items():
                total[phase] = total.get(phase, 0) + count
        return total

    def stop(self) -> list[dict[str, Any]]:
        for pipe in self.pipes:
            pipe.send("stop")
        reports = [pipe.recv() for pipe in self.pipes]
        for process in self.processes:
            process.join(10)
        return reports

    def kill(self) -> None:
        for process in self.processes:
            if process.is_alive():
                process.kill()
                process.join(5)


def drain(readers: Readers, phase: int, expected: int, limit: float) -> float:
    """Wait until the readers have ``expected`` events of ``phase`` or stop progressing."""
    started = time.time()
    last, last_change = -1, started
    while time.time() - started < limit:
        count = readers.counts().get(phase, 0)
        if count >= expected:
            break
        if count != last:
            last, last_change = count, time.time()
        elif time.time() - last_change > 5:
            break
        time.sleep(0.2)
    return time.time() - started


async def warm_up_streams(
    port: int, path: str, count: int, headers: dict[str, str] | None = None
) -> None:
    from http_wire import open_stream

    streams = [
        await open_stream(port, path, lambda frame, received: None, headers) for _ in range(count)
    ]
    for stream in streams:
        stream.close()
    await asyncio.sleep(0.5)


def fan_out_benchmark(
    name: str,
    kind: str,
    profile: Profile,
    workdir: Path,
    streams: int | None = None,
    auth: RunAuth | None = None,
) -> FanOut:
    """With ``auth``, the server has its secret, the streams are opened with the
    reader's token and every publish carries the publisher's."""
    streams = streams or profile.streams
    path = f"/v1/stream?topic={AUTH_TOPIC}"
    publish_path = f"/v1/topics/{AUTH_TOPIC}/events"
    headers = publish_headers(auth)
    with running(name, kind, workdir, auth) as server:
        log(f"SSE fan-out: {name}, {streams} streams")
        asyncio.run(warm_up_streams(server.port, path, 20, read_headers(auth)))
        time.sleep(1)
        rss_before = server.rss_kib()
        readers = Readers(server.port, path, streams, profile.reader_processes, read_headers(auth))
        try:
            ready = readers.wait_ready(180)
            time.sleep(2)
            rss_after = server.rss_kib()
            log(f"  {ready['ready']} streams ready in {ready['seconds']:.1f} s")
            phases = []
            phases_started = time.time()
            plans = [
                (1, f"paced {profile.paced_rate:g}/s", profile.paced_seconds),
                (2, "flat out, 8 publishers", profile.flat_seconds),
            ]
            for number, label, seconds in plans:
                wait_for_quiet()
                watch = CpuWatch(server, readers.cpu)
                if number == 1:
                    published = asyncio.run(
                        publish_paced(
                            server.port,
                            publish_path,
                            phase=number,
                            rate=profile.paced_rate,
                            seconds=seconds,
                            headers=headers,
                        )
                    )
                else:
                    published = asyncio.run(
                        publish_flat_out(
                            server.port,
                            publish_path,
                            phase=number,
                            seconds=seconds,
                            headers=headers,
                        )
                    )
                in_window = readers.counts().get(number, 0)
                phase = Phase(label, published, ready["ready"], delivered_in_window=in_window)
                phase.drain_seconds = drain(readers, number, phase.expected, 60)
                phase.cpu = watch.stop()
                log(
                    f"  {label}: {published.accepted} published, "
                    f"drained in {phase.drain_seconds:.1f} s"
                )
                phases.append(phase)
            reports = readers.stop()
        finally:
            readers.kill()
    for phase_number, phase in enumerate(phases, start=1):
        latencies = array("d")
        for report in reports:
            stats = report["phases"].get(phase_number)
            if stats:
                latencies.frombytes(stats["latencies"])
                phase.delivered += stats["count"]
                phase.last_receive = max(phase.last_receive, stats["last"])
        ordered = sorted(latencies)
        phase.p50_ms = percentile(ordered, 0.50) * 1e3
        phase.p99_ms = percentile(ordered, 0.99) * 1e3
    return FanOut(
        name=name,
        streams=ready["ready"],
        connect_seconds=ready["seconds"],
        rss_before=rss_before,
        rss_after=rss_after,
        phases=phases,
        readers_cpu=sum(r["cpu"] for r in reports) - readers.ready_cpu,
        seconds=time.time() - phases_started,
        reconnects=sum(r["reconnects"] for r in reports),
        errors=ready["errors"],
    )


# --- 3. resume -----------------------------------------------------------------------------


@dataclass
class Resume:
    events: int
    publish_seconds: float
    received: int
    in_order: bool
    ready_ms: float
    seconds: float
    server_cpu: float
    client_cpu: float
    others_share: float
    all_rates: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.received / self.seconds if self.seconds else 0.0


async def publish_backlog(port: int, topic: str, count: int, batch: int = 500) -> float:
    from http_wire import connect

    started = time.perf_counter()
    conns = [await connect(port) for _ in range(4)]
    batches = [range(i, min(count, i + batch)) for i in range(0, count, batch)]

    async def worker(conn: Any) -> None:
        from http_wire import build_request

        while batches:
            numbers = batches.pop()
            body = json.dumps(
                {
                    "events": [
                        {"topic": topic, "payload": {"n": n, "text": "resume benchmark"}}
                        for n in numbers
                    ]
                }
            ).encode()
            status, text = await conn.request(build_request("POST", "/v1/events", port, body))
            if status != 201:
                raise RuntimeError(f"batch publish answered {status}: {text[:300]!r}")

    await asyncio.gather(*(worker(c) for c in conns))
    for conn in conns:
        conn.close()
    return time.perf_counter() - started


def resume_benchmark(profile: Profile, workdir: Path, rounds: int = 3) -> Resume:
    """One backlog, ``rounds`` catch-ups from its start, each by a fresh client; the
    fastest is reported, the others listed."""
    name = "eventhub-log serve, SQLite"
    with running(name, "eventhub", workdir) as server:
        log(f"resume: publishing {profile.resume_events} events")
        body = json.dumps({"payload": {"marker": True}, "exclude": None}).encode()
        status, text = asyncio.run(
            request_once(server.port, "POST", "/v1/topics/resume/events", body)
        )
        if status != 201:
            raise RuntimeError(f"publish answered {status}: {text[:300]!r}")
        cursor = json.loads(text)["id"]
        publish_seconds = asyncio.run(publish_backlog(server.port, "resume", profile.resume_events))
        context = multiprocessing.get_context("spawn")
        results = []
        for attempt in range(rounds):
            log(f"resume: catching up ({attempt + 1} of {rounds})")
            parent, child = context.Pipe()
            wait_for_quiet()
            watch = CpuWatch(server)
            process = context.Process(
                target=catch_up_main,
                args=(child, server.port, "/v1/stream?topic=resume", cursor, profile.resume_events),
            )
            process.start()
            result = parent.recv()
            process.join(10)
            cpu = watch.stop()
            results.append(
                Resume(
                    events=profile.resume_events,
                    publish_seconds=publish_seconds,
                    received=result["count"],
                    in_order=result["in_order"],
                    ready_ms=(result["ready_at"] - result["started"]) * 1e3,
                    seconds=result["last"] - result["started"],
                    server_cpu=cpu["server"],
                    client_cpu=result["cpu"],
                    others_share=cpu["others"] / cpu["wall"],
                )
            )
    best = max(results, key=lambda r: r.rate)
    best.all_rates = [r.rate for r in results]
    return best


# --- report -----------------------------------------------------------------------------------


def fmt(value: float, digits: int = 0) -> str:
    if value != value:  # NaN
        return "n/a"
    return f"{value:,.{digits}f}"


def rest_table(rows: list[RestRow], profile: Profile, rounds: int) -> str:
    ceiling = rows[0].result.rps if rows else 0
    model_ceiling = rows[1].result.rps if len(rows) > 1 else 0
    tool = rows[0].result.tool if rows else ""
    lines = [
        f"REST publish, {profile.rest_connections} connections, {profile.rest_seconds:g} s "
        f"per round, best of {rounds} rounds, load from `{tool}`:",
        "",
        "| server | requests/s | p50 ms | p99 ms | errors | server CPU | server CPU us/request "
        "| client CPU | other work | of ceiling | of same-body ceiling |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        r = row.result
        errors = str(r.bad)
        if row.stored is not None:
            errors += f" (stored {row.stored:,} for {r.requests:,} answers)"
        lines.append(
            f"| {row.name} | {fmt(r.rps)} | {fmt(r.p50_ms, 1)} | {fmt(r.p99_ms, 1)} | {errors} "
            f"| {fmt(100 * row.server_cpu / r.seconds)}% "
            f"| {fmt(1e6 * row.server_cpu / r.requests if r.requests else float('nan'))} "
            f"| {fmt(100 * r.client_cpu / r.seconds)}% "
            f"| {fmt(100 * row.others_share)}% | {fmt(100 * r.rps / ceiling)}% "
            f"| {fmt(100 * r.rps / model_ceiling)}% |"
        )
    return "\n".join(lines)


def fan_out_table(runs: list[FanOut], profile: Profile) -> str:
    streams = runs[0].streams if runs else profile.streams
    lines = [
        f"SSE fan-out, {streams} streams on one topic, readers in "
        f"{profile.reader_processes} processes; the flat-out phase publishes for "
        f"{profile.flat_seconds:g} s:",
        "",
        "| server | phase | published events/s | delivered events/s (while publishing) "
        "| delivered events/s (to the last) | delivered / expected | p50 ms | p99 ms "
        "| publish answered p50 / p99 ms "
        "| server CPU | server CPU us/delivery | readers CPU | other work |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: |",
    ]
    for run in runs:
        for phase in run.phases:
            cpu = phase.cpu
            answered = sorted(phase.published.latencies)
            per_delivery = 1e6 * cpu["server"] / phase.delivered if phase.delivered else 0.0
            lines.append(
                f"| {run.name} | {phase.name} | {fmt(phase.published.rate, 1)} "
                f"| {fmt(phase.window_rate)} | {fmt(phase.overall_rate)} "
                f"| {phase.delivered:,} / {phase.expected:,} | {fmt(phase.p50_ms, 1)} "
                f"| {fmt(phase.p99_ms, 1)} "
                f"| {fmt(1e3 * percentile(answered, 0.5), 1)} / "
                f"{fmt(1e3 * percentile(answered, 0.99), 1)} "
                f"| {fmt(100 * cpu['server'] / cpu['wall'])}% "
                f"| {fmt(per_delivery, 1)} "
                f"| {fmt(100 * cpu['clients'] / cpu['wall'])}% "
                f"| {fmt(100 * cpu['others'] / cpu['wall'])}% |"
            )
    notes = []
    for run in runs:
        extra = f"; stream errors: {run.errors}" if run.errors else ""
        for phase in run.phases:
            refused = {k: v for k, v in phase.published.statuses.items() if k != 201}
            if refused or phase.published.errors:
                extra += (
                    f"; {phase.name}: publish answers other than 201 {refused}, "
                    f"{phase.published.errors} connection errors"
                )
        readers_cpu = sum(phase.cpu.get("clients", 0.0) for phase in run.phases)
        wall = sum(phase.cpu.get("wall", 0.0) for phase in run.phases) or 1.0
        notes.append(
            f"{run.name}: {run.streams} streams connected in {run.connect_seconds:.1f} s; "
            f"while publishing and draining, the readers used {readers_cpu:.1f} CPU s over "
            f"{wall:.1f} s ({100 * readers_cpu / wall:.0f}% of one core); "
            f"{run.reconnects} reconnects{extra}."
        )
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes)


def memory_table(runs: list[FanOut]) -> str:
    lines = [
        "Memory per idle stream (server RSS after the streams opened minus before, "
        "divided by the streams):",
        "",
        "| server | streams | RSS before MiB | RSS after MiB | KiB per stream "
        "| streams opened per s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        lines.append(
            f"| {run.name} | {run.streams:,} | {fmt(run.rss_before / 1024, 1)} "
            f"| {fmt(run.rss_after / 1024, 1)} | {fmt(run.kib_per_stream, 1)} "
            f"| {fmt(run.streams / run.connect_seconds)} |"
        )
    return "\n".join(lines)


def resume_table(resume: Resume) -> str:
    return "\n".join(
        [
            f"Resume: {resume.events:,} events published (batches of 500, "
            f"{resume.events / resume.publish_seconds:,.0f} events/s), then one stream "
            "resumes with `Last-Event-ID` from before them; fastest of "
            f"{len(resume.all_rates)} catch-ups (all: "
            f"{', '.join(f'{rate:,.0f}' for rate in resume.all_rates)} events/s):",
            "",
            "| events received | in order | first frame (ready) ms | catch-up s "
            "| catch-up events/s | server CPU | server CPU us/event | client CPU | other work |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            f"| {resume.received:,} | {'yes' if resume.in_order else 'NO'} "
            f"| {fmt(resume.ready_ms, 1)} | {fmt(resume.seconds, 2)} | {fmt(resume.rate)} "
            f"| {fmt(100 * resume.server_cpu / resume.seconds)}% "
            f"| {fmt(1e6 * resume.server_cpu / max(1, resume.received), 1)} "
            f"| {fmt(100 * resume.client_cpu / resume.seconds)}% "
            f"| {fmt(100 * resume.others_share)}% |",
        ]
    )


def targets_table(rest: list[RestRow] | None, runs: list[FanOut], resume: Resume | None) -> str:
    lines = [
        "Against the targets of the issue:",
        "",
        "| target | measured | met |",
        "| --- | --- | --- |",
    ]

    def add(target: str, measured: str, met: bool) -> None:
        lines.append(f"| {target} | {measured} | {'yes' if met else 'NO'} |")

    ours = {run.name: run for run in runs if run.name.startswith("eventhub")}
    peers = [run for run in runs if not run.name.startswith("eventhub")]
    mine_row = next((row for row in (rest or []) if row.name.startswith("eventhub")), None)
    for ceiling_row in (rest or [])[:2]:
        if mine_row is None or not ceiling_row.result.rps or "FastAPI" not in ceiling_row.name:
            continue
        mine, ceiling = mine_row.result.rps, ceiling_row.result.rps
        mine_cpu = mine_row.server_cpu / max(1, mine_row.result.requests)
        ceiling_cpu = ceiling_row.server_cpu / max(1, ceiling_row.result.requests)
        label = "bare `POST /empty`" if "/empty" in ceiling_row.name else "same route and body"
        add(
            f"REST publish >= 50% of the HTTP ceiling ({label})",
            f"{mine:,.0f} of {ceiling:,.0f} requests/s ({100 * mine / ceiling:.0f}%); "
            f"per server CPU second {1 / mine_cpu:,.0f} of {1 / ceiling_cpu:,.0f} "
            f"({100 * ceiling_cpu / mine_cpu:.0f}%)",
            mine >= 0.5 * ceiling,
        )
    for run in ours.values():
        flat = run.phases[-1]
        paced = run.phases[0]
        if peers:
            peer = peers[0].phases[-1]
            mine_cpu = flat.cpu["server"] / max(1, flat.delivered)
            peer_cpu = peer.cpu["server"] / max(1, peer.delivered)
            add(
                "fan-out at saturation >= the peer's delivery rate",
                f"{flat.window_rate:,.0f} vs {peer.window_rate:,.0f} events/s while publishing; "
                f"{mine_cpu * 1e6:.1f} vs {peer_cpu * 1e6:.1f} us of server CPU a delivery",
                flat.window_rate >= peer.window_rate,
            )
        per_core = paced.delivered / paced.cpu["server"] if paced.cpu.get("server") else 0.0
        add(
            f"p99 < 250 ms at {paced.name}, {run.streams:,} streams",
            f"p99 {paced.p99_ms:,.0f} ms (p50 {paced.p50_ms:,.0f} ms), "
            f"{paced.published.rate:,.0f} events/s got through; "
            f"the server did {per_core:,.0f} deliveries per CPU second "
            f"and had {100 * paced.cpu.get('server', 0) / paced.cpu.get('wall', 1):.0f}% of a core",
            paced.p99_ms < 250,
        )
        add(
            "memory per idle stream < 50 KiB",
            f"{run.kib_per_stream:,.1f} KiB",
            run.kib_per_stream < 50,
        )
    if resume is not None:
        add(
            "resume catch-up >= 50,000 events/s",
            f"{resume.rate:,.0f} events/s",
            resume.rate >= 50_000 and resume.received == resume.events,
        )
    return "\n".join(lines)


def machine_line(
    profile: Profile, started: float, command: str = ".venv/bin/python bench/http_bench.py"
) -> str:
    load = os.getloadavg()
    wrk = "wrk" if shutil.which("wrk") else "no wrk"
    return (
        f"Run of {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))} on "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, {wrk}, "
        f"load average at the end {load[0]:.2f}. CPU columns are percent of one core; "
        '"other work" is CPU that processes outside the benchmark took meanwhile. '
        f"Reproduce: `{command}`."
    )


def update_docs(section: str, heading: str = SECTION) -> None:
    """Replace the generated part of the section; a ``### Notes`` subsection written
    by hand under it is kept."""
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    start = text.find(heading + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    else:
        end = text.find("\n## ", start + len(heading))
        end = len(text) if end < 0 else end + 1
        notes = text.find("\n### Notes", start, end)
        keep = text[notes + 1 : end] if notes >= 0 else ""
        text = text[:start] + section + "\n\n" + keep + text[end:]
        text = text.rstrip("\n") + "\n"
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(text)


# --- auth on and off -------------------------------------------------------------------------

HUB = "eventhub-log serve, SQLite"
REST_RATIO_TARGET = 0.90
FANOUT_RATIO_TARGET = 0.95


@dataclass
class AuthCompare:
    rest: dict[bool, list[RestRow]]  # every round, by auth on
    fan_out: dict[bool, list[FanOut]]

    def best_rest(self, on: bool) -> RestRow:
        return max(self.rest[on], key=lambda row: row.result.rps)

    def best_fan_out(self, on: bool) -> FanOut:
        return max(self.fan_out[on], key=lambda run: run.phases[-1].window_rate)


class BenchmarkFailed(RuntimeError):
    """A run whose figures cannot be trusted: refused requests, streams that did not open."""


def check_rest(row: RestRow, label: str) -> None:
    result = row.result
    if result.bad:
        raise BenchmarkFailed(
            f"{label}: {result.bad} of {result.requests:,} REST answers were not 2xx "
            "(or the socket failed); the figure would not be a publish rate"
        )
    if not result.requests or row.stored is None or row.stored < result.requests:
        raise BenchmarkFailed(
            f"{label}: {result.requests:,} answers but {row.stored} events stored on the topic"
        )


def check_fan_out(run: FanOut, streams: int, label: str) -> None:
    problems = []
    if run.streams != streams or run.errors:
        problems.append(f"{run.streams} of {streams} streams opened, errors {run.errors[:2]}")
    for phase in run.phases:
        refused = {k: v for k, v in phase.published.statuses.items() if not 200 <= k < 300}
        if refused or phase.published.errors or not phase.published.accepted:
            problems.append(
                f"{phase.name}: {phase.published.accepted} publishes accepted, other answers "
                f"{refused}, {phase.published.errors} connection errors"
            )
        if phase.delivered < phase.expected:
            problems.append(f"{phase.name}: {phase.delivered:,} of {phase.expected:,} delivered")
    if problems:
        raise BenchmarkFailed(f"{label}: " + "; ".join(problems))


def auth_compare(
    profile: Profile, workdir: Path, tool: str, rounds: int, fan_out_rounds: int
) -> AuthCompare:
    """REST publish and SSE fan-out against the hub with auth off and on, interleaved
    (off, on, then on, off, ...) so that other work on the machine weighs on both."""
    auth = RunAuth.mint(AUTH_TOPIC)
    path = f"/v1/topics/{AUTH_TOPIC}/events"
    compare = AuthCompare(rest={False: [], True: []}, fan_out={False: [], True: []})

    def order(round_number: int) -> list[bool]:
        return [False, True] if round_number % 2 == 0 else [True, False]

    for round_number in range(rounds):
        for on in order(round_number):
            label = f"REST, auth {'on' if on else 'off'}, round {round_number + 1} of {rounds}"
            with running(HUB, "eventhub", workdir, auth if on else None) as server:
                log(label)
                row = rest_round(server, HUB, path, profile, tool, auth if on else None)
            check_rest(row, label)
            log(f"  {row.result.rps:,.0f} requests/s, {row.result.requests:,} answered 2xx")
            compare.rest[on].append(row)
    for round_number in range(fan_out_rounds):
        for on in order(round_number):
            label = (
                f"SSE fan-out, auth {'on' if on else 'off'}, "
                f"round {round_number + 1} of {fan_out_rounds}"
            )
            log(label)
            run = fan_out_benchmark(HUB, "eventhub", profile, workdir, auth=auth if on else None)
            check_fan_out(run, profile.streams, label)
            log(f"  flat out: {run.phases[-1].window_rate:,.0f} deliveries/s")
            compare.fan_out[on].append(run)
    return compare


def auth_table(compare: AuthCompare, profile: Profile, rounds: int, fan_out_rounds: int) -> str:
    off_rest, on_rest = compare.best_rest(False), compare.best_rest(True)
    off_fan, on_fan = compare.best_fan_out(False), compare.best_fan_out(True)
    lines = [
        "| figure | auth off | auth on | ratio (on / off) | target | met |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]

    def add(
        figure: str, off: float, on: float, digits: int = 0, target: float | None = None
    ) -> None:
        ratio = on / off if off else float("nan")
        if target is None:
            goal, met = "", ""
        else:
            goal = f">= {100 * target:.0f}% of auth off"
            met = "yes" if ratio >= target else "NO"
        lines.append(
            f"| {figure} | {fmt(off, digits)} | {fmt(on, digits)} | {fmt(100 * ratio)}% "
            f"| {goal} | {met} |"
        )

    def per_request(row: RestRow) -> float:
        return 1e6 * row.server_cpu / max(1, row.result.requests)

    add(
        f"REST publish, requests/s ({profile.rest_connections} connections, best of {rounds})",
        off_rest.result.rps,
        on_rest.result.rps,
        target=REST_RATIO_TARGET,
    )
    add("REST publish, server CPU us/request", per_request(off_rest), per_request(on_rest))
    add("REST publish, p99 ms", off_rest.result.p99_ms, on_rest.result.p99_ms, 1)
    flat_off, flat_on = off_fan.phases[-1], on_fan.phases[-1]
    paced_off, paced_on = off_fan.phases[0], on_fan.phases[0]

    def per_delivery(phase: Phase) -> float:
        return 1e6 * phase.cpu["server"] / max(1, phase.delivered)

    add(
        f"SSE fan-out, {off_fan.streams:,} streams, flat out: delivered events/s "
        f"while publishing (best of {fan_out_rounds})",
        flat_off.window_rate,
        flat_on.window_rate,
        target=FANOUT_RATIO_TARGET,
    )
    add(
        "SSE fan-out, flat out: server CPU us/delivery",
        per_delivery(flat_off),
        per_delivery(flat_on),
        1,
    )
    add(
        f"SSE fan-out, {paced_off.name}: delivered events/s",
        paced_off.window_rate,
        paced_on.window_rate,
    )
    add(f"SSE fan-out, {paced_off.name}: p99 ms", paced_off.p99_ms, paced_on.p99_ms, 1)
    add(
        "SSE streams opened per s",
        off_fan.streams / off_fan.connect_seconds,
        on_fan.streams / on_fan.connect_seconds,
    )

    def rates(values: list[float]) -> str:
        return ", ".join(f"{value:,.0f}" for value in values)

    def others(values: list[float]) -> str:
        return ", ".join(f"{100 * value:.0f}%" for value in values)

    notes = []
    for on in (False, True):
        rows, runs = compare.rest[on], compare.fan_out[on]
        mode = "on" if on else "off"
        notes.append(
            f"auth {mode}: REST rounds {rates([r.result.rps for r in rows])} requests/s "
            f"(other work {others([r.others_share for r in rows])} of a core), "
            f"{sum(r.result.requests for r in rows):,} answers, all 2xx; fan-out rounds "
            f"{rates([run.phases[-1].window_rate for run in runs])} deliveries/s flat out "
            f"(other work "
            f"{others([run.phases[-1].cpu['others'] / run.phases[-1].cpu['wall'] for run in runs])}"
            f" of a core), every stream open and every event delivered"
        )
    header = (
        f"`eventhub-log serve` on SQLite, auth off (no key) and on (`EVENTHUB_AUTH_SECRET`, "
        f"HS256; every publish carries `Authorization: Bearer` with a token granting publish "
        f"on the topic, every stream one granting subscribe). REST: {rounds} rounds of "
        f"{profile.rest_seconds:g} s per mode with `{off_rest.result.tool}`; fan-out: "
        f"{fan_out_rounds} runs per mode of {profile.streams:,} streams in "
        f"{profile.reader_processes} reader processes, {profile.paced_seconds:g} s paced at "
        f"{profile.paced_rate:g} events/s then {profile.flat_seconds:g} s flat out with 8 "
        "publishers; modes interleaved (off, on, then on, off), a fresh server each time, "
        "the best round of each mode kept:"
    )
    return "\n".join([header, "", *lines, "", *(f"- {note}." for note in notes)])


# --- hash chain on and off -------------------------------------------------------------------

CHAIN_SECTION = "## Hash chain on and off"
CHAIN_RATIO_TARGET = 0.90
PLACEHOLDER_HASH = "0" * 64  # what serve_unchained.py's appends carry


def last_hash(port: int, topic: str) -> str:
    status, body = asyncio.run(
        request_once(port, "GET", f"/v1/topics/{topic}/events?limit=1&order=desc")
    )
    if status != 200:
        raise BenchmarkFailed(f"history of {topic!r} answered {status}: {body[:300]!r}")
    events = json.loads(body)["events"]
    if not events:
        raise BenchmarkFailed(f"history of {topic!r} is empty after the run")
    return str(events[0]["hash"])


def chain_compare(
    profile: Profile, workdir: Path, tool: str, rounds: int
) -> dict[bool, list[RestRow]]:
    """REST publish against ``eventhub-log serve`` with the chain on and off, interleaved
    (off, on, then on, off, ...) so that other work on the machine weighs on both."""
    path = f"/v1/topics/{AUTH_TOPIC}/events"
    rows: dict[bool, list[RestRow]] = {False: [], True: []}
    for round_number in range(rounds):
        for on in [False, True] if round_number % 2 == 0 else [True, False]:
            label = f"REST, chain {'on' if on else 'off'}, round {round_number + 1} of {rounds}"
            kind = "eventhub" if on else "eventhub-unchained"
            with running(HUB, kind, workdir) as server:
                log(label)
                row = rest_round(server, HUB, path, profile, tool)
                digest = last_hash(server.port, AUTH_TOPIC)
            check_rest(row, label)
            if (digest == PLACEHOLDER_HASH) == on:
                raise BenchmarkFailed(
                    f"{label}: the last event's hash is {digest}; the chain was not "
                    f"{'on' if on else 'off'}"
                )
            log(f"  {row.result.rps:,.0f} requests/s, {row.result.requests:,} answered 2xx")
            rows[on].append(row)
    return rows


def chain_table(rows: dict[bool, list[RestRow]], profile: Profile, rounds: int) -> str:
    best = {on: max(rows[on], key=lambda row: row.result.rps) for on in (False, True)}
    off, on = best[False], best[True]
    ratio = on.result.rps / off.result.rps

    def per_request(row: RestRow) -> float:
        return 1e6 * row.server_cpu / max(1, row.result.requests)

    def rates(values: list[RestRow]) -> str:
        return ", ".join(f"{row.result.rps:,.0f}" for row in values)

    lines = [
        "| figure | chain off | chain on | ratio (on / off) | target | met |",
        "| --- | ---: | ---: | ---: | --- | --- |",
        f"| REST publish, requests/s ({profile.rest_connections} connections, best of "
        f"{rounds}) | {fmt(off.result.rps)} | {fmt(on.result.rps)} | {fmt(100 * ratio)}% "
        f"| >= {100 * CHAIN_RATIO_TARGET:.0f}% of chain off | "
        f"{'yes' if ratio >= CHAIN_RATIO_TARGET else 'NO'} |",
        f"| REST publish, server CPU us/request | {fmt(per_request(off), 1)} "
        f"| {fmt(per_request(on), 1)} | {fmt(100 * per_request(on) / per_request(off))}% | | |",
        f"| REST publish, p99 ms | {fmt(off.result.p99_ms, 1)} | {fmt(on.result.p99_ms, 1)} "
        f"| {fmt(100 * on.result.p99_ms / off.result.p99_ms)}% | | |",
    ]
    header = (
        f"`eventhub-log serve` on SQLite against the same command with the hash chain "
        f"switched off (`bench/serve_unchained.py`, a measurement aid: no canonical text, "
        f"no SHA-256, a placeholder hash). {rounds} rounds of {profile.rest_seconds:g} s "
        f"per mode with `{on.result.tool}`, modes interleaved, a fresh server each time, "
        "the best round of each mode kept; each server's last event was read back with a "
        "real hash (on) or the placeholder (off):"
    )
    notes = [
        f"chain {'on' if mode else 'off'}: rounds {rates(rows[mode])} requests/s, "
        f"{sum(r.result.requests for r in rows[mode]):,} answers, all 2xx and all stored"
        for mode in (False, True)
    ]
    return "\n".join([header, "", *lines, "", *(f"- {note}." for note in notes)])


def main_chain_compare(args: argparse.Namespace, profile: Profile) -> int:
    command = (
        ".venv/bin/python bench/http_bench.py --chain-compare"
        + (" --quick" if args.quick else "")
        + (f" --rounds {args.rounds}" if args.rounds != 3 else "")
    )
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="eventhub-bench-") as tmp:
        try:
            rows = chain_compare(profile, Path(tmp), args.load_tool, args.rounds)
        except BenchmarkFailed as exc:
            print(f"http_bench: the run is not valid: {exc}", file=sys.stderr)
            return 1
    section = "\n\n".join(
        [
            CHAIN_SECTION,
            machine_line(profile, started, command),
            chain_table(rows, profile, args.rounds),
        ]
    )
    print(section)
    if args.update_docs:
        update_docs(section, CHAIN_SECTION)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--update-docs", action="store_true", help=f"rewrite {SECTION!r}")
    parser.add_argument(
        "--only", choices=["rest", "fanout", "resume"], action="append", help="run only these"
    )
    parser.add_argument("--streams", type=int, help="SSE streams (default 1000, quick 200)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="REST rounds per target, best kept (default 3)"
    )
    parser.add_argument("--load-tool", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument(
        "--auth-compare",
        action="store_true",
        help=f"REST publish and SSE fan-out, auth off and on (--update-docs: {AUTH_SECTION!r})",
    )
    parser.add_argument(
        "--chain-compare",
        action="store_true",
        help=f"REST publish, hash chain off and on (--update-docs: {CHAIN_SECTION!r})",
    )
    parser.add_argument(
        "--fanout-rounds",
        type=int,
        help="--auth-compare: fan-out runs per mode, best kept (default 2, quick 1)",
    )
    parser.add_argument(
        "--servers",
        default="peer,eventhub",
        help="servers besides the ceiling, comma-separated among peer,eventhub",
    )
    args = parser.parse_args()
    use_uvloop()
    profile = QUICK if args.quick else FULL
    if args.streams:
        profile.streams = args.streams
    if args.auth_compare:
        return main_auth_compare(args, profile)
    if args.chain_compare:
        return main_chain_compare(args, profile)
    chosen = set(args.only or ["rest", "fanout", "resume"])
    servers = args.servers.split(",")
    if "eventhub" not in servers:
        chosen.discard("resume")
    started = time.time()
    parts = []
    with tempfile.TemporaryDirectory(prefix="eventhub-bench-") as tmp:
        workdir = Path(tmp)
        rest: list[RestRow] | None = None
        resume: Resume | None = None
        if "rest" in chosen:
            kinds = ["ceiling", *servers]
            rest = rest_benchmark(profile, workdir, args.load_tool, kinds, args.rounds)
            parts.append(rest_table(rest, profile, args.rounds))
        runs = []
        if "fanout" in chosen:
            names = {
                "peer": "sse-starlette + broadcaster (memory)",
                "eventhub": "eventhub-log serve, SQLite",
            }
            for kind in servers:
                runs.append(fan_out_benchmark(names[kind], kind, profile, workdir))
            parts.append(fan_out_table(runs, profile))
        if "resume" in chosen:
            resume = resume_benchmark(profile, workdir)
            parts.append(resume_table(resume))
        if runs:
            parts.append(memory_table(runs))
    targets = targets_table(rest, runs, resume)
    section = "\n\n".join([SECTION, machine_line(profile, started), targets, *parts])
    print(section)
    if args.update_docs:
        update_docs(section)
    return 0


def main_auth_compare(args: argparse.Namespace, profile: Profile) -> int:
    fan_out_rounds = args.fanout_rounds or (1 if args.quick else 2)
    command = ".venv/bin/python bench/http_bench.py --auth-compare" + (
        " --quick" if args.quick else ""
    )
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="eventhub-bench-") as tmp:
        try:
            compare = auth_compare(profile, Path(tmp), args.load_tool, args.rounds, fan_out_rounds)
        except BenchmarkFailed as exc:
            print(f"http_bench: the run is not valid: {exc}", file=sys.stderr)
            return 1
    section = "\n\n".join(
        [
            AUTH_SECTION,
            machine_line(profile, started, command),
            auth_table(compare, profile, args.rounds, fan_out_rounds),
        ]
    )
    print(section)
    if args.update_docs:
        update_docs(section, AUTH_SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
