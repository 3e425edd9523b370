"""Verify an eventhub-log NDJSON export with no access to the server.

    python examples/verify_export.py EXPORT.ndjson [--anchor TOPIC=HASH]...

Needs only the standard library and ``rfc8785`` (pip install rfc8785). The
export is what ``GET /v1/topics/{topic}/events`` with ``Accept:
application/x-ndjson`` or ``eventhub-log export TOPIC`` writes, one or several
topics, each topic's events oldest first. Each event's hash must be

    sha256(prev_hash + "\\n" + RFC8785({topic, seq, published_at, exclude,
                                        publisher, payload}))

in lowercase hex, ``prev_hash`` the previous event's hash in the same topic (64
zeros before seq 1). An export that starts after seq 1 (a pruned topic, or an
``--after-seq`` range) chains from a hash the file does not hold: pass it with
``--anchor`` (the topic's ``pruned_hash``, or the hash of the event before the
range), or the first event's stored hash is taken on trust and only the links
after it are checked. Exit status 0 when every topic holds, 1 when one does not.
See docs/audit.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Iterable
from typing import Any

import rfc8785

ZEROS = "0" * 64
FIELDS = ("topic", "seq", "published_at", "exclude", "publisher", "payload")


def link(prev: str, event: dict[str, Any]) -> str:
    canonical = rfc8785.dumps({name: event[name] for name in FIELDS})
    return hashlib.sha256(prev.encode("utf-8") + b"\n" + canonical).hexdigest()


def verify(lines: Iterable[str], anchors: dict[str, str]) -> dict[str, str | None]:
    """topic -> None when its chain holds, else what broke first. Holds one event
    per topic at a time, so a file of any size verifies in little memory."""
    last: dict[str, tuple[int, str]] = {}
    broken: dict[str, str | None] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        event = json.loads(line)
        topic, seq, stored = event["topic"], event["seq"], event["hash"]
        if broken.get(topic):
            continue
        broken.setdefault(topic, None)
        if topic in last:
            prev_seq, prev = last[topic]
            if seq != prev_seq + 1:
                broken[topic] = f"seq {prev_seq + 1} is missing (line {number} holds seq {seq})"
                continue
        elif topic in anchors or seq == 1:
            prev = anchors.get(topic, ZEROS)
        else:
            # No anchor for a range that starts late: trust its first link only.
            print(f"{topic}: starts at seq {seq} with no --anchor; its first hash is trusted")
            last[topic] = (seq, stored)
            continue
        if link(prev, event) != stored:
            broken[topic] = f"seq {seq} does not match its hash (line {number})"
            continue
        last[topic] = (seq, stored)
    for topic in sorted(broken):
        if broken[topic] is None and topic in last:
            seq, head = last[topic]
            print(f"{topic}: ok through seq {seq}, head {head}")
        elif broken[topic] is not None:
            print(f"{topic}: BROKEN: {broken[topic]}")
    return broken


def main() -> int:
    parser = argparse.ArgumentParser(description="Verify an eventhub-log NDJSON export.")
    parser.add_argument("export", help="the NDJSON file ('-' for standard input)")
    parser.add_argument(
        "--anchor",
        action="append",
        default=[],
        metavar="TOPIC=HASH",
        help="the hash a topic's first exported event chains from",
    )
    args = parser.parse_args()
    anchors = dict(item.rsplit("=", 1) for item in args.anchor)
    if args.export == "-":
        broken = verify(sys.stdin, anchors)
    else:
        with open(args.export, encoding="utf-8") as source:
            broken = verify(source, anchors)
    return 1 if any(reason is not None for reason in broken.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
