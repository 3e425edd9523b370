"""Soak: 1,000 SSE streams under steady publishing for minutes, and a stalled reader.

One command, markdown tables on stdout:

    .venv/bin/python bench/soak.py                      # both, 1,000 streams, 180 s soak
    .venv/bin/python bench/soak.py --seconds 600 --rate 50
    .venv/bin/python bench/soak.py --only soak          # or --only stalled

Each case starts a fresh ``eventhub-log serve`` (its own process, one worker, a
new SQLite file, the per-client connection limit lifted) and samples the RSS of
that process (``VmRSS`` in ``/proc/<pid>/status``; ``VmHWM`` for the peak).

(a) Soak: reader processes (``--processes``, default 4) open ``--streams``
    streams on one topic, each with a subscriber of its own; then this process
    publishes ``--rate`` events/s (4 keep-alive connections) for ``--seconds``.
    The RSS is sampled every ``--sample`` seconds. Every stream checks the seqs
    it gets: each event once, in order; a stream the server closes is reopened
    with ``Last-Event-ID``. After the publishing stops the streams are drained
    and the run reports deliveries and losses (events a stream never got),
    which must be 0, beside RSS after the warm-up (``--warmup`` seconds into the
    publishing), at the end, and the growth between them.
(b) Stalled reader: 20 events of 1 MB published with no stream (the baseline),
    then one stream opened that never reads (its socket buffer 64 KiB) while
    ``--big-events`` (400) events of 1 MB are published; the RSS is sampled every
    0.5 s and ``/readyz`` timed meanwhile. The stream then reads: it must get
    every one of those events (reopened from its last id if it was cut off).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import re
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from http_bench import Server
from http_wire import (
    HOST,
    SseStream,
    build_request,
    connect,
    cpu_seconds,
    open_stream,
    request_once,
    use_uvloop,
)

TOPIC = "soak"
BIG_TOPIC = "soak-big"
SEQ_RE = re.compile(rb'"seq":\s*(\d+)')
MiB = 1024 * 1024


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values["VmRSS"], values["VmHWM"]


def mib(kib: float) -> str:
    return f"{kib / 1024:,.1f}"


# --- (a) the soak's readers, in processes of their own --------------------------------


class Tracked:
    """One subscriber's stream: every seq once and in order, reopened if cut."""

    def __init__(self, port: int, index: int) -> None:
        self.port = port
        self.path = f"/v1/stream?topic={TOPIC}&subscriber=soak-{index}"
        self.last_id: str | None = None
        self.last_seq = 0
        self.received = 0
        self.duplicates = 0
        self.skipped = 0  # seqs jumped over: lost
        self.reconnects = 0
        self.stream: SseStream | None = None
        self.stopping = False

    def on_frame(self, frame: bytes, _received: float) -> None:
        found = SEQ_RE.search(frame)
        if found is None:
            return
        if frame.startswith(b"id:"):
            self.last_id = frame[3 : frame.find(b"\n")].strip().decode()
        seq = int(found.group(1))
        self.received += 1
        if seq <= self.last_seq:
            self.duplicates += 1
            return
        self.skipped += seq - self.last_seq - 1
        self.last_seq = seq

    async def open(self) -> None:
        headers = {} if self.last_id is None else {"Last-Event-ID": self.last_id}
        self.stream = await open_stream(self.port, self.path, self.on_frame, headers)
        if self.stream.status != 200:
            raise RuntimeError(f"stream answered {self.stream.status}")
        if self.last_id is None:
            ready = self.stream.ready.result()
            for line in ready.split(b"\n"):
                if line.startswith(b"id:"):
                    self.last_id = line[3:].strip().decode()

    async def keep_open(self) -> None:
        while not self.stopping:
            assert self.stream is not None
            await self.stream.done
            if self.stopping:
                return
            self.reconnects += 1
            try:
                await self.open()
            except (OSError, ConnectionError, RuntimeError):
                await asyncio.sleep(0.2)


