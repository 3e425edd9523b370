"""The SSE frames and the client's parser, without a server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from api.sse import FrameCache, encode_event, encode_gap, encode_ready
from eventhub_log.client import _parse
from eventhub_log.model import Event, Gap

MOMENT = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)


def _event(position: int, payload_json: str = '{"a":1}') -> Event:
    return Event("room:lobby", 7, position, MOMENT, payload_json)


def test_event_frame_is_id_and_one_data_line() -> None:
    frame = encode_event(_event(42, '{"text":"é\\n"}'))
    assert frame == (
        b'id: 42\ndata: {"topic":"room:lobby","seq":7,"payload":{"text":"\xc3\xa9\\n"},'
        b'"published_at":"2026-01-02T03:04:05.000006Z"}\n\n'
    )


def test_stored_json_with_line_breaks_still_makes_one_data_line() -> None:
    frame = encode_event(_event(1, '{\n  "a": [1,\r\n 2]\n}'))
    lines = frame.decode().split("\n")
    assert lines[0] == "id: 1"
    assert lines[1].startswith("data: ")
    assert lines[2:] == ["", ""]
    assert json.loads(lines[1][6:])["payload"] == {"a": [1, 2]}


def test_ready_and_gap_frames() -> None:
    assert encode_ready("5", "ch-1", ["a", "b"]) == (
        b'event: ready\nid: 5\ndata: {"subscriber":"ch-1","topics":["a","b"]}\n\n'
    )
    assert encode_gap(Gap("a", 1, 4)) == (
        b'event: gap\ndata: {"topic":"a","from_seq":1,"to_seq":4}\n\n'
    )


def test_frame_cache_shares_frames_and_stays_bounded() -> None:
    cache = FrameCache(size=3)
    first = cache.frame(_event(1))
    assert cache.frame(_event(1)) is first  # another Event object, same position
    for position in range(2, 10):
        cache.frame(_event(position))
    assert len(cache._frames) == 3
    assert cache.frame(_event(1)) == first  # encoded again once evicted


async def _lines(*lines: str) -> AsyncIterator[str]:
    for line in lines:
        yield line


async def test_parser_follows_the_event_stream_format() -> None:
    messages = [
        message
        async for message in _parse(
            _lines(
                ": ping",
                "event: ready",
                "id: 3",
                'data: {"subscriber":"s"}',
                "",
                "id:4",
                "data: line one",
                "data:line two",
                "",
                "",  # an empty event dispatches nothing
                "event: gap",
                "data: {}",
                "",
                "data: unterminated",  # cut off before its blank line: never dispatched
            )
        )
    ]
    assert [(m.event, m.data, m.id) for m in messages] == [
        ("ready", '{"subscriber":"s"}', "3"),
        ("message", "line one\nline two", "4"),
        ("gap", "{}", "4"),  # the last id carries over, as in a browser
    ]
