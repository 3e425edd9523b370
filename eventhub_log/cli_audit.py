"""``eventhub-log verify`` and ``eventhub-log checkpoint``: the hash chains and
signed checkpoints (contract section 8), straight from the database.

Read-only: they open the database (checking the schema is at head) without
starting a hub, so they write no instance row and can run against a replica or
a copy an auditor was handed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from .audit import verify_topics
from .checkpoints import (
    KEY_ENV,
    PUBLIC_KEY_ENV,
    AuditKeyError,
    Checkpoint,
    CheckpointFileError,
    NoStoredEvents,
    check,
    heads,
    read_file,
    sign_head,
    signing_key_from_env,
    verification_key_from_env,
)
from .migrations import ensure_schema
from .progress import progress_bar
from .store.database import open_database
from .validation import validate_topics

Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


def add_audit_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    database_option: Callable[[argparse.ArgumentParser], None],
) -> None:
    verify = commands.add_parser(
        "verify",
        help="recompute every topic's hash chain (or those named) and check kept "
        "checkpoints; exit 1 if one does not hold",
    )
    verify.add_argument(
        "--topic", action="append", metavar="TOPIC", help="only this topic (repeatable)"
    )
    verify.add_argument(
        "--checkpoint",
        action="append",
        metavar="FILE",
        help="checkpoints kept earlier (what `eventhub-log checkpoint` writes: one JSON "
        "object a line, or a JSON object or array); each must be signed by "
        f"{PUBLIC_KEY_ENV} (or the public half of {KEY_ENV}) and its hash still stored "
        "at its seq (repeatable)",
    )
    database_option(verify)

    checkpoint = commands.add_parser(
        "checkpoint",
        help=f"print signed checkpoints of every topic's head (or those named), one JSON "
        f"object a line, signed with {KEY_ENV}: e.g. >> checkpoints.json",
    )
    checkpoint.add_argument(
        "--topic", action="append", metavar="TOPIC", help="only this topic (repeatable)"
    )
    database_option(checkpoint)


def _say(text: str) -> None:
    print(f"eventhub-log: {text}", file=sys.stderr)


async def _verify(args: argparse.Namespace) -> int:
    topics = None if args.topic is None else validate_topics(args.topic)
    kept: list[tuple[str, Checkpoint]] = []
    failures = 0
    key = None
    if args.checkpoint:
        try:
            key = verification_key_from_env()
        except AuditKeyError as exc:
            _say(f"verify: {exc}")
            return 2
        if key is None:
            _say(
                f"verify --checkpoint needs the key checkpoints are signed with: set "
                f"{PUBLIC_KEY_ENV} (a PEM public key, e.g. from GET /v1/audit/public-key) "
                f"or {KEY_ENV}"
            )
            return 2
        for path in args.checkpoint:
            try:
                kept.extend((path, cp) for cp in read_file(path))
            except CheckpointFileError as exc:
                print(f"checkpoint file: FAILED: {exc}")
                failures += 1
    if topics is not None and kept:
        topics = list(dict.fromkeys([*topics, *(cp.topic for _, cp in kept)]))
    database = open_database(args.database_url)
    broken_at: dict[str, int | None] = {}
    try:
        await ensure_schema(database, upgrade=False)
        total = sum(h.last_seq - h.pruned_through_seq for h in await heads(database, topics))
        with progress_bar(total, "verify") as bar:
            async for name, result in verify_topics(database, topics, progress=bar.update):
                if result is None:
                    bar.write(f"{name}: no such topic", sys.stderr)
                    failures += 1
                elif result.ok:
                    broken_at[name] = None
                    bar.write(
                        f"{name}: ok, seq {result.from_seq} through {result.through_seq}, "
                        f"head {result.head_hash}"
                    )
                else:
                    broken_at[name] = result.first_bad_seq
                    bar.write(
                        f"{name}: BROKEN at seq {result.first_bad_seq} (held from seq "
                        f"{result.from_seq} through {result.through_seq})"
                    )
                    failures += 1
        for path, cp in kept:
            assert key is not None
            found = await check(database, key, cp, broken_at=broken_at.get(cp.topic))
            state = "ok" if found.ok else "FAILED"
            print(f"checkpoint {cp.topic} seq {cp.seq} ({path}): {state}: {found.reason}")
            failures += not found.ok
    finally:
        await database.engine.dispose()
    if failures:
        _say(f"verify: {failures} topic(s) or checkpoint(s) do not hold")
        return 1
    return 0


async def _checkpoint(args: argparse.Namespace) -> int:
    topics = None if args.topic is None else validate_topics(args.topic)
    try:
        key = signing_key_from_env()
    except AuditKeyError as exc:
        _say(f"checkpoint: {exc}")
        return 2
    if key is None:
        _say(f"checkpoint needs {KEY_ENV}: the path of an Ed25519 private key (PEM)")
        return 2
    database = open_database(args.database_url)
    failed = 0
    try:
        await ensure_schema(database, upgrade=False)
        found = await heads(database, topics)
    finally:
        await database.engine.dispose()
    for name in sorted(set(topics or ()) - {head.topic for head in found}):
        _say(f"checkpoint: no such topic {name!r}")
        failed += 1
    for head in found:
        try:
            print(sign_head(key, head).to_json())
        except NoStoredEvents as exc:
            _say(f"checkpoint: skipped: {exc}")
            failed += topics is not None  # a topic asked for by name
    sys.stdout.flush()
    return 1 if failed else 0


AUDIT_COMMANDS: dict[str, Command] = {"verify": _verify, "checkpoint": _checkpoint}
