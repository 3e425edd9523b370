"""``GET /v1/stream``'s ordinary case, served without FastAPI's layers.

A stream is a response that never ends, so everything the request crossed on
the way in stays suspended for its whole life. Through the full app that is
about 34 coroutines (our metrics and body-limit middleware, Starlette's server
error and exception middleware, the router, the route, FastAPI's dependency
solver and its three ``AsyncExitStack``\\ s): measured with tracemalloc at
2,000 and 4,000 idle streams, most of an idle stream's 34.5 KiB. Every write of
every stream also went through three ``send`` wrappers. None of those layers
does anything for a well-formed stream request, so ``EventHubApp.__call__``
(api/app.py) hands it here first, as it does publishes (api/fast_publish.py).

Only the happy case is served here. Anything the route would refuse or read
differently (a missing or invalid topic, subscriber or cursor, a token that is
not good enough, a repeated or empty parameter, a body, a browser's request
with ``Origin``, whose CORS headers are the middleware's) goes to the full stack
untouched, which stays the one place where error answers are made and which
``/docs`` describes. Nothing has been read or sent by then: a GET has no body.
Past reading the request, both ways go through one function,
``routes.stream.stream_response``: validation, authorization, the subscriber an
identity is given and the cursor are checked in one place, so the two cannot
drift; the connection limit is the response's own.
"""

from __future__ import annotations

import time
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from eventhub_log import EventHub
from eventhub_log.errors import EventHubError

from .auth import QUERY, Auth
from .errors import ApiError
from .limits import ConnectionLimiter
from .metrics import Metrics
from .routes.stream import PATH, stream_response
from .settings import Settings
from .sse import EventStreamResponse, StreamRegistry

# The query parameters the route reads; each at most once, never empty.
_SCALARS = frozenset({"subscriber", "last_event_id", "from", QUERY})


class FastStream:
    def __init__(
        self,
        hub: EventHub,
        settings: Settings,
        auth: Auth,
        metrics: Metrics,
        registry: StreamRegistry,
        connections: ConnectionLimiter,
    ) -> None:
        self.hub = hub
        self.settings = settings
        self.auth = auth
        self.metrics = metrics
        self.registry = registry
        self.connections = connections

    @staticmethod
    def serves(scope: Scope) -> bool:
        # With a root path the router strips it first; leave that to the router.
        return (
            scope["type"] == "http"
            and scope["method"] == "GET"
            and scope["path"] == PATH
            and not scope.get("root_path")
        )

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, full_stack: ASGIApp
    ) -> None:
        started = time.perf_counter()
        response = self._response(scope)
        if response is None:
            await full_stack(scope, receive, send)
            return

        def observe(status: int) -> None:
            # MetricsMiddleware's figure, taken when it takes it: as the head leaves.
            self.metrics.observe_request(PATH, "GET", status, time.perf_counter() - started)

        response.observe = observe
        await response(scope, receive, send)

    def _response(self, scope: Scope) -> EventStreamResponse | None:
        """The route's response to this request, or ``None`` where the route
        should answer (an error, or anything out of the ordinary)."""
        last_event_id_header: str | None = None
        for name, value in scope["headers"]:
            if name == b"last-event-id":
                if last_event_id_header is not None:
                    return None
                last_event_id_header = value.decode("latin-1")
            elif name == b"origin":
                return None
            elif name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
                return None  # a GET with a body: the body limit's to judge
        topics: list[str] = []
        scalars: dict[str, str] = {}
        # As Starlette reads a query string (non-strict parsing never raises).
        query = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        for key, value in query:
            if key == "topic":
                topics.append(value)
            elif key in _SCALARS:
                if key in scalars or not value:
                    return None
                scalars[key] = value
        from_ = scalars.get("from")
        if not topics or from_ not in (None, "earliest"):
            return None
        client = scope.get("client")
        try:
            return stream_response(
                self.hub,
                self.registry,
                self.connections,
                self.settings,
                self.auth.identify(self.auth.token_of_scope(scope)),
                topics,
                subscriber=scalars.get("subscriber"),
                cursor=last_event_id_header or scalars.get("last_event_id") or None,
                from_earliest=from_ == "earliest",
                peer=client[0] if client else None,
            )
        except (ApiError, EventHubError):  # the route's 400, 401 or 403, made there
            return None


__all__ = ["FastStream"]
