"""A resuming client for the SSE stream ``GET /v1/stream``.

    async with EventStreamClient("http://127.0.0.1:8000", ["room:lobby"]) as stream:
        async for event in stream:
            print(event.id, event.topic, event.seq, event.payload)

It reconnects whenever the connection drops or the server restarts, sending the
id of the last event it handed out as ``Last-Event-ID``, so the caller sees every
event once, in order. The ``ready`` message's id counts too: a drop before the
first event resumes from where the stream began. Refusals (4xx, such as a
malformed cursor or a 403) raise ``StreamRefused``; anything else is retried with
exponential backoff and jitter, reset once a connection is ready again.

Tokens (contract section 6) go as ``Authorization: Bearer``. A hub ends a stream
when its token expires, so a long-lived follower needs fresh ones: pass
``token_provider``, a callable (sync or async) returning a token. It is asked
before the first connection when no ``token`` is given, on a 401, and when the
server ends the stream near the token's ``exp``; the stream then resumes after
the last event with the new token, missing nothing. A 401 that no fresh token
can cure (no provider, the provider raised, or the token it just gave was
refused too) raises ``StreamUnauthorized`` instead of retrying forever.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import inspect
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx

from .errors import EventHubError

log = logging.getLogger(__name__)

# Statuses worth retrying; any other 4xx is the request's fault and is raised.
_RETRYABLE = {408, 425, 429}


@dataclass(frozen=True)
class StreamEvent:
    """One event as the stream delivers it; ``id`` is the cursor to resume after."""

    id: str
    topic: str
    seq: int
    payload: Any
    published_at: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "topic": self.topic,
            "seq": self.seq,
            "payload": self.payload,
            "published_at": self.published_at,
        }


@dataclass(frozen=True)
class StreamGap:
    """Retention removed events ``from_seq`` to ``to_seq`` of ``topic`` before we read them."""

    topic: str
    from_seq: int
    to_seq: int


class StreamRefused(EventHubError):
    """The server refused the stream (a 4xx): retrying the same request cannot help."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code


class StreamUnauthorized(StreamRefused):
    """A 401 that a fresh token cannot cure: there is no ``token_provider``, it
    raised (the ``__cause__``), or the token it had just given was refused too."""


TokenProvider = Callable[[], Awaitable[str] | str]

# A stream the server ends this close to its token's exp was most likely ended
# for it (the hub closes streams at exp; clocks may disagree by a few seconds,
# and a server's leeway is at most 30 s): get a fresh token before resuming.
_EXPIRY_MARGIN = 30.0


@dataclass
class _Message:
    event: str
    data: str
    id: str | None


