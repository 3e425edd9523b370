"""Server-sent events for ``GET /v1/stream``: a raw ASGI response over a library Feed.

Deliberate choices (each one measured or forced by the contract; read the reason
before "simplifying" one away):

1. A raw ASGI response, not ``fastapi.sse``, sse-starlette or Starlette's
   ``StreamingResponse``. Those wrap an async generator in a task group, run a
   keepalive timeout around waits and (FastAPI) build a model per event; here
   each stream is a loop that awaits its feed and writes bytes. Measured with
   ``bench/sse_machinery.py --in-process`` (200 feeds, 4,000 events in batches of
   50, the write loops alone, CPU seconds per 100,000 delivered events, 2-core
   machine): this response 0.10-0.11; the same without the shared frames
   0.38; a ``StreamingResponse`` over a generator 0.48-0.49. End to end (real
   uvicorn, 200 streams, reader process) the server's CPU per 100,000 was 0.18-0.28
   for this response and 0.47-0.62 without the shared frames; ``StreamingResponse``
   and sse-starlette landed within the noise of this one there (the machine ran
   other loads at a load average near 9), so the choice rests on the in-process
   figures and on the control it gives (points 3 to 7).
2. Each event's frame is encoded once per process and shared by every stream
   (``FrameCache``, keyed by log position): with 1,000 streams on a topic, one
   encode instead of 1,000. The payload goes out as the JSON text the log
   stored, never decoded and encoded again.
3. No timeout around each wait. One ticker per process (``StreamRegistry``)
   nudges the feeds that have written nothing for ``heartbeat_interval`` (they
   then send ``: ping``), watches for server shutdown and for writes blocked too
   long. A busy stream pays nothing for any of this.
4. Live events are written by the dispatcher itself, through the feed's
   ``on_ready`` hook, while the stream's writer loop stays parked: no task
   wake-up per stream per batch, and everything buffered goes out in one
   ``send`` (up to ``MAX_BATCH`` frames), so a batch costs one system call per
   stream, not one per event. The ASGI ``send`` is stepped by hand and finishes
   in a task only when the transport pushes back (``_Stream._emit``); under
   uvicorn, a chunk the transport takes at once skips the ASGI ``send``
   altogether (``api/direct_writes.py``: about a fifth of a delivery's cost at
   10,000 streams). The task
   does the rest: replay, catch-up after an overflow, pings, and sends that
   had to wait. With 1,000 streams this took the server's CPU per delivery from
   about 9 us to about 8 us and, with the subscription read that no longer
   holds deliveries back every second, p99 at 100 events/s from 345-441 ms
   to about 200-220 ms (docs/benchmarks.md).
   ``stream_coalesce`` (off by default) holds a stream's events back for a
   while after a write, to go out together: fewer system calls at high rates
   per stream, at that much latency.
5. Disconnects are watched by a task awaiting ``http.disconnect``, so an idle
   stream notices at once; cancelling the writer makes the hub delete the
   stream's subscription rows in its shielded cleanup, in one transaction. The
   writer loop runs in the response's own task, not one of its own: at 10,000
   idle streams each task is memory (``_Stream.run`` tells its own cancellation
   from anyone else's).
6. Shutdown: uvicorn waits for open responses before running the lifespan
   shutdown, so a stream that never ends holds a SIGTERM for the whole
   graceful timeout. The ticker reads uvicorn's ``should_exit`` through its
   SIGTERM handler (as sse-starlette does) and ends every stream cleanly; the
   clients resume by ``Last-Event-ID``. A closing hub also ends them.
7. Slow readers: the feed's buffer is bounded (in events and in payload bytes)
   and falls back to reading the log, in pages held to the same byte budget,
   when it overflows; a write carries at most ``WRITE_BYTES`` (or one frame),
   which is what the transport holds for a client that stops reading; the
   frame cache is bounded in bytes too. So a reader that stalls costs a bounded
   amount of memory and never blocks publishers or other streams. A write blocked on a full
   socket for longer than ``write_timeout`` cuts that stream off (the client
   resumes where it was); uvicorn logs such a cut as a response that did not
   complete, which is what it is.
8. Everything that can be refused (topics, subscriber, cursor, a cursor from
   another database) is checked before the response starts, so a refusal is a
   plain 4xx with the contract's error body, never a broken stream.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import signal
import time
from collections import OrderedDict
from collections.abc import Callable, Generator, Sequence
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from eventhub_log import EventHub
from eventhub_log.delivery import Feed
from eventhub_log.errors import EventHubError
from eventhub_log.model import Event, Gap, format_timestamp

from .direct_writes import direct_target, write_chunk
from .errors import public_error
from .limits import ConnectionLimiter, TooManyConnections

log = logging.getLogger(__name__)

MEDIA_TYPE = "text/event-stream"
PING = b": ping\n\n"
# Frames gathered into one write; bounds a write's size (and a slow socket's backlog).
MAX_BATCH = 256
# Payload bytes gathered into one write: a client that stops reading leaves about
# one write in the server's transport buffer (a larger frame goes alone).
WRITE_BYTES = 256 * 1024
FRAME_CACHE_SIZE = 8192
FRAME_CACHE_BYTES = 32 * 1024 * 1024
_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    # Proxies such as nginx buffer responses unless told not to.
    (b"x-accel-buffering", b"no"),
]


# Frames ------------------------------------------------------------------------


def encode_event(event: Event) -> bytes:
    """``id:`` and ``data:`` lines of one event; no ``event:`` line, so
    ``EventSource.onmessage`` gets it."""
    payload = event.payload_json
    if "\n" in payload or "\r" in payload:
        # Whitespace between JSON tokens would split the data line; stored JSON
        # written by this library never has any, but the log is a database.
        payload = json.dumps(json.loads(payload), ensure_ascii=False, separators=(",", ":"))
    data = (
        f'{{"topic":{_topic_json(event.topic)},"seq":{event.seq},"payload":{payload},'
        f'"published_at":"{format_timestamp(event.published_at)}"}}'
    )
    return f"id: {event.id}\ndata: {data}\n\n".encode()


@functools.lru_cache(maxsize=4096)
def _topic_json(topic: str) -> str:
    # Topics are few and repeat; encoding one costs more than the rest of a frame.
    return json.dumps(topic)


def encode_ready(cursor: str, subscriber: str, topics: Sequence[str]) -> bytes:
    data = json.dumps(
        {"subscriber": subscriber, "topics": list(topics)},
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return f"event: ready\nid: {cursor}\ndata: {data}\n\n".encode()


def encode_gap(gap: Gap) -> bytes:
    data = json.dumps(
        {"topic": gap.topic, "from_seq": gap.from_seq, "to_seq": gap.to_seq}, separators=(",", ":")
    )
    return f"event: gap\ndata: {data}\n\n".encode()


class FrameCache:
    """Encoded frames by log position, shared by every stream of the process.

    A committed position never changes meaning, and a frame does not depend on
    who reads it (exclusion decides whether it is sent, not what it says).
    Bounded in frames and in bytes; a frame over ``max_bytes`` is not kept.
    """

    def __init__(self, size: int = FRAME_CACHE_SIZE, max_bytes: int = FRAME_CACHE_BYTES) -> None:
        self._size = size
        self._max_bytes = max_bytes
        self.bytes = 0
        # An OrderedDict, not a dict: ``del d[next(iter(d))]`` on a plain dict
        # walks over the slots its earlier deletions left at the front, so once
        # full each eviction cost about 10 us and a 100,000-event catch-up spent
        # a quarter of its time here; ``popitem(last=False)`` is O(1).
        self._frames: OrderedDict[int, bytes] = OrderedDict()

    def frame(self, event: Event) -> bytes:
        frame = self._frames.get(event.position)
        if frame is None:
            frame = encode_event(event)
            size = len(frame)
            if size > self._max_bytes:
                return frame
            frames = self._frames
            while frames and (len(frames) >= self._size or self.bytes + size > self._max_bytes):
                self.bytes -= len(frames.popitem(last=False)[1])  # the oldest inserted
            frames[event.position] = frame
            self.bytes += size
        return frame


# One ticker for every stream ---------------------------------------------------


def _server_exiting() -> bool:
    """Whether uvicorn has been asked to stop (its SIGTERM handler is a bound
    method of its Server); ``False`` under any other server."""
    try:
        handler = signal.getsignal(signal.SIGTERM)
    except ValueError:  # pragma: no cover - not on the main thread
        return False
    server = getattr(handler, "__self__", None)
    return bool(getattr(server, "should_exit", False))


class StreamRegistry:
    """The open streams of one app, and the ticker that looks after them."""

    def __init__(
        self,
        *,
        heartbeat_interval: float,
        write_timeout: float,
        coalesce: float = 0.0,
        frame_cache_bytes: int = FRAME_CACHE_BYTES,
    ) -> None:
        self.heartbeat_interval = heartbeat_interval
        self.write_timeout = write_timeout
        self.coalesce = coalesce
        self.frames = FrameCache(max_bytes=frame_cache_bytes)
        # Streams holding events back to write them together (see _Stream._on_ready),
        # flushed by one timer for all of them.
        self._due: dict[_Stream, None] = {}
        self._flush_timer: asyncio.TimerHandle | None = None
        self.shutting_down = False
        self._streams: set[_Stream] = set()
        self._tick = min(0.25, heartbeat_interval / 4, write_timeout / 4)
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._streams)

    def add(self, stream: _Stream) -> None:
        self._streams.add(stream)
        task = self._task
        # An app may outlive an event loop (test clients run one per block).
        if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
            self._task = asyncio.create_task(self._run(), name="eventhub-log sse ticker")

    def discard(self, stream: _Stream) -> None:
        self._streams.discard(stream)
        self._due.pop(stream, None)

    def flush_later(self, stream: _Stream) -> None:
        self._due[stream] = None
        if self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(self.coalesce, self._flush)

    def _flush(self) -> None:
        self._flush_timer = None
        due, self._due = self._due, {}
        for stream in due:
            stream.flush()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._streams:
            await asyncio.sleep(self._tick)
            if not self.shutting_down and _server_exiting():
                self.shutting_down = True
            now = loop.time()
            wall = time.time()
            for stream in list(self._streams):
                if self.shutting_down:
                    stream.end()
                elif stream.expires_at is not None and wall >= stream.expires_at:
                    # The token ran out: end cleanly (the rows go as on any close);
                    # the client comes back with a fresh one and its Last-Event-ID.
                    stream.expires_at = None
                    stream.end()
                elif stream.send_started and now - stream.send_started > self.write_timeout:
                    log.info("cutting off a stream blocked on a full socket: %s", stream.subscriber)
                    stream.cut_off()
                elif now - stream.last_write >= self.heartbeat_interval:
                    stream.feed.nudge()


class _Stream:
    """One open SSE response: a writer loop in the response's task, a disconnect
    listener task, and the ``on_ready`` hook through which live events are
    written on the spot."""

    # Compact, as the feeds are: each of thousands is touched once per event.
    __slots__ = (
        "_blocked",
        "_closed",
        "_coalesce",
        "_cut",
        "_direct",
        "_ending",
        "_frames",
        "_loop",
        "_receive",
        "_registry",
        "_send",
        "_writer",
        "expires_at",
        "feed",
        "last_write",
        "send_started",
        "subscriber",
    )

    def __init__(
        self,
        feed: Feed,
        send: Send,
        receive: Receive,
        registry: StreamRegistry,
        expires_at: float | None = None,
    ) -> None:
        self.feed = feed
        self.expires_at = expires_at  # the token's exp, seconds since the epoch
        self.subscriber = feed.subscriber_id
        self._send = send
        # uvicorn's request cycle when chunks may skip the ASGI send (direct_writes.py).
        self._direct = direct_target(send)
        self._receive = receive
        self._registry = registry
        self._frames = registry.frames
        self._coalesce = registry.coalesce
        self._loop = asyncio.get_running_loop()
        self.last_write = self._loop.time()
        self.send_started = 0.0  # when a blocked send began; 0.0 when none is pending
        self._ending = False
        self._closed = False
        # The task the writer runs in: the response's own, not one of its own (a
        # task per stream is memory, and thousands of streams are idle).
        self._writer: asyncio.Task[Any] | None = None
        self._cut = False
        # A send the transport made wait (backpressure), finishing in a task.
        self._blocked: asyncio.Task[None] | None = None

    async def run(self) -> None:
        writer = self._writer = asyncio.current_task()
        assert writer is not None
        listener = asyncio.create_task(self._listen())
        self.feed.on_ready = self._on_ready
        try:
            await self._write()
        except asyncio.CancelledError:
            # Our own cut-off (or the client left) ends the stream quietly; any
            # other cancellation goes on up.
            if not self._cut or writer.uncancel() > 0:
                raise
        finally:
            self._closed = True
            self.feed.on_ready = None
            listener.cancel()
            tasks = [listener]
            if self._blocked is not None:
                self._blocked.cancel()
                tasks.append(self._blocked)
            await asyncio.wait(tasks)

    def end(self) -> None:
        """Finish the response cleanly after the current write (shutdown)."""
        self._ending = True
        self.feed.nudge()

    def cut_off(self) -> None:
        """Abandon a stream whose writes do not get through (or whose client left)."""
        if self._writer is not None and not self._cut and not self._closed:
            self._cut = True  # one cancel only, so that ``run`` can tell it is ours
            self._writer.cancel()

    async def _listen(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.cut_off()

    def _on_ready(self) -> bool:
        """Live events arrived while the writer task waits: write them now, or,
        if this stream wrote less than ``coalesce`` seconds ago, with whatever
        else arrives by then (each write is a system call, and at a high rate
        per stream those were most of the server's work)."""
        if self._closed:
            return True  # going away: nothing more is written
        if self._blocked is not None or self._ending:
            return False  # the writer task takes them once the blocked send is done
        if self._coalesce and self._loop.time() - self.last_write < self._coalesce:
            self._registry.flush_later(self)
            return True
        return self._write_buffered()

    def flush(self) -> None:
        """Write what was held back (the registry's timer)."""
        if self._closed:
            return
        # Only while the writer task waits in ``next()``: otherwise it may hold an
        # event taken from the feed, which must go out first; it takes the rest.
        if not self.feed.waiting or self._blocked is not None or not self._write_buffered():
            self.feed.wake()

    def _write_buffered(self) -> bool:
        chunk = self._take()
        if chunk is None:
            return False  # the feed must read the log first: that is the task's job
        self._emit(chunk)
        return True

    def _take(self) -> bytes | None:
        """Everything buffered (up to ``MAX_BATCH`` frames, ``WRITE_BYTES`` of
        payload) as one chunk."""
        feed = self.feed
        events = feed.take_ready(MAX_BATCH, WRITE_BYTES)
        if not events:
            return None
        if feed.has_ready:
            feed.wake()  # the rest goes in the next write
        frame = self._frames.frame
        if len(events) == 1:
            return frame(events[0])
        return b"".join([frame(event) for event in events])

    def _emit(self, chunk: bytes) -> None:
        """Send ``chunk`` without waiting when the transport allows it.

        Under uvicorn the chunk goes straight to its transport when nothing
        stands in the way (api/direct_writes.py). Otherwise the ASGI ``send``
        coroutine is stepped once by hand, as Python 3.12's eager tasks do: a
        send the transport accepts completes in that step, with no task and no
        trip through the event loop's queue. One that has to wait
        (the client reads slowly) is finished by a task, and the stream writes
        nothing else until it is done.
        """
        direct = self._direct
        try:
            if direct is not None and write_chunk(direct, chunk):
                self.last_write = self._loop.time()
                return
            message = {"type": "http.response.body", "body": chunk, "more_body": True}
            sending = self._send(message).__await__()
            awaited = sending.send(None)
        except StopIteration:
            self.last_write = self._loop.time()
            return
        except Exception:
            log.debug("stream of %s: write failed", self.subscriber, exc_info=True)
            self.cut_off()
            return
        self.send_started = self._loop.time()
        self._blocked = asyncio.ensure_future(_finish(sending, awaited))
        self._blocked.add_done_callback(self._unblocked)

    def _unblocked(self, task: asyncio.Task[None]) -> None:
        self._blocked = None
        self.send_started = 0.0
        self.last_write = self._loop.time()
        if task.cancelled() or task.exception() is not None:
            self.cut_off()
        else:
            self.feed.wake()  # what arrived meanwhile

    async def _write(self) -> None:
        feed = self.feed
        try:
            while not self._ending:
                # While this task waits in ``next()`` the hook may write; once it
                # holds an event the hook is not called (``Feed.notify``), so
                # nothing overtakes the event it holds.
                event = await feed.next()
                if self._blocked is not None:
                    await asyncio.wait((self._blocked,))  # the hook's send goes first
                gaps = feed.take_gaps()
                if event is None:
                    if gaps:
                        self._emit(b"".join(encode_gap(gap) for gap in gaps))
                    elif self._ending:
                        break
                    else:
                        self._emit(PING)
                    continue
                chunk = self._frames.frame(event)
                if gaps:  # retention removed what came before this event
                    chunk = b"".join(encode_gap(gap) for gap in gaps) + chunk
                rest = self._take()
                self._emit(chunk if rest is None else chunk + rest)
        except StopAsyncIteration:
            pass  # the hub is closing
        except EventHubError as exc:
            # The database failed mid-stream: end cleanly; the client resumes.
            log.warning("stream of %s ended by a storage error: %s", self.subscriber, exc)
        self._closed = True
        if self._blocked is not None:
            await asyncio.wait((self._blocked,))
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})


