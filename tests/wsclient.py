"""A small WebSocket test client over the ``websockets`` package."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from websockets.asyncio.client import ClientConnection, connect


class WsClient:
    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        # Frames that arrived while ``request`` waited for its answer.
        self.backlog: list[dict[str, Any]] = []

    async def send(self, frame: Any) -> None:
        await self.conn.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        if self.backlog:
            return self.backlog.pop(0)
        return await self._recv(timeout)

    async def _recv(self, timeout: float) -> dict[str, Any]:
        frame: dict[str, Any] = json.loads(await asyncio.wait_for(self.conn.recv(), timeout))
        return frame

    async def recv_type(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        """The next frame of a type, skipping others (events while waiting for an ack...)."""
        while True:
            frame = await self.recv(timeout)
            if frame["type"] == kind:
                return frame

    async def request(self, frame: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        """Send a frame and return its ack or error (matched by ``ref``)."""
        ref = f"r{id(frame)}"
        await self.send({**frame, "ref": ref})
        while True:
            reply = await self._recv(timeout)
            if reply.get("ref") == ref:
                return reply
            self.backlog.append(reply)

    async def events(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        while len(got) < count:
            frame = await self.recv(timeout)
            if frame["type"] == "event":
                got.append(frame)
        return got

    async def quiet(self, seconds: float = 0.3) -> list[dict[str, Any]]:
        """Frames that arrive within ``seconds`` (expected: none)."""
        got: list[dict[str, Any]] = []
        try:
            while True:
                got.append(await self.recv(seconds))
        except TimeoutError:
            return got


@asynccontextmanager
async def ws_connect(url: str, **kwargs: Any) -> AsyncIterator[WsClient]:
    async with connect(url, open_timeout=10, **kwargs) as conn:
        yield WsClient(conn)


def ws_url(http_url: str, path: str) -> str:
    return "ws" + http_url.removeprefix("http") + path
