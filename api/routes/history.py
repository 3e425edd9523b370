"""History for auditors: pages with ``next`` links, or the whole range as NDJSON."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse

from eventhub_log import EventHub
from eventhub_log.errors import ValidationError
from eventhub_log.export import event_json, ndjson_line
from eventhub_log.hub import MAX_HISTORY_LIMIT
from eventhub_log.timeutil import parse_rfc3339
from eventhub_log.validation import validate_topic

from ..auth import QUERY, IdentityDep, require
from ..authz import Right
from ..deps import HubDep
from ..errors import ApiError
from ..schemas import HistoryOut, errors

router = APIRouter(prefix="/v1", tags=["history"])

NDJSON = "application/x-ndjson"
_MAX_SEQ = 2**63 - 1
Seq = Annotated[int | None, Query(ge=0, le=_MAX_SEQ)]
Time = Annotated[
    str | None,
    Query(description="RFC 3339 date-time with an offset, e.g. 2026-01-02T03:04:05Z"),
]


def parse_time(name: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_rfc3339(value, name)
    except ValidationError as exc:
        raise ApiError(400, "invalid_time", str(exc)) from exc


@router.get(
    "/topics/{topic:path}/events",
    summary="A topic's history",
    response_model=HistoryOut,
    responses={
        200: {
            "content": {NDJSON: {"schema": {"type": "string"}}},
            "description": f"a page; with `Accept: {NDJSON}` the whole selected range, "
            "one event a line",
        },
        **errors(400, 401, 403, 422),
    },
)
async def topic_history(
    request: Request,
    topic: str,
    hub: HubDep,
    identity: IdentityDep,
    after_seq: Seq = None,
    before_seq: Seq = None,
    since: Time = None,
    until: Time = None,
    limit: Annotated[int, Query(ge=1, le=MAX_HISTORY_LIMIT)] = 100,
    order: Literal["asc", "desc"] = "asc",
) -> Response:
    """Filters: ``after_seq``/``before_seq`` (exclusive), ``since`` (inclusive) and
    ``until`` (exclusive). ``next`` continues in the same order with the same filters.
    Needs the ``history`` right on the topic."""
    validate_topic(topic)
    require(identity, Right.HISTORY, topic)
    selection = Selection(
        after_seq=after_seq,
        before_seq=before_seq,
        since=parse_time("since", since),
        until=parse_time("until", until),
        order=order,
    )
    if NDJSON in request.headers.get("accept", ""):
        return StreamingResponse(_ndjson(hub, topic, selection), media_type=NDJSON)
    page = await hub.history_page(
        topic,
        after_seq=after_seq,
        before_seq=before_seq,
        since=selection.since,
        until=selection.until,
        limit=limit,
        order=order,
    )
    link: str | None = None
    if page.has_more:
        # Never the token: a link is copied into logs, bookmarks and other hands.
        params = {key: value for key, value in request.query_params.items() if key != QUERY}
        last = page.events[-1].seq
        params["before_seq" if order == "desc" else "after_seq"] = str(last)
        link = f"/v1/topics/{topic}/events?{urlencode(params)}"
    # Pre-encoded: a page of 1000 events through response models costs far more
    # than the query; the shape is HistoryOut's.
    events = ",".join(event_json(event) for event in page.events)
    body = f'{{"events":[{events}],"next":{json.dumps(link)}}}'
    return Response(body.encode(), media_type="application/json")


@dataclass(frozen=True)
class Selection:
    after_seq: int | None
    before_seq: int | None
    since: datetime | None
    until: datetime | None
    order: Literal["asc", "desc"]


async def _ndjson(hub: EventHub, topic: str, selection: Selection) -> AsyncIterator[bytes]:
    lines: list[str] = []
    events = hub.export(
        topic,
        after_seq=selection.after_seq,
        before_seq=selection.before_seq,
        since=selection.since,
        until=selection.until,
        order=selection.order,
    )
    async for event in events:
        lines.append(ndjson_line(event))
        if len(lines) >= 200:  # a write per line would dominate a large export
            yield "".join(lines).encode()
            lines.clear()
    if lines:
        yield "".join(lines).encode()
