"""Checks applied before anything is written: topic names, subscriber ids, payloads."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from json.encoder import c_make_encoder  # type: ignore[attr-defined]
from typing import Any

import rfc8785

from .errors import (
    InvalidPayload,
    InvalidPublisher,
    InvalidSubscriber,
    InvalidTopic,
    ValidationError,
)

MAX_TOPIC_LENGTH = 255
MAX_SUBSCRIBER_LENGTH = 255
MAX_PUBLISHER_LENGTH = 255
TOPIC_RULE = (
    "a topic is 1 to 255 characters from letters, digits and ': _ - . @ /', "
    "with no leading or trailing '/' and no empty, '.' or '..' segment"
)
_TOPIC_CHARS = re.compile(r"[A-Za-z0-9:_\-.@/]+")
MAX_PAYLOAD_DEPTH = 200
_INF = float("inf")
_ENCODER = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), check_circular=True
)
# Topics seen valid: most publishes go to a few hot topics, and the rule is
# cheap but not free. Bounded, so a stream of distinct names cannot grow it.
_VALID_TOPICS: set[str] = set()
_VALID_TOPICS_KEPT = 10_000
# Types that need no further look, checked by exact type (subclasses take the
# general path): a set lookup is much cheaper than isinstance with a union.
# ``int`` is not one: RFC 8785 writes numbers as IEEE doubles, so an integer
# beyond 2**53 - 1 would hash as a different number (see encode_for_log).
_JSON_LEAVES = frozenset({str, bool, type(None)})
MAX_SAFE_INTEGER = 2**53 - 1


def validate_topic(topic: object) -> str:
    if type(topic) is str and topic in _VALID_TOPICS:
        return topic
    if not isinstance(topic, str):
        raise InvalidTopic(f"topic must be a string, not {type(topic).__name__}; {TOPIC_RULE}")
    if not topic or len(topic) > MAX_TOPIC_LENGTH:
        raise InvalidTopic(f"invalid topic of length {len(topic)}: {TOPIC_RULE}")
    if _TOPIC_CHARS.fullmatch(topic) is None:
        raise InvalidTopic(f"invalid topic {topic[:80]!r}: {TOPIC_RULE}")
    if any(part in ("", ".", "..") for part in topic.split("/")):
        raise InvalidTopic(f"invalid topic {topic[:80]!r}: {TOPIC_RULE}")
    if type(topic) is str:
        if len(_VALID_TOPICS) >= _VALID_TOPICS_KEPT:
            _VALID_TOPICS.clear()
        _VALID_TOPICS.add(topic)
    return topic


def validate_topics(topics: object) -> list[str]:
    """A collection of topic names; a lone string is refused, not read as letters."""
    if isinstance(topics, str | bytes):
        raise InvalidTopic(
            f"expected a collection of topics, got the single string {topics[:80]!r}: pass [topic]"
        )
    if not isinstance(topics, Iterable):
        raise InvalidTopic(f"expected a collection of topics, not {type(topics).__name__}")
    return [validate_topic(topic) for topic in topics]


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


def validate_publisher(publisher: object) -> str | None:
    """``None`` (an open hub) or who published: the token's ``sub``, stored as given."""
    if publisher is None:
        return None
    if not isinstance(publisher, str):
        raise InvalidPublisher(
            f"publisher must be a string or None, not {type(publisher).__name__}"
        )
    if not publisher or len(publisher) > MAX_PUBLISHER_LENGTH:
        raise InvalidPublisher(
            f"publisher must be 1 to {MAX_PUBLISHER_LENGTH} characters, not {len(publisher)}"
        )
    if "\x00" in publisher:
        # PostgreSQL text cannot hold NUL: the commit would fail (a 5xx), and
        # SQLite would store what PostgreSQL refuses.
        raise InvalidPublisher("publisher must not contain a NUL character")
    if not publisher.isascii():
        # A lone surrogate (JSON's "\ud800" decodes to one) has no UTF-8 form: the
        # database would refuse it at commit, failing the whole batch it rode in.
        try:
            publisher.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidPublisher(
                "publisher is not Unicode text: it contains a lone surrogate "
                f"{publisher[exc.start : exc.end]!r}"
            ) from exc
    return publisher


def validate_range(
    *,
    after_seq: object = None,
    before_seq: object = None,
    since: object = None,
    until: object = None,
    limit: object = None,
    max_limit: int = 1000,
    order: object = "asc",
) -> None:
    """Check a history selection before it reaches SQL, where a wrong type would
    be a database error on one backend and an empty answer on another."""
    for name, seq in (("after_seq", after_seq), ("before_seq", before_seq)):
        if seq is not None and (type(seq) is bool or not isinstance(seq, int) or seq < 0):
            raise ValidationError(f"{name} must be a non-negative integer, not {seq!r}")
    for name, moment in (("since", since), ("until", until)):
        if moment is not None and not isinstance(moment, datetime):
            raise ValidationError(
                f"{name} must be a datetime (naive means UTC), not {type(moment).__name__}"
            )
    if limit is not None and (
        type(limit) is bool or not isinstance(limit, int) or not 1 <= limit <= max_limit
    ):
        raise ValidationError(f"limit must be between 1 and {max_limit}, not {limit!r}")
    if order not in ("asc", "desc"):
        raise ValidationError(f"order must be 'asc' or 'desc', not {order!r}")


