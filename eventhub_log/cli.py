"""The library's commands: ``migrate``, ``tail``, ``token`` and the operator tools.

None of them needs a web server. The installed ``eventhub-log`` command is the
application's: it builds this parser, adds ``serve`` (the HTTP service) through
``extensions``, and calls ``main``. Run alone (``python -m eventhub_log.cli``),
this module has every command but ``serve``, and says so when asked for it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeAlias

from .cli_audit import AUDIT_COMMANDS, add_audit_commands
from .cli_operator import OPERATOR_COMMANDS, add_operator_commands
from .cli_token import add_token_command, run_token
from .errors import EventHubError
from .migrations import ensure_schema
from .store.database import DEFAULT_DATABASE_URL, open_database

if TYPE_CHECKING:  # argparse's class is generic only to type checkers
    SubParsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]
    Runner: TypeAlias = Callable[[argparse.Namespace], int]
    # Adds commands to the subparsers and returns how to run each, by name.
    Extension: TypeAlias = Callable[[SubParsers], dict[str, Runner]]

NOT_HERE = {
    "serve": "serve runs the HTTP service, which is not the library's: run the installed "
    "eventhub-log command"
}


def env_default(name: str, default: str) -> str:
    return os.environ.get(f"EVENTHUB_{name}", default)


def database_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        default=env_default("DATABASE_URL", DEFAULT_DATABASE_URL),
        help="sqlite+aiosqlite:///FILE or postgresql+asyncpg://USER@HOST/DB "
        "(env EVENTHUB_DATABASE_URL; default: eventhub.db in the working directory)",
    )


def build_parser(
    extensions: Sequence[Extension] = (),
) -> tuple[argparse.ArgumentParser, dict[str, Runner]]:
    """The parser, and the runners of the commands ``extensions`` added (first)."""
    parser = argparse.ArgumentParser(
        prog="eventhub-log", description="A durable pub/sub hub with replay."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    runners: dict[str, Runner] = {}
    for extend in extensions:
        runners.update(extend(commands))
    migrate = commands.add_parser("migrate", help="bring the database schema to head")
    database_option(migrate)
    _add_tail(commands)
    add_token_command(commands)
    add_operator_commands(commands, database_option)
    add_audit_commands(commands, database_option)
    return parser, runners


def main(argv: Sequence[str] | None = None, *, extensions: Sequence[Extension] = ()) -> int:
    parser, runners = build_parser(extensions)
    args_list = sys.argv[1:] if argv is None else list(argv)
    if args_list and args_list[0] in NOT_HERE and args_list[0] not in runners:
        print(f"eventhub-log: {NOT_HERE[args_list[0]]}", file=sys.stderr)
        return 2
    args = parser.parse_args(args_list)
    try:
        if args.command in runners:
            return runners[args.command](args)
        if args.command == "tail":
            return _tail(args)
        if args.command == "token":
            return run_token(args)
        if args.command in OPERATOR_COMMANDS:
            return asyncio.run(OPERATOR_COMMANDS[args.command](args))
        if args.command in AUDIT_COMMANDS:
            return asyncio.run(AUDIT_COMMANDS[args.command](args))
        if args.command == "migrate":
            revision = asyncio.run(migrate_database(args.database_url))
            print(f"schema at revision {revision}")
            return 0
    except EventHubError as exc:
        print(f"eventhub-log: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {args.command}")
    return 2


async def migrate_database(database_url: str) -> str | None:
    database = open_database(database_url)
    try:
        return await ensure_schema(database, upgrade=True)
    finally:
        await database.engine.dispose()


def _add_tail(commands: SubParsers) -> None:
    tail = commands.add_parser(
        "tail",
        help="follow topics over SSE, one JSON event a line; resumes across drops",
    )
    tail.add_argument("topics", nargs="+", metavar="TOPIC")
    tail.add_argument(
        "--url",
        default=env_default("URL", "http://127.0.0.1:8000"),
        help="server (env EVENTHUB_URL)",
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
