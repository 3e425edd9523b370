"""Property tests over the parsers that take client text: whatever a client
sends, each either accepts it (and what it accepted means what was sent) or
refuses it with the library's ValidationError, which the API answers as a 4xx.
Any other exception would be a 5xx."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import rfc8785
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from eventhub_log.errors import ValidationError
from eventhub_log.model import format_cursor, parse_cursor
from eventhub_log.timeutil import parse_rfc3339
from eventhub_log.validation import encode_for_log, validate_topic

PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text shaped like what the parsers expect, so the accepting branches are reached.
TIME_LIKE = st.from_regex(
    r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,12})?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})\Z"
)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@PROPERTY
@given(st.text() | st.integers(min_value=0, max_value=2**70).map(str))
@example("18446744073709551616")
@example("٣")  # a digit that is not ASCII
def test_a_cursor_is_a_position_or_refused(text: str) -> None:
    try:
        position = parse_cursor(text)
    except ValidationError:
        return
    assert 0 <= position < 10**19
    assert parse_cursor(format_cursor(position)) == position


@PROPERTY
@given(TIME_LIKE | st.text())
@example("0001-01-01T00:00:00+23:59")
@example("9999-12-31T23:59:59-23:59")
@example("2026-02-30T00:00:00Z")
def test_a_time_is_a_utc_instant_in_range_or_refused(text: str) -> None:
    try:
        moment = parse_rfc3339(text)
    except ValidationError:
        return
    assert moment.tzinfo is not None
    assert moment.utcoffset() == timedelta(0)
    assert datetime(1, 1, 1, tzinfo=UTC) <= moment <= datetime.max.replace(tzinfo=UTC)


@PROPERTY
@given(st.text(max_size=300) | st.from_regex(r"\A[a-z:/._-]{1,40}\Z"))
@example("a/../b")
@example("room:\x00")
def test_a_topic_is_accepted_as_is_or_refused(text: str) -> None:
    try:
        topic = validate_topic(text)
    except ValidationError:
        return
    assert topic == text
    assert "\x00" not in topic
    assert topic.encode("utf-8")  # storable on both databases


@PROPERTY
@given(JSON_VALUES)
@example({"deep": [[[[[[1]]]]]]})
@example(2**53)
@example("\ud800")
def test_a_payload_is_stored_exactly_or_refused(payload: Any) -> None:
    try:
        stored, canonical = encode_for_log(payload)
    except ValidationError:
        return
    assert json.loads(stored) == payload
    assert canonical.encode() == rfc8785.dumps(payload)


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=1, max_value=200_000))
def test_deep_nesting_is_refused_not_a_crash(depth: int) -> None:
    payload: Any = 1
    for _ in range(depth):
        payload = [payload]
    with contextlib.suppress(ValidationError):  # anything else (RecursionError) fails
        encode_for_log(payload)
