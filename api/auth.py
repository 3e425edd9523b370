"""Authentication: the token of a request or handshake, checked once, in one place.

``Auth.identify`` turns what a client sent into an ``Identity`` (api/authz.py)
or refuses it with ``Unauthorized``; routes then ask ``require_*`` whether that
identity may do what it asks. No route reads or parses a token itself.

Where a token travels, in the order they are read (the first one present is the
token; a bad one is refused, never skipped in favour of another):
``Authorization: Bearer``, the ``access_token`` query parameter (unless
``EVENTHUB_AUTH_QUERY_TOKEN=0``), the ``eventhub_token`` cookie. The query
parameter is there for clients that can set neither (a cross-site
``EventSource``); it is dropped from every link the server builds (``next``)
and the server writes no access log, so it is not copied anywhere.

Verified tokens are remembered (bounded, by the exact token text) so that a
client publishing thousands of times a second pays for one signature check,
not thousands; ``exp`` is still checked on every use.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Mapping
from http.cookies import CookieError, SimpleCookie
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import Depends, Request, WebSocket
from fastapi.security import APIKeyCookie, APIKeyQuery, HTTPBearer
from starlette.types import Scope

from eventhub_log.tokens import (
    GRANT_CLAIM,
    AuthKeyError,
    InvalidToken,
    VerificationKey,
    load_verification_key,
)

from .authz import OPEN, Grant, GrantError, Identity, Right
from .errors import ApiError, error_response
from .settings import Settings

COOKIE = "eventhub_token"
QUERY = "access_token"
_CACHE_SIZE = 4096
# A JWT longer than this is not one we issue; refuse it before any parsing.
MAX_TOKEN_LENGTH = 8192


class Unauthorized(ApiError):
    """No acceptable token where one is needed: 401 with ``WWW-Authenticate``."""

    def __init__(self, message: str, *, token_given: bool) -> None:
        challenge = 'Bearer realm="eventhub-log"'
        if token_given:
            challenge += ', error="invalid_token"'
        super().__init__(401, "unauthorized", message, headers={"WWW-Authenticate": challenge})


class Forbidden(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(403, "forbidden", message)


class Auth:
    """The app's authenticator: its key (``None``: an open hub) and the anonymous grant."""

    def __init__(
        self,
        key: VerificationKey | None,
        *,
        anonymous: Grant | None = None,
        leeway: float = 5.0,
        query_token: bool = True,
    ) -> None:
        self.key = key
        self.anonymous = None if anonymous is None else Identity(sub=None, grant=anonymous)
        self.leeway = leeway
        self.query_token = query_token
        self._verified: OrderedDict[str, Identity] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.key is not None

    def identify(self, token: str | None) -> Identity:
        """The identity of a client that sent ``token`` (``None``: it sent none)."""
        if self.key is None:
            return OPEN
        if token is None:
            if self.anonymous is not None:
                return self.anonymous
            raise Unauthorized("this hub needs a token (Authorization: Bearer)", token_given=False)
        identity = self._verified.get(token)
        if identity is None:
            identity = self._verify(token)
            self._verified[token] = identity
            if len(self._verified) > _CACHE_SIZE:
                self._verified.popitem(last=False)
        elif identity.expires_at is not None and time.time() > identity.expires_at + self.leeway:
            del self._verified[token]
            raise Unauthorized("the token has expired", token_given=True)
        return identity

    def _verify(self, token: str) -> Identity:
        assert self.key is not None
        if len(token) > MAX_TOKEN_LENGTH:
            raise Unauthorized("the token is malformed", token_given=True)
        try:
            claims = self.key.decode(token, leeway=self.leeway)
            grant = Grant.parse(claims.get(GRANT_CLAIM))
        except InvalidToken as exc:
            raise Unauthorized(str(exc), token_given=True) from None
        except GrantError as exc:
            raise Unauthorized(
                f"the token's {GRANT_CLAIM!r} claim: {exc}", token_given=True
            ) from None
        exp = claims.get("exp")
        return Identity(
            sub=claims["sub"], grant=grant, expires_at=float(exp) if exp is not None else None
        )

    def token_of(self, headers: Mapping[str, str], query: Mapping[str, str] | None) -> str | None:
        """The token a request or handshake carries, wherever it travels."""
        return self.token_from(
            headers.get("authorization"),
            query.get(QUERY) if query is not None else None,
            headers.get("cookie"),
        )

    def token_from(
        self, authorization: str | None, query_token: str | None, cookie: str | None
    ) -> str | None:
        found = self.find_token(authorization, query_token, cookie)
        return None if found is None else found[0]

    def find_token(
        self, authorization: str | None, query_token: str | None, cookie: str | None
    ) -> tuple[str, str] | None:
        """The token and where it travelled: ``header``, ``query`` or ``cookie``."""
        if authorization is not None:
            scheme, _, value = authorization.strip().partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise Unauthorized(
                    "the Authorization header must be 'Bearer <token>'", token_given=True
                )
            return value.strip(), "header"
        if self.query_token and query_token is not None:
            return query_token, "query"
        if cookie:
            try:
                jar: SimpleCookie = SimpleCookie(cookie)
            except CookieError:
                return None
            if COOKIE in jar:
                return jar[COOKIE].value, "cookie"
        return None

    def token_of_scope(self, scope: Scope) -> str | None:
        """``token_of`` for a raw ASGI scope (the publish fast path, handshakes)."""
        authorization = cookie = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"cookie":
                cookie = value.decode("latin-1")
        query_token = None
        query_string: bytes = scope.get("query_string", b"")
        if QUERY.encode() in query_string:
            query_token = dict(parse_qsl(query_string.decode("latin-1"))).get(QUERY)
        return self.token_from(authorization, query_token, cookie)


