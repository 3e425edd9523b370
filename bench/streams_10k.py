"""10,000 SSE streams on one server process: delivery, latency and memory per idle stream.

One command, a markdown table on stdout (progress on stderr):

    .venv/bin/python bench/streams_10k.py           # 10,000 streams, 20 s at 5 events/s
    .venv/bin/python bench/streams_10k.py --quick   # 2,000 streams, 8 s: a smoke run

For each server in turn (``eventhub-log serve`` on a fresh SQLite file, then the
peer, sse-starlette + broadcaster; each its own uvicorn process with one worker,
started by ``http_bench.Server``):

1. start it, open and close a few streams (so that what the first stream loads
   is not counted as per-stream memory), record its RSS;
2. open the streams on one topic from ``--processes`` reader processes
   (``sse_readers``), wait until all are open, let them sit idle for ``--idle``
   seconds, record the RSS again: (after - before) / streams is the memory of an
   idle stream;
3. publish ``--rate`` events/s for ``--seconds`` s to that topic, open loop
   (``http_load.publish_paced``: a slow answer does not slow the schedule), each
   payload carrying its send time; wait until every stream has every event (or
   delivery stops progressing); count deliveries against accepted x streams and
   take publish-to-receive percentiles.

By default every stream reads as soon as bytes arrive and is timed
(``--timed-every 1``): http_bench's readers time one stream in five and read the
others in 50 ms pulses, which would add up to 50 ms to what those streams see,
so a p99 over all streams needs them all eager. ``--timed-every 5`` gives
http_bench's readers (cheaper for the readers, the p99 then over one stream in
five); the table says which. Publisher and readers share the machine's wall clock.

A stream that failed to open, a publish answered other than 201, or an event
that did not reach every stream is printed and makes the command exit 1; so do
a stream the server closed (the reader reopens it with ``Last-Event-ID``) and a
run that exceeds ``--timeout``. Targets missed (latency, memory) are shown as
``NO`` but are measurements, not failures of the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import sys
import tempfile
import time
from array import array
from dataclasses import dataclass, field
from multiprocessing.connection import wait as wait_for_pipes
from pathlib import Path
from types import FrameType
from typing import Any

from http_bench import (
    AUTH_TOPIC,
    CLK_TCK,
    FULL,
    CpuWatch,
    Readers,
    _raise_fd_limit,
    drain,
    fmt,
    log,
    machine_line,
    percentile,
    running,
    wait_for_quiet,
    warm_up_streams,
)
from http_load import PublishResult, publish_paced
from http_wire import use_uvloop

NAMES = {
    "eventhub": "eventhub-log serve, SQLite",
    "peer": "sse-starlette + broadcaster (memory)",
}
P99_TARGET_MS = 250.0
KIB_TARGET = 20.0
PHASE = 1  # the one publishing phase, as sse_readers counts them
STREAM_PATH = f"/v1/stream?topic={AUTH_TOPIC}"
PUBLISH_PATH = f"/v1/topics/{AUTH_TOPIC}/events"
TRACEBACK_NOISE = (
    "Traceback (most recent call last)",
    "During handling of the above exception",
    "The above exception was the direct cause",
    "+-",  # exception groups
    "|",
)


@dataclass
class Run:
    """What one server did with the streams; filled in as far as the run got."""

    name: str
    kind: str
    wanted: int
    opened: int = 0
    open_seconds: float = float("nan")
    open_errors: list[str] = field(default_factory=list)
    rss_before: int = 0  # KiB
    rss_idle: int = 0
    rss_end: int = 0
    published: PublishResult | None = None
    delivered: int = 0
    timed: int = 0  # deliveries with a latency (every one with --timed-every 1)
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")
    drain_seconds: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    reconnects: int = 0
    fds_before: int = 0  # the server's descriptors before the streams opened
    release_seconds: float = float("nan")  # from the clients closing to the server letting go
    settle_seconds: float = float("nan")  # from the clients closing to the server's CPU quiet
    still_held: int = 0  # descriptors over fds_before when the wait for that ended
    server_log: list[str] = field(default_factory=list)
    failure: str = ""  # why the run stopped early

    @property
    def expected(self) -> int:
        return self.published.accepted * self.opened if self.published else 0

    @property
    def kib_per_stream(self) -> float:
        if not self.opened or not self.rss_idle:
            return float("nan")
        return (self.rss_idle - self.rss_before) / self.opened

    def share(self, key: str) -> float:
        """CPU of ``key`` over publishing and draining, in percent of one core."""
        wall = self.cpu.get("wall", 0.0)
        return 100 * self.cpu[key] / wall if wall else float("nan")

    def problems(self) -> list[str]:
        """What makes this run's figures incomplete: never hidden, always printed."""
        found = []
        if self.failure:
            found.append(self.failure)
        if self.opened < self.wanted:
            found.append(
                f"{self.wanted - self.opened:,} of {self.wanted:,} streams not reported open"
                + (f" ({'; '.join(self.open_errors[:3])})" if self.open_errors else "")
            )
        if self.published is not None:
            p = self.published
            refused = {status: n for status, n in p.statuses.items() if status != 201}
            if refused or p.errors or p.accepted < p.attempted:
                found.append(
                    f"{p.accepted} of {p.attempted} publishes accepted "
                    f"(other answers {refused}, {p.errors} connection errors)"
                )
            if self.delivered != self.expected:
                word = "missing" if self.delivered < self.expected else "too many"
                found.append(
                    f"{abs(self.expected - self.delivered):,} deliveries {word} when the drain "
                    f"ended after {self.drain_seconds:.1f} s: {self.delivered:,} of "
                    f"{self.expected:,}"
                )
        if self.reconnects:
            found.append(f"{self.reconnects} streams were closed by the server and reopened")
        return found


