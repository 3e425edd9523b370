"""Lean HTTP/1.1 clients for the HTTP and SSE benchmarks.

Raw asyncio protocols with httptools (llhttp, in C) doing the parsing, including
chunked transfer decoding: a load client costs a small fraction of what the
server it measures spends on the same request, so on a two-core machine the
clients are not what limits the figures. Everything here talks to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from array import array
from collections.abc import Callable
from typing import Any, cast

import httptools

HOST = "127.0.0.1"

# The payload of every benchmark event carries "bench": "<phase>:<send time>".
# Readers pull it out with one regex instead of decoding every frame's JSON.
MARK_RE = re.compile(rb'"bench":\s*"(\d+):([0-9.]+)"')


def mark(phase: int, sent: float | None = None) -> str:
    return f"{phase}:{time.time() if sent is None else sent:.6f}"


def build_request(
    method: str,
    path: str,
    port: int,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body is not None:
        lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return head + (body or b"")


class HttpConnection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._body: list[bytes] = []
        self._status = 0
        self.closed = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionResetError("connection closed by the server"))

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._body = []

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self._status, b"".join(self._body)))

    def _fail(self, exc: BaseException) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        assert self._transport is not None
        assert self._waiter is None
        if self.closed:
            raise ConnectionResetError("connection closed")
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(raw)
        return await self._waiter

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def connect(port: int) -> HttpConnection:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(HttpConnection, HOST, port)
    return protocol


async def request_once(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    conn = await connect(port)
    try:
        return await conn.request(build_request(method, path, port, body, headers))
    finally:
        conn.close()


class PhaseStats:
    """What one SSE reader process saw of one benchmark phase."""

    def __init__(self) -> None:
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.latencies = array("d")

    def add(self, received: float, sent: float | None) -> None:
        if not self.count:
            self.first = received
        self.count += 1
        self.last = received
        if sent is not None:
            self.latencies.append(received - sent)

    def export(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "first": self.first,
            "last": self.last,
            "latencies": self.latencies.tobytes(),
        }


class SseStream(asyncio.Protocol):
    """One SSE response, split into frames as bytes arrive.

    ``on_frame(frame, received)`` gets each frame's raw bytes (without the blank
    line) and the wall-clock time of the read that completed it. Comments
    (heartbeats) are dropped here. The separator is learnt from the first frame
    because some servers end lines with CRLF (sse-starlette) and others with LF.
    """

    def __init__(self, on_frame: Callable[[bytes, float], None]) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._on_frame = on_frame
        self._buffer = b""
        self._sep = b""
        self._received = 0.0
        self.transport: asyncio.Transport | None = None
        self.status = 0
        self.ready: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.error_body = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._received = time.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._finish(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(exc)

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if self.status != 200:
            self.error_body += body
            return
        buffer = self._buffer + body if self._buffer else body
        if not self._sep:
            if b"\r\n\r\n" in buffer:
                self._sep = b"\r\n\r\n"
            elif b"\n\n" in buffer:
                self._sep = b"\n\n"
            else:
                self._buffer = buffer
                return
        frames = buffer.split(self._sep)
        self._buffer = frames.pop()
        received = self._received
        for frame in frames:
            if frame.startswith(b":") and b"\n" not in frame:
                continue  # a heartbeat comment
            if not self.ready.done():
                self.ready.set_result(frame)
                continue
            self._on_frame(frame, received)

    def on_message_complete(self) -> None:
        self._finish(None)

    def _finish(self, exc: BaseException | None) -> None:
        if not self.ready.done():
            detail = f"HTTP {self.status}: {self.error_body[:300]!r}"
            self.ready.set_exception(exc or ConnectionError(f"stream ended before ready; {detail}"))
        if not self.done.done():
            self.done.set_result(None)
        if self.transport is not None:
            self.transport.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_stream(
    port: int,
    path: str,
    on_frame: Callable[[bytes, float], None],
    headers: dict[str, str] | None = None,
) -> SseStream:
    """Open an SSE stream and return once its first frame (``ready``) arrived."""
    loop = asyncio.get_running_loop()
    _, stream = await loop.create_connection(lambda: SseStream(on_frame), HOST, port)
    assert stream.transport is not None
    all_headers = {"Accept": "text/event-stream", **(headers or {})}
    stream.transport.write(build_request("GET", path, port, None, all_headers))
    await stream.ready
    return stream


def use_uvloop() -> None:
    """Run this process's event loops on uvloop when it is installed (uvicorn's default)."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system
