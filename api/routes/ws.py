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
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

from fastapi import APIRouter, WebSocket

from eventhub_log import EventHub, Feed
from eventhub_log import errors as lib
from eventhub_log.model import Gap, format_timestamp

from ..auth import admit_websocket, deny_websocket, require_all, require_subscriber
from ..authz import Identity, Right
from ..errors import ApiError, status_of
from ..limits import (
    ConnectionLimiter,
    TooManyConnections,
    TooManyTopics,
    check_topic_count,
    client_key,
)
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
from .stream import assigned_subscriber

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
        send_queue_bytes=settings.ws_send_queue_bytes,
        frame_rate=settings.ws_frame_rate,
        frame_burst=settings.ws_frame_burst,
    )


async def pump(feed: Feed, connection: Connection) -> None:
    """Feed -> outbox. Blocks when the outbox is full; the feed then catches up
    from the log on its own, so nothing is lost and nobody else waits."""
    try:
        async for item in feed.with_gaps():
            # Not an event of a topic unsubscribed a moment ago.
            if isinstance(item, Gap) or item.topic in feed.topics:
                await connection.send(connection.frames_cache.frame(item))
    except Closed:
        return
    # The hub is shutting down: clients resume from their last id elsewhere.
    await connection.close(CLOSE_GOING_AWAY, "server shutting down")


class _Stream:
    """The connection's current feed; ``resume`` swaps in a new one."""

    def __init__(
        self,
        hub: EventHub,
        connection: Connection,
        subscriber: str,
        identity: Identity,
        max_topics: int,
    ) -> None:
        self.hub = hub
        self.max_topics = max_topics
        self.connection = connection
        self.subscriber = subscriber
        self.identity = identity
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
    identity = await admit_websocket(websocket, settings.cors_origin_list)
    if identity is None:
        return
    # Rights are checked before the socket is accepted, so a refusal is the
    # handshake's answer (401 or 403) rather than a socket that opens and closes.
    try:
        subscriber = query.get("subscriber")
        if subscriber is not None:
            require_subscriber(identity, subscriber)
        else:
            subscriber = assigned_subscriber(identity) or f"ws-{uuid.uuid4().hex}"
        require_all(identity, Right.SUBSCRIBE, query.getlist("topic"))
    except (ApiError, lib.ValidationError) as exc:
        if isinstance(exc, lib.ValidationError):
            status, code = status_of(exc)
            exc = ApiError(status, code, str(exc))
        await deny_websocket(websocket, exc)
        return
    connections: ConnectionLimiter = websocket.app.state.connections
    client = client_key(identity, websocket.client.host if websocket.client else None)
    try:
        connections.acquire(client)
    except TooManyConnections as exc:
        await deny_websocket(websocket, exc)
        return
    try:
        await _serve(websocket, hub, settings, subscriber, identity)
    finally:
        connections.release(client)


async def _serve(
    websocket: WebSocket, hub: EventHub, settings: Settings, subscriber: str, identity: Identity
) -> None:
    query = websocket.query_params
    await websocket.accept()
    async with Connection(websocket, limits(settings)) as connection:
        stream = _Stream(hub, connection, subscriber, identity, settings.max_topics_per_stream)
        expiry = close_at_expiry(connection, identity)
        try:
            try:
                check_topic_count(len(set(query.getlist("topic"))), stream.max_topics)
                feed = await stream.open(
                    query.getlist("topic"),
                    after=query.get("last_event_id") or query.get("after"),
                    from_earliest=query.get("from") == "earliest",
                )
            except lib.EventHubError as exc:
                await connection.send(library_error_frame(exc))
                await connection.close(CLOSE_POLICY, "cannot open the stream")
                return
            except TooManyTopics as exc:
                await connection.send(error_frame(exc.code, exc.message))
                await connection.close(CLOSE_POLICY, exc.code)
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
            # Gaps retention left in the replay come from the feed (pump).
            stream.start()
            async for frame in _frames(connection):
                await _handle(frame, hub, stream, connection)
        except Closed:
            pass
        finally:
            if expiry is not None:
                expiry.cancel()
            await stream.close()


def close_at_expiry(connection: Connection, identity: Identity) -> asyncio.TimerHandle | None:
    """Close the socket with 1008 when its token expires; the client reconnects
    with a fresh token and resumes from its last event id."""
    if identity.expires_at is None:
        return None
    loop = asyncio.get_running_loop()

    def expire() -> None:
        task = loop.create_task(connection.close(CLOSE_POLICY, "token expired"))
        _EXPIRING.add(task)
        task.add_done_callback(_EXPIRING.discard)

    return loop.call_at(loop.time() + max(0.0, identity.expires_at - time.time()), expire)


# Closing tasks, referenced until done (the loop keeps only weak references).
_EXPIRING: set[asyncio.Task[None]] = set()


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
        if op in ("subscribe", "publish"):
            topic = frame.get("topic")
            right = Right.SUBSCRIBE if op == "subscribe" else Right.PUBLISH
            if isinstance(topic, str) and not stream.identity.may(right, topic):
                # Refused, nothing changed, and the socket stays open.
                await conn.send(
                    error_frame(
                        "forbidden", f"no {right.value} right on topic {topic[:255]!r}", **ref
                    )
                )
                return
        if op == "subscribe":
            following = stream.feed.topics if stream.feed is not None else set()
            if frame.get("topic") not in following and len(following) >= stream.max_topics:
                await conn.send(
                    error_frame("too_many_topics", f"at most {stream.max_topics} topics", **ref)
                )
                return
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
            await stream.open(topics, after=after)
            await _ack(conn, op, ref, after=after, topics=topics)
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
        publisher=stream.identity.sub,
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
