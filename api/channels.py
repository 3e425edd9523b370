"""Channels on the wire: WebSocket, and SSE with messages POSTed.

``mount_channels(app, chat, presence)`` adds, for each declared channel:

- ``WS /v1/channels/{name}/{channel_id}``: one socket; client frames are
  messages ``{"action", "data", "ref"?}``.
- ``GET /v1/channels/{name}/{channel_id}``: the same channel as server-sent
  events; messages go by ``POST /v1/channels/{name}/{channel_id}/messages``
  and the reply comes back in that POST's response.

Opening data is the query string (every parameter but ``last_event_id``), or
JSON in ``opening=``, validated by the channel's opening type. Reconnecting with
``last_event_id`` (or, for SSE, the ``Last-Event-ID`` header an EventSource sends
by itself) runs the connect handler again and resumes after that cursor.

Server frames, WebSocket (SSE uses the ``type`` as the event name, and sends
events with ``id:`` and no name, exactly as ``/v1/stream`` does):
``welcome`` ``{"channel_id", "id", "data"}`` first (``id``: the cursor to resume
from if dropped before any event), ``event`` (as ``/v1/ws``), ``reply``
``{"action", "ref", "data"}``, ``message`` ``{"data"}`` (``channel.send``), and
``error`` ``{"code", "message", "ref"?}``.

A POST reaches a channel connected to this process; with several instances the
load balancer must send a channel's POSTs where its stream is (sticky by path).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections import deque
from collections.abc import Iterable
from contextlib import AsyncExitStack
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from eventhub_log import EventHub, Feed
from eventhub_log import errors as lib
from eventhub_log.channels import (
    ChannelConnection,
    ChannelError,
    ChannelRoute,
    ConnectionInfo,
    HandlerFailed,
    InvalidMessage,
    InvalidOpeningData,
    Reply,
    open_channel,
)
from eventhub_log.model import Event, Gap

from .auth import (
    QUERY,
    IdentityDep,
    admit_websocket,
    deny_websocket,
    require_subscriber,
)
from .authz import Identity
from .body import is_json
from .errors import ApiError, public_error
from .routes.ws import close_at_expiry, limits
from .settings import Settings
from .sse import encode_event, encode_gap
from .websocket import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    CLOSE_POLICY,
    Closed,
    Connection,
    error_frame,
)

log = logging.getLogger(__name__)

RESERVED_QUERY = {"last_event_id", "opening", QUERY}
# How often an idle channel stream looks for a server shutdown (and a ping due).
SHUTDOWN_CHECK = 0.5


def mount_channels(app: FastAPI, *routes: ChannelRoute[Any]) -> None:
    """Serve these channels from ``app`` (an app made by ``api.app.create_app``)."""
    registry: dict[str, ChannelRoute[Any]] = getattr(app.state, "channels", {})
    for route in routes:
        registry[route.name] = route
    app.state.channels = registry
    app.state.channel_connections = getattr(app.state, "channel_connections", {})
    if not getattr(app.state, "channel_router_mounted", False):
        app.include_router(router)
        app.state.channel_router_mounted = True


# Errors as frames and bodies ----------------------------------------------------


def describe(exc: lib.EventHubError) -> tuple[int, str, str]:
    """Status, code and message for anything a channel can raise."""
    if isinstance(exc, ChannelError):
        return 400, exc.code, str(exc)
    if isinstance(exc, HandlerFailed):
        return 500, "handler_error", str(exc)
    if isinstance(exc, InvalidMessage):
        return 422, "invalid_message", str(exc)
    if isinstance(exc, InvalidOpeningData):
        return 422, "invalid_opening_data", str(exc)
    status, code, message, _ = public_error(exc)
    return status, code, message


def _reply_frame(reply: Reply) -> dict[str, Any]:
    frame = {"type": "reply", "action": reply.action, "data": reply.data}
    if reply.ref is not None:
        frame["ref"] = reply.ref
    return frame


def _route(request_app: Any, name: str) -> ChannelRoute[Any]:
    route: ChannelRoute[Any] | None = request_app.state.channels.get(name)
    if route is None:
        raise ApiError(404, "unknown_channel", f"no channel named {name[:80]!r}")
    return route


def _opening(query: Iterable[tuple[str, str]]) -> Any:
    pairs = list(query)
    for key, value in pairs:
        if key == "opening":
            try:
                return json.loads(value)
            except (ValueError, RecursionError) as exc:
                raise InvalidOpeningData(f"opening is not JSON: {str(exc)[:200]}") from None
    return {key: value for key, value in pairs if key not in RESERVED_QUERY}


def _info(
    channel_id: str, headers: Any, query: Any, client: Any, identity: Identity
) -> ConnectionInfo:
    # The token itself stays here: handlers get the identity it proved, and a
    # handler that logs its headers or query logs no credential.
    return ConnectionInfo(
        channel_id=channel_id,
        headers={name: value for name, value in headers.items() if name != "authorization"},
        query={name: value for name, value in query.items() if name != QUERY},
        client=client.host if client is not None else None,
        subject=identity.sub,
    )


class _Registered:
    """Keeps the channel reachable by POST while it is connected here."""

    def __init__(self, app: Any, name: str, connection: ChannelConnection) -> None:
        self.table: dict[tuple[str, str], ChannelConnection] = app.state.channel_connections
        self.key = (name, connection.channel.channel_id)
        self.connection = connection

    def __enter__(self) -> None:
        self.table[self.key] = self.connection

    def __exit__(self, *exc_info: object) -> None:
        if self.table.get(self.key) is self.connection:
            del self.table[self.key]


router = APIRouter(tags=["channels"])


# WebSocket ---------------------------------------------------------------------


@router.websocket("/v1/channels/{name}/{channel_id}")
async def channel_socket(websocket: WebSocket, name: str, channel_id: str) -> None:
    hub: EventHub = websocket.app.state.hub
    settings: Settings = websocket.app.state.settings
    identity = await admit_websocket(websocket, settings.cors_origin_list)
    if identity is None:
        return
    try:
        # The channel id names its subscription rows: it must be the token's own.
        require_subscriber(identity, channel_id)
    except ApiError as exc:
        await deny_websocket(websocket, exc)
        return
    await websocket.accept()
    async with Connection(websocket, limits(settings)) as conn:
        expiry = close_at_expiry(conn, identity)
        route = websocket.app.state.channels.get(name)
        if route is None:
            await conn.send(error_frame("unknown_channel", f"no channel named {name[:80]!r}"))
            await conn.close(CLOSE_POLICY, "unknown channel")
            return

        async def send(data: Any) -> None:
            with contextlib.suppress(Closed):
                await conn.send(json.dumps({"type": "message", "data": data}))

        query = websocket.query_params
        try:
            async with open_channel(
                hub,
                route,
                channel_id,
                _opening(query.multi_items()),
                send,
                info=_info(channel_id, websocket.headers, query, websocket.client, identity),
                after=query.get("last_event_id"),
                buffer=settings.stream_buffer,
            ) as channel:
                with _Registered(websocket.app, name, channel):
                    await _serve_socket(conn, channel)
        except lib.EventHubError as exc:
            # Refused before it was open: bad opening data, cursor or connect handler.
            _, code, message = describe(exc)
            with contextlib.suppress(Closed):
                await conn.send(error_frame(code, message))
            internal = isinstance(exc, HandlerFailed | lib.StorageError)
            await conn.close(CLOSE_INTERNAL if internal else CLOSE_POLICY, code)
        finally:
            if expiry is not None:
                expiry.cancel()


async def _serve_socket(conn: Connection, channel: ChannelConnection) -> None:
    assert channel.feed is not None
    await conn.send(
        json.dumps(
            {
                "type": "welcome",
                "channel_id": channel.channel.channel_id,
                "id": channel.start_cursor,
                "data": channel.welcome,
            }
        )
    )
    pump = asyncio.create_task(_pump_socket(channel.feed, conn), name="channel pump")
    try:
        async for message in conn.frames():
            ref = message.get("ref") if isinstance(message, dict) else None
            extra = {"ref": ref} if ref is not None else {}
            try:
                reply = await channel.handle(message)
            except lib.EventHubError as exc:
                _, code, text = describe(exc)
                if isinstance(exc, InvalidMessage):
                    await conn.reject(code, text, **extra)
                else:
                    await conn.send(error_frame(code, text, **extra))
                continue
            if reply is not None:
                await conn.send(json.dumps(_reply_frame(reply)))
    except Closed:
        pass
    finally:
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump


async def _pump_socket(feed: Feed, conn: Connection) -> None:
    try:
        async for item in feed.with_gaps():
            await conn.send(conn.frames_cache.frame(item))
    except Closed:
        return
    await conn.close(CLOSE_GOING_AWAY, "server shutting down")


# SSE + POST --------------------------------------------------------------------


def _sse(kind: str | None, data: str, event_id: str | None = None) -> bytes:
    lines = []
    if kind is not None:
        lines.append(f"event: {kind}")
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"data: {data}")
    return ("\n".join(lines) + "\n\n").encode()


def _sse_event(event: Event | Gap) -> bytes:
    # The same frames as GET /v1/stream: one encoder for both.
    return encode_gap(event) if isinstance(event, Gap) else encode_event(event)


class ChannelEventStream(Response):
    """A channel as an event stream: owns the open channel until the client goes.

    The channel is opened before the response starts (so a refusal is a plain
    4xx); this response closes it, whatever happens, through ``stack``.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        stack: AsyncExitStack,
        channel: ChannelConnection,
        outbox: _Outbox,
        heartbeat: float,
        expires_at: float | None = None,
    ) -> None:
        super().__init__(
            status_code=200,
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
            media_type=self.media_type,
        )
        # An endless body: no content-length (Response sets one for its empty body).
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.stack = stack
        self.channel = channel
        self.outbox = outbox
        self.heartbeat = heartbeat
        self.expires_at = expires_at

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            writer = asyncio.create_task(self._write(send))
            watcher = asyncio.create_task(_wait_disconnect(receive))
            _, pending = await asyncio.wait({writer, watcher}, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            for task in (writer, watcher):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        finally:
            await self.stack.aclose()

    async def _write(self, send: Send) -> None:
        feed = self.channel.feed
        assert feed is not None
        # What was said before the response started (the connect handler's
        # messages, the welcome, gaps) goes out first, in one write.
        await send({"type": "http.response.body", "body": self.outbox.start(), "more_body": True})
        pump = asyncio.create_task(_pump_sse(feed, self.outbox))
        loop = asyncio.get_running_loop()
        last_write = loop.time()
        try:
            while True:
                # Checked on every pass, not only when idle: a busy channel must
                # end at its token's exp and at shutdown too.
                if _server_exiting():
                    break  # end cleanly; the client resumes by Last-Event-ID
                if self.expires_at is not None and time.time() >= self.expires_at:
                    break  # the token ran out: the client comes back with a new one
                try:
                    chunk = await asyncio.wait_for(self.outbox.get(), SHUTDOWN_CHECK)
                except TimeoutError:
                    if loop.time() - last_write < self.heartbeat:
                        continue
                    chunk = b": ping\n\n"
                if not chunk:  # the feed ended: the hub is closing
                    break
                last_write = loop.time()
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump


class _Outbox:
    """Chunks for one channel stream: unbounded until the response starts (nothing
    drains it yet, and a connect handler must not block on it), then bounded in
    bytes, so a stalled reader of large messages holds at most `max_bytes` here
    (one chunk over it is let in, or a large message could never pass)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._chunks: deque[bytes] = deque()
        self._bytes = 0
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._early: list[bytes] | None = []

    async def put(self, chunk: bytes) -> None:
        if self._early is not None:
            self._early.append(chunk)
            return
        while self._chunks and self._bytes + len(chunk) > self.max_bytes:
            self._writable.clear()
            await self._writable.wait()
        self._chunks.append(chunk)
        self._bytes += len(chunk)
        self._readable.set()

    async def get(self) -> bytes:
        while not self._chunks:
            self._readable.clear()
            await self._readable.wait()
        chunk = self._chunks.popleft()
        self._bytes -= len(chunk)
        self._writable.set()
        return chunk

    @property
    def buffered_bytes(self) -> int:
        return self._bytes

    def start(self) -> bytes:
        early, self._early = self._early or [], None
        return b"".join(early)


async def _pump_sse(feed: Feed, outbox: _Outbox) -> None:
    async for item in feed.with_gaps():
        await outbox.put(_sse_event(item))
    await outbox.put(b"")


def _server_exiting() -> bool:
    """Whether uvicorn has been asked to stop. uvicorn waits for open responses
    before shutting the app down, so an endless stream must notice by itself;
    its SIGTERM handler is a bound method of its Server (as sse-starlette reads it)."""
    try:
        handler = signal.getsignal(signal.SIGTERM)
    except ValueError:  # not on the main thread
        return False
    return bool(getattr(getattr(handler, "__self__", None), "should_exit", False))


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


@router.get(
    "/v1/channels/{name}/{channel_id}",
    response_class=ChannelEventStream,
    summary="A channel as server-sent events (send its messages by POST)",
)
async def channel_events(
    request: Request, name: str, channel_id: str, identity: IdentityDep
) -> Response:
    hub: EventHub = request.app.state.hub
    settings: Settings = request.app.state.settings
    route = _route(request.app, name)
    require_subscriber(identity, channel_id)
    outbox = _Outbox(settings.stream_buffer_bytes)

    async def send(data: Any) -> None:
        await outbox.put(_sse("message", json.dumps({"data": data})))

    # An EventSource reconnects to the URL it opened, adding the header: the
    # header is the newer position.
    after = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    stack = AsyncExitStack()
    try:
        channel = await stack.enter_async_context(
            open_channel(
                hub,
                route,
                channel_id,
                _opening(request.query_params.multi_items()),
                send,
                info=_info(
                    channel_id, request.headers, request.query_params, request.client, identity
                ),
                after=after,
                buffer=settings.stream_buffer,
            )
        )
        stack.enter_context(_Registered(request.app, name, channel))
    except BaseException as exc:
        await stack.aclose()
        if isinstance(exc, lib.EventHubError):
            status, code, message = describe(exc)
            raise ApiError(status, code, message) from None
        raise
    welcome = {"channel_id": channel_id, "id": channel.start_cursor, "data": channel.welcome}
    await outbox.put(_sse("welcome", json.dumps(welcome), channel.start_cursor))
    return ChannelEventStream(
        stack, channel, outbox, settings.heartbeat_interval, identity.expires_at
    )


async def _json_sender(request: Request, identity: IdentityDep) -> Identity:
    # A dependency, so that it is settled before FastAPI reads the body.
    if not is_json(request.headers.get("content-type")):
        raise ApiError(415, "unsupported_media_type", "the body must be application/json")
    return identity


class ChannelMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: str
    data: Any = None
    ref: Any = None


@router.post(
    "/v1/channels/{name}/{channel_id}/messages",
    summary="Send a message to a channel connected by SSE (or WebSocket); the reply is returned",
)
async def channel_message(
    request: Request,
    name: str,
    channel_id: str,
    identity: Annotated[Identity, Depends(_json_sender)],
    message: ChannelMessage,
) -> JSONResponse:
    """Only as a subscriber id the token may act as, and only as JSON (a cross-site
    form cannot send it), like every publish."""
    _route(request.app, name)
    require_subscriber(identity, channel_id)
    connection: ChannelConnection | None = request.app.state.channel_connections.get(
        (name, channel_id)
    )
    if connection is None:
        raise ApiError(
            404,
            "channel_not_connected",
            f"channel {name!r} {channel_id[:80]!r} is not connected to this server",
        )
    try:
        reply = await connection.handle(message.model_dump(exclude_none=True))
    except lib.EventHubError as exc:
        status, code, text = describe(exc)
        raise ApiError(status, code, text) from None
    body: dict[str, Any] = {
        "action": message.action,
        "reply": None if reply is None else reply.data,
    }
    if message.ref is not None:
        body["ref"] = message.ref
    return JSONResponse(body)


__all__ = ["ChannelEventStream", "describe", "mount_channels", "router"]
