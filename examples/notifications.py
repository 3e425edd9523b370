"""Personal notifications: ``notifications:{user}``, fed by an ordinary REST route.

    .venv/bin/python -m examples.notifications --port 8003

Who a user is comes from their token (``POST /token`` ``{"user": "42"}``, a demo
login with no password; ``POST /login`` sets it as a cookie for a browser). A
token may follow only its own topic, ``notifications:{sub}``, and act as the
subscribers ``{sub}`` and ``{sub}:*``. A user listens on the channel
``notifications``: ``GET http://127.0.0.1:8003/v1/channels/notifications/42:inbox``
with ``Authorization: Bearer <token>`` (SSE), or the same path over WebSocket.
``POST /orders`` with ``{"item": "book"}`` and the same token is an ordinary REST
function that places an order for that user and notifies them; the notification
is in the log, so a user who was offline gets it when they reconnect with their
last event id.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from api.auth import IdentityDep, Unauthorized
from eventhub_log import EventHub
from eventhub_log.channels import Channel, ChannelError, ChannelRoute, Session

from ._run import build, main


def topic_of(user_id: str) -> str:
    return f"notifications:{user_id}"


def grant_for(user: str) -> dict[str, Any]:
    return {"subscribe": [topic_of("{sub}")], "subscribers": ["{sub}", "{sub}:*"]}


# The session is the default one: its user_id is the token's sub.
notifications: ChannelRoute[dict[str, Any]] = ChannelRoute("notifications")


@notifications.on_connect
async def listen(hub: EventHub, channel: Channel[dict[str, Any]], session: Session) -> Any:
    if session.user_id is None:
        raise ChannelError("log in first (POST /token)", code="unauthenticated")
    await hub.subscribe(topic_of(session.user_id), channel.channel_id)
    return {"user_id": session.user_id}


class Order(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item: str = Field(min_length=1, max_length=200)


def create(database_url: str, secret: str, token_ttl: float = 3600.0) -> FastAPI:
    app = build(
        database_url, notifications, secret=secret, grant_for=grant_for, token_ttl=token_ttl
    )

    @app.post("/orders", status_code=201, tags=["example"])
    async def place_order(order: Order, request: Request, identity: IdentityDep) -> dict[str, Any]:
        """An ordinary REST function, for the user whose token it is, that also
        tells that user, durably. The token is checked by the hub's own
        dependency; the route publishes as the service, to the buyer's topic."""
        if identity.sub is None:
            raise Unauthorized("placing an order needs a token", token_given=False)
        hub: EventHub = request.app.state.hub
        order_id = uuid.uuid4().hex[:12]
        event = await hub.publish(
            topic_of(identity.sub),
            None,
            {"type": "order_placed", "order_id": order_id, "item": order.item},
            publisher=identity.sub,
        )
        return {"order_id": order_id, "notification_id": event.id}

    return app


if __name__ == "__main__":
    main("notifications", create, port=8003)
