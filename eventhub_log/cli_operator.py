"""Operator commands that work on the database directly, with no server:
``publish``, ``history`` / ``export`` and ``prune``."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from .errors import ValidationError
from .export import CSV_HEADER, csv_row, ndjson_line
from .hub import EventHub
from .model import Event
from .progress import progress_bar, wanted
from .retention import parse_duration, prune
from .store import queries
from .timeutil import parse_rfc3339

Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


def add_operator_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    database_option: Callable[[argparse.ArgumentParser], None],
) -> None:
    publish = commands.add_parser(
        "publish", help="append one event and print it once committed (JSON)"
    )
    publish.add_argument("topic", metavar="TOPIC")
    publish.add_argument("payload", metavar="JSON", help="the payload as JSON; '-' reads stdin")
    publish.add_argument("--exclude", metavar="ID", help="subscriber id not to deliver to")
    publish.add_argument(
        "--idempotency-key", metavar="KEY", help="a retry with the same key appends nothing"
    )
    database_option(publish)

    for name, help_text in (
        ("history", "print a topic's events (NDJSON or CSV), oldest first by default"),
        ("export", "the same as history: the whole selected range, streamed"),
    ):
        history = commands.add_parser(name, help=help_text)
        history.add_argument("topic", metavar="TOPIC")
        history.add_argument("--after-seq", type=int, metavar="N", help="only seq > N")
        history.add_argument("--before-seq", type=int, metavar="N", help="only seq < N")
        history.add_argument("--since", metavar="TIME", help="RFC 3339, inclusive")
        history.add_argument("--until", metavar="TIME", help="RFC 3339, exclusive")
        history.add_argument("--limit", type=int, metavar="N", help="at most N events")
        history.add_argument("--order", choices=["asc", "desc"], default="asc")
        history.add_argument("--format", choices=["ndjson", "csv"], default="ndjson")
        history.add_argument(
            "--output",
            metavar="FILE",
            help="write to FILE instead of stdout: to a temporary name beside it, renamed "
            "to FILE once complete (a failed export leaves no partial file)",
        )
        database_option(history)

    retention = commands.add_parser(
        "prune",
        help="apply retention: delete each topic's oldest events, recording how far "
        "(resuming readers are told of the gap)",
    )
    retention.add_argument(
        "--older-than", metavar="DURATION", help="delete events older than this, e.g. 7d, 12h"
    )
    retention.add_argument(
        "--keep", type=int, metavar="N", help="keep only the newest N events of each topic"
    )
    retention.add_argument(
        "--topic", action="append", metavar="TOPIC", help="only this topic (repeatable)"
    )
    retention.add_argument(
        "--dry-run", action="store_true", help="say what would be deleted, delete nothing"
    )
    database_option(retention)


async def _publish(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.payload == "-" else args.payload
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"the payload is not valid JSON: {exc}") from exc
    async with EventHub(args.database_url) as hub:
        if args.idempotency_key is None:
            event = await hub.publish(args.topic, args.exclude, payload)
        else:
            (event,), _ = await hub.publish_once(
                args.idempotency_key, [(args.topic, args.exclude, payload)]
            )
    print(json.dumps(event.to_dict(), ensure_ascii=False))
    return 0


async def _history(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise ValidationError("--limit must be at least 1")
    since = None if args.since is None else parse_rfc3339(args.since, "--since")
    until = None if args.until is None else parse_rfc3339(args.until, "--until")
    async with EventHub(args.database_url) as hub:
        return await _write_history(hub, args, since, until)


async def _write_history(
    hub: EventHub, args: argparse.Namespace, since: datetime | None, until: datetime | None
) -> int:
    # A bar on a terminal, unless the events themselves are printed to it.
    show = wanted(output_is_terminal=args.output is None and _is_terminal(sys.stdout))
    total = await _expected_count(hub, args, since, until) if show else None
    try:
        with _destination(args.output) as out, progress_bar(total, "export", enabled=show) as bar:
            write = _writer(out, args.format)
            count = 0
            async for event in hub.export(
                args.topic,
                after_seq=args.after_seq,
                before_seq=args.before_seq,
                since=since,
                until=until,
                order=args.order,
            ):
                write(event)
                count += 1
                if count % 1000 == 0:
                    bar.update(1000)
                if args.limit is not None and count >= args.limit:
                    break
            bar.update(count % 1000)
            out.flush()
    except BrokenPipeError:  # `eventhub-log export t | head`: the reader has had enough
        return 0
    return 0


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


async def _expected_count(
    hub: EventHub, args: argparse.Namespace, since: datetime | None, until: datetime | None
) -> int | None:
    """How many events the export will write, for the bar; ``None`` when only
    reading them would tell (a time range)."""
    if since is not None or until is not None:
        return None
    async with hub.database.read() as conn:
        state = await queries.chain_state(conn, args.topic)
    if state is None:
        return 0
    last_seq, pruned_through, _anchor = state
    low = max(pruned_through, args.after_seq or 0)
    high = last_seq if args.before_seq is None else min(last_seq, args.before_seq - 1)
    count = max(0, high - low)
    return count if args.limit is None else min(count, args.limit)


@contextmanager
def _destination(path: str | None) -> Iterator[TextIO]:
    """Standard output, or a temporary file beside ``path`` that becomes ``path``
    only when the block completes: a failed or interrupted export leaves the
    old file (or none) rather than half of a new one."""
    if path is None:
        yield sys.stdout
        return
    target = Path(path)
    try:
        fd, temporary = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
        )
    except OSError as exc:
        raise ValidationError(f"cannot write {path!r}: {exc.strerror or exc}") from None
    try:
        # mkstemp makes it 0600; give it the mode `> FILE` would have.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with open(fd, "w", encoding="utf-8", newline="") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _writer(out: TextIO, form: str) -> Callable[[Event], object]:
    if form == "ndjson":
        return lambda event: out.write(ndjson_line(event))
    table = csv.writer(out, lineterminator="\n")
    table.writerow(CSV_HEADER)
    return lambda event: table.writerow(csv_row(event))


async def _prune(args: argparse.Namespace) -> int:
    if args.older_than is None and args.keep is None:
        raise ValidationError("prune needs --older-than DURATION, --keep N, or both")
    older_than = None if args.older_than is None else parse_duration(args.older_than)
    async with EventHub(args.database_url) as hub:
        results = await prune(
            hub.database,
            older_than=older_than,
            keep=args.keep,
            topics=args.topic,
            dry_run=args.dry_run,
        )
    verb = "would delete" if args.dry_run else "deleted"
    for result in results:
        print(
            f"{result.topic}: {verb} {result.deleted} events, "
            f"pruned through seq {result.pruned_through_seq}"
        )
    if not results:
        print("nothing to prune")
    return 0


OPERATOR_COMMANDS: dict[str, Command] = {
    "publish": _publish,
    "history": _history,
    "export": _history,
    "prune": _prune,
}
