"""Presence: who is here, as updates on ``presence:updates`` for everyone watching.

    .venv/bin/python -m examples.presence --port 8002

Tokens are required to be present: get one with ``POST /token`` ``{"user":
"alice"}`` (a demo login, no password) and connect the channel ``presence`` with
it (``ws://127.0.0.1:8002/v1/channels/presence/alice:tab-1`` with
``Authorization: Bearer <token>``; the channel id is ``<user>`` or
``<user>:<anything>``): you get a welcome listing who is online, then
``joined`` / ``status`` / ``left`` events. Send ``{"action": "status", "data":
{"status": "away"}}`` to change yours. Anyone can watch without being present
or logged in, by the anonymous grant: ``GET /v1/stream?topic=presence:updates``.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel

from eventhub_log import EventHub
from eventhub_log.channels import Channel, ChannelError, ChannelRoute, Session

from ._run import build, main

TOPIC = "presence:updates"
# Being subscribed to this (never published) topic is what "present" means: the
# rows go by themselves when a channel closes, or its server dies, and
# watchers of TOPIC who are not present themselves are not counted.
HERE = "presence:here"


def grant_for(user: str) -> dict[str, Any]:
    return {"subscribe": [TOPIC], "subscribers": ["{sub}", "{sub}:*"]}


# Watching needs no token: requests without one may follow TOPIC, and nothing else.
ANONYMOUS = json.dumps({"subscribe": [TOPIC]})


class Status(BaseModel):
    status: Literal["online", "away", "busy"]


presence: ChannelRoute[dict[str, Any]] = ChannelRoute("presence")


def user_of(session: Session) -> str:
    # Who is present is the token's sub, never something the client claims.
    if session.user_id is None:
        raise ChannelError("log in first (POST /token)", code="unauthenticated")
    return session.user_id


@presence.on_connect
async def arrived(
    hub: EventHub, channel: Channel[dict[str, Any]], session: Session
) -> dict[str, object]:
    user = user_of(session)
    online = await hub.subscribers(HERE)  # channel ids present before this one
    await hub.subscribe(HERE, channel.channel_id)
    await hub.subscribe(TOPIC, channel.channel_id)
    await hub.publish(
        TOPIC,
        channel.channel_id,
        {"type": "joined", "user": user, "channel_id": channel.channel_id},
    )
    return {"online": online}


@presence.on_message("status")
async def status(
    hub: EventHub, channel: Channel[dict[str, Any]], session: Session, data: Status
) -> None:
    await hub.publish(
        TOPIC,
        None,
        {
            "type": "status",
            "user": user_of(session),
            "channel_id": channel.channel_id,
            "status": data.status,
        },
    )


@presence.on_disconnect
async def departed(hub: EventHub, channel: Channel[dict[str, Any]], session: Session) -> None:
    await hub.publish(
        TOPIC,
        channel.channel_id,
        {"type": "left", "user": user_of(session), "channel_id": channel.channel_id},
    )


def create(database_url: str, secret: str, token_ttl: float = 3600.0) -> FastAPI:
    return build(
        database_url,
        presence,
        secret=secret,
        grant_for=grant_for,
        token_ttl=token_ttl,
        anonymous=ANONYMOUS,
    )


if __name__ == "__main__":
    main("presence", create, port=8002)
