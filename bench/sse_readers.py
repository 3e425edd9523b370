"""SSE load clients: one process holding many streams, driven over a pipe.

Each reader process opens its share of the streams, reports once every stream
has had its ``ready`` frame, then records, per benchmark phase, how many events
arrived and each one's publish-to-receive latency (the publisher puts its send
time in the payload; both ends read the same wall clock). A stream that the
server closes is reopened with ``Last-Event-ID``, as a browser would.

Only every ``EAGER_EVERY``-th stream (``eager_every``, 1 for all of them) reads
as soon as bytes arrive and records latencies; the others are read in bulk every
``LAZY_PERIOD`` seconds and only counted. The server's work is the same either
way (its writes land in the kernel's socket buffers), but the readers spend far
less CPU, which matters when server and readers share two cores. The pulse adds
up to ``LAZY_PERIOD`` to what a lazy stream sees, which is why only eager streams
are timed.

Every stream is opened (and reopened) with the ``headers`` the process was
given, e.g. ``Authorization: Bearer <token>`` against a hub with auth on. With
``topics``, a ``{n}`` in the path is the stream's number (counted over every
process, from ``first``) modulo ``topics``: the streams share that many topics
evenly.

Commands on the pipe: ``"counts"`` (events seen so far, per phase) and
``"stop"`` (close everything and send the full statistics).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from multiprocessing.connection import Connection
from typing import Any

from http_wire import MARK_RE, PhaseStats, SseStream, cpu_seconds, open_stream, use_uvloop

SEQ_RE = re.compile(rb'"seq":\s*(\d+)')
EAGER_EVERY = 5
LAZY_PERIOD = 0.05


class Reader:
    """One logical subscriber: a stream, reopened from its last id if it ends."""

    def __init__(
        self,
        owner: ReaderProcess,
        port: int,
        path: str,
        eager: bool,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.owner = owner
        self.headers = headers or {}
        self.eager = eager
        self.port = port
        self.path = path
        self.last_id: bytes | None = None
        self.stream: SseStream | None = None
        self.stopping = False

    def on_frame(self, frame: bytes, received: float) -> None:
        if frame.startswith(b"id:"):
            end = frame.find(b"\n")
            self.last_id = frame[3:end].strip()
        found = MARK_RE.search(frame)
        if found is None:
            self.owner.other_frames += 1
            return
        sent = float(found.group(2)) if self.eager else None
        self.owner.record(int(found.group(1)), received, sent)

    async def open(self) -> None:
        headers = dict(self.headers)
        if self.last_id:
            headers["Last-Event-ID"] = self.last_id.decode()
        self.stream = await open_stream(self.port, self.path, self.on_frame, headers)
        if self.last_id is None:
            self.last_id = _frame_id(self.stream.ready.result())

    async def keep_open(self) -> None:
        while not self.stopping:
            assert self.stream is not None
            await self.stream.done
            if self.stopping:
                return
            self.owner.reconnects += 1
            try:
                await self.open()
            except (OSError, ConnectionError):
                await asyncio.sleep(0.2)


def _frame_id(frame: bytes) -> bytes | None:
    for line in frame.split(b"\n"):
        if line.startswith(b"id:"):
            return line[3:].strip()
    return None


class ReaderProcess:
    def __init__(
        self,
        pipe: Connection,
        port: int,
        path: str,
        streams: int,
        headers: dict[str, str] | None = None,
        eager_every: int = EAGER_EVERY,
        first: int = 0,
        topics: int = 0,
    ) -> None:
        self.pipe = pipe
        self.headers = headers
        self.eager_every = eager_every
        self.first = first
        self.topics = topics
        self.port = port
        self.path = path
        self.streams = streams
        self.stats: dict[int, PhaseStats] = {}
        self.other_frames = 0
        self.reconnects = 0

    def record(self, phase: int, received: float, sent: float | None) -> None:
        stats = self.stats.get(phase)
        if stats is None:
            stats = self.stats[phase] = PhaseStats()
        stats.add(received, sent)

    async def run(self) -> None:
        readers = [
            Reader(
                self,
                self.port,
                self.path_of(i),
                eager=i % self.eager_every == 0,
                headers=self.headers,
            )
            for i in range(self.streams)
        ]
        gate = asyncio.Semaphore(32)

        async def open_one(reader: Reader) -> None:
            async with gate:
                await asyncio.wait_for(reader.open(), 60)

        started = time.time()
        results = await asyncio.gather(*(open_one(r) for r in readers), return_exceptions=True)
        errors = [repr(r) for r in results if isinstance(r, BaseException)]
        opened = [r for r, result in zip(readers, results, strict=True) if result is None]
        keepers = [asyncio.create_task(r.keep_open()) for r in opened]
        lazy = [r for r in opened if not r.eager]
        keepers.append(asyncio.create_task(self.pulse(lazy)))
        self.pipe.send(
            {
                "ready": len(opened),
                "errors": errors[:3],
                "seconds": time.time() - started,
                "cpu": cpu_seconds(),
            }
        )
        loop = asyncio.get_running_loop()
        while True:
            command = await loop.run_in_executor(None, self.pipe.recv)
            if command == "counts":
                self.pipe.send({phase: s.count for phase, s in self.stats.items()})
            elif command == "stop":
                break
        for reader in opened:
            reader.stopping = True
            if reader.stream is not None:
                reader.stream.close()
        for task in keepers:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.pipe.send(self.report())

    def path_of(self, index: int) -> str:
        if not self.topics:
            return self.path
        return self.path.replace("{n}", str((self.first + index) % self.topics))

    async def pulse(self, lazy: list[Reader]) -> None:
        """Let the lazy streams read whatever has piled up, every ``LAZY_PERIOD`` s."""
        while True:
            transports = [r.stream.transport for r in lazy if r.stream and r.stream.transport]
            for transport in transports:
                with contextlib.suppress(Exception):
                    transport.pause_reading()
            await asyncio.sleep(LAZY_PERIOD)
            for transport in transports:
                with contextlib.suppress(Exception):
                    transport.resume_reading()
            for _ in range(3):
                await asyncio.sleep(0)

    def report(self) -> dict[str, Any]:
        return {
            "phases": {phase: s.export() for phase, s in self.stats.items()},
            "other_frames": self.other_frames,
            "reconnects": self.reconnects,
            "cpu": cpu_seconds(),
        }


def reader_main(
    pipe: Connection,
    port: int,
    path: str,
    streams: int,
    headers: dict[str, str] | None = None,
    eager_every: int = EAGER_EVERY,
    first: int = 0,
    topics: int = 0,
) -> None:
    """Entry point of a reader process."""
    use_uvloop()
    process = ReaderProcess(pipe, port, path, streams, headers, eager_every, first, topics)
    asyncio.run(process.run())


async def catch_up(port: int, path: str, last_event_id: str, expected: int) -> dict[str, Any]:
    """Resume one stream from ``last_event_id`` and time how long ``expected`` events take."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    state = {"count": 0, "last_seq": 0, "in_order": True, "last": 0.0}

    def on_frame(frame: bytes, received: float) -> None:
        found = SEQ_RE.search(frame)
        if found is None:
            return
        seq = int(found.group(1))
        if seq <= state["last_seq"]:
            state["in_order"] = False
        state["last_seq"] = seq
        state["count"] += 1
        state["last"] = received
        if state["count"] >= expected and not done.done():
            done.set_result(None)

    cpu0 = cpu_seconds()
    started = time.time()
    stream = await open_stream(port, path, on_frame, {"Last-Event-ID": last_event_id})
    ready_at = time.time()
    try:
        await asyncio.wait_for(asyncio.shield(done), 120)
    except TimeoutError:
        pass
    finally:
        stream.close()
    return {
        **state,
        "started": started,
        "ready_at": ready_at,
        "cpu": cpu_seconds() - cpu0,
    }


