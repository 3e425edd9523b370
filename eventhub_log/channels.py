"""Channels: the seed's connection / message / disconnection functions, typed.

A ``ChannelRoute`` names a channel and holds its three kinds of handlers, in the
spirit of Pikku's ``pikkuChannelConnectionFunc``, ``pikkuChannelFunc`` and
``pikkuChannelDisconnectionFunc``::

    chat = ChannelRoute("chat", opening=JoinRoom)

    @chat.on_connect
    async def joined(hub: EventHub, channel: Channel[JoinRoom], session: Session) -> Any:
        await hub.subscribe(f"room:{channel.opening_data.room}", channel.channel_id)
        return {"welcome": channel.opening_data.room}        # sent to the client

    @chat.on_message("say")
    async def say(hub: EventHub, channel: Channel[JoinRoom], session: Session,
                  data: Say) -> Any:                           # ``data`` validated as Say
        await hub.publish(f"room:{channel.opening_data.room}", channel.channel_id, data.text)

    @chat.on_disconnect
    async def left(hub: EventHub, channel: Channel[JoinRoom], session: Session) -> None: ...

``open_channel`` runs one connection of a channel for any transport (the HTTP
layer has WebSocket, and SSE with messages POSTed): it validates the opening
data, runs the connect handler, opens a feed of every topic the channel is
subscribed to (resuming from the client's cursor when it reconnects), dispatches
messages, and on close runs the disconnect handler and then removes the
channel's subscription rows in one transaction, whatever the handlers did.

The channel id is the subscriber id: ``hub.publish(topic, channel.channel_id, ...)``
reaches everyone in the room except the sender, live and on replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, get_type_hints

import pydantic

from .delivery import Feed
from .errors import EventHubError, InvalidCursor, ValidationError
from .hub import EventHub, _shielded
from .model import parse_cursor
from .validation import validate_subscriber

log = logging.getLogger(__name__)

OpeningT = TypeVar("OpeningT")

MAX_ERROR_MESSAGE = 500


@dataclass(frozen=True)
class Session:
    """Who is on the other end, as the application's session factory saw it."""

    user_id: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ConnectionInfo:
    """What a transport knows about a connecting client, for the session factory."""

    channel_id: str
    headers: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)
    client: str | None = None
    # The verified ``sub`` of the client's token, where the server checks tokens;
    # the default session's ``user_id``.
    subject: str | None = None


SendFn = Callable[[Any], Awaitable[None]]


class Channel(Generic[OpeningT]):
    """One open channel: its route name, id, validated opening data, and ``send``."""

    __slots__ = ("_send", "channel_id", "name", "opening_data")

    def __init__(self, name: str, channel_id: str, opening_data: OpeningT, send: SendFn) -> None:
        self.name = name
        self.channel_id = channel_id
        self.opening_data = opening_data
        self._send = send

    async def send(self, data: Any) -> None:
        """Send ``data`` to this client only, now (not through the log: not replayed)."""
        await self._send(data)

    def __repr__(self) -> str:
        return f"Channel({self.name!r}, {self.channel_id!r}, {self.opening_data!r})"


# Errors ------------------------------------------------------------------------


class ChannelError(EventHubError):
    """Raised by a handler to refuse something; the client gets ``code`` and the message."""

    def __init__(self, message: str, code: str = "channel_error") -> None:
        super().__init__(message)
        self.code = code


class UnknownChannel(ValidationError):
    """No channel of that name is declared (or it is not connected here)."""


class InvalidOpeningData(ValidationError):
    """The opening data does not fit the channel's opening type."""


class InvalidMessage(ValidationError):
    """A message is malformed, names no known action, or fails the action's input type."""


class HandlerFailed(EventHubError):
    """A handler raised something unexpected; the client gets ``handler_error``."""

    code = "handler_error"


# Handlers and the route --------------------------------------------------------

ConnectHandler = Callable[[EventHub, Channel[Any], Session], Awaitable[Any]]
MessageHandler = Callable[[EventHub, Channel[Any], Session, Any], Awaitable[Any]]
DisconnectHandler = Callable[[EventHub, Channel[Any], Session], Awaitable[None]]
SessionFactory = Callable[[ConnectionInfo], Session | Awaitable[Session]]