def irq_seconds() -> float:
    """CPU seconds the machine has spent in interrupts and softirqs since boot: the
    kernel's side of loopback TCP, which is not always charged to the process that
    caused it, so part of it may show as other work."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    return (int(fields[5]) + int(fields[6])) / CLK_TCK


def server_fds(pid: int) -> int:
    """Open descriptors of the server: about the streams it holds, to show progress."""
    with contextlib.suppress(OSError):
        return len(list(Path(f"/proc/{pid}/fd").iterdir()))
    return 0


def wait_open(readers: Readers, server_pid: int, limit: float) -> dict[str, Any]:
    """Wait for every reader process to report its streams open, at most ``limit`` s
    in all (``Readers.wait_ready`` bounds each process, not the whole), logging the
    server's descriptor count meanwhile: at 10,000 streams opening takes a while."""
    deadline = time.time() + limit
    pending = list(readers.pipes)
    next_log = time.time() + 10
    while pending and time.time() < deadline:
        for pipe in wait_for_pipes(pending, timeout=min(1.0, max(0.0, deadline - time.time()))):
            pending.remove(pipe)
        if time.time() >= next_log:
            log(f"  opening: the server holds {server_fds(server_pid):,} descriptors")
            next_log += 10
    if pending:
        raise TimeoutError(
            f"{len(pending)} of {len(readers.pipes)} reader processes still opening streams "
            f"after {limit:g} s (the server held {server_fds(server_pid):,} descriptors)"
        )
    try:
        return readers.wait_ready(1)
    except (EOFError, OSError) as exc:
        raise TimeoutError(f"a reader process ended while opening streams: {exc!r}") from exc