async def _finish(sending: Generator[Any, None, None], awaited: Any) -> None:
    """Drive ``sending``, suspended on ``awaited`` after its first step, to its end,
    exactly as a task would."""
    try:
        while True:
            if awaited is None:  # a bare yield: give the loop one turn
                await asyncio.sleep(0)
            else:
                # The future a coroutine yields is flagged as awaited by it; a
                # task clears that flag before waiting, and so must this.
                awaited._asyncio_future_blocking = False
                await asyncio.wait((awaited,))
            awaited = sending.send(None)
    except StopIteration:
        return
    finally:
        sending.close()  # a no-op once it has finished


class EventStreamResponse(Response):
    """The SSE response; the route has validated everything it could beforehand."""

    media_type = MEDIA_TYPE

    def __init__(
        self,
        hub: EventHub,
        registry: StreamRegistry,
        *,
        topics: Sequence[str],
        subscriber: str | None,
        after: str | None,
        from_earliest: bool,
        buffer: int | None = None,
        expires_at: float | None = None,
        connections: ConnectionLimiter | None = None,
        client: str = "",
    ) -> None:
        # Response.__init__ would add a content-length for an empty body.
        self.status_code = 200
        self.background = None
        self._hub = hub
        self._registry = registry
        self._topics = list(topics)
        self._subscriber = subscriber
        self._after = after
        self._from_earliest = from_earliest
        self._buffer = buffer
        self._expires_at = expires_at
        self._connections = connections
        self._client = client
        # Told the status as the head leaves, where no metrics middleware sees it
        # (api/fast_stream.py).
        self.observe: Callable[[int], None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Counted while the response runs, so a stream that ends for any reason
        # gives its place back.
        if self._connections is None:
            await self._serve(scope, receive, send)
            return
        try:
            self._connections.acquire(self._client)
        except TooManyConnections as exc:
            await _send_error(send, exc.status, exc.code, exc.message, self.observe)
            return
        try:
            await self._serve(scope, receive, send)
        finally:
            self._connections.release(self._client)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False
        try:
            async with self._hub.stream(
                self._topics,
                self._subscriber,
                after=self._after,
                from_earliest=self._from_earliest,
                buffer=self._buffer,
            ) as feed:
                topics = self._topics + sorted(set(feed.topics) - set(self._topics))
                if self.observe is not None:
                    self.observe(200)
                await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
                started = True
                # What retention removed of the replay comes from the feed, page by
                # page, ahead of the events after it (Feed.take_gaps).
                opening = encode_ready(feed.cursor, feed.subscriber_id, topics)
                await send({"type": "http.response.body", "body": opening, "more_body": True})
                stream = _Stream(feed, send, receive, self._registry, self._expires_at)
                self._registry.add(stream)
                try:
                    await stream.run()
                finally:
                    self._registry.discard(stream)
        except EventHubError as exc:
            if started:
                raise
            # A cursor from another database is only found out once the stream
            # is registered; it is still refused before anything was sent.
            status, code, message, _ = public_error(exc)
            await _send_error(send, status, code, message, self.observe)


async def _send_error(
    send: Send,
    status: int,
    code: str,
    message: str,
    observe: Callable[[int], None] | None = None,
) -> None:
    body = json.dumps(
        {"error": {"code": code, "message": message}}, ensure_ascii=False, separators=(",", ":")
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if status in (429, 503):
        headers.append((b"retry-after", b"1"))
    if observe is not None:
        observe(status)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def registry_of(
    state: object,
    *,
    heartbeat_interval: float,
    write_timeout: float,
    coalesce: float = 0.0,
    frame_cache_bytes: int = FRAME_CACHE_BYTES,
) -> StreamRegistry:
    """The app's registry, made on first use (the app's state lives as long as it)."""
    registry: StreamRegistry | None = getattr(state, "sse_streams", None)
    if registry is None:
        registry = StreamRegistry(
            heartbeat_interval=heartbeat_interval,
            write_timeout=write_timeout,
            coalesce=coalesce,
            frame_cache_bytes=frame_cache_bytes,
        )
        state.sse_streams = registry  # type: ignore[attr-defined]
    return registry


__all__ = [
    "EventStreamResponse",
    "FrameCache",
    "StreamRegistry",
    "encode_event",
    "encode_gap",
    "encode_ready",
    "registry_of",
]
