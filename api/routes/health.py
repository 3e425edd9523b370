"""Liveness and readiness."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from eventhub_log.migrations import current_revision, head_revision

from ..deps import HubDep
from ..errors import error_response, new_request_id

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: database reachable and schema at head")
async def readyz(hub: HubDep) -> JSONResponse:
    if not hub.running:
        return error_response(503, "not_ready", "the hub is not running")
    try:
        revision = await current_revision(hub.database)
    except Exception as exc:
        # The driver's words (addresses, versions) go to the log, not to probes.
        request_id = new_request_id()
        log.warning("readyz: database unreachable [request %s]: %s", request_id, exc)
        return error_response(
            503, "database_unavailable", "the database is unreachable", request_id=request_id
        )
    if revision != head_revision():
        return error_response(
            503, "schema_mismatch", f"schema at {revision}, expected {head_revision()}"
        )
    return JSONResponse({"status": "ready", "schema": revision, "mode": hub.mode})