CH = TypeVar("CH", bound=ConnectHandler)
MH = TypeVar("MH", bound=MessageHandler)
DH = TypeVar("DH", bound=DisconnectHandler)


@dataclass(frozen=True)
class MessageRoute:
    action: str
    handler: MessageHandler
    input: pydantic.TypeAdapter[Any]


def _default_session(info: ConnectionInfo) -> Session:
    return Session(user_id=info.subject)


class ChannelRoute(Generic[OpeningT]):
    """A channel declaration: name, opening data type, session factory, handlers.

    Messages name their handler by ``action``: ``{"action": "say", "data": {...}}``.
    A handler's input type is taken from the annotation of its fourth parameter
    (or given as ``input=``): a pydantic model, a dataclass, a TypedDict, or any
    type pydantic can validate. A handler's return value, when not ``None``, is the
    reply.
    """

    def __init__(
        self,
        name: str,
        *,
        opening: type[OpeningT] | None = None,
        session: SessionFactory = _default_session,
    ) -> None:
        if not name or not name.replace("-", "").replace("_", "").isalnum():
            raise ValueError("a channel name is letters, digits, '-' and '_'")
        self.name = name
        self._opening: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(
            opening if opening is not None else dict[str, Any]
        )
        self._session = session
        self.connect_handler: ConnectHandler | None = None
        self.disconnect_handler: DisconnectHandler | None = None
        self.messages: dict[str, MessageRoute] = {}

    def on_connect(self, handler: CH) -> CH:
        self.connect_handler = handler
        return handler

    def on_disconnect(self, handler: DH) -> DH:
        self.disconnect_handler = handler
        return handler

    def on_message(self, action: str, *, input: Any = None) -> Callable[[MH], MH]:
        def register(handler: MH) -> MH:
            kind = input if input is not None else _input_type(handler)
            self.messages[action] = MessageRoute(action, handler, pydantic.TypeAdapter(kind))
            return handler

        return register

    # Used by open_channel and the transports ---------------------------------

    def parse_opening(self, raw: Any) -> OpeningT:
        try:
            value: OpeningT = self._opening.validate_python(raw)
        except pydantic.ValidationError as exc:
            raise InvalidOpeningData(
                f"opening data of channel {self.name!r} is invalid: {_problems(exc)}"
            ) from None
        return value

    async def session_for(self, info: ConnectionInfo) -> Session:
        made = self._session(info)
        return await made if inspect.isawaitable(made) else made


def _input_type(handler: MessageHandler) -> Any:
    params = list(inspect.signature(handler).parameters)
    if len(params) < 4:
        raise TypeError(f"{handler.__name__} must take (hub, channel, session, data)")
    hints = get_type_hints(handler)
    return hints.get(params[3], Any)


def _problems(exc: pydantic.ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in err['loc']) or 'value'}: {err['msg']}"
        for err in exc.errors()
    )[:MAX_ERROR_MESSAGE]


# One connection ----------------------------------------------------------------


@dataclass
class Reply:
    action: str
    data: Any
    ref: Any = None


class ChannelConnection:
    """A connected channel: its feed of events and the message dispatcher."""

    def __init__(
        self,
        hub: EventHub,
        route: ChannelRoute[Any],
        channel: Channel[Any],
        session: Session,
    ) -> None:
        self.hub = hub
        self.route = route
        self.channel = channel
        self.session = session
        self.welcome: Any = None
        self.feed: Feed | None = None
        self.start_cursor = "0"
        self.resumed = False

    async def handle(self, message: Any) -> Reply | None:
        """Run the handler a message names. Raises ``InvalidMessage`` (nothing ran),
        ``ChannelError`` (the handler refused) or ``HandlerFailed`` (it broke)."""
        if not isinstance(message, dict):
            raise InvalidMessage('a channel message is an object: {"action": "...", "data": ...}')
        unknown = set(message) - {"action", "data", "ref"}
        if unknown:
            raise InvalidMessage(f"unknown field(s) in message: {', '.join(sorted(unknown))}")
        action = message.get("action")
        if not isinstance(action, str):
            raise InvalidMessage('a channel message needs "action", a string')
        route = self.route.messages.get(action)
        if route is None:
            known = ", ".join(sorted(self.route.messages)) or "none"
            raise InvalidMessage(
                f"channel {self.route.name!r} has no action {action[:80]!r} (known: {known})"
            )
        try:
            data = route.input.validate_python(message.get("data"))
        except pydantic.ValidationError as exc:
            raise InvalidMessage(
                f"input of action {action!r} is invalid: {_problems(exc)}"
            ) from None
        result = await _run(
            route.handler(self.hub, self.channel, self.session, data), f"message {action!r}"
        )
        return None if result is None else Reply(action, result, message.get("ref"))


