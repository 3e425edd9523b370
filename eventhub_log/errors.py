"""The error hierarchy: every failure the library raises is an ``EventHubError``.

Driver errors are translated at the store boundary, so callers (and the HTTP
layer, which maps these classes to status codes in one place) never need to know
whether SQLite or PostgreSQL is underneath.
"""

from __future__ import annotations


class EventHubError(Exception):
    """Base class of everything eventhub-log raises on purpose."""


class ValidationError(EventHubError, ValueError):
    """Input was rejected before anything was written."""


class InvalidTopic(ValidationError):
    """A topic name breaks the naming rule."""


class InvalidPayload(ValidationError):
    """A payload cannot be stored as JSON."""


class InvalidSubscriber(ValidationError):
    """A subscriber id is empty, too long or not a string."""


class InvalidPublisher(ValidationError):
    """A publisher (the publishing token's ``sub``) is empty, too long or not a string."""


class InvalidCursor(ValidationError):
    """A resume cursor (``Last-Event-ID``) is not one this hub hands out."""


class OwnerLimitReached(ValidationError):
    """The owner already has ``limit`` subscriptions that no stream holds."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"this owner already has {limit} subscriptions with no open stream")
        self.limit = limit


class IdempotencyConflict(EventHubError):
    """An idempotency key was reused for a request with different events."""


class HubNotStarted(EventHubError, RuntimeError):
    """The hub was used outside ``async with hub:`` (or after it closed)."""


class SchemaError(EventHubError):
    """The database schema is not at a revision this version understands."""


class StorageError(EventHubError):
    """The database failed to do what was asked; nothing was acknowledged."""


class DatabaseUnavailable(StorageError):
    """The database cannot be reached right now; retry later."""


class StorageFull(DatabaseUnavailable):
    """The database has no space left (its disk, or a size limit it was given);
    the transaction was rolled back and nothing was written. Retry once space is
    freed: the hub needs no restart."""


class Overloaded(DatabaseUnavailable):
    """Too many publishes are waiting for the database (the writer's queue is
    full); nothing was queued. Retry later."""
