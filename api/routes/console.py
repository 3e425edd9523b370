"""The auditors' console (contract section 8): a page and its script and style,
served from ``api/console/``, with no token (the data it fetches needs one).

The page renders what publishers wrote, so it ships with a policy that allows
script from this origin only and no inline script at all: a payload that
reached the DOM as markup still could not run.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import Response

from ..errors import ApiError

router = APIRouter(tags=["console"], include_in_schema=False)

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Served from the installed package: a new version must not meet a stale script.
    "Cache-Control": "no-cache",
}

# Only these names are served: the route never maps a request path to a file path.
ASSETS = {
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}


@cache
def _read(name: str) -> bytes:
    return files("api").joinpath("console", name).read_bytes()


def _serve(name: str, media_type: str) -> Response:
    return Response(_read(name), media_type=media_type, headers=HEADERS)


@router.get("/console")
async def console_page() -> Response:
    return _serve("index.html", "text/html; charset=utf-8")


@router.get("/console/{name}")
async def console_asset(name: str) -> Response:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise ApiError(404, "not_found", f"the console has no file {name[:100]!r}")
    return _serve(name, media_type)