async def _run(call: Awaitable[Any], what: str) -> Any:
    try:
        return await call
    except (ChannelError, ValidationError):
        raise
    except Exception as exc:
        log.exception("channel %s handler raised", what)
        raise HandlerFailed(f"the {what} handler failed: {type(exc).__name__}") from exc


@asynccontextmanager
async def open_channel(
    hub: EventHub,
    route: ChannelRoute[Any],
    channel_id: str,
    opening: Any,
    send: SendFn,
    *,
    info: ConnectionInfo | None = None,
    after: str | None = None,
    buffer: int | None = None,
) -> AsyncIterator[ChannelConnection]:
    """Connect a channel; on exit, disconnect it and remove its rows in one transaction.

    With ``after`` (the last event id the client saw) this is a reconnection: the
    connect handler runs again, then the feed replays every event of the
    channel's topics published after that cursor, then goes live. Without it the
    feed starts where the log stood just before the connect handler ran, so
    nothing published while it subscribed is missed either.
    """
    validate_subscriber(channel_id)
    opening_data = route.parse_opening(opening)
    head = int(await hub.head())
    if after is not None:
        position = parse_cursor(after)
        if position > head:
            raise InvalidCursor(
                f"cursor {after!r} is ahead of this log (newest is {head}): "
                "it was not issued by this database"
            )
        start = str(position)
    else:
        start = str(head)
    session: Session = await _run(route.session_for(info or ConnectionInfo(channel_id)), "session")
    channel: Channel[Any] = Channel(route.name, channel_id, opening_data, send)
    connection = ChannelConnection(hub, route, channel, session)
    stack = AsyncExitStack()
    try:
        if route.connect_handler is not None:
            connection.welcome = await _run(route.connect_handler(hub, channel, session), "connect")
        # The rows the connect handler made become this feed's own: its cleanup
        # removes them, and a crashed server's rows are swept with its instance.
        topics = await hub.subscriptions(channel_id)
        feed = await stack.enter_async_context(
            hub.stream(topics, channel_id, after=start, buffer=buffer)
        )
    except BaseException:
        await _shielded(_forget(hub, channel_id))
        raise
    async with stack:
        connection.feed = feed
        connection.start_cursor = start
        connection.resumed = after is not None
        try:
            yield connection
        finally:
            if route.disconnect_handler is not None:
                await _shielded(_disconnect(route.disconnect_handler, hub, channel, session))
    # hub.stream has removed every row of this channel in one transaction here.


async def _disconnect(
    handler: DisconnectHandler, hub: EventHub, channel: Channel[Any], session: Session
) -> None:
    try:
        await asyncio.wait_for(handler(hub, channel, session), timeout=10)
    except Exception:
        log.exception("channel %s disconnect handler raised", channel.name)


async def _forget(hub: EventHub, channel_id: str) -> None:
    with contextlib.suppress(Exception):
        await hub.unsubscribe_all(channel_id)


__all__ = [
    "Channel",
    "ChannelConnection",
    "ChannelError",
    "ChannelRoute",
    "ConnectionInfo",
    "HandlerFailed",
    "InvalidMessage",
    "InvalidOpeningData",
    "Reply",
    "Session",
    "UnknownChannel",
    "open_channel",
]
