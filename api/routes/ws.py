"""``GET /v1/ws``: the WebSocket transport of the contract (section 4).

Query (all optional): ``subscriber``, ``topic`` (repeatable), ``last_event_id``
(resume after that cursor), ``from=earliest``. The first frame is
``{"type": "ready", "subscriber", "topics", "id"}``, ``id`` being the cursor the
stream starts after, as for SSE. Client frames: subscribe, unsubscribe, publish,
resume (each may carry a ``ref`` that its ack or error echoes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

from fastapi import APIRouter, WebSocket

from eventhub_log import EventHub, Feed
from eventhub_log import errors as lib
from eventhub_log.model import format_timestamp

from ..errors import status_of
from ..settings import Settings
from ..websocket import (
    CLOSE_GOING_AWAY,
    CLOSE_POLICY,
    Closed,
    Connection,
    Limits,
    error_frame,
    library_error_frame,
)

router = APIRouter(tags=["websocket"])

_FIELDS: dict[str, set[str]] = {
    "subscribe": {"topic"},
    "unsubscribe": {"topic"},
    "publish": {"topic", "payload", "exclude_self"},
    "resume": {"after"},
}


def limits(settings: Settings) -> Limits:
    return Limits(
        max_frame=settings.ws_max_frame or settings.body_limit,
        send_queue=settings.ws_send_queue,
        frame_rate=settings.ws_frame_rate,
        frame_burst=settings.ws_frame_burst,
    )


async def pump(feed: Feed, connection: Connection) -> None:
    """Feed -> outbox. Blocks when the outbox is full; the feed then catches up
    from the log on its own, so nothing is lost and nobody else waits."""
    try:
        async for event in feed:
            if event.topic in feed.topics:  # not one unsubscribed a moment ago
                await connection.send(connection.frames_cache.frame(event))
    except Closed:
        return
    # The hub is shutting down: clients resume from their last id elsewhere.
    await connection.close(CLOSE_GOING_AWAY, "server shutting down")


class _Stream:
    """The connection's current feed; ``resume`` swaps in a new one."""

    def __init__(self, hub: EventHub, connection: Connection, subscriber: str) -> None:
        self.hub = hub
        self.connection = connection
        self.subscriber = subscriber
        self._stack: AsyncExitStack | None = None
        self._pump: asyncio.Task[None] | None = None
        self.feed: Feed | None = None

    async def open(
        self, topics: list[str], *, after: str | None = None, from_earliest: bool = False
    ) -> Feed:
        # The new feed upserts the rows before the old one releases them, so the
        # subscriptions never disappear in between.
        stack = AsyncExitStack()
        try:
            feed = await stack.enter_async_context(
                self.hub.stream(topics, self.subscriber, after=after, from_earliest=from_earliest)
            )
        except BaseException:
            await stack.aclose()
            raise
        await self.close()
        self._stack, self.feed = stack, feed
        return feed

    def start(self) -> None:
        assert self.feed is not None
        self._pump = asyncio.create_task(pump(self.feed, self.connection), name="ws pump")

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
            self._pump = None
        if self._stack is not None:
            stack, self._stack, self.feed = self._stack, None, None
            await stack.aclose()  # the hub removes the rows, shielded


@router.websocket("/v1/ws")
async def websocket_endpoint(websocket: WebSocket) -> None:
    hub: EventHub = websocket.app.state.hub
    settings: Settings = websocket.app.state.settings
    query = websocket.query_params
    await websocket.accept()
    async with Connection(websocket, limits(settings)) as connection:
        subscriber = query.get("subscriber") or f"ws-{uuid.uuid4().hex}"
        stream = _Stream(hub, connection, subscriber)
        try:
            try:
                feed = await stream.open(
                    query.getlist("topic"),
                    after=query.get("last_event_id") or query.get("after"),
                    from_earliest=query.get("from") == "earliest",
                )
            except lib.EventHubError as exc:
                await connection.send(library_error_frame(exc))
                await connection.close(CLOSE_POLICY, "cannot open the stream")
                return
            await connection.send(
                json.dumps(
                    {
                        "type": "ready",
                        "subscriber": subscriber,
                        "topics": sorted(feed.topics),
                        "id": feed.cursor,
                    }
                )
            )
            after = query.get("last_event_id") or query.get("after")
            if after is not None or query.get("from") == "earliest":
                await _send_gaps(hub, connection, feed, after)
            stream.start()
            async for frame in _frames(connection):
                await _handle(frame, hub, stream, connection)
        except Closed:
            pass
        finally:
            await stream.close()


