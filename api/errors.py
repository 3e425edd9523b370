"""Every error leaves as ``{"error": {"code", "message"}}``; the library's error
hierarchy is mapped to status codes here, in one place."""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from eventhub_log import errors as lib

_STATUS: list[tuple[type[lib.EventHubError], int, str]] = [
    (lib.InvalidTopic, 400, "invalid_topic"),
    (lib.InvalidPayload, 400, "invalid_payload"),
    (lib.InvalidSubscriber, 400, "invalid_subscriber"),
    (lib.InvalidCursor, 400, "invalid_cursor"),
    (lib.ValidationError, 400, "invalid_request"),
    (lib.IdempotencyConflict, 409, "idempotency_conflict"),
    (lib.HubNotStarted, 503, "not_ready"),
    (lib.SchemaError, 503, "schema_mismatch"),
    (lib.Overloaded, 503, "overloaded"),
    (lib.StorageFull, 507, "storage_full"),
    (lib.DatabaseUnavailable, 503, "database_unavailable"),
    (lib.StorageError, 500, "storage_error"),
]


log = logging.getLogger(__name__)

# What a client is told of a 5xx: what happened and what to do, never the
# driver's or the pool's own words (table names, SQL, addresses, versions).
# The full message goes to the server log under the same request id.
_PUBLIC = {
    "not_ready": "the hub is starting or stopping; retry shortly",
    "schema_mismatch": "the database schema does not match this server version",
    "database_unavailable": "the database is unavailable or busy; retry shortly",
    "overloaded": "too many publishes are waiting for the database; nothing was written; "
    "retry shortly",
    "storage_full": "the database has no space left; nothing was written; retry once "
    "space is freed",
    "storage_error": "the database could not complete the request; nothing was acknowledged",
}
_INTERNAL = "the server failed to complete the request; nothing was acknowledged"


class ApiError(Exception):
    """An error raised by a route with its own status and code."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_response(
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    request_id: str | None = None,
) -> JSONResponse:
    if status == 503:
        headers = {"Retry-After": "1", **(headers or {})}
    error = {"code": code, "message": message}
    if request_id is not None:
        error["request_id"] = request_id
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def public_error(exc: lib.EventHubError) -> tuple[int, str, str, str | None]:
    """Status, code, message and request id (5xx only) to answer ``exc`` with.
    A 5xx is logged in full here and answered in general words."""
    status, code = status_of(exc)
    if status < 500:
        return status, code, str(exc), None
    request_id = new_request_id()
    log.warning("%d %s [request %s]: %s", status, code, request_id, exc)
    return status, code, f"{_PUBLIC.get(code, _INTERNAL)} (request {request_id})", request_id


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


def library_error_response(exc: lib.EventHubError) -> JSONResponse:
    status, code, message, request_id = public_error(exc)
    return error_response(status, code, message, request_id=request_id)


def status_of(exc: lib.EventHubError) -> tuple[int, str]:
    for cls, status, code in _STATUS:
        if isinstance(exc, cls):
            return status, code
    return 500, "internal_error"


def install(app: FastAPI) -> None:
    @app.exception_handler(lib.EventHubError)
    async def _library(_: Request, exc: lib.EventHubError) -> JSONResponse:
        return library_error_response(exc)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # A bug: the traceback goes to the log, the client gets the contract's body.
        request_id = new_request_id()
        log.error("500 internal_error [request %s]", request_id, exc_info=exc)
        return error_response(
            500, "internal_error", f"{_INTERNAL} (request {request_id})", request_id=request_id
        )

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in err.get('loc', ()))}: {err.get('msg')}"
            for err in exc.errors()
        )
        return error_response(422, "validation_error", problems or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(
            exc.status_code, "http_error"
        )
        return error_response(exc.status_code, code, str(exc.detail))
