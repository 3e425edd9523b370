"""Request and response bodies of the REST routes, as the contract shapes them.

The publish and history routes write their JSON by hand for speed (see
``body.py``); the response models here still describe it in the OpenAPI document.

Request models forbid unknown fields: a misspelt ``exclude`` must be a 422, not
an event quietly sent to everyone.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from eventhub_log.model import TopicInfo, format_timestamp

MAX_BATCH = 1000


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PublishIn(_Body):
    payload: Any = Field(description="any JSON value")
    exclude: str | None = Field(default=None, description="subscriber id not to deliver to")


class BatchItemIn(_Body):
    topic: str
    payload: Any = Field(description="any JSON value")
    exclude: str | None = None


class BatchIn(_Body):
    events: list[BatchItemIn] = Field(min_length=1, max_length=MAX_BATCH)


class PublishedOut(BaseModel):
    topic: str
    seq: int
    id: str = Field(description="the event's cursor, as SSE and WebSocket show it")
    published_at: str = Field(description="RFC 3339 UTC with microseconds")


class EventOut(BaseModel):
    topic: str
    seq: int
    id: str
    payload: Any
    published_at: str
    exclude: str | None
    publisher: str | None = Field(
        description="the sub of the publishing token; null when the hub is open"
    )
    hash: str | None = Field(
        description="lowercase hex SHA-256 linking the event into its topic's chain "
        "(contract section 8, docs/audit.md)"
    )


class BatchOut(BaseModel):
    events: list[EventOut]


class HistoryOut(BaseModel):
    events: list[EventOut]
    next: str | None = Field(description="relative URL of the next page, or null")


class TopicOut(BaseModel):
    topic: str
    last_seq: int
    event_count: int
    first_published_at: str | None
    last_published_at: str | None
    subscriber_count: int

    @classmethod
    def of(cls, info: TopicInfo) -> TopicOut:
        return cls(
            topic=info.topic,
            last_seq=info.last_seq,
            event_count=info.event_count,
            first_published_at=_timestamp(info.first_published_at),
            last_published_at=_timestamp(info.last_published_at),
            subscriber_count=info.subscriber_count,
        )


class TopicsOut(BaseModel):
    topics: list[TopicOut]
    next: str | None = Field(default=None, description="relative URL of the next page, or null")


class SubscriptionOut(BaseModel):
    subscriber: str
    topic: str
    expires_at: str | None = Field(
        description="RFC 3339 UTC: when the subscription goes unless a stream of the "
        "subscriber takes it over (subscribing again renews it); null while a stream holds it"
    )


class SubscriberTopicsOut(BaseModel):
    subscriber: str
    topics: list[str]


class RemovedOut(BaseModel):
    subscriber: str
    removed: int = Field(description="how many subscriptions were removed")


class TopicSubscribersOut(BaseModel):
    topic: str
    subscribers: list[str]


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorOut(BaseModel):
    error: ErrorDetail


def _timestamp(moment: datetime | None) -> str | None:
    return None if moment is None else format_timestamp(moment)


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route can answer with."""
    return {status: {"model": ErrorOut} for status in statuses}


class VerificationOut(BaseModel):
    topic: str
    ok: bool
    from_seq: int = Field(description="the first event checked: after what retention deleted")
    through_seq: int = Field(description="the last event whose hash held")
    head_hash: str = Field(description="that event's hash (the anchor when none held)")
    first_bad_seq: int | None = Field(description="where the chain broke; null when ok")


class CheckpointOut(BaseModel):
    """Contract section 8; docs/audit.md says how to check one offline."""

    topic: str
    seq: int = Field(description="the topic's last event")
    hash: str = Field(description="that event's hash")
    signed_at: str = Field(description="RFC 3339 UTC, signed exactly as this text")
    signature: str = Field(
        description='base64 Ed25519 signature of "eventhub-log checkpoint v1\\n" + topic + '
        '"\\n" + seq + "\\n" + hash + "\\n" + signed_at'
    )
