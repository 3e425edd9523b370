"""Idempotency keys: a retried publish returns its first result and appends nothing.

A key is stored in the same write transaction as the events it produced, so a
key exists if and only if its events do: a crash between the two is impossible,
and a retry after a lost acknowledgement finds the key and gets the same events
back. Within a batch of the group-commit writer keys are resolved in order: an
existing key replays, a key already taken by an earlier submission of the same
batch replays that submission's events, and only first uses append.

Rather than the events themselves, a key keeps their coordinates (topic, seq,
position, published_at) and publisher: a request with the same key must carry
the same events from the same publisher (the request hash says so), so the
payloads are the retry's own.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import ModuleType

from sqlalchemy.ext.asyncio import AsyncConnection

from .errors import IdempotencyConflict, ValidationError
from .model import Event, PendingEvent
from .store import keys as key_queries
from .store import queries

MAX_KEY_LENGTH = 255


def validate_key(key: object) -> str:
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise ValidationError("an idempotency key must be a string of 1 to 255 characters")
    if not key.isprintable() or not key.isascii():
        raise ValidationError("an idempotency key must be printable ASCII")
    return key


def request_hash(events: Sequence[PendingEvent]) -> str:
    """A digest of what is being published and by whom, blind to object key order.

    Another publisher's request with the same key and events is a conflict, not a
    replay: its events would otherwise be dropped under someone else's name. With
    no publisher an event hashes as it did before publishers were recorded, so a
    retry across the upgrade still finds its key.
    """
    canonical = [
        [event.topic, event.exclude_id, json.loads(event.payload_json)]
        if event.publisher is None
        else [event.topic, event.exclude_id, json.loads(event.payload_json), event.publisher]
        for event in events
    ]
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def encode_result(events: Sequence[Event]) -> str:
    return json.dumps(
        [
            [ev.topic, ev.seq, ev.position, ev.published_at.isoformat(), ev.publisher, ev.hash]
            for ev in events
        ],
        separators=(",", ":"),
    )


def decode_result(text: str, pending: Sequence[PendingEvent]) -> list[Event]:
    rows = json.loads(text)
    return [
        Event(
            topic=row[0],
            seq=row[1],
            position=row[2],
            published_at=datetime.fromisoformat(row[3]),
            payload_json=item.payload_json,
            exclude_id=item.exclude_id,
            # Keys stored before revision 0005 hold four fields: their events have none.
            publisher=row[4] if len(row) > 4 else None,
            # And those stored before revision 0006 no hash.
            hash=row[5] if len(row) > 5 else None,
        )
        for row, item in zip(rows, pending, strict=True)
    ]


@dataclass(frozen=True)
class KeyedRequest:
    events: Sequence[PendingEvent]
    key: str | None
    request_hash: str


@dataclass(frozen=True)
class Outcome:
    """What one request of a batch got: its events (``replayed`` if it was a
    retry), or the error that refused it without writing anything."""

    events: list[Event] | None = None
    replayed: bool = False
    error: IdempotencyConflict | None = None


def _conflict(key: str) -> IdempotencyConflict:
    return IdempotencyConflict(
        f"idempotency key {key[:80]!r} was already used for a different request; "
        "a retry must send the same events (or use a new key)"
    )


async def append_keyed(
    conn: AsyncConnection,
    dialect: ModuleType,
    requests: Sequence[KeyedRequest],
    now: datetime,
    ttl: float,
) -> tuple[list[Event], list[Outcome]]:
    """Append a batch where some requests carry keys, inside the caller's write
    transaction. Returns the events appended and one outcome per request."""
    # Take the log's write lock before looking keys up, so that no other writer
    # (another instance on PostgreSQL) can store the same key in between.
    await key_queries.lock_log(conn)
    keys = {request.key for request in requests if request.key is not None}
    await key_queries.delete_expired(conn, now - timedelta(seconds=ttl), keys)
    existing = await key_queries.find(conn, keys)

    first_of_key: dict[str, int] = {}
    plan: list[tuple[str, int | None]] = []  # ("append"|"replay"|"same"|"conflict", index)
    for index, request in enumerate(requests):
        key = request.key
        if key is None:
            plan.append(("append", None))
        elif key in existing:
            stored_hash, _ = existing[key]
            plan.append(("replay" if stored_hash == request.request_hash else "conflict", None))
        elif key in first_of_key:
            first = requests[first_of_key[key]]
            same = first.request_hash == request.request_hash
            plan.append(("same", first_of_key[key]) if same else ("conflict", None))
        else:
            first_of_key[key] = index
            plan.append(("append", None))

    pending = [
        event
        for request, (action, _) in zip(requests, plan, strict=True)
        if action == "append"
        for event in request.events
    ]
    stored = await queries.append(conn, dialect, pending, now) if pending else []

    appended: dict[int, list[Event]] = {}
    offset = 0
    for index, (request, (action, _)) in enumerate(zip(requests, plan, strict=True)):
        if action == "append":
            appended[index] = stored[offset : offset + len(request.events)]
            offset += len(request.events)

    new_keys = [
        {
            "key": key,
            "request_hash": requests[index].request_hash,
            "response": encode_result(appended[index]),
            "created_at": now,
        }
        for key, index in first_of_key.items()
    ]
    if new_keys:
        await key_queries.insert(conn, new_keys)

    outcomes: list[Outcome] = []
    for index, (request, (action, source)) in enumerate(zip(requests, plan, strict=True)):
        if action == "append":
            outcomes.append(Outcome(events=appended[index]))
        elif action == "same":
            assert source is not None
            # Built from the first request's coordinates and this one's payloads.
            outcomes.append(
                Outcome(
                    events=decode_result(encode_result(appended[source]), request.events),
                    replayed=True,
                )
            )
        elif action == "replay":
            assert request.key is not None
            _, response = existing[request.key]
            outcomes.append(Outcome(events=decode_result(response, request.events), replayed=True))
        else:
            assert request.key is not None
            outcomes.append(Outcome(error=_conflict(request.key)))
    return stored, outcomes


async def purge_expired(conn: AsyncConnection, now: datetime, ttl: float) -> int:
    return await key_queries.delete_expired(conn, now - timedelta(seconds=ttl), None)
