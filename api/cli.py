"""The ``eventhub-log`` command: the library's commands plus ``serve``.

``migrate``, ``tail``, ``token`` and the operator tools are the library's
(eventhub_log/cli.py) and need no web server. ``serve`` runs this package's app
under uvicorn, so it lives here: the library never imports the API, not even by
name. ``main`` builds the library's parser and adds ``serve`` to it; it is the
installed ``eventhub-log`` (``[project.scripts]``), also ``python -m api.cli``.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from eventhub_log import cli as library
from eventhub_log.checkpoints import signing_key_from_env
from eventhub_log.cli import env_default
from eventhub_log.tokens import AuthKeyError, load_verification_key

if TYPE_CHECKING:
    from eventhub_log.cli import Runner, SubParsers


def main(argv: Sequence[str] | None = None) -> int:
    return library.main(argv, extensions=(add_serve,))


def add_serve(commands: SubParsers) -> dict[str, Runner]:
    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default=env_default("HOST", "127.0.0.1"), help="env EVENTHUB_HOST")
    serve.add_argument(
        "--port", type=int, default=int(env_default("PORT", "8000")), help="env EVENTHUB_PORT"
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=int(env_default("WORKERS", "1")),
        help="worker processes; more than one runs the stateless mode (env EVENTHUB_WORKERS)",
    )
    serve.add_argument(
        "--mode", choices=["stateful", "stateless"], default=env_default("MODE", "stateful")
    )
    serve.add_argument("--body-limit", type=int, help="request body limit in bytes")
    serve.add_argument("--heartbeat-interval", type=float, help="SSE ping period in seconds")
    serve.add_argument("--log-level", default=env_default("LOG_LEVEL", "info"))
    serve.add_argument(
        "--auth-secret-file",
        metavar="PATH",
        help="read the HS256 token secret from this file (sets EVENTHUB_AUTH_SECRET_FILE)",
    )
    serve.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="allow a hub with no key on a non-loopback address: anyone who reaches it "
        "may read and publish everything",
    )
    library.database_option(serve)
    return {"serve": serve_command}


def serve_command(args: argparse.Namespace) -> int:
    import uvicorn

    if args.workers < 1:
        raise SystemExit("eventhub-log: --workers must be at least 1")
    # The app reads its settings from the environment, so that every worker
    # process uvicorn starts sees the same configuration.
    os.environ["EVENTHUB_DATABASE_URL"] = args.database_url
    os.environ["EVENTHUB_WORKERS"] = str(args.workers)
    os.environ["EVENTHUB_MODE"] = args.mode
    if args.body_limit is not None:
        os.environ["EVENTHUB_BODY_LIMIT"] = str(args.body_limit)
    if args.heartbeat_interval is not None:
        os.environ["EVENTHUB_HEARTBEAT_INTERVAL"] = str(args.heartbeat_interval)
    if args.auth_secret_file is not None:
        os.environ["EVENTHUB_AUTH_SECRET_FILE"] = args.auth_secret_file
    signing_key_from_env()  # a bad EVENTHUB_AUDIT_KEY stops here with its reason, exit 1
    problem = check_auth(args.host, insecure_no_auth=args.insecure_no_auth)
    if problem is not None:
        print(f"eventhub-log serve: {problem}", file=sys.stderr)
        return 2
    if args.database_url.startswith("sqlite") and args.workers > 1:
        # Create the schema once before the workers race to do it.
        asyncio.run(library.migrate_database(args.database_url))
    uvicorn.run(
        # By import string: each of several worker processes builds its own app.
        "api.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        timeout_graceful_shutdown=3,
        access_log=False,
        # Per-message deflate compresses every event frame again for every
        # socket: measured, it halved WebSocket fan-out per CPU for small frames.
        ws_per_message_deflate=False,
        # uvicorn's own protocol, plus a deadline on request headers (slowloris).
        http="api.http_protocol:HeaderDeadlineProtocol",
    )
    return 0


def check_auth(host: str, *, insecure_no_auth: bool) -> str | None:
    """Why ``serve`` must not start with this key configuration on ``host``, or ``None``.

    The key (and the anonymous grant) is loaded here, from the environment the
    app reads, so that a bad one (unreadable, too short, two kinds, a grant that
    is not one) stops the command with its reason
    before uvicorn starts, rather than every worker failing on start-up."""
    from .auth import anonymous_grant  # FastAPI's import, for serve only

    env = os.environ
    try:
        key = load_verification_key(
            secret=env.get("EVENTHUB_AUTH_SECRET"),
            secret_file=env.get("EVENTHUB_AUTH_SECRET_FILE"),
            public_key_file=env.get("EVENTHUB_AUTH_PUBLIC_KEY"),
            audience=env.get("EVENTHUB_AUTH_AUDIENCE"),
        )
        anonymous_grant(env.get("EVENTHUB_AUTH_ANONYMOUS"))
    except AuthKeyError as exc:
        return str(exc)
    if key is not None or is_loopback(host):
        return None
    if insecure_no_auth:
        print(
            f"eventhub-log serve: warning: an open hub on {host}: anyone who reaches it may "
            "read and publish everything (--insecure-no-auth)",
            file=sys.stderr,
        )
        return None
    # An open hub on a reachable address gives every right to anyone on the
    # network; that has to be asked for by name, never be what a missing
    # variable quietly does.
    return (
        f"refusing to serve an open hub on {host!r}: no EVENTHUB_AUTH_SECRET, "
        "EVENTHUB_AUTH_SECRET_FILE (--auth-secret-file) or EVENTHUB_AUTH_PUBLIC_KEY is set. "
        "Set one, bind a loopback address (127.0.0.1), or pass --insecure-no-auth"
    )


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or ``localhost``; an empty host means every interface."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
