"""The hash chain's arithmetic, on the append path (contract section 8).

An event's ``hash`` is lowercase hex SHA-256 of the UTF-8 text
``prev_hash + "\\n" + canonical``: ``prev_hash`` the hash of the topic's previous
event (``GENESIS`` before seq 1), ``canonical`` the RFC 8785 (JCS) text of
``{"topic", "seq", "published_at", "exclude", "publisher", "payload"}``.

The reference is ``audit.canonical``, which hands the whole object to the
``rfc8785`` package; verification uses it. ``rfc8785`` is pure Python and cost
about 20 us an event (a group-commit batch costs about 50 us an event in all),
so the writer does not call it per event: validation gives each payload its
canonical text once (``validation.encode_for_log``), and ``link`` splices that
text into the envelope. The splice is RFC 8785 by construction: the envelope's
keys are written in JCS order (sorted by UTF-16 code units: exclude, payload,
published_at, publisher, seq, topic), seqs are integers, the timestamp is ASCII
digits, and JSON strings are escaped by the standard library's encoder, whose
escapes (``\\" \\\\ \\b \\f \\n \\r \\t``, other controls as lowercase ``\\u00xx``,
everything else as is) are exactly JCS's for valid Unicode. The tests check it
against ``rfc8785`` and an independent computation.
"""

from __future__ import annotations

import hashlib
import json

import rfc8785

GENESIS = "0" * 64

# The C string encoder when present; not the ASCII-only one (JCS writes non-ASCII as is).
_string = json.encoder.encode_basestring
_sha256 = hashlib.sha256


def envelope(
    topic: str,
    published_at: str,
    exclude: str | None,
    publisher: str | None,
    payload_canonical: str,
) -> tuple[str, str]:
    """The event's canonical text on either side of its seq: the seq is the one
    member known only under the writer's lock, and on PostgreSQL the link is
    made there (see revision 0006's ``eventhub_log_append``)."""
    head = (
        f'{{"exclude":{"null" if exclude is None else _string(exclude)}'
        f',"payload":{payload_canonical}'
        f',"published_at":"{published_at}"'
        f',"publisher":{"null" if publisher is None else _string(publisher)}'
        ',"seq":'
    )
    return head, f',"topic":{_string(topic)}}}'


def link(
    prev_hash: str,
    topic: str,
    seq: int,
    published_at: str,
    exclude: str | None,
    publisher: str | None,
    payload_canonical: str,
) -> str:
    """The hash of one event after ``prev_hash``; ``published_at`` as history shows it.

    The text ``envelope`` cuts around the seq, written in one f-string: the
    writer calls this for every event, and the ten concatenations cost more
    than the SHA-256 itself."""
    return _sha256(
        f"{prev_hash}\n"
        f'{{"exclude":{"null" if exclude is None else _string(exclude)}'
        f',"payload":{payload_canonical}'
        f',"published_at":"{published_at}"'
        f',"publisher":{"null" if publisher is None else _string(publisher)}'
        f',"seq":{seq},"topic":{_string(topic)}}}'.encode()
    ).hexdigest()


def canonical_payload(payload_json: str) -> str:
    """The RFC 8785 text of a stored payload (JSON text)."""
    return rfc8785.dumps(json.loads(payload_json)).decode()
