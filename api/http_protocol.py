"""uvicorn's HTTP protocol with a deadline on request headers (slowloris).

uvicorn (0.54) times out only an idle keep-alive connection: a client that
opens a connection and sends its request headers a byte at a time, or not at
all, holds a socket and a protocol object for as long as it likes, and a few
thousand such clients exhaust the process's file descriptors. It has no
setting for this (``timeout_keep_alive`` is cancelled by the first byte; the
h11 size limit bounds bytes, not time), so this subclass adds the one missing
rule: a request's headers must be complete within ``EVENTHUB_HEADER_TIMEOUT``
seconds (default 10) of its first byte, or of the connection opening; else the
connection gets a 408 and is closed. Bodies are not covered: the body limit
bounds their size, and the routes read them as they come.

``eventhub-log serve`` runs uvicorn with ``http="api.http_protocol:HeaderDeadlineProtocol"``.
"""

from __future__ import annotations

import asyncio
from functools import cache

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .settings import Settings

_TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\ncontent-length: 30\r\n\r\nrequest headers took too long\n"
)


@cache
def header_timeout() -> float:
    # Read once per process: a protocol object is made for every connection.
    return Settings().header_timeout


class HeaderDeadlineProtocol(HttpToolsProtocol):
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(header_timeout(), self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.write(_TIMED_OUT)
            self.transport.close()


__all__ = ["HeaderDeadlineProtocol", "header_timeout"]
