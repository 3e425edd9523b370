"""Which SSE machinery for ``GET /v1/stream``? The same hub behind three responses.

    .venv/bin/python bench/sse_machinery.py [--streams 200] [--events 2000] [--rounds 2]
    .venv/bin/python bench/sse_machinery.py --in-process   # the write loops alone

Each variant is the real app (``api.app.create_app``) with only the stream route
swapped, run as its own uvicorn process over a fresh SQLite file:

- ``raw``: the shipped response (``api/sse.py``): raw ASGI, frames encoded once
  per process and shared, buffered events gathered into one write, heartbeats
  from one ticker.
- ``raw-nocache``: the same, but every stream encodes every frame itself.
- ``streaming``: Starlette's ``StreamingResponse`` over an async generator that
  encodes each frame and waits with ``feed.next(heartbeat)``, the obvious way.
- ``sse-starlette``: ``EventSourceResponse`` over a generator of
  ``ServerSentEvent`` (what most FastAPI projects pick), pinging every 15 s.

N streams on one topic are opened from a separate reader process; then the
server publishes events to itself in batches of 50 (one request, so that REST
handling does not blur the fan-out being measured). Reported: delivered events/s
(streams x events / time from the first publish to the last delivery) and the
server's CPU seconds per 100,000 delivered events.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Annotated, Any

from fastapi import Query, Request
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.responses import StreamingResponse

ROOT = Path(__file__).resolve().parent.parent
MARKER = b'data: {"topic"'
Topics = Annotated[list[str], Query()]
VARIANTS = ["raw", "raw-nocache", "streaming", "sse-starlette"]


# The server side -------------------------------------------------------------------


def build_app(kind: str) -> Any:
    import api.sse as sse
    from api.app import create_app

    app = create_app()

    @app.post("/bench/burst")
    async def burst(request: Request, events: int, batch: int = 50) -> dict[str, int]:
        # Publishing in-process, in batches: the fan-out is what is measured here.
        hub = request.app.state.hub
        payload = {"type": "message", "text": "hello, benchmark"}
        for start in range(0, events, batch):
            count = min(batch, events - start)
            await hub.publish_many([("bench", None, payload)] * count)
        return {"published": events}

    if kind == "raw":
        return app
    if kind == "raw-nocache":
        sse.FrameCache.frame = lambda self, event: sse.encode_event(event)  # type: ignore[method-assign]
        return app

    app.router.routes[:] = [
        route for route in app.router.routes if getattr(route, "path", "") != "/v1/stream"
    ]

    if kind == "streaming":

        @app.get("/v1/stream")
        async def streaming(request: Request, topic: Topics) -> StreamingResponse:
            hub = request.app.state.hub

            async def frames() -> Any:
                async with hub.stream(topic) as feed:
                    yield sse.encode_ready(feed.cursor, feed.subscriber_id, topic)
                    while True:
                        event = await feed.next(15.0)
                        yield sse.PING if event is None else sse.encode_event(event)

            return StreamingResponse(frames(), media_type="text/event-stream")

        return app

    @app.get("/v1/stream")
    async def starlette_sse(request: Request, topic: Topics) -> EventSourceResponse:
        hub = request.app.state.hub

        async def events() -> Any:
            async with hub.stream(topic) as feed:
                yield ServerSentEvent(
                    event="ready",
                    id=feed.cursor,
                    data=json.dumps({"subscriber": feed.subscriber_id, "topics": topic}),
                )
                while True:
                    event = await feed.next()
                    data = (
                        f'{{"topic":{json.dumps(event.topic)},"seq":{event.seq},'
                        f'"payload":{event.payload_json},"published_at":"{event.published_at}"}}'
                    )
                    yield ServerSentEvent(id=event.id, data=data)

        return EventSourceResponse(events(), ping=15)

    return app


def serve(kind: str, port: int) -> None:
    import uvicorn

    uvicorn.run(build_app(kind), host="127.0.0.1", port=port, log_level="warning", access_log=False)


# The readers ---------------------------------------------------------------------


async def _read_streams(port: int, streams: int, events: int, pipe: Connection) -> None:
    counts = [0] * streams
    done = asyncio.Event()
    finished = 0
    opened = 0
    all_open = asyncio.Event()

    async def one(index: int) -> None:
        nonlocal finished, opened
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"GET /v1/stream?topic=bench HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
        )
        carry = b""
        readied = False
        while counts[index] < events:
            chunk = await reader.read(65536)
            if not chunk:
                raise RuntimeError("stream ended early")
            data = carry + chunk
            if not readied and b"event: ready" in data:
                readied = True
                opened += 1
                if opened == streams:
                    all_open.set()
            counts[index] += data.count(MARKER)
            carry = data[-(len(MARKER) - 1) :]
        finished += 1
        if finished == streams:
            done.set()
        writer.close()

    tasks = [asyncio.create_task(one(i)) for i in range(streams)]
    await all_open.wait()
    pipe.send("open")
    await done.wait()
    pipe.send(time.monotonic())
    await asyncio.gather(*tasks)


def reader_main(port: int, streams: int, events: int, pipe: Connection) -> None:
    asyncio.run(_read_streams(port, streams, events, pipe))


# The run ---------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _publish(port: int, events: int) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:
        response = await client.post("/bench/burst", params={"events": events})
        assert response.status_code == 200, response.text


def run(kind: str, streams: int, events: int) -> dict[str, float]:
    import httpx

    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "EVENTHUB_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/bench.db",
            "EVENTHUB_SQLITE_SYNCHRONOUS": "NORMAL",
            # Every event live: a feed that overflows reads the log instead, which
            # costs far more per event and would measure the overflow, not the response.
            "EVENTHUB_STREAM_BUFFER": "100000",
        }
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", kind, "--port", str(port)], env=env, cwd=ROOT
        )
        try:
            for _ in range(600):
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            parent, child = multiprocessing.Pipe()
            reader = multiprocessing.Process(
                target=reader_main, args=(port, streams, events, child)
            )
            reader.start()
            if not parent.poll(120):
                raise RuntimeError("streams did not open")
            parent.recv()
            cpu_before = _cpu_seconds(server.pid)
            started = time.monotonic()
            asyncio.run(_publish(port, events))
            if not parent.poll(300):
                raise RuntimeError("events were not all delivered")
            finished = parent.recv()
            cpu = _cpu_seconds(server.pid) - cpu_before
            reader.join(30)
        finally:
            server.terminate()
            server.wait(30)
    delivered = streams * events
    elapsed = finished - started
    return {
        "delivered_per_s": delivered / elapsed,
        "seconds": elapsed,
        "cpu_per_100k": cpu * 100_000 / delivered,
    }


# In process: the response machinery alone, no sockets ---------------------------------


async def _in_process(kind: str, streams: int, events: int, batch: int = 50) -> float:
    """CPU seconds per 100,000 delivered events of the write loops alone, with a
    ``send`` that does nothing: what each machinery costs in Python."""
    import datetime

    import api.sse as sse
    from eventhub_log.delivery import Dispatcher, Feed
    from eventhub_log.model import Event

    async def no_log(*_: Any) -> list[Event]:
        return []

    async def head() -> int:
        return 0

    async def send(_: Any) -> None:
        return None

    dispatcher = Dispatcher(no_log, head)
    feeds = []
    for n in range(streams):
        feed = Feed(no_log, f"s{n}", ["bench"], max_buffer=events)
        dispatcher.add(feed)
        feed.start(0, replay=False)
        feeds.append(feed)
    cache = sse.FrameCache()

    async def raw(feed: Feed, encode: Any) -> None:
        while True:
            event = await feed.next()
            assert event is not None
            chunk = encode(event)
            more = feed.next_nowait()
            if more is not None:
                parts = [chunk, encode(more)]
                while len(parts) < sse.MAX_BATCH and (more := feed.next_nowait()) is not None:
                    parts.append(encode(more))
                chunk = b"".join(parts)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

    async def streaming(feed: Feed) -> None:
        async def frames() -> Any:
            while True:
                event = await feed.next(15.0)
                yield sse.PING if event is None else sse.encode_event(event)

        async for chunk in frames():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

    if kind == "raw":
        tasks = [asyncio.create_task(raw(feed, cache.frame)) for feed in feeds]
    elif kind == "raw-nocache":
        tasks = [asyncio.create_task(raw(feed, sse.encode_event)) for feed in feeds]
    else:
        tasks = [asyncio.create_task(streaming(feed)) for feed in feeds]
    await asyncio.sleep(0)
    now = datetime.datetime.now(datetime.UTC)
    payload = '{"type":"message","text":"hello, benchmark"}'
    started = time.process_time()
    position = 0
    for _ in range(events // batch):
        page = []
        for _ in range(batch):
            position += 1
            page.append(Event("bench", position, position, now, payload))
        dispatcher.deliver(page)
        await asyncio.sleep(0)
    while any(feed.position < position for feed in feeds):  # noqa: ASYNC110
        await asyncio.sleep(0)
    cpu = time.process_time() - started
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return cpu * 100_000 / (streams * events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument(
        "--in-process", action="store_true", help="the write loops alone, with no sockets"
    )
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds")
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        sys.path.insert(0, str(ROOT))
        serve(args.serve, args.port)
        return
    if args.in_process:
        print(f"In process, no sockets: {args.streams} feeds, {args.events} events\n")
        print("| machinery | CPU s per 100k delivered |")
        print("| --- | ---: |")
        for kind in [kind for _ in range(args.rounds) for kind in VARIANTS[:3]]:
            cpu = asyncio.run(_in_process(kind, args.streams, args.events))
            print(f"| {kind} | {cpu:.3f} |", flush=True)
        return
    print(f"{args.streams} streams on one topic, {args.events} events published in batches\n")
    print("| machinery | delivered events/s | time (s) | server CPU s per 100k delivered |")
    print("| --- | ---: | ---: | ---: |")
    for kind in [kind for _ in range(args.rounds) for kind in args.variants]:
        result = run(kind, args.streams, args.events)
        print(
            f"| {kind} | {result['delivered_per_s']:,.0f} | {result['seconds']:.2f} "
            f"| {result['cpu_per_100k']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