async def admit_websocket(websocket: WebSocket, origins: list[str]) -> Identity | None:
    """The identity of a WebSocket handshake, or ``None`` once it has been refused
    (with an HTTP 401 or 403 where the server can send one, else a close with 1008
    before the socket is accepted).

    ``Origin`` is checked because a browser sends cookies with a cross-site
    handshake and no CORS rule stops it (cross-site WebSocket hijacking): with
    ``EVENTHUB_CORS_ORIGINS`` set, only those origins; without it, a handshake
    that authenticates by cookie must come from the hub's own origin. A handshake
    without ``Origin`` is not a browser's, and is judged by its token alone."""
    auth = auth_of(websocket.app.state)
    headers = websocket.headers
    try:
        found = auth.find_token(
            headers.get("authorization"),
            websocket.query_params.get(QUERY),
            headers.get("cookie"),
        )
        origin = headers.get("origin")
        if origin is not None:
            if origins:
                if origin not in origins:
                    raise Forbidden(f"origin {origin[:100]!r} is not allowed")
            elif (
                auth.enabled
                and found is not None
                and found[1] == "cookie"
                and not _same_origin(origin, headers.get("host"), websocket.url.scheme)
            ):
                raise Forbidden(f"origin {origin[:100]!r} is not this hub's")
        return auth.identify(None if found is None else found[0])
    except ApiError as exc:
        await deny_websocket(websocket, exc)
        return None


async def deny_websocket(websocket: WebSocket, exc: ApiError) -> None:
    """Refuse a handshake that has not been accepted."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(
            error_response(exc.status, exc.code, exc.message, exc.headers)
        )
    else:
        await websocket.close(1008, exc.message[:120])


def _same_origin(origin: str, host: str | None, scheme: str) -> bool:
    expected = "https" if scheme in ("wss", "https") else "http"
    return host is not None and origin.lower() == f"{expected}://{host}".lower()


def anonymous_grant(text: str | None) -> Grant | None:
    """``EVENTHUB_AUTH_ANONYMOUS``'s grant; text that is not one raises ``AuthKeyError``."""
    if not text:
        return None
    try:
        return Grant.parse(json.loads(text))
    except (ValueError, GrantError) as exc:
        raise AuthKeyError(f"EVENTHUB_AUTH_ANONYMOUS is not a grant object: {exc}") from None


def auth_from_settings(settings: Settings) -> Auth:
    """The app's ``Auth``; a configuration that cannot work raises ``AuthKeyError``."""
    secret = settings.auth_secret.get_secret_value() if settings.auth_secret else None
    key = load_verification_key(
        secret=secret,
        secret_file=settings.auth_secret_file,
        public_key_file=settings.auth_public_key,
        audience=settings.auth_audience,
    )
    return Auth(
        key,
        anonymous=anonymous_grant(settings.auth_anonymous),
        leeway=settings.auth_leeway,
        query_token=settings.auth_query_token,
    )


def auth_of(state: Any) -> Auth:
    auth: Auth = state.auth
    return auth


# Described in the OpenAPI document; the checking is Auth's (auto_error off: an
# open hub and the anonymous grant need no token at all).
_bearer = HTTPBearer(auto_error=False, description="a JWT (contract section 6)")
_cookie = APIKeyCookie(name=COOKIE, auto_error=False, description="the same token, for EventSource")
_query = APIKeyQuery(name=QUERY, auto_error=False, description="the same token, in the query")


async def current_identity(
    request: Request,
    _b: Annotated[Any, Depends(_bearer)] = None,
    _c: Annotated[Any, Depends(_cookie)] = None,
    _q: Annotated[Any, Depends(_query)] = None,
) -> Identity:
    auth = auth_of(request.app.state)
    return auth.identify(auth.token_of(request.headers, request.query_params))


IdentityDep = Annotated[Identity, Depends(current_identity)]


def _refuse(identity: Identity, message: str) -> ApiError:
    if identity.anonymous:
        return Unauthorized(f"{message} without a token", token_given=False)
    return Forbidden(message)


def require(identity: Identity, right: Right, topic: str) -> None:
    if not identity.may(right, topic):
        raise _refuse(identity, f"no {right.value} right on topic {topic!r}")


def require_all(identity: Identity, right: Right, topics: list[str]) -> None:
    """Every topic, or nothing happens (a batch is all or nothing)."""
    for topic in topics:
        require(identity, right, topic)


def require_subscriber(identity: Identity, subscriber: str) -> None:
    if not identity.may_act_as(subscriber):
        raise _refuse(identity, f"may not act as subscriber {subscriber!r}")


def require_admin(identity: Identity) -> None:
    if not identity.admin:
        raise _refuse(identity, "this needs an admin token")


__all__ = [
    "COOKIE",
    "QUERY",
    "Auth",
    "Forbidden",
    "IdentityDep",
    "Unauthorized",
    "admit_websocket",
    "anonymous_grant",
    "auth_from_settings",
    "auth_of",
    "current_identity",
    "deny_websocket",
    "require",
    "require_admin",
    "require_all",
    "require_subscriber",
]
