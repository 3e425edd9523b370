"""Chat rooms: join a room by opening data; what you say reaches everyone else in it.

    .venv/bin/python -m examples.chat --port 8001     # then open http://127.0.0.1:8001/

Connect a channel ``chat`` with ``room`` and ``user`` as opening data:
``ws://127.0.0.1:8001/v1/channels/chat/<your channel id>?room=lobby&user=alice``
(or the same URL as server-sent events, posting to ``.../messages``), then send
``{"action": "say", "data": {"text": "hi"}}``. Everyone else in ``room:lobby``
gets the message as an event; the sender gets a reply with its id. Reconnect
with ``last_event_id`` (an EventSource does it by itself) and you get every
message you missed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from eventhub_log import EventHub
from eventhub_log.channels import Channel, ChannelRoute, Session

from ._run import build, main

PAGE = Path(__file__).with_name("chat.html")


class Join(BaseModel):
    room: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="the room to join")
    user: str = Field(min_length=1, max_length=40, description="the name others see")


class Say(BaseModel):
    text: str = Field(min_length=1, max_length=2000)


chat: ChannelRoute[Join] = ChannelRoute("chat", opening=Join)


def room_topic(channel: Channel[Join]) -> str:
    return f"room:{channel.opening_data.room}"


@chat.on_connect
async def joined(hub: EventHub, channel: Channel[Join], session: Session) -> dict[str, Any]:
    # Runs again on every reconnection; subscribing is idempotent.
    await hub.subscribe(room_topic(channel), channel.channel_id)
    return {"room": channel.opening_data.room, "user": channel.opening_data.user}


@chat.on_message("say")
async def say(hub: EventHub, channel: Channel[Join], session: Session, data: Say) -> Any:
    # Excluding the sender's channel id: everyone in the room but the sender.
    event = await hub.publish(
        room_topic(channel),
        channel.channel_id,
        {"type": "message", "user": channel.opening_data.user, "text": data.text},
    )
    return {"id": event.id, "seq": event.seq, "text": data.text}


@chat.on_disconnect
async def left(hub: EventHub, channel: Channel[Join], session: Session) -> None:
    # Nothing to undo: the channel's subscription rows go when it closes.
    return None


def create(database_url: str) -> FastAPI:
    app = build(database_url, chat)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return PAGE.read_text(encoding="utf-8")

    return app


if __name__ == "__main__":
    main("chat", create, port=8001)
