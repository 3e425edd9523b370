"""The ``eventhub-log`` command: serve, migrate, and tools for operators."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import sys
from collections.abc import Sequence

from .cli_audit import AUDIT_COMMANDS, add_audit_commands
from .cli_operator import OPERATOR_COMMANDS, add_operator_commands
from .cli_token import add_token_command, run_token
from .errors import EventHubError
from .migrations import ensure_schema
from .store.database import DEFAULT_DATABASE_URL, open_database
from .tokens import AuthKeyError, load_verification_key


def _env(name: str, default: str) -> str:
    return os.environ.get(f"EVENTHUB_{name}", default)


def _database_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        default=_env("DATABASE_URL", DEFAULT_DATABASE_URL),
        help="sqlite+aiosqlite:///FILE or postgresql+asyncpg://USER@HOST/DB "
        "(env EVENTHUB_DATABASE_URL; default: eventhub.db in the working directory)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eventhub-log", description="A durable pub/sub hub with replay."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default=_env("HOST", "127.0.0.1"), help="env EVENTHUB_HOST")
    serve.add_argument(
        "--port", type=int, default=int(_env("PORT", "8000")), help="env EVENTHUB_PORT"
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=int(_env("WORKERS", "1")),
        help="worker processes; more than one runs the stateless mode (env EVENTHUB_WORKERS)",
    )
    serve.add_argument(
        "--mode", choices=["stateful", "stateless"], default=_env("MODE", "stateful")
    )
    serve.add_argument("--body-limit", type=int, help="request body limit in bytes")
    serve.add_argument("--heartbeat-interval", type=float, help="SSE ping period in seconds")
    serve.add_argument("--log-level", default=_env("LOG_LEVEL", "info"))
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
    _database_option(serve)

    migrate = commands.add_parser("migrate", help="bring the database schema to head")
    _database_option(migrate)
    _add_tail(commands)
    add_token_command(commands)
    add_operator_commands(commands, _database_option)
    add_audit_commands(commands, _database_option)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "tail":
            return _tail(args)
        if args.command == "token":
            return run_token(args)
        if args.command in OPERATOR_COMMANDS:
            return asyncio.run(OPERATOR_COMMANDS[args.command](args))
        if args.command in AUDIT_COMMANDS:
            return asyncio.run(AUDIT_COMMANDS[args.command](args))
        if args.command == "migrate":
            revision = asyncio.run(_migrate(args.database_url))
            print(f"schema at revision {revision}")
            return 0
    except EventHubError as exc:
        print(f"eventhub-log: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {args.command}")
    return 2


async def _migrate(database_url: str) -> str | None:
    database = open_database(database_url)
    try:
        return await ensure_schema(database, upgrade=True)
    finally:
        await database.engine.dispose()


def _serve(args: argparse.Namespace) -> int:
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
    problem = check_auth(args.host, insecure_no_auth=args.insecure_no_auth)
    if problem is not None:
        print(f"eventhub-log serve: {problem}", file=sys.stderr)
        return 2
    if args.database_url.startswith("sqlite") and args.workers > 1:
        # Create the schema once before the workers race to do it.
        asyncio.run(_migrate(args.database_url))
    uvicorn.run(
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
        # uvicorn's own protocol, plus a deadline on request headers (slowloris);
        # named, not imported: the library does not import the app.
        http="api.http_protocol:HeaderDeadlineProtocol",
    )
    return 0


def check_auth(host: str, *, insecure_no_auth: bool) -> str | None:
    """Why ``serve`` must not start with this key configuration on ``host``, or ``None``.

    The key is loaded here, from the environment the app reads, so that a bad
    one (unreadable, too short, two kinds) stops the command with its reason
    before uvicorn starts, rather than every worker failing on start-up. The
    CLI is the library's: it does not import the app to ask it."""
    env = os.environ
    try:
        key = load_verification_key(
            secret=env.get("EVENTHUB_AUTH_SECRET"),
            secret_file=env.get("EVENTHUB_AUTH_SECRET_FILE"),
            public_key_file=env.get("EVENTHUB_AUTH_PUBLIC_KEY"),
            audience=env.get("EVENTHUB_AUTH_AUDIENCE"),
        )
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


def _add_tail(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tail = commands.add_parser(
        "tail",
        help="follow topics over SSE, one JSON event a line; resumes across drops",
    )
    tail.add_argument("topics", nargs="+", metavar="TOPIC")
    tail.add_argument(
        "--url", default=_env("URL", "http://127.0.0.1:8000"), help="server (env EVENTHUB_URL)"
    )
    tail.add_argument("--last-event-id", help="start after this event id (resume)")
    tail.add_argument(
        "--from-earliest", action="store_true", help="replay all retained history first"
    )
    tail.add_argument("--subscriber", help="subscriber id (exclusion follows it)")
    tail.add_argument(
        "--token",
        default=os.environ.get("EVENTHUB_TOKEN") or None,
        help="token sent as Authorization: Bearer (env EVENTHUB_TOKEN, better: a command "
        "line is visible to other users in ps)",
    )


def _tail(args: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING, format="eventhub-log tail: %(message)s")
    return asyncio.run(_follow(args))


async def _follow(args: argparse.Namespace) -> int:
    import json

    from .client import EventStreamClient, StreamGap

    async with EventStreamClient(
        args.url,
        args.topics,
        subscriber=args.subscriber,
        last_event_id=args.last_event_id,
        from_earliest=args.from_earliest,
        token=args.token,
    ) as stream:
        async for item in stream:
            if isinstance(item, StreamGap):
                print(
                    f"eventhub-log tail: gap in {item.topic}: seq {item.from_seq} to "
                    f"{item.to_seq} were removed by retention",
                    file=sys.stderr,
                    flush=True,
                )
                continue
            print(json.dumps(item.to_dict(), ensure_ascii=False), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
