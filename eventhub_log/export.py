"""Events as text for export: NDJSON lines and CSV rows, payloads written as stored."""

from __future__ import annotations

import json

from .model import Event, format_timestamp

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
CSV_HEADER = ("topic", "seq", "id", "published_at", "exclude", "publisher", "hash", "payload")


def event_json(event: Event) -> str:
    """``{"topic","seq","id","payload","published_at","exclude","publisher","hash"}`` as JSON text.

    Written by hand: the payload is spliced in as the JSON text the log holds, not
    decoded and encoded again, and topics (letters, digits and ``:_-.@/``), ids and
    timestamps and hashes never need escaping; only ``exclude`` and ``publisher`` go through
    the encoder. An export of millions of events should cost one pass.
    """
    exclude = "null" if event.exclude_id is None else _ENCODER.encode(event.exclude_id)
    publisher = "null" if event.publisher is None else _ENCODER.encode(event.publisher)
    digest = "null" if event.hash is None else f'"{event.hash}"'
    return (
        f'{{"topic":"{event.topic}","seq":{event.seq},"id":"{event.id}",'
        f'"payload":{event.payload_json},"published_at":"{format_timestamp(event.published_at)}",'
        f'"exclude":{exclude},"publisher":{publisher},"hash":{digest}}}'
    )


def ndjson_line(event: Event) -> str:
    return event_json(event) + "\n"


def csv_row(event: Event) -> tuple[str, int, str, str, str, str, str, str]:
    return (
        event.topic,
        event.seq,
        event.id,
        format_timestamp(event.published_at),
        event.exclude_id or "",
        event.publisher or "",
        event.hash or "",
        event.payload_json,
    )
