"""``GET /v1/stream``: the SSE stream of contract section 3 (machinery in ``api/sse.py``)."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request

from eventhub_log import EventHub
from eventhub_log.model import parse_cursor
from eventhub_log.validation import validate_subscriber, validate_topic

from ..auth import IdentityDep, require_all, require_subscriber
from ..authz import Identity, Right
from ..deps import HubDep, SettingsDep
from ..limits import ConnectionLimiter, check_topic_count, client_key
from ..settings import Settings
from ..sse import MEDIA_TYPE, EventStreamResponse, StreamRegistry, registry_of

router = APIRouter(tags=["stream"])
PATH = "/v1/stream"  # also served ahead of the app by api/fast_stream.py

_ERROR = {
    "content": {
        "application/json": {
            "example": {"error": {"code": "invalid_cursor", "message": "invalid cursor 'x': ..."}}
        }
    }
}


@router.get(
    PATH,
    response_class=EventStreamResponse,
    # Said outright: FastAPI cannot read a default status from this response class,
    # and without one the whole OpenAPI document fails to build.
    status_code=200,
    summary="Server-sent events: replay from a cursor, then live",
    description=(
        "First `event: ready` with an `id:` (the position the stream starts after) and "
        '`data: {"subscriber", "topics"}`; then each event as `id: <cursor>` and '
        '`data: {"topic", "seq", "payload", "published_at"}`; `event: gap` where '
        "retention removed events a resume needed; `: ping` comments while idle. "
        "Reconnect with `Last-Event-ID` (or `last_event_id`) to resume exactly."
    ),
    responses={
        200: {"content": {MEDIA_TYPE: {}}, "description": "the event stream"},
        400: {"description": "invalid topic, subscriber or cursor", **_ERROR},
        401: {"description": "no valid token where one is needed", **_ERROR},
        403: {
            "description": "no subscribe right on a topic, or a subscriber id not the token's",
            **_ERROR,
        },
        422: {"description": "no topic, or an unknown `from` value", **_ERROR},
        429: {"description": "this client has too many streams and sockets open", **_ERROR},
        503: {"description": "the database is unavailable", **_ERROR},
        507: {"description": "the database has no room for the stream's rows", **_ERROR},
    },
)
async def stream(
    request: Request,
    hub: HubDep,
    settings: SettingsDep,
    identity: IdentityDep,
    topic: Annotated[list[str], Query(description="a topic to follow (repeatable)")],
    subscriber: Annotated[
        str | None, Query(description="subscriber id; assigned by the server when absent")
    ] = None,
    last_event_id: Annotated[
        str | None, Query(description="resume after this id (for clients without headers)")
    ] = None,
    from_: Annotated[
        Literal["earliest"] | None,
        Query(alias="from", description="`earliest`: replay all retained history first"),
    ] = None,
    last_event_id_header: Annotated[
        str | None,
        Header(alias="Last-Event-ID", description="resume after this id (wins over the query)"),
    ] = None,
) -> EventStreamResponse:
    return stream_response(
        hub,
        registry_of(
            request.app.state,
            heartbeat_interval=settings.heartbeat_interval,
            write_timeout=settings.stream_write_timeout,
            coalesce=settings.stream_coalesce,
            frame_cache_bytes=settings.frame_cache_bytes,
        ),
        request.app.state.connections,
        settings,
        identity,
        topic,
        subscriber=subscriber,
        cursor=last_event_id_header or last_event_id or None,
        from_earliest=from_ == "earliest",
        peer=request.client.host if request.client else None,
    )


def stream_response(
    hub: EventHub,
    registry: StreamRegistry,
    connections: ConnectionLimiter,
    settings: Settings,
    identity: Identity,
    topic: list[str],
    *,
    subscriber: str | None,
    cursor: str | None,
    from_earliest: bool,
    peer: str | None,
) -> EventStreamResponse:
    """The stream a request asks for, once everything that can be refused has
    been checked (raising the route's 400, 401 or 403). The route and the fast
    path (api/fast_stream.py) both come through here: one place decides who
    may stream what."""
    topics = list(dict.fromkeys(validate_topic(name) for name in topic))
    check_topic_count(len(topics), settings.max_topics_per_stream)
    require_all(identity, Right.SUBSCRIBE, topics)
    if subscriber is not None:
        validate_subscriber(subscriber)
        require_subscriber(identity, subscriber)
    else:
        subscriber = assigned_subscriber(identity)
    # An EventSource reconnects to the URL it was opened with, adding the header:
    # the caller gives the header's cursor first, as the newer position, and a
    # resume wins over from=earliest.
    if cursor is not None:
        parse_cursor(cursor)
    return EventStreamResponse(
        hub,
        registry,
        topics=topics,
        subscriber=subscriber,
        after=cursor,
        from_earliest=from_earliest and cursor is None,
        expires_at=identity.expires_at,
        connections=connections,
        client=client_key(identity, peer),
    )


def assigned_subscriber(identity: Identity) -> str | None:
    """The id of a stream or socket opened without one: ``{sub}:<random>``, an id
    of the token's own that nobody else may act as; for an anonymous client the
    hub's default (``None`` here)."""
    if identity.sub is None:
        return None
    return validate_subscriber(f"{identity.sub}:{uuid.uuid4().hex}")
