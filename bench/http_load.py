"""Request load for the HTTP benchmarks: closed-loop REST load and paced publishers.

``rest_load`` drives N concurrent keep-alive connections for a fixed time with
``wrk`` when it is installed (``apt-get install wrk``; a C load generator that
costs the server's core nothing) and otherwise with processes of the raw
asyncio client of ``http_wire``. Either way the client's CPU time is reported
so that a reader can tell the client was not the limit.

``publish_paced`` and ``publish_flat_out`` publish benchmark events whose payload
carries the phase and send time that the SSE readers turn into latencies.

Every function takes ``headers`` sent with each request (``Authorization:
Bearer <token>`` against a hub with auth on; ``wrk`` gets them with ``-H``).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from http_wire import HOST, HttpConnection, build_request, connect, cpu_seconds, mark, use_uvloop


@dataclass
class LoadResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    bad: int  # non-2xx responses and socket errors
    client_cpu: float  # seconds of client CPU over the run
    tool: str

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def _percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, int(fraction * len(sorted_values)))
    return sorted_values[index]


# --- closed-loop load ------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _wrk_ms(text: str) -> float:
    found = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text)
    if not found:
        return float("nan")
    return float(found.group(1)) * _UNITS[found.group(2)]


def run_wrk(
    port: int,
    path: str,
    body: bytes,
    connections: int,
    seconds: float,
    threads: int,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(
            'wrk.method = "POST"\n'
            f"wrk.body = {json.dumps(body.decode())}\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
        argv = [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            *(arg for name, value in (headers or {}).items() for arg in ("-H", f"{name}: {value}")),
            "-s",
            str(script),
            f"http://{HOST}:{port}{path}",
        ]
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert process.stdout is not None
        output = process.stdout.read().decode()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"wrk failed:\n{output}")
    requests = re.search(r"(\d+) requests in ([0-9.]+)(\w+)", output)
    if requests is None:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    duration = _wrk_ms(requests.group(2) + requests.group(3)) / 1e3
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", output, re.MULTILINE))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    bad = int(non2xx.group(1)) if non2xx else 0
    if errors:
        bad += sum(int(g) for g in errors.groups())
    return LoadResult(
        requests=int(requests.group(1)),
        seconds=duration,
        p50_ms=_wrk_ms(latency.get("50", "")),
        p99_ms=_wrk_ms(latency.get("99", "")),
        bad=bad,
        client_cpu=usage.ru_utime + usage.ru_stime,
        tool=f"wrk -t{threads}",
    )


async def _python_load(port: int, raw: bytes, connections: int, seconds: float) -> dict[str, Any]:
    conns = [await connect(port) for _ in range(connections)]
    latencies: list[float] = []
    bad = 0
    deadline = time.perf_counter() + seconds

    async def worker(conn: HttpConnection) -> None:
        nonlocal bad
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                status, _ = await conn.request(raw)
            except (OSError, ConnectionError):
                bad += 1
                return
            latencies.append(time.perf_counter() - started)
            if not 200 <= status < 300:
                bad += 1

    started = time.perf_counter()
    cpu0 = cpu_seconds()
    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.perf_counter() - started
    for conn in conns:
        conn.close()
    return {
        "latencies": latencies,
        "bad": bad,
        "seconds": elapsed,
        "cpu": cpu_seconds() - cpu0,
    }


def _python_load_main(
    pipe: Connection, port: int, raw: bytes, connections: int, seconds: float
) -> None:
    use_uvloop()
    pipe.send(asyncio.run(_python_load(port, raw, connections, seconds)))


def run_python_load(
    port: int,
    path: str,
    body: bytes,
    connections: int,
    seconds: float,
    processes: int,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    raw = build_request("POST", path, port, body, headers)
    context = multiprocessing.get_context("spawn")
    shares = [connections // processes + (i < connections % processes) for i in range(processes)]
    pipes, processes = [], []
    for share in shares:
        parent, child = context.Pipe()
        process = context.Process(target=_python_load_main, args=(child, port, raw, share, seconds))
        process.start()
        pipes.append(parent)
        processes.append(process)
    results = [p.recv() for p in pipes]
    for process in processes:
        process.join(10)
    latencies = sorted(x for r in results for x in r["latencies"])
    return LoadResult(
        requests=len(latencies),
        seconds=max(r["seconds"] for r in results),
        p50_ms=_percentile(latencies, 0.5) * 1e3,
        p99_ms=_percentile(latencies, 0.99) * 1e3,
        bad=sum(r["bad"] for r in results),
        client_cpu=sum(r["cpu"] for r in results),
        tool=f"python x{len(processes)}",
    )


def rest_load(
    port: int,
    path: str,
    body: bytes,
    *,
    connections: int,
    seconds: float,
    tool: str = "auto",
    headers: dict[str, str] | None = None,
) -> LoadResult:
    if tool == "wrk" or (tool == "auto" and shutil.which("wrk")):
        return run_wrk(port, path, body, connections, seconds, threads=1, headers=headers)
    return run_python_load(port, path, body, connections, seconds, processes=2, headers=headers)


# --- publishers for the SSE runs ------------------------------------------------------


@dataclass
class PublishResult:
    attempted: int = 0
    accepted: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0
    seconds: float = 0.0
    started: float = 0.0  # wall clock
    ended: float = 0.0
    late: float = 0.0  # worst lag behind the pacing schedule, seconds
    latencies: list[float] = field(default_factory=list)
    scheduled: float = 0.0  # paced runs: how long the schedule lasted, seconds

    @property
    def rate(self) -> float:
        span = self.scheduled or self.seconds
        return self.accepted / span if span else 0.0


def event_body(phase: int, n: int) -> bytes:
    payload = {"bench": mark(phase), "n": n, "text": "fan-out benchmark event"}
    return json.dumps({"payload": payload, "exclude": None}).encode()


async def _publish_one(
    conn: HttpConnection,
    port: int,
    path: str,
    phase: int,
    n: int,
    result: PublishResult,
    headers: dict[str, str] | None,
) -> None:
    result.attempted += 1
    started = time.perf_counter()
    raw = build_request("POST", path, port, event_body(phase, n), headers)
    try:
        status, _ = await conn.request(raw)
    except (OSError, ConnectionError):
        result.errors += 1
        return
    result.latencies.append(time.perf_counter() - started)
    result.statuses[status] += 1
    if status == 201:
        result.accepted += 1


async def publish_paced(
    port: int,
    path: str,
    *,
    phase: int,
    rate: float,
    seconds: float,
    connections: int = 16,
    headers: dict[str, str] | None = None,
    topics: int = 0,
) -> PublishResult:
    """Open-loop publishing at ``rate`` events/s: a slow response does not slow the schedule
    (up to ``connections`` requests in flight). With ``topics``, a ``{n}`` in ``path``
    is the event's number modulo ``topics``: the events go round that many topics."""
    result = PublishResult()
    idle: asyncio.Queue[HttpConnection] = asyncio.Queue()
    for _ in range(connections):
        idle.put_nowait(await connect(port))
    total = int(rate * seconds)
    tasks = []
    last_send = 0.0
    result.started = time.time()
    origin = time.perf_counter()

    async def send(conn: HttpConnection, n: int) -> None:
        target = path.replace("{n}", str(n % topics)) if topics else path
        try:
            await _publish_one(conn, port, target, phase, n, result, headers)
        finally:
            idle.put_nowait(conn)

    for n in range(total):
        delay = origin + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        conn = await idle.get()
        result.late = max(result.late, time.perf_counter() - (origin + n / rate))
        last_send = time.perf_counter()
        tasks.append(asyncio.create_task(send(conn, n)))
    await asyncio.gather(*tasks)
    result.seconds = time.perf_counter() - origin
    result.scheduled = max(total / rate, last_send - origin + 1 / rate)
    result.ended = time.time()
    while not idle.empty():
        idle.get_nowait().close()
    return result


async def publish_flat_out(
    port: int,
    path: str,
    *,
    phase: int,
    seconds: float,
    connections: int = 8,
    headers: dict[str, str] | None = None,
) -> PublishResult:
    """Closed-loop publishing: each connection sends its next event as soon as the last
    one is acknowledged, for ``seconds``."""
    result = PublishResult()
    conns = [await connect(port) for _ in range(connections)]
    counter = iter(range(10**9))
    result.started = time.time()
    origin = time.perf_counter()
    deadline = origin + seconds

    async def worker(conn: HttpConnection) -> None:
        while time.perf_counter() < deadline and not conn.closed:
            await _publish_one(conn, port, path, phase, next(counter), result, headers)

    await asyncio.gather(*(worker(c) for c in conns))
    result.seconds = time.perf_counter() - origin
    result.ended = time.time()
    for conn in conns:
        conn.close()
    return result
