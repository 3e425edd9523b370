"""One Settings object, read from EVENTHUB_* environment variables. The library
never reads it: the app hands its values to EventHub as keyword arguments."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EVENTHUB_", extra="ignore")

    database_url: str = "sqlite+aiosqlite:///eventhub.db"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)
    mode: Literal["stateful", "stateless"] = "stateful"
    auto_migrate: bool | None = None
    body_limit: int = Field(default=1024 * 1024, ge=1, description="request body limit, bytes")
    heartbeat_interval: float = Field(default=15.0, gt=0, description="SSE ': ping' period, s")
    stream_buffer: int = Field(default=1000, ge=1, description="live events buffered per stream")
    stream_write_timeout: float = Field(
        default=30.0, gt=0, description="SSE write blocked this long (s): cut off, client resumes"
    )
    stream_coalesce: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="SSE: events for a stream that wrote less than this long ago (s) "
        "are held back to go out in one write",
    )
    idempotency_ttl: float = Field(default=24 * 3600, gt=0, description="how long keys are kept, s")
    instance_heartbeat: float = Field(default=5.0, gt=0)
    instance_ttl: float = Field(default=30.0, gt=0)
    sqlite_synchronous: Literal["OFF", "NORMAL", "FULL", "EXTRA"] = "FULL"
    gc_freeze: bool = Field(
        default=True,
        description="freeze the garbage collector's view of startup objects (see api/app.py)",
    )
    ws_max_frame: int | None = Field(
        default=None, ge=1, description="largest WebSocket frame accepted, bytes (body_limit)"
    )
    ws_send_queue: int = Field(default=256, ge=1, description="frames queued per WebSocket")
    ws_frame_rate: float = Field(default=1000.0, gt=0, description="client frames/s allowed")
    ws_frame_burst: int = Field(default=5000, ge=1, description="client frames in a burst")

    @property
    def effective_mode(self) -> Literal["stateful", "stateless"]:
        # Several worker processes share the database and nothing else.
        return "stateless" if self.workers > 1 else self.mode
