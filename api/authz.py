"""Who may do what: grants, topic selectors and the one question routes ask.

Pure functions and frozen values, no I/O: every route and WebSocket op asks
``Identity.may`` or ``Identity.may_act_as`` (through ``api/auth.py``'s
``require`` helpers) and never looks at a token itself.

Selectors (contract section 6): an exact topic name, or a pattern where ``*``
matches any run of characters, ``/`` and ``:`` included (``room:*``, ``orders/*``,
``*``). ``{sub}`` stands for the token's ``sub`` taken literally: a ``sub`` of
``a*`` matches only the text ``a*``, never acts as a wildcard, so nobody widens
their own grant by choosing a name. An identity without ``sub`` (anonymous) has
no ``{sub}``: a selector that uses it matches nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from typing import Any

SUB = "{sub}"
DEFAULT_SUBSCRIBERS = (SUB, f"{SUB}:*")


class Right(StrEnum):
    PUBLISH = "publish"
    SUBSCRIBE = "subscribe"
    HISTORY = "history"


class GrantError(ValueError):
    """A grant claim (or ``EVENTHUB_AUTH_ANONYMOUS``) that is not the contract's shape."""


@dataclass(frozen=True)
class Grant:
    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    history: tuple[str, ...] = ()
    subscribers: tuple[str, ...] = DEFAULT_SUBSCRIBERS
    admin: bool = False

    @classmethod
    def parse(cls, claim: Any) -> Grant:
        """The grant of an ``eventhub`` claim; a missing claim grants nothing."""
        if claim is None:
            return cls()
        if not isinstance(claim, Mapping):
            raise GrantError("the grant must be a JSON object")
        unknown = set(claim) - {"publish", "subscribe", "history", "subscribers", "admin"}
        if unknown:
            raise GrantError(f"unknown grant field(s): {', '.join(sorted(map(str, unknown)))}")
        admin = claim.get("admin", False)
        if not isinstance(admin, bool):
            raise GrantError("grant 'admin' must be true or false")
        lists = {name: _selectors(claim, name) for name in ("publish", "subscribe", "history")}
        subscribers = _selectors(claim, "subscribers") if "subscribers" in claim else None
        return cls(
            **lists,
            subscribers=DEFAULT_SUBSCRIBERS if subscribers is None else subscribers,
            admin=admin,
        )


def _selectors(claim: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = claim.get(name, [])
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise GrantError(f"grant {name!r} must be a list of non-empty strings")
    if len(value) > 256:
        raise GrantError(f"grant {name!r} has more than 256 selectors")
    return tuple(value)


@lru_cache(maxsize=4096)
def _pattern(selector: str, sub: str | None) -> re.Pattern[str] | None:
    """``selector`` as a compiled pattern; ``None`` when it can match nothing."""
    pieces: list[str] = []
    for between_stars in selector.split("*"):
        texts = between_stars.split(SUB)
        if len(texts) > 1 and sub is None:
            return None
        pieces.append(re.escape(sub or "").join(re.escape(text) for text in texts))
    return re.compile(".*".join(pieces), re.DOTALL)


def matches(selector: str, value: str, sub: str | None) -> bool:
    """Whether ``value`` (a topic or subscriber id) is matched by ``selector``."""
    if "*" not in selector and SUB not in selector:
        return selector == value
    pattern = _pattern(selector, sub)
    return pattern is not None and pattern.fullmatch(value) is not None


def any_matches(selectors: Iterable[str], value: str, sub: str | None) -> bool:
    return any(matches(selector, value, sub) for selector in selectors)


@dataclass(frozen=True)
class Identity:
    """Who a request or connection acts for, once its token was checked.

    ``sub`` is ``None`` for an anonymous client and on an open hub; ``open`` says
    the hub has no key at all (everything is allowed, as before auth existed).
    ``expires_at`` is the token's ``exp`` (seconds since the epoch), when it has one.
    """

    sub: str | None
    grant: Grant = field(default_factory=Grant)
    expires_at: float | None = None
    open: bool = False

    @property
    def anonymous(self) -> bool:
        return self.sub is None and not self.open

    @property
    def admin(self) -> bool:
        return self.open or self.grant.admin

    def may(self, right: Right, topic: str) -> bool:
        if self.admin:
            return True
        return any_matches(getattr(self.grant, right.value), topic, self.sub)

    def may_read(self, topic: str) -> bool:
        """What ``GET /v1/topics`` lists: topics it may subscribe to or read."""
        return self.may(Right.SUBSCRIBE, topic) or self.may(Right.HISTORY, topic)

    def may_act_as(self, subscriber: str) -> bool:
        if self.admin:
            return True
        return any_matches(self.grant.subscribers, subscriber, self.sub)


OPEN = Identity(sub=None, open=True)

__all__ = [
    "DEFAULT_SUBSCRIBERS",
    "OPEN",
    "Grant",
    "GrantError",
    "Identity",
    "Right",
    "any_matches",
    "matches",
]
