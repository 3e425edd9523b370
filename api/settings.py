"""One Settings object, read from EVENTHUB_* environment variables. The library
never reads it: the app hands its values to EventHub as keyword arguments."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


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
    stream_buffer_bytes: int = Field(
        default=4 * MiB,
        ge=1,
        description="payload bytes buffered per stream (live, or a catch-up page); "
        "beyond it the stream catches up from the log",
    )
    frame_cache_bytes: int = Field(
        default=32 * MiB, ge=0, description="encoded frames kept, bytes, per cache (SSE, WS)"
    )
    write_queue_events: int = Field(
        default=10_000, ge=1, description="events waiting for the database; beyond it a 503"
    )
    write_queue_bytes: int = Field(
        default=64 * MiB, ge=1, description="payload bytes waiting for the database; then 503"
    )
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
    ws_send_queue_bytes: int = Field(
        default=4 * MiB, ge=1, description="bytes of frames queued per WebSocket"
    )
    ws_frame_rate: float = Field(default=1000.0, gt=0, description="client frames/s allowed")
    ws_frame_burst: int = Field(default=5000, ge=1, description="client frames in a burst")

    # Contract section 7.
    max_connections_per_client: int = Field(
        default=200, ge=1, description="open streams and sockets of one client (sub or address)"
    )
    max_topics_per_stream: int = Field(
        default=100, ge=1, description="topics of one stream, socket or REST subscriber"
    )
    subscription_ttl: float = Field(
        default=24 * 3600,
        gt=0,
        description="seconds a REST subscription lives while no stream of its subscriber holds it",
    )
    max_subscriptions_per_client: int = Field(
        default=1000,
        ge=1,
        description="REST subscriptions one client (token sub) may hold with no stream open",
    )
    header_timeout: float = Field(
        default=10.0, gt=0, description="seconds a request's headers may take to arrive"
    )
    # Contract section 6. The secret is a SecretStr so that no repr or log shows it.
    auth_secret: SecretStr | None = Field(default=None, description="HS256 shared secret")
    auth_secret_file: str | None = Field(default=None, description="file holding the secret")
    auth_public_key: str | None = Field(
        default=None, description="path of a PEM public key (RS256, ES256, EdDSA tokens)"
    )
    auth_audience: str | None = Field(
        default=None, description="when set, tokens must carry this 'aud'; else none may"
    )
    auth_anonymous: str | None = Field(
        default=None, description="the grant of requests without a token, as JSON"
    )
    auth_query_token: bool = Field(default=True, description="accept ?access_token=")
    auth_leeway: float = Field(
        default=5.0, ge=0, le=30, description="seconds a token is still taken past its exp"
    )
    cors_origins: str = Field(
        default="", description="comma-separated origins allowed by CORS (and WebSocket Origin)"
    )
    # Contract section 8.
    audit_key: str | None = Field(
        default=None, description="path of the Ed25519 private key (PEM) signing checkpoints"
    )

    @field_validator("cors_origins")
    @classmethod
    def _no_wildcard_origin(cls, value: str) -> str:
        if "*" in value:
            # With credentials allowed, "*" would let every site act with a
            # visitor's eventhub_token cookie.
            raise ValueError("EVENTHUB_CORS_ORIGINS lists origins; '*' is not allowed")
        return value

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    @property
    def effective_mode(self) -> Literal["stateful", "stateless"]:
        # Several worker processes share the database and nothing else.
        return "stateless" if self.workers > 1 else self.mode