def encode_payload(payload: Any) -> str:
    """Encode strictly: only JSON types, finite numbers, string keys."""
    return encode_for_log(payload)[0]


def encode_for_log(payload: Any) -> tuple[str, str]:
    """The payload's stored JSON text and its RFC 8785 (JCS) text, for the hash chain.

    Refuses with ``InvalidPayload`` what either cannot represent exactly: non-JSON
    types, NaN and infinities, lone surrogates, and integers beyond
    +/-(2**53 - 1), which JCS writes as the nearest double (a different number,
    so a verifier in another language would disagree). Refusing here, before the
    writer, means one bad caller never fails a batch.

    For the usual payload (no floats, exact JSON types, keys within the Basic
    Multilingual Plane) the standard library's sorted, compact encoding is
    byte-for-byte JCS, at a twentieth of ``rfc8785``'s cost; anything else is
    canonicalised by ``rfc8785`` from the stored text, which is what a verifier
    reads back.
    """
    plain = _check_json_types(payload)
    try:
        text = _encode(payload)
    except (TypeError, ValueError) as exc:
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
    if plain:
        return text, _encode_sorted(payload)
    try:
        return text, rfc8785.dumps(json.loads(text)).decode()
    except rfc8785.CanonicalizationError as exc:
        raise InvalidPayload(f"payload has no RFC 8785 form: {exc}") from exc


def _refuse(value: object) -> Any:
    raise TypeError(f"{type(value).__name__} is not a JSON type")


def _c_encoder(*, sort_keys: bool = False) -> Callable[[Any], str] | None:
    """The C encoder ``JSONEncoder.encode`` builds on every call, built once.

    It needs no circular-reference markers: ``_check_json_types`` has already
    refused cycles (as nesting too deep), NaN and every non-JSON type.
    """
    if c_make_encoder is None:  # an interpreter without the C accelerator
        return None
    chunks: Callable[[Any, int], Iterator[str]] = c_make_encoder(
        None, _refuse, json.encoder.encode_basestring, None, ":", ",", sort_keys, False, False
    )
    return lambda payload: "".join(chunks(payload, 0))


_encode: Callable[[Any], str] = _c_encoder() or _ENCODER.encode
_encode_sorted: Callable[[Any], str] = (
    _c_encoder(sort_keys=True)
    or json.JSONEncoder(
        ensure_ascii=False, allow_nan=False, separators=(",", ":"), sort_keys=True
    ).encode
)


def _check_json_types(value: Any, depth: int = 0) -> bool:
    """Refuse what JSON or RFC 8785 cannot hold; ``True`` when the payload is plain:
    no floats (JCS formats numbers as ECMAScript does, not as Python does), exact
    JSON types only, and no object key beyond the Basic Multilingual Plane (JCS
    sorts keys by UTF-16 code units, Python by code points; they agree below it)."""
    # json.dumps quietly turns tuples into lists and int keys into strings, and
    # stores NaN as a bare token other parsers reject; refuse them all up front.
    if depth > MAX_PAYLOAD_DEPTH:
        raise InvalidPayload(
            "payload is not JSON-serialisable: nested more than 200 levels deep "
            "(or it contains itself)"
        )
    kind = type(value)
    if kind in _JSON_LEAVES:
        return True
    if kind is int:
        if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            return True
        raise _unsafe_integer(value)
    plain = True
    # Children of a container at the depth limit are checked (and refused) below.
    leaves = _JSON_LEAVES if depth < MAX_PAYLOAD_DEPTH else frozenset()
    if kind is dict or (kind is not list and isinstance(value, dict)):
        plain = kind is dict
        for key, item in value.items():
            if type(key) is not str:
                if not isinstance(key, str):
                    raise InvalidPayload(
                        "payload is not JSON-serialisable: object keys must be strings, "
                        f"found {type(key).__name__} key {key!r}"
                    )
                plain = False
            elif not key.isascii() and max(key) > "\uffff":
                plain = False
            if type(item) not in leaves and not _check_json_types(item, depth + 1):
                plain = False
        return plain
    if kind is list or isinstance(value, list):
        plain = kind is list
        for item in value:
            if type(item) not in leaves and not _check_json_types(item, depth + 1):
                plain = False
        return plain
    if isinstance(value, (bool, str)):
        return False
    if isinstance(value, int):
        if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            return False
        raise _unsafe_integer(value)
    if isinstance(value, float):
        if value != value or value in (_INF, -_INF):
            raise InvalidPayload(
                "payload is not JSON-serialisable: NaN and Infinity have no JSON form"
            )
        return False
    raise InvalidPayload(
        f"payload is not JSON-serialisable: {type(value).__name__} is not a JSON type "
        "(use dict, list, str, int, float, bool or None)"
    )


def _unsafe_integer(value: int) -> InvalidPayload:
    shown = str(value) if value.bit_length() < 200 else f"an integer of {value.bit_length()} bits"
    return InvalidPayload(
        f"payload integer {shown} is beyond +/-(2**53 - 1): RFC 8785, which the event "
        "hash uses, cannot represent it exactly; send it as a string"
    )
