"""The hash chain of contract section 8, computed here from its text alone
(hashlib and rfc8785), never by the project's own functions: what the tests
compare the project's hashes with."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import rfc8785

ZEROS = "0" * 64
FIELDS = ("topic", "seq", "published_at", "exclude", "publisher", "payload")


def link(prev: str, event: Mapping[str, Any]) -> str:
    canonical = rfc8785.dumps({name: event[name] for name in FIELDS})
    return hashlib.sha256((prev + "\n").encode("utf-8") + canonical).hexdigest()


def chain(events: Iterable[Mapping[str, Any]], prev: str = ZEROS) -> list[str]:
    """The hashes of one topic's consecutive events (as history shows them)."""
    hashes = []
    for event in events:
        prev = link(prev, event)
        hashes.append(prev)
    return hashes