class EventStreamClient:
    """Follow topics over SSE, resuming by ``Last-Event-ID`` across drops."""

    def __init__(
        self,
        url: str,
        topics: Sequence[str],
        *,
        subscriber: str | None = None,
        last_event_id: str | None = None,
        from_earliest: bool = False,
        min_backoff: float = 0.1,
        max_backoff: float = 10.0,
        max_attempts: int | None = None,
        read_timeout: float = 60.0,
        http: httpx.AsyncClient | None = None,
        token: str | None = None,
        token_provider: TokenProvider | None = None,
    ) -> None:
        if not topics:
            raise ValueError("follow at least one topic")
        self.url = url.rstrip("/") + "/v1/stream"
        self.topics = list(topics)
        self.subscriber = subscriber
        self.last_event_id = last_event_id
        self.from_earliest = from_earliest
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.max_attempts = max_attempts
        self.connections = 0
        self.token = token
        self.token_provider = token_provider
        # True while the current token came from the provider and has not yet
        # opened a stream: a 401 then means a fresh token does not help either.
        self._token_untried = False
        # A stalled connection sends no heartbeat: give up on it and resume.
        self._timeout = httpx.Timeout(10.0, read=read_timeout)
        self._http = http or httpx.AsyncClient()
        self._owns_http = http is None

    async def __aenter__(self) -> EventStreamClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    def __aiter__(self) -> AsyncIterator[StreamEvent | StreamGap]:
        return self.events()

    async def events(self) -> AsyncIterator[StreamEvent | StreamGap]:
        """Every event of the topics, then live, for as long as you iterate."""
        backoff = self.min_backoff
        failures = 0
        if self.token is None and self.token_provider is not None:
            await self._refresh_token(None)
        while True:
            try:
                async for item in self._connect():
                    if item is None:  # ready: this connection works
                        backoff, failures = self.min_backoff, 0
                        self._token_untried = False
                        continue
                    yield item
                if self.token_provider is not None and _expires_soon(self.token):
                    # Ended for the token's expiry: resume with a fresh one, soon
                    # but not in a tight loop should the provider's tokens be stale.
                    await self._refresh_token(None)
                    await asyncio.sleep(self.min_backoff * random.random())
                    continue
                reason = "the server ended the stream"
            except StreamUnauthorized as exc:
                if self.token_provider is None or self._token_untried:
                    raise
                await self._refresh_token(exc)
                continue
            except (httpx.TransportError, _Retry) as exc:
                reason = str(exc) or type(exc).__name__
            failures += 1
            if self.max_attempts is not None and failures >= self.max_attempts:
                raise ConnectionError(
                    f"gave up after {failures} failed attempts to stream from {self.url}: {reason}"
                )
            delay = backoff * (0.5 + random.random() / 2)
            log.warning(
                "stream interrupted (%s); resuming after id %s in %.2fs",
                reason,
                self.last_event_id,
                delay,
            )
            await asyncio.sleep(delay)
            backoff = min(backoff * 2, self.max_backoff)

    async def _refresh_token(self, refused: StreamUnauthorized | None) -> None:
        assert self.token_provider is not None
        try:
            result = self.token_provider()
            token = await result if inspect.isawaitable(result) else result
        except Exception as exc:
            status, code = (refused.status, refused.code) if refused else (401, "unauthorized")
            raise StreamUnauthorized(
                status, code, f"the token provider failed: {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(token, str) or not token.strip():
            raise StreamUnauthorized(401, "unauthorized", "the token provider gave no token")
        self.token = token.strip()
        self._token_untried = True

    async def _connect(self) -> AsyncIterator[StreamEvent | StreamGap | None]:
        params = httpx.QueryParams([("topic", topic) for topic in self.topics])
        if self.subscriber is not None:
            params = params.add("subscriber", self.subscriber)
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = self.last_event_id
        elif self.from_earliest:
            params = params.add("from", "earliest")
        async with self._http.stream(
            "GET", self.url, params=params, headers=headers, timeout=self._timeout
        ) as response:
            if response.status_code != 200:
                await response.aread()
                _raise_for(response)
            self.connections += 1
            async for message in _parse(response.aiter_lines()):
                if message.event == "ready":
                    data = json.loads(message.data)
                    # Keep the server's id for this subscriber: exclusion follows it.
                    self.subscriber = self.subscriber or data.get("subscriber")
                    if message.id:
                        self.last_event_id = message.id
                    yield None
                elif message.event == "gap":
                    data = json.loads(message.data)
                    yield StreamGap(data["topic"], data["from_seq"], data["to_seq"])
                elif message.event == "message":
                    data = json.loads(message.data)
                    event = StreamEvent(
                        id=message.id or "",
                        topic=data["topic"],
                        seq=data["seq"],
                        payload=data["payload"],
                        published_at=data["published_at"],
                    )
                    # Advance only as the event is handed out: a drop before the
                    # caller has it resumes before it.
                    if message.id:
                        self.last_event_id = message.id
                    yield event


class _Retry(Exception):
    pass


def _raise_for(response: httpx.Response) -> None:
    status = response.status_code
    if status < 400 or status >= 500 or status in _RETRYABLE:
        raise _Retry(f"HTTP {status}")
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", response.text[:200]
    if status == 401:
        raise StreamUnauthorized(status, code, message)
    raise StreamRefused(status, code, message)


def _expires_soon(token: str | None) -> bool:
    """Whether ``token`` carries an ``exp`` within ``_EXPIRY_MARGIN`` of now.

    Read without verifying: the client only decides when to ask for a new
    token, and the server checks every token it is sent."""
    if token is None:
        return False
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = claims["exp"] if isinstance(claims, dict) else None
    except (IndexError, KeyError, ValueError, binascii.Error):
        return False
    return isinstance(exp, int | float) and exp - time.time() < _EXPIRY_MARGIN


async def _parse(lines: AsyncIterator[str]) -> AsyncIterator[_Message]:
    """The event-stream format of the HTML standard, for what this server sends."""
    event, last_id = "", None
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield _Message(event or "message", "\n".join(data), last_id)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue  # a comment: heartbeat
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id" and "\0" not in value:
            last_id = value


__all__ = [
    "EventStreamClient",
    "StreamEvent",
    "StreamGap",
    "StreamRefused",
    "StreamUnauthorized",
    "TokenProvider",
]