def reader_main(pipe: Connection, port: int, indices: list[int]) -> None:
    """A reader process: ``"status"`` answers the lowest last seq and the events
    received; ``"stop"`` closes the streams and answers the totals."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    use_uvloop()

    async def run() -> None:
        streams = [Tracked(port, i) for i in indices]
        gate = asyncio.Semaphore(32)

        async def open_one(stream: Tracked) -> None:
            async with gate:
                await asyncio.wait_for(stream.open(), 60)

        results = await asyncio.gather(*(open_one(s) for s in streams), return_exceptions=True)
        errors = [repr(r) for r in results if isinstance(r, BaseException)]
        keepers = [asyncio.create_task(s.keep_open()) for s in streams if s.stream is not None]
        pipe.send({"opened": len(keepers), "errors": errors[:3]})
        loop = asyncio.get_running_loop()
        while True:
            command = await loop.run_in_executor(None, pipe.recv)
            if command == "status":
                pipe.send(
                    {
                        "min_last_seq": min(s.last_seq for s in streams),
                        "received": sum(s.received for s in streams),
                    }
                )
            elif command == "stop":
                break
        for stream in streams:
            stream.stopping = True
            if stream.stream is not None:
                stream.stream.close()
        for task in keepers:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        pipe.send(
            {
                "last_seqs": [s.last_seq for s in streams],
                "received": sum(s.received for s in streams),
                "duplicates": sum(s.duplicates for s in streams),
                "skipped": sum(s.skipped for s in streams),
                "reconnects": sum(s.reconnects for s in streams),
                "cpu": cpu_seconds(),
            }
        )

    asyncio.run(run())


class Readers:
    def __init__(self, port: int, streams: int, processes: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.processes = []
        for share in range(processes):
            parent, child = context.Pipe()
            indices = list(range(share, streams, processes))
            process = context.Process(target=reader_main, args=(child, port, indices))
            process.start()
            self.pipes.append(parent)
            self.processes.append(process)

    def wait_opened(self, streams: int) -> None:
        opened, errors = 0, []
        for pipe in self.pipes:
            if not pipe.poll(300):
                raise RuntimeError("the readers did not open their streams within 300 s")
            report = pipe.recv()
            opened += report["opened"]
            errors += report["errors"]
        if opened != streams:
            raise RuntimeError(f"{opened} of {streams} streams opened: {errors}")

    def status(self) -> tuple[int, int]:
        for pipe in self.pipes:
            pipe.send("status")
        reports = [pipe.recv() for pipe in self.pipes]
        return min(r["min_last_seq"] for r in reports), sum(r["received"] for r in reports)

    def stop(self) -> dict[str, Any]:
        for pipe in self.pipes:
            pipe.send("stop")
        reports = [pipe.recv() for pipe in self.pipes]
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.kill()
        return {
            "last_seqs": [seq for r in reports for seq in r["last_seqs"]],
            **{
                key: sum(r[key] for r in reports)
                for key in ("received", "duplicates", "skipped", "reconnects", "cpu")
            },
        }


# --- (a) the soak ---------------------------------------------------------------------


@dataclass
class Publishing:
    acknowledged: int = 0
    refused: dict[int, int] = field(default_factory=dict)
    last_seq: int = 0


async def publish_paced(port: int, rate: float, seconds: float, state: Publishing) -> None:
    """``rate`` events/s over 4 keep-alive connections, each on its own schedule."""
    connections = 4
    interval = connections / rate
    started = time.monotonic()

    async def one(offset: int) -> None:
        conn = await connect(port)
        try:
            due = started + offset * interval / connections
            number = 0
            while due < started + seconds:
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                number += 1
                body = json.dumps(
                    {"payload": {"type": "message", "text": f"soak {offset}-{number}"}}
                ).encode()
                if conn.closed:
                    conn = await connect(port)
                status, answer = await conn.request(
                    build_request("POST", f"/v1/topics/{TOPIC}/events", port, body)
                )
                if status == 201:
                    state.acknowledged += 1
                    state.last_seq = max(state.last_seq, json.loads(answer)["seq"])
                else:
                    state.refused[status] = state.refused.get(status, 0) + 1
                due += interval
        finally:
            conn.close()

    await asyncio.gather(*(one(i) for i in range(connections)))


async def sample_rss(
    pid: int, period: float, started: float, until: asyncio.Event, out: list[tuple[float, int]]
) -> None:
    while not until.is_set():
        out.append((time.monotonic() - started, rss_kib(pid)[0]))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(until.wait(), period)


def soak(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    server = Server("eventhub-log", "eventhub", workdir).start()
    assert server.process is not None
    pid = server.process.pid
    try:
        rss_start = rss_kib(pid)[0]
        readers = Readers(server.port, args.streams, args.processes)
        opened_at = time.monotonic()
        try:
            readers.wait_opened(args.streams)
            open_seconds = time.monotonic() - opened_at
            rss_opened = rss_kib(pid)[0]
            state = Publishing()
            samples: list[tuple[float, int]] = []

            async def run() -> None:
                done = asyncio.Event()
                started = time.monotonic()
                sampler = asyncio.create_task(sample_rss(pid, args.sample, started, done, samples))
                await publish_paced(server.port, args.rate, args.seconds, state)
                done.set()
                await sampler

            cpu0 = server.cpu()
            published_at = time.monotonic()
            asyncio.run(run())
            publish_seconds = time.monotonic() - published_at
            # Drain: every stream up to the last acknowledged seq, or a minute.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                low, _ = readers.status()
                if low >= state.last_seq:
                    break
                time.sleep(0.25)
            server_cpu = server.cpu() - cpu0
            rss_end, rss_peak = rss_kib(pid)
            totals = readers.stop()
        except BaseException:
            with contextlib.suppress(Exception):
                readers.stop()
            raise
    finally:
        server.stop()
    # The publish route answers each event's seq: every stream should end at the
    # highest, having had 1..that once each.
    expected = state.last_seq
    lost = totals["skipped"] + sum(max(0, expected - seq) for seq in totals["last_seqs"])
    after_warmup = [kib for at, kib in samples if at >= args.warmup]
    warm = after_warmup[0] if after_warmup else samples[-1][1]
    slope = _slope([(at, kib) for at, kib in samples if at >= args.warmup])
    return {
        "streams": args.streams,
        "rate": args.rate,
        "seconds": publish_seconds,
        "open_seconds": open_seconds,
        "acknowledged": state.acknowledged,
        "refused": state.refused,
        "last_seq": expected,
        "deliveries": totals["received"] - totals["duplicates"],
        "expected": expected * args.streams,
        "lost": lost,
        "duplicates": totals["duplicates"],
        "reconnects": totals["reconnects"],
        "rss_start": rss_start,
        "rss_opened": rss_opened,
        "rss_warm": warm,
        "rss_end": rss_end,
        "rss_peak": rss_peak,
        "rss_max_after_warmup": max(after_warmup, default=warm),
        "slope_kib_per_min": slope * 60,
        "samples": samples,
        "server_cpu": server_cpu,
        "reader_cpu": totals["cpu"],
    }


def _slope(points: list[tuple[float, int]]) -> float:
    """Least-squares KiB per second over ``points``."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / var if var else 0.0