def catch_up_main(
    pipe: Connection, port: int, path: str, last_event_id: str, expected: int
) -> None:
    use_uvloop()
    pipe.send(asyncio.run(catch_up(port, path, last_event_id, expected)))


# Reconnect storm (bench/reconnect_storm.py) -------------------------------------

SEQ_FIELD = b'"seq":'


async def _storm_open(
    port: int, path: str, headers: dict[str, str], expected: int, done: dict[str, Any]
) -> tuple[SseStream, dict[str, Any]]:
    state: dict[str, Any] = {"events": 0, "seqs": [], "ready": 0.0, "done": 0.0}

    def on_frame(frame: bytes, received: float) -> None:
        found = SEQ_RE.search(frame)
        if found is None:
            return
        state["events"] += 1
        state["seqs"].append(int(found.group(1)))
        if state["events"] == expected:
            state["done"] = received
            done["count"] += 1
            if done["count"] == done["want"] and not done["future"].done():
                done["future"].set_result(None)

    stream = await open_stream(port, path, on_frame, headers)
    # ``open_stream`` returns on the ``ready`` frame (it is not passed to on_frame).
    state["ready"] = time.time()
    if stream.status != 200:
        raise RuntimeError(f"status {stream.status}: {stream.error_body[:200]!r}")
    return stream, state


