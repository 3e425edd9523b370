"""eventhub-log: a durable pub/sub hub with replay (the Pikku EventHub API on a SQL log)."""

from .delivery import Feed
from .errors import (
    DatabaseUnavailable,
    EventHubError,
    HubNotStarted,
    IdempotencyConflict,
    InvalidCursor,
    InvalidPayload,
    InvalidPublisher,
    InvalidSubscriber,
    InvalidTopic,
    OwnerLimitReached,
    SchemaError,
    StorageError,
    StorageFull,
    ValidationError,
)
from .hub import EventHub
from .model import Event, Gap, TopicInfo

__all__ = [
    "DatabaseUnavailable",
    "Event",
    "EventHub",
    "EventHubError",
    "Feed",
    "Gap",
    "HubNotStarted",
    "IdempotencyConflict",
    "InvalidCursor",
    "InvalidPayload",
    "InvalidPublisher",
    "InvalidSubscriber",
    "InvalidTopic",
    "OwnerLimitReached",
    "SchemaError",
    "StorageError",
    "StorageFull",
    "TopicInfo",
    "ValidationError",
]
