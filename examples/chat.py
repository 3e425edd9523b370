"""Chat rooms: join a room by opening data; what you say reaches everyone else in it.

    .venv/bin/python -m examples.chat --port 8001     # then open http://127.0.0.1:8001/

Tokens are required. The page logs in by name (``POST /login``, a demo with no
password), which sets the ``eventhub_token`` cookie; its EventSource and POSTs
then authenticate by that cookie. A terminal gets a token from ``POST /token``.
Each token grants publish, subscribe and history on ``room:*`` and acts as the
subscribers ``{sub}`` and ``{sub}:*``, so a channel id is ``<user>:<anything>``.

Connect a channel ``chat`` with ``room`` as opening data:
``ws://127.0.0.1:8001/v1/channels/chat/alice:tab-1?room=lobby`` (or the same URL
as server-sent events, posting to ``.../messages``), then send
``{"action": "say", "data": {"text": "hi"}}``. Everyone else in ``room:lobby``
gets the message, signed with the token's user; the sender gets a reply with its
id. Reconnect with ``last_event_id`` (an EventSource does it by itself) and you
get every message you missed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from eventhub_log import EventHub
from eventhub_log.channels import Channel, ChannelError, ChannelRoute, Session

from ._run import build, main

PAGE = Path(__file__).with_name("chat.html")


class Join(BaseModel):
    room: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="the room to join")


class Say(BaseModel):
    text: str = Field(min_length=1, max_length=2000)


chat: ChannelRoute[Join] = ChannelRoute("chat", opening=Join)


def grant_for(user: str) -> dict[str, Any]:
    return {
        "publish": ["room:*"],
        "subscribe": ["room:*"],
        "history": ["room:*"],
        "subscribers": ["{sub}", "{sub}:*"],
    }


def room_topic(channel: Channel[Join]) -> str:
    return f"room:{channel.opening_data.room}"


def user_of(session: Session) -> str:
    # The name others see is the token's sub, never something the client claims.
    if session.user_id is None:
        raise ChannelError("log in first (POST /login)", code="unauthenticated")
    return session.user_id


@chat.on_connect
async def joined(hub: EventHub, channel: Channel[Join], session: Session) -> dict[str, Any]:
    # Runs again on every reconnection; subscribing is idempotent.
    user = user_of(session)
    await hub.subscribe(room_topic(channel), channel.channel_id)
    return {"room": channel.opening_data.room, "user": user}


@chat.on_message("say")
async def say(hub: EventHub, channel: Channel[Join], session: Session, data: Say) -> Any:
    # Excluding the sender's channel id: everyone in the room but the sender.
    event = await hub.publish(
        room_topic(channel),
        channel.channel_id,
        {"type": "message", "user": user_of(session), "text": data.text},
    )
    return {"id": event.id, "seq": event.seq, "text": data.text}


@chat.on_disconnect
async def left(hub: EventHub, channel: Channel[Join], session: Session) -> None:
    # Nothing to undo: the channel's subscription rows go when it closes.
    return None


def create(database_url: str, secret: str, token_ttl: float = 3600.0) -> FastAPI:
    app = build(database_url, chat, secret=secret, grant_for=grant_for, token_ttl=token_ttl)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return PAGE.read_text(encoding="utf-8")

    return app


if __name__ == "__main__":
    main("chat", create, port=8001)
