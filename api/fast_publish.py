"""The publish routes' ordinary case, served without FastAPI's layers.

Measured with ``wrk -t1 -c64`` against ``eventhub-log serve`` on SQLite: a bare
FastAPI endpoint answering 201 with no database does about 6,000 requests/s,
the publish route did about 1,800. The hub's own work per publish is 20-30 us of
event-loop time; the rest of the main thread's CPU went to the layers every
request crosses: FastAPI's and Starlette's middleware (server errors, telemetry,
body limits, exception handlers, exit stacks), ours (metrics, body limit), the
router's matching and the dependency solver. None of them does anything for a
well-formed publish, so ``EventHubApp.__call__`` (api/app.py) hands those
requests to ``FastPublish`` first.

It serves only the happy case and leaves every other one to the full stack,
which stays the one place where error answers are made: a body that is not
exactly ``application/json``, over the body limit, or that fails validation is
handed back untouched, with the bytes already read replayed, so the route
answers it (and ``/docs`` and the OpenAPI document still describe that route).
Once the hub has been called there is no handing back: a retry could append
twice, so the hub's errors are answered here, with the same status and body as
the app's exception handlers (api/errors.py).
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from starlette.responses import PlainTextResponse, Response
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from eventhub_log import EventHub
from eventhub_log.errors import EventHubError

from .auth import Auth
from .authz import Identity, Right
from .errors import ApiError, library_error_response
from .metrics import STARTED_KEY, Metrics
from .routes import publish
from .schemas import BatchIn, PublishIn

# (hub, path parameters, validated body, idempotency key, identity) -> (JSON answer, status)
Publisher = Callable[
    [EventHub, dict[str, str], Any, str | None, Identity], Awaitable[tuple[bytes, int]]
]
# The topics a validated body publishes to, for the authorization check.
Topics = Callable[[dict[str, str], Any], list[str]]


@dataclass(frozen=True)
class _Route:
    template: str  # the FastAPI route's path: the metrics' route label
    pattern: re.Pattern[str]
    model: type[BaseModel]
    publish: Publisher
    topics: Topics


def _route(path: str, model: type[BaseModel], publisher: Publisher, topics: Topics) -> _Route:
    template = publish.router.prefix + path
    # Starlette's own compilation of the template, so that exactly the paths the
    # router would match are matched (a newline in a topic is not, for instance).
    pattern, _, _ = compile_path(template)
    return _Route(template, pattern, model, publisher, topics)


ROUTES = (
    _route(
        publish.ONE,
        PublishIn,
        lambda hub, params, body, key, who: publish.publish_one(
            hub, params["topic"], body, key, who
        ),
        lambda params, _body: [params["topic"]],
    ),
    _route(
        publish.BATCH,
        BatchIn,
        lambda hub, _params, body, key, who: publish.publish_many(hub, body, key, who),
        lambda _params, body: [item.topic for item in body.events],
    ),
)


class FastPublish:
    def __init__(self, hub: EventHub, metrics: Metrics, body_limit: int, auth: Auth) -> None:
        self.hub = hub
        self.metrics = metrics
        self.body_limit = body_limit
        self.auth = auth

    @staticmethod
    def route_of(scope: Scope) -> tuple[_Route, dict[str, str]] | None:
        """The route and path parameters of a request this class may serve.

        With a root path the router strips it first; leave that to the router."""
        if scope["type"] != "http" or scope["method"] != "POST" or scope.get("root_path"):
            return None
        for route in ROUTES:
            match = route.pattern.match(scope["path"])
            if match is not None:
                return route, match.groupdict()
        return None

    async def __call__(
        self,
        route: _Route,
        params: dict[str, str],
        scope: Scope,
        receive: Receive,
        send: Send,
        full_stack: ASGIApp,
    ) -> None:
        started = time.perf_counter()
        content_type: bytes | None = None
        key: str | None = None
        odd = False  # a header whose meaning the full stack should settle
        for name, value in scope["headers"]:
            if name == b"content-type":
                odd |= content_type is not None
                content_type = value
            elif name == b"idempotency-key":
                odd |= key is not None
                key = value.decode("latin-1")
            elif name == b"content-length":
                # Malformed or too large: the body limit's own 413 (or the route's
                # answer), before a byte of the body is read.
                odd |= not value.isdigit() or int(value) > self.body_limit
            elif name == b"origin":
                odd = True  # a browser's request: CORS headers are the middleware's
        # Exactly what JSON clients send; read_json's wider rules (parameters)
        # are the route's to apply.
        json_body = content_type == b"application/json" and not odd
        read: list[Message] = []
        identity: Identity | None = None
        if json_body:
            try:
                identity = self.auth.identify(self.auth.token_of_scope(scope))
            except ApiError:
                identity = None  # the route answers 401, from the one place errors are made
        if identity is None:
            await self._hand_over(scope, receive, send, full_stack, read, started)
            return
        size = 0
        while True:
            message = await receive()
            read.append(message)
            if message["type"] != "http.request":  # the client left
                await self._hand_over(scope, receive, send, full_stack, read, started)
                return
            size += len(message.get("body", b""))
            if size > self.body_limit:
                # The body limit's middleware sees the same bytes and answers 413.
                await self._hand_over(scope, receive, send, full_stack, read, started)
                return
            if not message.get("more_body", False):
                break
        raw = b"".join(message.get("body", b"") for message in read)
        try:
            body = route.model.model_validate_json(raw)
        except Exception:  # the route's 422 (or whatever it makes of it): nothing written yet
            await self._hand_over(scope, receive, send, full_stack, read, started)
            return
        topics = route.topics(params, body)
        if not all(identity.may(Right.PUBLISH, topic) for topic in topics):
            # The route's 401 or 403 (api/auth.py), before anything is written.
            await self._hand_over(scope, receive, send, full_stack, read, started)
            return

        # From here on the hub may have appended: answer whatever happens.
        response: Response
        try:
            content, status = await route.publish(self.hub, params, body, key, identity)
            response = Response(content, status, media_type="application/json")
        except EventHubError as exc:
            response = library_error_response(exc)
        except Exception:
            # What ServerErrorMiddleware answers (the app installs no 500 handler);
            # raised on, so that the server logs it.
            await self._answer(
                route, scope, send, PlainTextResponse("Internal Server Error", 500), started
            )
            raise
        await self._answer(route, scope, send, response, started)

    async def _answer(
        self, route: _Route, scope: Scope, send: Send, response: Response, started: float
    ) -> None:
        # MetricsMiddleware's figures, taken when it takes them: as the head leaves.
        self.metrics.observe_request(
            route.template, "POST", response.status_code, time.perf_counter() - started
        )
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": response.raw_headers,
            }
        )
        await send({"type": "http.response.body", "body": response.body})

    @staticmethod
    async def _hand_over(
        scope: Scope,
        receive: Receive,
        send: Send,
        full_stack: ASGIApp,
        read: list[Message],
        started: float,
    ) -> None:
        """Serve the request with the full app, which receives the messages
        already read before the rest."""
        pending = deque(read)

        async def replay() -> Message:
            if pending:
                return pending.popleft()
            return await receive()

        scope[STARTED_KEY] = started
        await full_stack(scope, replay, send)
