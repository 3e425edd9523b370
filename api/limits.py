"""Per-client limits (contract section 7): no client takes the server from others.

A client is the token's ``sub`` when there is one, else the peer address (an
open hub, or anonymous requests). Counts are per server process: with
``--workers N`` a client may hold up to N times the limit across the workers,
which still bounds what one client costs each process.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .authz import Identity
from .errors import ApiError


class TooManyConnections(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            429,
            "too_many_connections",
            f"this client already has {limit} open streams and sockets; close one first",
            headers={"Retry-After": "1"},
        )


class TooManyTopics(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(400, "too_many_topics", f"at most {limit} topics per stream or socket")


class TooManySubscriptions(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            429,
            "too_many_subscriptions",
            f"this client already has {limit} subscriptions with no open stream; "
            "remove some, open their streams or wait for them to expire",
        )


def client_key(identity: Identity, peer: str | None) -> str:
    # Distinct prefixes: a sub that looks like an address is not that address.
    if identity.sub is not None:
        return f"sub:{identity.sub}"
    return f"peer:{peer or 'unknown'}"


class ConnectionLimiter:
    """Open ``/v1/stream`` responses and ``/v1/ws`` sockets per client."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}

    def acquire(self, key: str) -> None:
        count = self._open.get(key, 0)
        if count >= self.limit:
            raise TooManyConnections(self.limit)
        self._open[key] = count + 1

    def release(self, key: str) -> None:
        count = self._open.get(key, 0) - 1
        if count > 0:
            self._open[key] = count
        else:
            self._open.pop(key, None)

    @contextmanager
    def held(self, key: str) -> Iterator[None]:
        self.acquire(key)
        try:
            yield
        finally:
            self.release(key)


def check_topic_count(count: int, limit: int) -> None:
    if count > limit:
        raise TooManyTopics(limit)


__all__ = [
    "ConnectionLimiter",
    "TooManyConnections",
    "TooManySubscriptions",
    "TooManyTopics",
    "check_topic_count",
    "client_key",
]