async def _send_gaps(hub: EventHub, conn: Connection, feed: Feed, after: str | None) -> None:
    """Before a replay: what retention deleted that this resume was owed."""
    for gap in await hub.gaps(sorted(feed.topics), after):
        await conn.send(conn.frames_cache.frame(gap))


async def _frames(connection: Connection) -> AsyncIterator[dict[str, Any]]:
    async for frame in connection.frames():
        if not isinstance(frame, dict):
            await connection.reject("invalid_frame", 'a frame is a JSON object with an "op"')
            continue
        yield frame


async def _handle(frame: dict[str, Any], hub: EventHub, stream: _Stream, conn: Connection) -> None:
    ref = {"ref": frame["ref"]} if "ref" in frame else {}
    op = frame.get("op")
    if not isinstance(op, str) or op not in _FIELDS:
        known = ", ".join(_FIELDS)
        await conn.reject("unknown_op", f"unknown op {str(op)[:40]!r}; known: {known}", **ref)
        return
    unknown = set(frame) - _FIELDS[op] - {"op", "ref"}
    if unknown:
        await conn.reject(
            "invalid_frame", f"unknown field(s) for {op}: {', '.join(sorted(unknown))}", **ref
        )
        return
    try:
        if op == "subscribe":
            await hub.subscribe(frame.get("topic"), stream.subscriber)  # type: ignore[arg-type]
            await _ack(conn, op, ref, topic=frame["topic"])
        elif op == "unsubscribe":
            removed = await hub.unsubscribe(frame.get("topic"), stream.subscriber)  # type: ignore[arg-type]
            await _ack(conn, op, ref, topic=frame["topic"], removed=removed)
        elif op == "publish":
            await _publish(frame, hub, stream, conn, ref)
        else:
            after = frame.get("after")
            if not isinstance(after, str):
                raise lib.InvalidCursor('resume needs "after": an event id sent by this server')
            topics = sorted(stream.feed.topics) if stream.feed is not None else []
            feed = await stream.open(topics, after=after)
            await _ack(conn, op, ref, after=after, topics=topics)
            await _send_gaps(hub, conn, feed, after)
            stream.start()
    except lib.EventHubError as exc:
        if isinstance(exc, lib.ValidationError):
            await conn.reject(status_of(exc)[1], str(exc), **ref)
        else:
            await conn.send(library_error_frame(exc, **ref))


async def _publish(
    frame: dict[str, Any], hub: EventHub, stream: _Stream, conn: Connection, ref: dict[str, Any]
) -> None:
    if "payload" not in frame:
        raise lib.ValidationError('publish needs "payload" (any JSON value)')
    exclude_self = frame.get("exclude_self", False)
    if not isinstance(exclude_self, bool):
        raise lib.ValidationError('"exclude_self" must be true or false')
    event = await hub.publish(
        frame.get("topic"),  # type: ignore[arg-type]
        stream.subscriber if exclude_self else None,
        frame["payload"],
    )
    await _ack(
        conn,
        "publish",
        ref,
        topic=event.topic,
        seq=event.seq,
        id=event.id,
        published_at=format_timestamp(event.published_at),
    )


async def _ack(conn: Connection, op: str, ref: dict[str, Any], **fields: Any) -> None:
    await conn.send(json.dumps({"type": "ack", "op": op, **fields, **ref}))


__all__ = ["error_frame", "limits", "pump", "router"]
