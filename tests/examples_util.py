"""Example servers (``python -m examples.<name>``) as subprocesses on free ports."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .server import free_port

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class ExampleServer:
    module: str
    database_url: str
    port: int = field(default_factory=free_port)
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> ExampleServer:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                self.module,
                "--port",
                str(self.port),
                "--database-url",
                self.database_url,
                "--log-level",
                "warning",
                *self.args,
            ],
            cwd=ROOT,
            env={**os.environ, **self.env},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.module} exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"{self.module} did not become ready in time")

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait: a clean shutdown."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


async def token_for(client: httpx.AsyncClient, server: ExampleServer, user: str) -> str:
    """A token from the example's demo login."""
    response = await client.post(f"{server.url}/token", json={"user": user})
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class SseReader:
    """A raw SSE parser over an httpx streaming response."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()
        self.last_id: str | None = None

    async def next(self, timeout: float = 10.0) -> tuple[str | None, str | None, Any]:
        """``(event name, id, decoded data)`` of the next message (pings skipped)."""
        return await asyncio.wait_for(self._next(), timeout)

    async def _next(self) -> tuple[str | None, str | None, Any]:
        fields: dict[str, str] = {}
        async for line in self._lines:
            if line == "":
                if "data" in fields:
                    if "id" in fields:
                        self.last_id = fields["id"]
                    return fields.get("event"), fields.get("id"), json.loads(fields["data"])
                fields.clear()
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        raise EOFError("the stream ended")


@asynccontextmanager
async def sse(client: httpx.AsyncClient, url: str, **kwargs: Any) -> AsyncIterator[SseReader]:
    async with client.stream("GET", url, **kwargs) as response:
        yield SseReader(response)
