"""Personal notifications: ``notifications:{user_id}``, fed by an ordinary REST route.

    .venv/bin/python -m examples.notifications --port 8003

A user listens on the channel ``notifications`` (who they are comes from the
session: here, for the demo, an ``X-User-Id`` header or a ``user`` query
parameter; put real authentication there):
``GET http://127.0.0.1:8003/v1/channels/notifications/<channel id>?user=42`` (SSE)
or the same path over WebSocket. ``POST /orders`` with ``{"user_id": "42",
"item": "book"}`` is an ordinary REST function that places an order and notifies
that user; the notification is in the log, so a user who was offline gets it
when they reconnect with their last event id.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from eventhub_log import EventHub
from eventhub_log.channels import (
    Channel,
    ChannelError,
    ChannelRoute,
    ConnectionInfo,
    Session,
)

from ._run import build, main

USER_ID = r"^[A-Za-z0-9_-]{1,64}$"


def demo_session(info: ConnectionInfo) -> Session:
    return Session(user_id=info.headers.get("x-user-id") or info.query.get("user"))


def topic_of(user_id: str) -> str:
    return f"notifications:{user_id}"


notifications: ChannelRoute[dict[str, Any]] = ChannelRoute("notifications", session=demo_session)


@notifications.on_connect
async def listen(hub: EventHub, channel: Channel[dict[str, Any]], session: Session) -> Any:
    if session.user_id is None:
        raise ChannelError("who are you? send X-User-Id (or ?user=)", code="unauthenticated")
    await hub.subscribe(topic_of(session.user_id), channel.channel_id)
    return {"user_id": session.user_id}


class Order(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(pattern=USER_ID)
    item: str = Field(min_length=1, max_length=200)


def create(database_url: str) -> FastAPI:
    app = build(database_url, notifications)

    @app.post("/orders", status_code=201, tags=["example"])
    async def place_order(order: Order, request: Request) -> dict[str, Any]:
        """An ordinary REST function that also tells the user, durably."""
        hub: EventHub = request.app.state.hub
        order_id = uuid.uuid4().hex[:12]
        event = await hub.publish(
            topic_of(order.user_id),
            None,
            {"type": "order_placed", "order_id": order_id, "item": order.item},
        )
        return {"order_id": order_id, "notification_id": event.id}

    return app


if __name__ == "__main__":
    main("notifications", create, port=8003)