def wait_released(run: Run, server: Any, closed_at: float, limit: float) -> None:
    """Wait (at most ``limit`` s) until the server has let go of the closed streams'
    sockets and then until its CPU is quiet (under 5% of a core for 0.5 s): a hub
    may still be cleaning up after the streams when their sockets are gone. SIGTERM
    in the middle of that would cancel the cleanups (and fill the log); how long it
    takes is a figure of its own."""
    pid = server.process.pid
    margin = max(20, run.opened // 100)  # the publisher's and other stray sockets
    while True:
        run.still_held = max(0, server_fds(pid) - run.fds_before)
        if run.still_held <= margin:
            run.release_seconds = time.time() - closed_at
            break
        if time.time() - closed_at > limit:
            log(f"  the server still holds {run.still_held:,} sockets {limit:g} s after the close")
            return
        time.sleep(0.1)
    while time.time() - closed_at < limit:
        cpu0, started = server.cpu(), time.time()
        time.sleep(0.5)
        if server.cpu() - cpu0 < 0.05 * (time.time() - started):
            run.settle_seconds = started - closed_at
            return
    log(f"  the server was still busy {limit:g} s after the close")


def noteworthy_log(path: Path, keep: int = 6) -> list[str]:
    """The server runs at log level warning: every line it wrote is worth a look.
    Traceback frames are left out (their exception line and the log line before
    them are kept); the distinct lines, at most ``keep``, each with its count."""
    if not path.exists():
        return []
    counts: dict[str, int] = {}
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip() or line[0].isspace() or line.startswith(TRACEBACK_NOISE):
            continue
        key = line.strip()[:200]
        counts[key] = counts.get(key, 0) + 1
    ranked = sorted(counts.items(), key=lambda item: -item[1])
    more = [f"... {len(ranked) - keep} more distinct lines"] if len(ranked) > keep else []
    return [f"{n}x {line}" for line, n in ranked[:keep]] + more


def measure(run: Run, args: argparse.Namespace, workdir: Path) -> None:
    """Fills in ``run`` as far as it gets (a ``--timeout`` may cut it short)."""
    with running(run.name, run.kind, workdir) as server:
        assert server.process is not None
        try:
            log(f"{run.name}: {args.streams:,} streams from {args.processes} processes")
            asyncio.run(warm_up_streams(server.port, STREAM_PATH, 20))
            time.sleep(1)
            run.rss_before = server.rss_kib()
            run.fds_before = server_fds(server.process.pid)
            # Which streams read eagerly and are timed: see the module's docstring.
            readers = Readers(
                server.port, STREAM_PATH, args.streams, args.processes, None, args.timed_every
            )
            try:
                measure_streams(run, readers, server, args)
            finally:
                readers.kill()
        finally:
            server.stop()
            run.server_log = noteworthy_log(server.log)
            if args.logs is not None:
                args.logs.mkdir(parents=True, exist_ok=True)
                shutil.copy(server.log, args.logs / f"{run.kind}.log")


def measure_streams(run: Run, readers: Readers, server: Any, args: argparse.Namespace) -> None:
    """Steps 2 and 3 of the module's docstring, against a started server."""
    try:
        ready = wait_open(readers, server.process.pid, args.open_limit)
    except TimeoutError as exc:
        run.failure = str(exc)
        return
    run.opened = ready["ready"]
    run.open_seconds = ready["seconds"]  # the slowest reader process's
    run.open_errors = ready["errors"]
    log(f"  {run.opened:,} streams open in {run.open_seconds:.1f} s; idle {args.idle:g} s")
    time.sleep(args.idle)
    run.rss_idle = server.rss_kib()
    log(f"  RSS {run.rss_before / 1024:.1f} -> {run.rss_idle / 1024:.1f} MiB")
    if not run.opened:
        run.failure = "no stream opened"
        return
    wait_for_quiet()
    watch, irq0 = CpuWatch(server, readers.cpu), irq_seconds()
    # publish_paced takes its connections in turn; each must come round again within
    # uvicorn's 5 s keep-alive or the server will have closed it (a failed publish).
    # That caps how far a slow server's answers can hold the schedule back.
    connections = max(1, min(16, int(3 * args.rate)))
    run.published = asyncio.run(
        publish_paced(
            server.port,
            PUBLISH_PATH,
            phase=PHASE,
            rate=args.rate,
            seconds=args.seconds,
            connections=connections,
        )
    )
    log(f"  {run.published.accepted} events accepted; draining")
    run.drain_seconds = drain(readers, PHASE, run.expected, args.drain_limit)
    run.cpu = watch.stop()
    run.cpu["irq"] = irq_seconds() - irq0
    run.rss_end = server.rss_kib()
    closed_at = time.time()
    reports = readers.stop()
    wait_released(run, server, closed_at, args.release_limit)
    latencies = array("d")
    for report in reports:
        run.reconnects += report["reconnects"]
        stats = report["phases"].get(PHASE)
        if stats:
            run.delivered += stats["count"]
            latencies.frombytes(stats["latencies"])
    run.timed = len(latencies)
    ordered = sorted(latencies)
    run.p50_ms = percentile(ordered, 0.50) * 1e3
    run.p99_ms = percentile(ordered, 0.99) * 1e3
    run.max_ms = ordered[-1] * 1e3 if ordered else float("nan")
    log(
        f"  {run.delivered:,} of {run.expected:,} delivered; p99 {fmt(run.p99_ms, 1)} ms; "
        f"drained in {run.drain_seconds:.1f} s"
    )


def missed(run: Run) -> list[str]:
    """Which targets our server missed in this run."""
    misses = []
    if run.opened < run.wanted:
        misses.append("streams")
    if run.published is None or run.delivered != run.expected or not run.expected:
        misses.append("delivery")
    if not run.p99_ms < P99_TARGET_MS:  # NaN (nothing timed) misses too
        misses.append("p99")
    if not run.kib_per_stream < KIB_TARGET:
        misses.append("memory")
    return misses


def table(runs: list[Run], args: argparse.Namespace) -> str:
    offered = args.streams * args.rate
    nan = float("nan")  # what fmt prints as n/a
    timed = (
        "every stream"
        if args.timed_every == 1
        else f"one stream in {args.timed_every} (the others read in 50 ms pulses)"
    )
    lines = [
        f"{args.streams:,} SSE streams on one topic, readers in {args.processes} processes; "
        f"{args.rate:g} events/s published for {args.seconds:g} s ({offered:,.0f} deliveries/s "
        f"offered), open loop; {timed} timed from the send time in each payload to its "
        "read. CPU over publishing and draining, in percent of one core.",
        "",
        "| server | streams open | open time s | RSS before / idle MiB | RSS per idle stream KiB "
        "| delivered / expected | p50 ms | p99 ms | max ms | drain s | server CPU | readers CPU "
        "| other work | targets met |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| --- |",
        f"| target | {args.streams:,} | | | < {KIB_TARGET:g} | every event to every stream | "
        f"| < {P99_TARGET_MS:g} | | | | | | |",
    ]
    for run in runs:
        if run.kind == "eventhub":
            misses = missed(run)
            met = "yes" if not misses else "NO: " + ", ".join(misses)
        else:
            met = "(peer, for comparison)"
        delivered = f"{run.delivered:,} / {run.expected:,}" if run.published else "not run"
        cpu = [fmt(run.share(k)) + "%" if run.cpu else "n/a" for k in ("server", "clients")]
        others = fmt(run.share("others")) + "%" if run.cpu else "n/a"
        lines.append(
            f"| {run.name} | {run.opened:,} | {fmt(run.open_seconds, 1)} "
            f"| {fmt(run.rss_before / 1024, 1)} / {fmt(run.rss_idle / 1024 or nan, 1)} "
            f"| {fmt(run.kib_per_stream, 1)} | {delivered} | {fmt(run.p50_ms, 1)} "
            f"| {fmt(run.p99_ms, 1)} | {fmt(run.max_ms, 1)} "
            f"| {fmt(run.drain_seconds if run.published else nan, 1)} "
            f"| {cpu[0]} | {cpu[1]} | {others} | {met} |"
        )
    notes = []
    for run in runs:
        parts = []
        if run.opened and run.open_seconds == run.open_seconds:
            parts.append(f"opened {run.opened / run.open_seconds:,.0f} streams/s")
        if run.published is not None:
            p = run.published
            answered = sorted(p.latencies)
            parts.append(
                f"{p.accepted} of {p.attempted} publishes accepted at {p.rate:.2f} events/s, "
                f"answered p50 {fmt(1e3 * percentile(answered, 0.5), 1)} / p99 "
                f"{fmt(1e3 * percentile(answered, 0.99), 1)} ms, publisher at most "
                f"{1e3 * p.late:.0f} ms behind schedule"
            )
            parts.append(f"{run.timed:,} deliveries timed")
        if run.cpu and run.delivered:
            parts.append(f"server CPU {1e6 * run.cpu['server'] / run.delivered:.1f} us a delivery")
        if run.cpu:
            parts.append(
                f"the machine spent {fmt(run.share('irq'))}% of a core in interrupts and "
                "softirqs (/proc/stat; loopback TCP, mostly)"
            )
        if run.release_seconds == run.release_seconds:
            parts.append(
                f"after the clients closed the streams, the server let go of their sockets "
                f"in {run.release_seconds:.1f} s and was quiet (under 5% CPU) after "
                + (
                    f"{run.settle_seconds:.1f} s"
                    if run.settle_seconds == run.settle_seconds
                    else f"more than {args.release_limit:g} s"
                )
            )
        elif run.still_held:
            parts.append(
                f"the server still held {run.still_held:,} sockets {args.release_limit:g} s "
                "after the clients closed the streams"
            )
        if run.rss_end:
            parts.append(f"RSS after publishing {run.rss_end / 1024:.1f} MiB")
        problems = run.problems()
        parts.append("PROBLEMS: " + "; ".join(problems) if problems else "no problems")
        if run.server_log:
            parts.append("server log: " + " | ".join(f"`{line}`" for line in run.server_log))
        else:
            parts.append("server log empty")
        notes.append(f"- {run.name}: " + "; ".join(parts) + ".")
    return "\n".join([*lines, "", *notes])


class RunTimeout(KeyboardInterrupt):
    """The whole run took longer than ``--timeout``. A KeyboardInterrupt so that it
    leaves a running event loop (asyncio logs and drops other exceptions raised in
    callbacks) and unwinds through every ``finally``, which stops server and readers."""


def on_alarm(signum: int, frame: FrameType | None) -> None:
    raise RunTimeout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, help="SSE streams (default 10000, quick 2000)")
    parser.add_argument("--processes", type=int, default=4, help="reader processes (default 4)")
    parser.add_argument("--rate", type=float, default=5, help="events/s published (default 5)")
    parser.add_argument("--seconds", type=float, help="publishing time (default 20, quick 8)")
    parser.add_argument("--servers", default="eventhub,peer", help="among eventhub,peer")
    parser.add_argument("--quick", action="store_true", help="2,000 streams, 8 s")
    parser.add_argument(
        "--timed-every", type=int, default=1, help="time one stream in N (default 1: all)"
    )
    parser.add_argument("--idle", type=float, default=3, help="idle s before the RSS reading")
    parser.add_argument("--open-limit", type=float, default=600, help="s to open the streams")
    parser.add_argument("--drain-limit", type=float, default=120, help="s to drain at most")
    parser.add_argument(
        "--release-limit", type=float, default=60, help="s to wait for closed streams to go"
    )
    parser.add_argument("--timeout", type=float, default=1800, help="s for the whole run")
    parser.add_argument("--logs", type=Path, help="copy the servers' logs into this directory")
    args = parser.parse_args()
    args.streams = args.streams or (2000 if args.quick else 10_000)
    args.seconds = args.seconds or (8 if args.quick else 20)
    kinds = [kind.strip() for kind in args.servers.split(",") if kind.strip()]
    if unknown := [kind for kind in kinds if kind not in NAMES]:
        parser.error(f"unknown servers {unknown}; choose among {','.join(NAMES)}")
    # The reader processes inherit this limit; 10,000 streams need 10,000 sockets.
    _raise_fd_limit()
    use_uvloop()
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(args.timeout))
    started = time.time()
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="eventhub-streams-") as tmp:
        for kind in kinds:
            runs.append(Run(NAMES[kind], kind, args.streams))
            try:
                measure(runs[-1], args, Path(tmp))
            except RunTimeout:
                runs[-1].failure = f"--timeout of {args.timeout:g} s reached"
                break
    signal.alarm(0)
    command = " ".join([".venv/bin/python bench/streams_10k.py", *sys.argv[1:]])
    # machine_line takes a profile but does not print it.
    print("\n\n".join([machine_line(FULL, started, command), table(runs, args)]))
    failed = [run.name for run in runs if run.problems()]
    if failed:
        print(f"streams_10k: incomplete for {', '.join(failed)} (see PROBLEMS)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
