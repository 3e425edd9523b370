"""Presence: who is here, as updates on ``presence:updates`` for everyone watching.

    .venv/bin/python -m examples.presence --port 8002

Connect the channel ``presence`` with your ``user`` as opening data
(``ws://127.0.0.1:8002/v1/channels/presence/<channel id>?user=alice``): you get a
welcome listing who is online, then ``joined`` / ``status`` / ``left`` events.
Send ``{"action": "status", "data": {"status": "away"}}`` to change yours. Anyone
can watch without being present: ``GET /v1/stream?topic=presence:updates``.
"""

from __future__ import annotations

from typing import Literal

from fastapi import FastAPI
from pydantic import BaseModel, Field

from eventhub_log import EventHub
from eventhub_log.channels import Channel, ChannelRoute, Session

from ._run import build, main

TOPIC = "presence:updates"
# Being subscribed to this (never published) topic is what "present" means: the
# rows go by themselves when a channel closes, or its server dies, and
# watchers of TOPIC who are not present themselves are not counted.
HERE = "presence:here"


class Present(BaseModel):
    user: str = Field(min_length=1, max_length=40)


class Status(BaseModel):
    status: Literal["online", "away", "busy"]


presence: ChannelRoute[Present] = ChannelRoute("presence", opening=Present)


@presence.on_connect
async def arrived(hub: EventHub, channel: Channel[Present], session: Session) -> dict[str, object]:
    online = await hub.subscribers(HERE)  # channel ids present before this one
    await hub.subscribe(HERE, channel.channel_id)
    await hub.subscribe(TOPIC, channel.channel_id)
    await hub.publish(
        TOPIC,
        channel.channel_id,
        {"type": "joined", "user": channel.opening_data.user, "channel_id": channel.channel_id},
    )
    return {"online": online}


@presence.on_message("status")
async def status(hub: EventHub, channel: Channel[Present], session: Session, data: Status) -> None:
    await hub.publish(
        TOPIC,
        None,
        {
            "type": "status",
            "user": channel.opening_data.user,
            "channel_id": channel.channel_id,
            "status": data.status,
        },
    )


@presence.on_disconnect
async def departed(hub: EventHub, channel: Channel[Present], session: Session) -> None:
    await hub.publish(
        TOPIC,
        channel.channel_id,
        {"type": "left", "user": channel.opening_data.user, "channel_id": channel.channel_id},
    )


def create(database_url: str) -> FastAPI:
    return build(database_url, presence)


if __name__ == "__main__":
    main("presence", create, port=8002)