async def storm_round(
    port: int, paths: list[str], last_event_id: str | None, expected: int, go_at: float
) -> tuple[list[SseStream], dict[str, Any]]:
    """Open every stream at once at ``go_at`` (wall clock, shared by all reader
    processes); report when the last one had ``ready`` and, with ``expected``,
    when the last one had that many events."""
    headers = {} if last_event_id is None else {"Last-Event-ID": last_event_id}
    loop = asyncio.get_running_loop()
    done: dict[str, Any] = {"count": 0, "want": len(paths), "future": loop.create_future()}
    if not expected:
        done["future"].set_result(None)
    await asyncio.sleep(max(0.0, go_at - time.time()))
    cpu0 = cpu_seconds()
    results = await asyncio.gather(
        *(asyncio.wait_for(_storm_open(port, p, headers, expected, done), 60) for p in paths),
        return_exceptions=True,
    )
    opened = [r for r in results if not isinstance(r, BaseException)]
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    if expected and len(opened) == len(paths):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(done["future"]), 60)
    await asyncio.sleep(0.3)  # anything beyond what was owed would show now
    states = [state for _, state in opened]
    wrong = sum(
        1
        for s in states
        if s["events"] != expected or s["seqs"] != sorted(set(s["seqs"])) or not s["ready"]
    )
    report = {
        "opened": len(opened),
        "errors": errors[:3],
        "last_ready": max((s["ready"] for s in states), default=0.0),
        "last_done": max((s["done"] for s in states), default=0.0),
        "wrong": wrong,
        "cpu": cpu_seconds() - cpu0,
    }
    return [stream for stream, _ in opened], report


def storm_main(pipe: Connection, port: int) -> None:
    """A reader process of the storm: ``("open", paths, last_event_id, expected,
    go_at)`` opens a round and answers its report; ``"close"`` closes the
    round's streams; ``"stop"`` ends."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    use_uvloop()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        streams: list[SseStream] = []
        while True:
            command = await loop.run_in_executor(None, pipe.recv)
            if command == "stop":
                break
            if command == "close":
                for stream in streams:
                    stream.close()
                streams = []
                pipe.send("closed")
                continue
            _, paths, last_event_id, expected, go_at = command
            streams, report = await storm_round(port, paths, last_event_id, expected, go_at)
            pipe.send(report)
        for stream in streams:
            stream.close()

    asyncio.run(run())