# --- (b) a stalled reader of 1 MB events ------------------------------------------------


def big_body(number: int) -> bytes:
    # 1,000,000 bytes of payload text: under the 1 MiB request limit with its JSON.
    return json.dumps({"payload": {"n": number, "blob": "x" * 999_980}}).encode()


async def publish_big(port: int, first: int, count: int, concurrency: int = 2) -> int:
    numbers = iter(range(first, first + count))
    acknowledged = 0

    async def one() -> None:
        nonlocal acknowledged
        conn = await connect(port)
        try:
            for number in numbers:
                status, answer = await conn.request(
                    build_request("POST", f"/v1/topics/{BIG_TOPIC}/events", port, big_body(number))
                )
                if status != 201:
                    raise RuntimeError(f"a 1 MB publish answered {status}: {answer[:200]!r}")
                acknowledged += 1
        finally:
            conn.close()

    await asyncio.gather(*(one() for _ in range(concurrency)))
    return acknowledged


async def open_stalled(port: int, path: str, frames: list[int], last_id: str | None) -> SseStream:
    """A stream on a socket with a 64 KiB receive buffer; reading is paused once
    it has its ``ready`` frame."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (HOST, port))

    def on_frame(frame: bytes, _received: float) -> None:
        found = SEQ_RE.search(frame, 0, 300)
        if found is not None:
            frames.append(int(found.group(1)))

    _, stream = await loop.create_connection(lambda: SseStream(on_frame), sock=sock)
    assert stream.transport is not None
    headers = {"Accept": "text/event-stream"}
    if last_id is not None:
        headers["Last-Event-ID"] = last_id
    stream.transport.write(build_request("GET", path, port, None, headers))
    await asyncio.wait_for(stream.ready, 30)
    return stream


def stalled(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    server = Server("eventhub-log", "eventhub", workdir).start()
    assert server.process is not None
    pid = server.process.pid
    try:

        async def run() -> dict[str, Any]:
            warm = await publish_big(server.port, 0, 20)
            rss_before, hwm_before = rss_kib(pid)
            seqs: list[int] = []
            stream = await open_stalled(server.port, f"/v1/stream?topic={BIG_TOPIC}", seqs, None)
            assert stream.transport is not None
            stream.transport.pause_reading()
            await asyncio.sleep(0.5)
            samples: list[int] = []
            readyz: list[float] = []
            done = asyncio.Event()

            async def watch() -> None:
                while not done.is_set():
                    samples.append(rss_kib(pid)[0])
                    started = time.monotonic()
                    status, _ = await request_once(server.port, "GET", "/readyz")
                    readyz.append(time.monotonic() - started if status == 200 else float("inf"))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(done.wait(), 0.5)

            watcher = asyncio.create_task(watch())
            started = time.monotonic()
            published = await publish_big(server.port, warm, args.big_events)
            publish_seconds = time.monotonic() - started
            done.set()
            await watcher
            rss_end, hwm = rss_kib(pid)
            # Now read: everything published while stalled must arrive.
            cut_off = stream.done.done()
            stream.transport.resume_reading()
            deadline = time.monotonic() + 120
            reopened = 0
            while len(set(seqs)) < published and time.monotonic() < deadline:
                if stream.done.done():
                    reopened += 1
                    last = max(seqs) if seqs else None
                    history_id = await _event_id(server.port, last) if last else None
                    stream = await open_stalled(
                        server.port, f"/v1/stream?topic={BIG_TOPIC}", seqs, history_id
                    )
                await asyncio.sleep(0.1)
            stream.close()
            return {
                "published": published,
                "publish_seconds": publish_seconds,
                "received": len(set(seqs)),
                "in_order": seqs == sorted(seqs),
                "cut_off": cut_off,
                "reopened": reopened,
                "rss_before": rss_before,
                "rss_max_sampled": max(samples),
                "rss_end": rss_end,
                "hwm_before": hwm_before,
                "hwm": hwm,
                "readyz_max": max(readyz),
                "readyz_count": len(readyz),
            }

        return asyncio.run(run())
    finally:
        server.stop()


async def _event_id(port: int, seq: int) -> str:
    """The cursor (stream id) of ``seq`` of the big topic, from history."""
    path = f"/v1/topics/{BIG_TOPIC}/events?after_seq={seq - 1}&limit=1"
    status, body = await request_once(port, "GET", path)
    if status != 200:
        raise RuntimeError(f"history answered {status}")
    return str(json.loads(body)["events"][0]["id"])


# --- output --------------------------------------------------------------------------


def soak_table(r: dict[str, Any]) -> str:
    refused = ", ".join(f"{n} x {s}" for s, n in sorted(r["refused"].items())) or "none"
    lines = [
        f"(a) soak: {r['streams']:,} SSE streams (one topic, a subscriber each), "
        f"{r['rate']:g} events/s for {r['seconds']:.0f} s; server RSS every "
        f"{ARGS.sample:g} s, warm-up {ARGS.warmup:g} s:",
        "",
        "| RSS after warm-up MiB | RSS at the end MiB | growth MiB | growth per hour "
        "(fit) MiB | peak MiB | events published | deliveries | expected | lost "
        "| duplicates | reconnects |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {mib(r['rss_warm'])} | {mib(r['rss_end'])} | "
        f"{(r['rss_end'] - r['rss_warm']) / 1024:+,.1f} | "
        f"{r['slope_kib_per_min'] * 60 / 1024:+,.1f} | {mib(r['rss_peak'])} | "
        f"{r['acknowledged']:,} | {r['deliveries']:,} | {r['expected']:,} | {r['lost']:,} | "
        f"{r['duplicates']:,} | {r['reconnects']:,} |",
        "",
        f"Server RSS {mib(r['rss_start'])} MiB at start, {mib(r['rss_opened'])} MiB once the "
        f"streams were open ({r['open_seconds']:.1f} s); highest sample after the warm-up "
        f"{mib(r['rss_max_after_warmup'])} MiB. Refused publishes: {refused}. Server CPU "
        f"{r['server_cpu']:.1f} s, readers {r['reader_cpu']:.1f} s.",
        "Samples (s: MiB): "
        + ", ".join(f"{at:.0f}: {kib / 1024:.1f}" for at, kib in r["samples"][:: max(1, 6)]),
    ]
    return "\n".join(lines)


def stalled_table(r: dict[str, Any]) -> str:
    lines = [
        f"(b) one stream that never reads while {r['published']:,} events of 1 MB are "
        f"published ({r['published']:,} MB in {r['publish_seconds']:.1f} s):",
        "",
        "| RSS before MiB | highest sample MiB | peak (VmHWM) MiB | RSS at the end MiB | "
        "growth at peak MiB | /readyz slowest ms | events the stream got once it read |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        f"| {mib(r['rss_before'])} | {mib(r['rss_max_sampled'])} | {mib(r['hwm'])} | "
        f"{mib(r['rss_end'])} | {(r['hwm'] - r['rss_before']) / 1024:+,.1f} | "
        f"{r['readyz_max'] * 1000:,.0f} (of {r['readyz_count']}) | "
        f"{r['received']:,} / {r['published']:,}, in order: "
        f"{'yes' if r['in_order'] else 'no'}, reopened {r['reopened']} |",
        "",
        f"Peak before the stalled stream (20 x 1 MB published, no stream): "
        f"{mib(r['hwm_before'])} MiB. Cut off while stalled: {'yes' if r['cut_off'] else 'no'}.",
    ]
    return "\n".join(lines)


ARGS = argparse.Namespace()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=4, help="reader processes")
    parser.add_argument("--rate", type=float, default=20.0, help="events published per second")
    parser.add_argument("--seconds", type=float, default=180.0, help="how long to publish")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds before the baseline")
    parser.add_argument("--sample", type=float, default=5.0, help="RSS sampling period, s")
    parser.add_argument("--big-events", type=int, default=400, help="1 MB events, case (b)")
    parser.add_argument("--only", choices=["soak", "stalled"])
    args = parser.parse_args()
    ARGS.__dict__.update(vars(args))
    failed = False
    with tempfile.TemporaryDirectory(prefix="eventhub-soak-") as tmp:
        workdir = Path(tmp)
        if args.only in (None, "soak"):
            result = soak(args, workdir)
            print(soak_table(result), "\n", flush=True)
            failed |= bool(result["lost"] or result["duplicates"] or result["refused"])
        if args.only in (None, "stalled"):
            big = stalled(args, workdir)
            print(stalled_table(big), "\n", flush=True)
            failed |= big["received"] != big["published"] or not big["in_order"]
    load = os.getloadavg()
    print(
        f"{platform.python_version()}, {os.cpu_count()} cores, load average "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end"
    )
    if failed:
        print("FAILED: events lost, duplicated or refused (see above)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
