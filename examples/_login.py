"""A demo login for the examples: a user name in, a signed token out.

Anyone may be anyone here: there is no password. Put your real login in front
of ``mint`` (check a password, a session, an SSO assertion) and keep the rest:
the hub checks the token on every request and stream, and decides from its
grant (contract section 6) what the user may publish, read and act as.

- ``POST /login`` ``{"user": "alice"}``, for browsers: the token goes into the
  ``eventhub_token`` cookie, which an ``EventSource`` on this site sends by
  itself. It is ``HttpOnly`` (no script, injected or not, can read it) and
  ``SameSite=Strict`` (another site's pages cannot make the browser send it).
- ``POST /token`` ``{"user": "alice"}``, for terminals and scripts: the token
  in the answer, to send as ``Authorization: Bearer``.
- ``POST /logout`` drops the cookie.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from api.auth import COOKIE
from eventhub_log.tokens import mint_token

# The name is the token's sub, and so part of every subscriber id the user may
# act as ({sub}:...): keep it to characters that read well in ids and URLs.
USER = r"^[A-Za-z0-9_.-]{1,40}$"

GrantFor = Callable[[str], dict[str, Any]]


class Login(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: str = Field(pattern=USER, description="who you are (no password: a demo)")


class TokenOut(BaseModel):
    sub: str
    expires_at: int
    token: str


class LoggedIn(BaseModel):
    sub: str
    expires_at: int


def add_login(app: FastAPI, *, secret: str, grant_for: GrantFor, ttl: float) -> None:
    def mint(user: str) -> tuple[str, int]:
        expires_at = int(time.time()) + max(1, round(ttl))
        return mint_token(user, grant_for(user), secret=secret, ttl=ttl), expires_at

    @app.post("/login", tags=["example"])
    async def login(body: Login, request: Request, response: Response) -> LoggedIn:
        """Log in as ``user``: the token is set as the ``eventhub_token`` cookie."""
        token, expires_at = mint(body.user)
        response.set_cookie(
            COOKIE,
            token,
            max_age=max(1, round(ttl)),
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return LoggedIn(sub=body.user, expires_at=expires_at)

    @app.post("/token", tags=["example"])
    async def token(body: Login) -> TokenOut:
        """A token for ``user`` in the answer, for clients that send a header."""
        token, expires_at = mint(body.user)
        return TokenOut(sub=body.user, expires_at=expires_at, token=token)

    @app.post("/logout", status_code=204, tags=["example"])
    async def logout(response: Response) -> None:
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
