"""Events as text for export: NDJSON lines and CSV rows, payloads written as stored."""

from __future__ import annotations

import json

from .model import Event, format_timestamp

CSV_HEADER = ("topic", "seq", "id", "published_at", "exclude", "payload")


def ndjson_line(event: Event) -> str:
    """``{"topic","seq","id","payload","published_at","exclude"}`` and a newline.

    The payload is spliced in as the JSON text the log holds, not decoded and
    encoded again: an export of millions of events should cost one pass.
    """
    head = json.dumps(
        {"topic": event.topic, "seq": event.seq, "id": event.id},
        separators=(",", ":"),
        ensure_ascii=False,
    )
    tail = json.dumps(
        {"published_at": format_timestamp(event.published_at), "exclude": event.exclude_id},
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return f'{head[:-1]},"payload":{event.payload_json},{tail[1:]}\n'


def csv_row(event: Event) -> tuple[str, int, str, str, str, str]:
    return (
        event.topic,
        event.seq,
        event.id,
        format_timestamp(event.published_at),
        event.exclude_id or "",
        event.payload_json,
    )
