"""Checks applied before anything is written: topic names, subscriber ids, payloads."""

from __future__ import annotations

import json
import re
from typing import Any

from .errors import InvalidPayload, InvalidSubscriber, InvalidTopic

MAX_TOPIC_LENGTH = 255
MAX_SUBSCRIBER_LENGTH = 255
TOPIC_RULE = (
    "a topic is 1 to 255 characters from letters, digits and ': _ - . @ /', "
    "with no leading or trailing '/' and no empty, '.' or '..' segment"
)
_TOPIC_CHARS = re.compile(r"[A-Za-z0-9:_\-.@/]+")
_ENCODER = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), check_circular=True
)


def validate_topic(topic: object) -> str:
    if not isinstance(topic, str):
        raise InvalidTopic(f"topic must be a string, not {type(topic).__name__}; {TOPIC_RULE}")
    if not topic or len(topic) > MAX_TOPIC_LENGTH:
        raise InvalidTopic(f"invalid topic of length {len(topic)}: {TOPIC_RULE}")
    if _TOPIC_CHARS.fullmatch(topic) is None:
        raise InvalidTopic(f"invalid topic {topic[:80]!r}: {TOPIC_RULE}")
    if any(part in ("", ".", "..") for part in topic.split("/")):
        raise InvalidTopic(f"invalid topic {topic[:80]!r}: {TOPIC_RULE}")
    return topic


def validate_subscriber(subscriber_id: object) -> str:
    if not isinstance(subscriber_id, str):
        raise InvalidSubscriber(
            f"subscriber id must be a string, not {type(subscriber_id).__name__}"
        )
    if not subscriber_id or len(subscriber_id) > MAX_SUBSCRIBER_LENGTH:
        raise InvalidSubscriber("subscriber id must be 1 to 255 characters")
    if not subscriber_id.isprintable():
        raise InvalidSubscriber("subscriber id must not contain control characters")
    return subscriber_id


def validate_exclude(exclude_id: object) -> str | None:
    return None if exclude_id is None else validate_subscriber(exclude_id)


def encode_payload(payload: Any) -> str:
    """Encode strictly: only JSON types, finite numbers, string keys."""
    _check_json_types(payload)
    try:
        text = _ENCODER.encode(payload)
    except (TypeError, ValueError) as exc:  # circular references, NaN, huge ints
        raise InvalidPayload(f"payload is not JSON-serialisable: {exc}") from exc
    if not text.isascii():
        # A lone surrogate (say from a badly decoded file name) has no UTF-8 form:
        # the database would refuse it at commit time, failing the whole batch.
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidPayload(
                "payload is not JSON-serialisable: it contains a lone surrogate "
                f"{text[exc.start : exc.end]!r}, which is not Unicode text"
            ) from exc
    return text


def _check_json_types(value: Any, depth: int = 0) -> None:
    # json.dumps quietly turns tuples into lists and int keys into strings, and
    # stores NaN as a bare token other parsers reject; refuse them all up front.
    if depth > 200:
        raise InvalidPayload(
            "payload is not JSON-serialisable: nested more than 200 levels deep "
            "(or it contains itself)"
        )
    if value is None or isinstance(value, bool | str):
        return
    if isinstance(value, int | float):
        if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
            raise InvalidPayload(
                "payload is not JSON-serialisable: NaN and Infinity have no JSON form"
            )
        return
    if isinstance(value, list):
        for item in value:
            _check_json_types(item, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidPayload(
                    "payload is not JSON-serialisable: object keys must be strings, "
                    f"found {type(key).__name__} key {key!r}"
                )
            _check_json_types(item, depth + 1)
        return
    raise InvalidPayload(
        f"payload is not JSON-serialisable: {type(value).__name__} is not a JSON type "
        "(use dict, list, str, int, float, bool or None)"
    )
