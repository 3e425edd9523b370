"""``eventhub-log verify``: recompute the hash chains straight from the database.

Read-only: it opens the database (checking the schema is at head) without
starting a hub, so it writes no instance row and can run against a replica or
a copy an auditor was handed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from .audit import verify_topics
from .migrations import ensure_schema
from .store.database import open_database
from .validation import validate_topics

Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


def add_audit_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    database_option: Callable[[argparse.ArgumentParser], None],
) -> None:
    verify = commands.add_parser(
        "verify",
        help="recompute every topic's hash chain (or those named); exit 1 if one is broken",
    )
    verify.add_argument(
        "--topic", action="append", metavar="TOPIC", help="only this topic (repeatable)"
    )
    database_option(verify)


async def _verify(args: argparse.Namespace) -> int:
    topics = None if args.topic is None else validate_topics(args.topic)
    database = open_database(args.database_url)
    broken = 0
    try:
        await ensure_schema(database, upgrade=False)
        async for name, result in verify_topics(database, topics):
            if result is None:
                print(f"{name}: no such topic", file=sys.stderr)
                broken += 1
            elif result.ok:
                print(
                    f"{name}: ok, seq {result.from_seq} through {result.through_seq}, "
                    f"head {result.head_hash}"
                )
            else:
                print(
                    f"{name}: BROKEN at seq {result.first_bad_seq} (held from seq "
                    f"{result.from_seq} through {result.through_seq})"
                )
                broken += 1
    finally:
        await database.engine.dispose()
    if broken:
        print(f"eventhub-log verify: {broken} topic(s) do not verify", file=sys.stderr)
        return 1
    return 0


AUDIT_COMMANDS: dict[str, Command] = {"verify": _verify}
