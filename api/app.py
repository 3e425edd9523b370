"""The FastAPI application: one EventHub for the process, started by the lifespan."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import Receive, Scope, Send

from eventhub_log import EventHub

from . import errors
from .auth import auth_from_settings
from .body_limit import BodyLimitMiddleware
from .fast_publish import FastPublish
from .fast_stream import FastStream
from .limits import ConnectionLimiter
from .metrics import Metrics, MetricsMiddleware
from .routes import audit, health, history, metrics, publish, stream, subscriptions, topics, ws
from .routes import console as console_page
from .settings import Settings
from .sse import registry_of

# Allocations (net of frees) between young-generation collections; CPython's
# default is 700. See _settle_garbage_collector.
GC_YOUNG_THRESHOLD = 10_000


def _settle_garbage_collector() -> None:
    """Keep the cyclic garbage collector off the objects that live as long as the
    process, and run it less often.

    Measured (docs/benchmarks.md): with CPython's defaults a server with 1,000 open
    streams spent a fifth of its CPU in the collector, and each full collection
    walked some 300,000 objects (the imported modules, the app, every open
    connection's coroutines) in one pause of 200-350 ms, which stalled every
    stream at once. Freezing what exists once the app has started moves it out
    of every later collection (it is still freed by reference counting); a
    larger young generation means fewer collections, each still short, and
    fewer objects promoted into the old generation, whose growth is what
    triggers full collections.
    """
    gc.collect()
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(max(_young, GC_YOUNG_THRESHOLD), middle, old)


class EventHubApp(FastAPI):
    """FastAPI, with the ordinary case of the publish routes and of the SSE stream
    served ahead of its layers (api/fast_publish.py and api/fast_stream.py explain
    why); everything else takes the usual way."""

    fast_publish: FastPublish | None = None
    fast_stream: FastStream | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fast = self.fast_publish
        if fast is not None and (found := fast.route_of(scope)) is not None:
            await fast(*found, scope, receive, send, super().__call__)
            return
        stream = self.fast_stream
        if stream is not None and stream.serves(scope):
            await stream(scope, receive, send, super().__call__)
            return
        await super().__call__(scope, receive, send)


def _telemetry_enabled(app: FastAPI) -> bool:
    # FastAPI instruments every request itself once OpenTelemetry is configured;
    # those requests must cross its layers. Asked once at startup: FastAPI's own
    # check costs some 9 us, a tenth of the fast path's time.
    telemetry = getattr(app, "_native_telemetry", None)
    return telemetry is not None and bool(telemetry.enabled())


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; with no settings they come from EVENTHUB_* variables."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: EventHubApp) -> AsyncIterator[None]:
        hub = EventHub(
            settings.database_url,
            mode=settings.effective_mode,
            auto_migrate=settings.auto_migrate,
            stream_buffer=settings.stream_buffer,
            stream_buffer_bytes=settings.stream_buffer_bytes,
            write_queue_events=settings.write_queue_events,
            write_queue_bytes=settings.write_queue_bytes,
            heartbeat_interval=settings.instance_heartbeat,
            instance_ttl=settings.instance_ttl,
            sqlite_synchronous=settings.sqlite_synchronous,
            idempotency_ttl=settings.idempotency_ttl,
        )
        async with hub:
            app.state.hub = hub
            if not _telemetry_enabled(app):
                app.fast_publish = FastPublish(
                    hub, app.state.metrics, settings.body_limit, app.state.auth
                )
                app.fast_stream = FastStream(
                    hub,
                    settings,
                    app.state.auth,
                    app.state.metrics,
                    registry_of(
                        app.state,
                        heartbeat_interval=settings.heartbeat_interval,
                        write_timeout=settings.stream_write_timeout,
                        coalesce=settings.stream_coalesce,
                        frame_cache_bytes=settings.frame_cache_bytes,
                    ),
                    app.state.connections,
                )
            if settings.gc_freeze:
                _settle_garbage_collector()
            try:
                yield
            finally:
                app.fast_publish = None
                app.fast_stream = None

    app = EventHubApp(
        title="eventhub-log",
        version="0.1.0",
        summary="A durable pub/sub hub: publish, replay, subscribe, stream.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.auth = auth_from_settings(settings)
    app.state.audit_key = audit.audit_key_from_settings(settings)
    app.state.connections = ConnectionLimiter(settings.max_connections_per_client)
    errors.install(app)
    for module in (publish, history, audit, topics, subscriptions, stream, ws, metrics, health):
        app.include_router(module.router)
    app.include_router(audit.keys_router)
    app.include_router(console_page.router)
    app.add_middleware(BodyLimitMiddleware, limit=settings.body_limit)
    if settings.cors_origin_list:
        # Outside the routes, so that preflights are answered before any token
        # is asked for; credentials allowed, for the eventhub_token cookie.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_credentials=True,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID"],
            max_age=600,
        )
    # Outermost, so that it also counts the 413s of the body limit.
    app.state.metrics = Metrics(lambda: getattr(app.state, "hub", None))
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app
