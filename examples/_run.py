"""What every example shares: its command line, and the service with its channels."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from collections.abc import Callable, Sequence
from typing import Any

import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr

from api.app import create_app
from api.channels import mount_channels
from api.settings import Settings
from eventhub_log.channels import ChannelRoute

from ._login import GrantFor, add_login

# Builds an example's app from its database URL, secret and token lifetime (s).
MakeApp = Callable[[str, str, float], FastAPI]


def build(
    database_url: str,
    *channels: ChannelRoute[Any],
    secret: str,
    grant_for: GrantFor,
    token_ttl: float,
    anonymous: str | None = None,
) -> FastAPI:
    """The whole eventhub-log service (REST, SSE, /v1/ws) plus these channels, with
    tokens required (signed with ``secret``) and the demo login that mints them."""
    settings = Settings(
        database_url=database_url, auth_secret=SecretStr(secret), auth_anonymous=anonymous
    )
    app = create_app(settings)
    mount_channels(app, *channels)
    add_login(app, secret=secret, grant_for=grant_for, ttl=token_ttl)
    return app


def main(
    name: str,
    make_app: MakeApp,
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
    parser.add_argument(
        "--token-ttl", type=float, default=3600.0, help="lifetime of minted tokens, s"
    )
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    secret = os.environ.get("EVENTHUB_AUTH_SECRET")
    if not secret:
        # One command and nothing to configure: a secret for this run only.
        # Tokens it signed stop working when the example stops.
        secret = secrets.token_hex(32)
        print(
            f"examples.{name}: tokens are signed with a secret made for this run "
            "(set EVENTHUB_AUTH_SECRET to keep one)",
            file=sys.stderr,
        )
    uvicorn.run(
        make_app(args.database_url, secret, args.token_ttl),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=3,
        access_log=False,
        # Per-message deflate compresses every event frame again for every
        # socket: measured, it halved WebSocket fan-out per CPU for small frames.
        ws_per_message_deflate=False,
    )
