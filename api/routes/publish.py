"""Publishing: one event, or a batch appended atomically.

These are the hot routes, so they read and write their bodies through ``body.py``
rather than FastAPI's parameter machinery; the OpenAPI description is the same.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from eventhub_log import EventHub
from eventhub_log.export import event_json
from eventhub_log.model import format_timestamp

from ..auth import IdentityDep, require, require_all
from ..authz import Identity, Right
from ..body import json_bytes, openapi_body, read_json
from ..schemas import BatchIn, BatchOut, PublishedOut, PublishIn, errors

router = APIRouter(prefix="/v1", tags=["publish"])
# The paths, under the router's prefix; api/fast_publish.py matches the same ones.
ONE = "/topics/{topic:path}/events"
BATCH = "/events"

_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "maxLength": 255},
    "description": "makes retries safe: the same key returns the first result (200) and "
    "appends nothing; the same key with other events is a 409",
}
_TOPIC = {"name": "topic", "in": "path", "required": True, "schema": {"type": "string"}}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "a retry: the stored result of the first request"},
    **errors(400, 401, 403, 409, 413, 415, 422, 503, 507),
}


@router.post(
    ONE,
    status_code=201,
    summary="Publish one event",
    response_model=PublishedOut,
    responses=_RESPONSES,
    openapi_extra=openapi_body(PublishIn, _TOPIC, _IDEMPOTENCY_KEY),
)
async def publish_event(request: Request, identity: IdentityDep) -> Response:
    """Answers once the event is committed to the log. Needs the ``publish`` right
    on the topic; the event records the token's ``sub`` as its publisher."""
    body = await read_json(request, PublishIn)
    topic = request.path_params["topic"]
    require(identity, Right.PUBLISH, topic)
    content, status = await publish_one(
        request.app.state.hub, topic, body, request.headers.get("idempotency-key"), identity
    )
    return Response(content, status, media_type="application/json")


@router.post(
    BATCH,
    status_code=201,
    summary="Publish a batch atomically",
    response_model=BatchOut,
    responses=_RESPONSES,
    openapi_extra=openapi_body(BatchIn, _IDEMPOTENCY_KEY),
)
async def publish_batch(request: Request, identity: IdentityDep) -> Response:
    """All events or none; they are stored, and returned, in the order given. Every
    event's topic needs the ``publish`` right, or the whole batch is refused."""
    body = await read_json(request, BatchIn)
    require_all(identity, Right.PUBLISH, [item.topic for item in body.events])
    content, status = await publish_many(
        request.app.state.hub, body, request.headers.get("idempotency-key"), identity
    )
    return Response(content, status, media_type="application/json")


# The work and the answer of each route, shared with api/fast_publish.py, which
# serves the ordinary case of these routes without FastAPI's layers.


async def publish_one(
    hub: EventHub, topic: str, body: PublishIn, key: str | None, identity: Identity
) -> tuple[bytes, int]:
    """The JSON answer and status of publishing ``body`` to ``topic``; the caller
    has checked that ``identity`` may."""
    status = 201
    publisher = identity.sub
    if key is None:
        event = await hub.publish(topic, body.exclude, body.payload, publisher=publisher)
    else:
        (event,), replayed = await hub.publish_once(
            key, [(topic, body.exclude, body.payload)], publisher=publisher
        )
        status = 200 if replayed else 201
    answer = {
        "topic": event.topic,
        "seq": event.seq,
        "id": event.id,
        "published_at": format_timestamp(event.published_at),
    }
    return json_bytes(answer), status


async def publish_many(
    hub: EventHub, body: BatchIn, key: str | None, identity: Identity
) -> tuple[bytes, int]:
    """The JSON answer and status of publishing the batch ``body``; the caller has
    checked that ``identity`` may."""
    items = [(item.topic, item.exclude, item.payload) for item in body.events]
    status = 201
    if key is None:
        stored = await hub.publish_many(items, publisher=identity.sub)
    else:
        stored, replayed = await hub.publish_once(key, items, publisher=identity.sub)
        status = 200 if replayed else 201
    events = ",".join(event_json(event) for event in stored)
    return f'{{"events":[{events}]}}'.encode(), status
