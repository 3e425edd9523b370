"""What every example shares: its command line, and the service with its channels."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from typing import Any

import uvicorn
from fastapi import FastAPI

from api.app import create_app
from api.channels import mount_channels
from api.settings import Settings
from eventhub_log.channels import ChannelRoute


def build(
    database_url: str, *channels: ChannelRoute[Any], settings: Settings | None = None
) -> FastAPI:
    """The whole eventhub-log service (REST, SSE, /v1/ws) plus these channels."""
    app = create_app(settings or Settings(database_url=database_url))
    mount_channels(app, *channels)
    return app


def main(
    name: str,
    make_app: Callable[[str], FastAPI],
    argv: Sequence[str] | None = None,
    *,
    port: int,
) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m examples.{name}")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("EVENTHUB_DATABASE_URL", f"sqlite+aiosqlite:///{name}.db"),
        help="sqlite+aiosqlite:///FILE (default: NAME.db here) or postgresql+asyncpg://...",
    )
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    uvicorn.run(
        make_app(args.database_url),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=3,
        access_log=False,
        # Per-message deflate compresses every event frame again for every
        # socket: measured, it halved WebSocket fan-out per CPU for small frames.
        ws_per_message_deflate=False,
    )
