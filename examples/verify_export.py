"""Verify an eventhub-log NDJSON export with no access to the server.

    python examples/verify_export.py EXPORT.ndjson [--anchor TOPIC=HASH]...
        [--checkpoint FILE... --public-key PEM]

Needs only the standard library and ``rfc8785`` (pip install rfc8785), and
``cryptography`` for checkpoints. The
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
after it are checked.

``--checkpoint FILE`` (repeatable; one checkpoint object, a JSON array of them,
or one a line, as ``eventhub-log checkpoint`` writes) with ``--public-key PEM``
(the hub's ``GET /v1/audit/public-key``) also checks that each checkpoint is
signed by that key and that the export holds its hash at its seq, in a chain
that holds up to there: a rewrite below a kept checkpoint is caught even when
every later hash was recomputed. Exit status 0 when every topic and checkpoint
holds, 1 when one does not, 2 for ``--checkpoint`` without ``--public-key``.
See docs/audit.md.
"""

from __future__ import annotations

import argparse
import base64
import binascii
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


def verify(
    lines: Iterable[str],
    anchors: dict[str, str],
    seen: dict[tuple[str, int], str | None] | None = None,
) -> dict[str, str | None]:
    """topic -> None when its chain holds, else what broke first. Holds one event
    per topic at a time, so a file of any size verifies in little memory.
    ``seen`` maps the (topic, seq) pairs wanted to the hash the export holds
    there, filled in only while that topic's chain still holds."""
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
            if seen is not None and (topic, seq) in seen:
                seen[topic, seq] = stored
            continue
        if link(prev, event) != stored:
            broken[topic] = f"seq {seq} does not match its hash (line {number})"
            continue
        last[topic] = (seq, stored)
        if seen is not None and (topic, seq) in seen:
            seen[topic, seq] = stored
    for topic in sorted(broken):
        if broken[topic] is None and topic in last:
            seq, head = last[topic]
            print(f"{topic}: ok through seq {seq}, head {head}")
        elif broken[topic] is not None:
            print(f"{topic}: BROKEN: {broken[topic]}")
    return broken


def message(checkpoint: dict[str, Any]) -> bytes:
    """What a checkpoint's signature covers (contract section 8)."""
    return (
        f"eventhub-log checkpoint v1\n{checkpoint['topic']}\n{checkpoint['seq']}\n"
        f"{checkpoint['hash']}\n{checkpoint['signed_at']}"
    ).encode()


def read_checkpoints(path: str) -> list[dict[str, Any]]:
    """One JSON object, a JSON array of them, or one (object or array) a line."""
    with open(path, encoding="utf-8") as source:
        text = source.read()
    try:
        values = [json.loads(text)]
    except ValueError:
        values = [json.loads(line) for line in text.splitlines() if line.strip()]
    found: list[dict[str, Any]] = []
    for value in values:
        found.extend(value if isinstance(value, list) else [value])
    for item in found:
        if not isinstance(item, dict) or not all(
            name in item for name in ("topic", "seq", "hash", "signed_at", "signature")
        ):
            raise ValueError(f"{path}: not a checkpoint: {item!r:.80}")
    return found


def signed(public_key: Any, checkpoint: dict[str, Any]) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        public_key.verify(
            base64.b64decode(checkpoint["signature"], validate=True), message(checkpoint)
        )
    except (InvalidSignature, binascii.Error, ValueError, TypeError):
        return False
    return True


def check_checkpoints(
    checkpoints: list[dict[str, Any]],
    public_key: Any,
    seen: dict[tuple[str, int], str | None],
    broken: dict[str, str | None],
) -> int:
    """Print what each checkpoint shows; the number that do not hold."""
    failed = 0
    for cp in checkpoints:
        where = f"checkpoint {cp['topic']} seq {cp['seq']}"
        stored = seen.get((cp["topic"], cp["seq"]))
        if not signed(public_key, cp):
            reason = "bad signature: not signed by this key, or altered since"
        elif stored is None and broken.get(cp["topic"]):
            reason = f"the chain breaks before seq {cp['seq']}: {broken[cp['topic']]}"
        elif stored is None:
            reason = f"the export does not hold seq {cp['seq']} of {cp['topic']}"
        elif stored != cp["hash"]:
            reason = f"the export has another hash at seq {cp['seq']}: history was rewritten"
        else:
            print(f"{where}: ok, signed at {cp['signed_at']}")
            continue
        print(f"{where}: FAILED: {reason}")
        failed += 1
    return failed


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
    parser.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="FILE",
        help="signed checkpoints to check against the export (needs --public-key)",
    )
    parser.add_argument(
        "--public-key", metavar="PEM", help="the hub's checkpoint key (GET /v1/audit/public-key)"
    )
    args = parser.parse_args()
    anchors = dict(item.rsplit("=", 1) for item in args.anchor)
    checkpoints: list[dict[str, Any]] = []
    public_key = None
    if args.checkpoint:
        if args.public_key is None:
            print("--checkpoint needs --public-key PEM", file=sys.stderr)
            return 2
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        try:
            with open(args.public_key, "rb") as pem:
                public_key = load_pem_public_key(pem.read())
            for path in args.checkpoint:
                checkpoints.extend(read_checkpoints(path))
        except (OSError, ValueError) as exc:
            print(f"cannot use it: {exc}", file=sys.stderr)
            return 1
    seen: dict[tuple[str, int], str | None] = {(cp["topic"], cp["seq"]): None for cp in checkpoints}
    if args.export == "-":
        broken = verify(sys.stdin, anchors, seen)
    else:
        with open(args.export, encoding="utf-8") as source:
            broken = verify(source, anchors, seen)
    failed = sum(reason is not None for reason in broken.values())
    failed += check_checkpoints(checkpoints, public_key, seen, broken)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
