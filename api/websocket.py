"""WebSocket plumbing shared by ``/v1/ws`` and the channels: framing, limits, backpressure.

- Every frame to the client goes through one queue, bounded in frames and in
  bytes, drained by one writer task, so frames keep their order and a slow
  socket blocks nobody but its own producers: the pump that feeds events stops
  taking them, and the library's feed, no longer read, catches up from the log
  later instead of buffering.
- A frame over ``max_frame`` bytes gets an error frame and is dropped (the
  protocol layer still closes with 1009 for anything over uvicorn's ws_max_size).
- A client that sends more frames than its token bucket allows is closed alone
  with 1008 (policy violation).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from eventhub_log import Event, Gap
from eventhub_log import errors as lib
from eventhub_log.model import format_timestamp

from .errors import public_error

log = logging.getLogger(__name__)

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011


@dataclass(frozen=True)
class Limits:
    max_frame: int = 1024 * 1024
    send_queue: int = 256
    send_queue_bytes: int = 4 * 1024 * 1024
    frame_rate: float = 1000.0
    frame_burst: int = 5000


# Frames of large payloads are not kept: they would push out many small ones.
FRAME_CACHE_SIZE = 1024
FRAME_CACHE_BYTES = 32 * 1024 * 1024
CACHED_PAYLOAD_LIMIT = 64 * 1024


class FrameCache:
    """The recent event frames of one app (one database), by log position: each
    event is encoded once however many sockets get it, the stored payload JSON
    spliced in. Bounded in frames and in characters (``max_bytes``)."""

    def __init__(self, size: int = FRAME_CACHE_SIZE, max_bytes: int = FRAME_CACHE_BYTES) -> None:
        self._size = size
        self._max_bytes = max_bytes
        self.bytes = 0
        # OrderedDict: evicting the oldest is O(1) (see api/sse.py FrameCache).
        self._frames: OrderedDict[int, str] = OrderedDict()

    def frame(self, item: Event | Gap) -> str:
        if isinstance(item, Gap):
            return gap_frame(item)
        frame = self._frames.get(item.position)
        if frame is None:
            frame = event_frame(item)
            size = len(frame)
            if len(item.payload_json) <= CACHED_PAYLOAD_LIMIT and size <= self._max_bytes:
                frames = self._frames
                while frames and (len(frames) >= self._size or self.bytes + size > self._max_bytes):
                    self.bytes -= len(frames.popitem(last=False)[1])  # the oldest inserted
                frames[item.position] = frame
                self.bytes += size
        return frame


def frames_of(state: Any) -> FrameCache:
    cache: FrameCache | None = getattr(state, "ws_frames", None)
    if cache is None:
        settings = getattr(state, "settings", None)
        max_bytes = getattr(settings, "frame_cache_bytes", FRAME_CACHE_BYTES)
        cache = state.ws_frames = FrameCache(max_bytes=max_bytes)
    return cache


def event_frame(event: Event) -> str:
    return (
        '{"type":"event","id":"'
        + event.id
        + '","topic":'
        + json.dumps(event.topic)
        + ',"seq":'
        + str(event.seq)
        + ',"payload":'
        + event.payload_json
        + ',"published_at":"'
        + format_timestamp(event.published_at)
        + '"}'
    )


def gap_frame(gap: Gap) -> str:
    """Retention removed events a resume needed: the client is told, never left guessing."""
    return json.dumps(
        {"type": "gap", "topic": gap.topic, "from_seq": gap.from_seq, "to_seq": gap.to_seq}
    )


def error_frame(code: str, message: str, **extra: Any) -> str:
    return json.dumps({"type": "error", "code": code, "message": message, **extra})


def library_error_frame(exc: lib.EventHubError, **extra: Any) -> str:
    _, code, message, _ = public_error(exc)
    return error_frame(code, message, **extra)


class Closed(Exception):
    """The socket is gone (or being closed); stop working for it."""


class Connection:
    """One accepted WebSocket with an ordered outbox, bounded in frames and bytes."""

    def __init__(self, websocket: WebSocket, limits: Limits) -> None:
        self.ws = websocket
        self.limits = limits
        self.frames_cache = frames_of(websocket.app.state)
        # Unbounded as a queue: ``_has_room`` bounds it, in frames and in bytes.
        self._outbox: asyncio.Queue[str] = asyncio.Queue()
        # Characters of the frames queued or being written; a frame counts until
        # its write has finished, since until then the socket holds it.
        self.queued_bytes = 0
        self._room = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self.close_code: int | None = None
        self._tokens = float(limits.frame_burst)
        self._refilled = time.monotonic()

    async def __aenter__(self) -> Connection:
        self._writer = asyncio.create_task(self._write(), name="ws writer")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close(CLOSE_NORMAL)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def _has_room(self, size: int) -> bool:
        # An empty outbox takes any one frame, however large (max_frame bounds it).
        return self.queued_bytes == 0 or (
            self._outbox.qsize() < self.limits.send_queue
            and self.queued_bytes + size <= self.limits.send_queue_bytes
        )

    def _put(self, frame: str) -> None:
        self.queued_bytes += len(frame)
        self._outbox.put_nowait(frame)

    async def send(self, frame: str) -> None:
        """Queue a frame; waits while the outbox is full (that is the backpressure)."""
        if self.closed:
            raise Closed
        size = len(frame)
        if self._has_room(size):
            self._put(frame)  # the usual case: no task, no waiting
            return
        closing = asyncio.ensure_future(self._closed.wait())
        try:
            while not self._has_room(size):
                self._room.clear()
                room = asyncio.ensure_future(self._room.wait())
                await asyncio.wait({room, closing}, return_when=asyncio.FIRST_COMPLETED)
                room.cancel()
                if self.closed:
                    raise Closed
        finally:
            closing.cancel()
        self._put(frame)

    def send_nowait(self, frame: str) -> bool:
        """Queue a frame if there is room; used where waiting is not allowed."""
        if self.closed or not self._has_room(len(frame)):
            return False
        self._put(frame)
        return True

    async def _write(self) -> None:
        try:
            while True:
                frame = await self._outbox.get()
                await self.ws.send_text(frame)
                self.queued_bytes -= len(frame)
                self._room.set()
                self._outbox.task_done()
        except asyncio.CancelledError:
            raise
        except Exception:
            # The peer went away mid-write; the receive loop sees the disconnect.
            self._closed.set()

    async def close(self, code: int, reason: str = "") -> None:
        if self.close_code is not None:
            return
        self.close_code = code
        if self._writer is not None and not self._closed.is_set():
            # Let queued frames (a last error, a last ack) go out first, briefly:
            # a client closed for flooding may not be reading at all.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._outbox.join(), timeout=2 if code == CLOSE_NORMAL else 0.5
                )
        self._closed.set()
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._writer
        if self.ws.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await self.ws.close(code, reason[:120])

    def _allow_frame(self) -> bool:
        now = time.monotonic()
        self._tokens = min(
            float(self.limits.frame_burst),
            self._tokens + (now - self._refilled) * self.limits.frame_rate,
        )
        self._refilled = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    async def frames(self) -> AsyncIterator[Any]:
        """Parsed client frames. Bad ones get an error frame and are skipped; a
        flood closes the connection with 1008; a disconnect ends the iteration."""
        while not self.closed:
            try:
                message = await self.ws.receive()
            except (WebSocketDisconnect, RuntimeError):
                return
            if message["type"] == "websocket.disconnect":
                self._closed.set()
                return
            if not self._allow_frame():
                await self.close(CLOSE_POLICY, "too many frames: slow down")
                return
            text = message.get("text")
            data = message.get("bytes")
            size = len(text.encode()) if text is not None else len(data or b"")
            if size > self.limits.max_frame:
                await self.reject(
                    "frame_too_large",
                    f"frame of {size} bytes is over the limit of {self.limits.max_frame}",
                )
                continue
            raw = text if text is not None else (data or b"")
            try:
                frame = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                await self.reject("invalid_json", f"frame is not JSON: {exc}"[:300])
                continue
            except RecursionError:
                # json.loads recurses per nesting level: 100,000 "[" exhaust the stack.
                await self.reject("invalid_json", "frame is nested too deeply")
                continue
            yield frame

    async def reject(self, code: str, message: str, **extra: Any) -> None:
        """Answer a bad frame. A client that sends bad frames faster than it reads
        the answers fills its outbox: it is flooding, and is closed with 1008."""
        if not self.send_nowait(error_frame(code, message, **extra)):
            await self.close(CLOSE_POLICY, "too many bad frames unread: slow down")
