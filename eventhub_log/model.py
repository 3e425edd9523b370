"""Immutable values that leave the store: events, topic summaries, gaps."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any


@dataclass(frozen=True)
class Event:
    """One committed event of the log.

    ``position`` orders events across all topics in commit order; ``id`` is the
    same number as an opaque string and is the cursor clients resume from.
    The payload is kept as the JSON text that was stored, so transports can
    write it out without encoding it again.
    """

    topic: str
    seq: int
    position: int
    published_at: datetime
    payload_json: str
    exclude_id: str | None = None
    # The ``sub`` of the token that published it; ``None`` on an open hub.
    publisher: str | None = None
    # Its link in the topic's hash chain (chain.py); ``None`` only for an event
    # replayed from an idempotency key stored before the chain existed.
    hash: str | None = None

    @property
    def id(self) -> str:
        return format_cursor(self.position)

    @cached_property
    def payload(self) -> Any:
        return json.loads(self.payload_json)

    def visible_to(self, subscriber_id: str | None) -> bool:
        return self.exclude_id is None or self.exclude_id != subscriber_id

    def to_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "seq": self.seq,
            "id": self.id,
            "payload": self.payload,
            "published_at": format_timestamp(self.published_at),
            "exclude": self.exclude_id,
            "publisher": self.publisher,
            "hash": self.hash,
        }


@dataclass(frozen=True)
class Gap:
    """Events a resuming reader needed were deleted by retention."""

    topic: str
    from_seq: int
    to_seq: int


@dataclass(frozen=True)
class TopicInfo:
    topic: str
    last_seq: int
    event_count: int
    first_published_at: datetime | None
    last_published_at: datetime | None
    subscriber_count: int


@dataclass(frozen=True)
class PendingEvent:
    """A validated event waiting for the writer; the payload is already JSON text,
    and ``payload_canonical`` its RFC 8785 text (``None``: the writer derives it)."""

    topic: str
    payload_json: str
    exclude_id: str | None = None
    publisher: str | None = None
    payload_canonical: str | None = None


# Fast constructors for the append path. A frozen dataclass's ``__init__`` sets
# each field through ``object.__setattr__``: about 2.7 us for an ``Event``
# against 1.1 us for these, paid for every event the writer appends (tests check
# they make instances equal to the classes' own, field for field).
_new = object.__new__


def new_event(
    topic: str,
    seq: int,
    position: int,
    published_at: datetime,
    payload_json: str,
    exclude_id: str | None,
    publisher: str | None,
    hash: str | None,
) -> Event:
    """``Event(topic, seq, ...)``, the same instance, built without ``__init__``."""
    event = _new(Event)
    fields = event.__dict__
    fields["topic"] = topic
    fields["seq"] = seq
    fields["position"] = position
    fields["published_at"] = published_at
    fields["payload_json"] = payload_json
    fields["exclude_id"] = exclude_id
    fields["publisher"] = publisher
    fields["hash"] = hash
    return event


def new_pending(
    topic: str,
    payload_json: str,
    exclude_id: str | None,
    publisher: str | None,
    payload_canonical: str | None,
) -> PendingEvent:
    """``PendingEvent(topic, ...)``, the same instance, built without ``__init__``."""
    pending = _new(PendingEvent)
    fields = pending.__dict__
    fields["topic"] = topic
    fields["payload_json"] = payload_json
    fields["exclude_id"] = exclude_id
    fields["publisher"] = publisher
    fields["payload_canonical"] = payload_canonical
    return pending


@dataclass(frozen=True)
class SubscriptionChange:
    """A subscribe (``added``) or unsubscribe made through the hub; ``topic`` None
    with ``added`` false removed every topic. It applies to events after ``position``."""

    id: int
    subscriber_id: str
    topic: str | None
    added: bool
    position: int


@dataclass(frozen=True)
class HistoryPage:
    events: list[Event] = field(default_factory=list)
    has_more: bool = False


def format_cursor(position: int) -> str:
    return str(position)


def parse_cursor(value: str) -> int:
    """Turn a cursor back into a log position; raises ``InvalidCursor``."""
    from .errors import InvalidCursor

    text = value.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        raise InvalidCursor(
            f"invalid cursor {value[:64]!r}: expected an event id sent by this server "
            "(a non-negative integer)"
        )
    return int(text)


# Formatted timestamps of recent events. The events of one commit share theirs,
# so a replay or an export formats each batch's once instead of each event's.
_FORMATTED: dict[datetime, str] = {}
_FORMATTED_SIZE = 4096


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds, e.g. ``2026-01-02T03:04:05.000006Z``."""
    if moment.tzinfo is UTC:  # equal instants in other zones would share an entry
        text = _FORMATTED.get(moment)
        if text is None:
            if len(_FORMATTED) >= _FORMATTED_SIZE:
                _FORMATTED.clear()
            text = _FORMATTED[moment] = _format(moment)
        return text
    return _format(moment)


def _format(moment: datetime) -> str:
    # %-formatting of the fields, not strftime: about half the cost, and this
    # runs once per event of every replay, history page and export.
    return "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ" % (  # noqa: UP031
        moment.year,
        moment.month,
        moment.day,
        moment.hour,
        moment.minute,
        moment.second,
        moment.microsecond,
    )
