"""Dependencies shared by the routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from eventhub_log import EventHub

from .settings import Settings


# Both are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in
# its thread pool, a thread hop on every request (measured: about 40% more server
# CPU per request for a publish-sized route, bench/http_bench.py).
async def get_hub(request: Request) -> EventHub:
    hub: EventHub = request.app.state.hub
    return hub


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


HubDep = Annotated[EventHub, Depends(get_hub)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
