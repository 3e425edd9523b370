"""The FastAPI application: one EventHub for the process, started by the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from eventhub_log import EventHub

from . import errors
from .body_limit import BodyLimitMiddleware
from .metrics import Metrics, MetricsMiddleware
from .routes import health, history, metrics, publish, stream, subscriptions, topics, ws
from .settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; with no settings they come from EVENTHUB_* variables."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        hub = EventHub(
            settings.database_url,
            mode=settings.effective_mode,
            auto_migrate=settings.auto_migrate,
            stream_buffer=settings.stream_buffer,
            heartbeat_interval=settings.instance_heartbeat,
            instance_ttl=settings.instance_ttl,
            sqlite_synchronous=settings.sqlite_synchronous,
            idempotency_ttl=settings.idempotency_ttl,
        )
        async with hub:
            app.state.hub = hub
            yield

    app = FastAPI(
        title="eventhub-log",
        version="0.1.0",
        summary="A durable pub/sub hub: publish, replay, subscribe, stream.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    errors.install(app)
    for module in (publish, history, topics, subscriptions, stream, ws, metrics, health):
        app.include_router(module.router)
    app.add_middleware(BodyLimitMiddleware, limit=settings.body_limit)
    # Outermost, so that it also counts the 413s of the body limit.
    app.state.metrics = Metrics(lambda: getattr(app.state, "hub", None))
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app
