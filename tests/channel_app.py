"""A channel with handlers that misbehave on purpose, served for the tests:
``python -m tests.channel_app --port P --database-url URL``."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from api.app import create_app
from api.channels import mount_channels
from api.settings import Settings
from eventhub_log import EventHub
from eventhub_log.channels import Channel, ChannelError, ChannelRoute, ConnectionInfo, Session
from examples._run import main


class Opening(BaseModel):
    topic: str = "t:test"
    fail_connect: bool = False


class Echo(BaseModel):
    n: int


def session_of(info: ConnectionInfo) -> Session:
    return Session(user_id=info.headers.get("x-user-id"), data={"client": info.client})


testing: ChannelRoute[Opening] = ChannelRoute("testing", opening=Opening, session=session_of)


@testing.on_connect
async def connect(hub: EventHub, channel: Channel[Opening], session: Session) -> Any:
    await hub.subscribe(channel.opening_data.topic, channel.channel_id)
    await hub.subscribe("t:also", channel.channel_id)
    if channel.opening_data.fail_connect:
        raise RuntimeError("connect failed on purpose")
    await channel.send({"hello": session.user_id})
    return {"user": session.user_id, "topic": channel.opening_data.topic}


@testing.on_message("echo")
async def echo(hub: EventHub, channel: Channel[Opening], session: Session, data: Echo) -> Any:
    return {"n": data.n * 2}


@testing.on_message("publish")
async def publish(hub: EventHub, channel: Channel[Opening], session: Session, data: Echo) -> Any:
    event = await hub.publish(channel.opening_data.topic, channel.channel_id, {"n": data.n})
    return {"id": event.id}


@testing.on_message("boom")
async def boom(hub: EventHub, channel: Channel[Opening], session: Session, data: Any) -> Any:
    raise RuntimeError("handler failed on purpose")


@testing.on_message("refuse")
async def refuse(hub: EventHub, channel: Channel[Opening], session: Session, data: Any) -> Any:
    raise ChannelError("not allowed", code="forbidden")


@testing.on_message("silent")
async def silent(hub: EventHub, channel: Channel[Opening], session: Session, data: Any) -> None:
    await hub.subscribe("t:extra", channel.channel_id)


@testing.on_disconnect
async def disconnect(hub: EventHub, channel: Channel[Opening], session: Session) -> None:
    await hub.subscribe("t:from-disconnect", channel.channel_id)
    raise RuntimeError("disconnect failed on purpose")


def create(database_url: str, _secret: str, _token_ttl: float) -> FastAPI:
    """The service with this channel; open unless EVENTHUB_AUTH_SECRET is set (the
    channel tests run it both ways), so not through the examples' ``build``,
    which always asks for tokens."""
    app = create_app(Settings(database_url=database_url))
    mount_channels(app, testing)
    return app


if __name__ == "__main__":
    main("channel_app", create, port=8009)
