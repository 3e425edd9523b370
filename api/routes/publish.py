"""Publishing: one event, or a batch appended atomically."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Response

from ..deps import HubDep
from ..schemas import BatchIn, BatchOut, EventOut, PublishedOut, PublishIn, errors

router = APIRouter(prefix="/v1", tags=["publish"])

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="makes retries safe: the same key returns the first result (200) "
        "and appends nothing; the same key with other events is a 409",
    ),
]
_REPLAYED: dict[int | str, dict[str, Any]] = {
    200: {"description": "a retry: the stored result of the first request"}
}


@router.post(
    "/topics/{topic:path}/events",
    status_code=201,
    summary="Publish one event",
    responses={**_REPLAYED, **errors(400, 409, 413, 422, 503)},
)
async def publish_event(
    topic: str,
    body: PublishIn,
    hub: HubDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> PublishedOut:
    """Answers once the event is committed to the log."""
    if idempotency_key is None:
        event = await hub.publish(topic, body.exclude, body.payload)
    else:
        (event,), replayed = await hub.publish_once(
            idempotency_key, [(topic, body.exclude, body.payload)]
        )
        if replayed:
            response.status_code = 200
    return PublishedOut.of(event)


@router.post(
    "/events",
    status_code=201,
    summary="Publish a batch atomically",
    responses={**_REPLAYED, **errors(400, 409, 413, 422, 503)},
)
async def publish_batch(
    body: BatchIn, hub: HubDep, response: Response, idempotency_key: IdempotencyKey = None
) -> BatchOut:
    """All events or none; they are stored, and returned, in the order given."""
    items = [(item.topic, item.exclude, item.payload) for item in body.events]
    if idempotency_key is None:
        stored = await hub.publish_many(items)
    else:
        stored, replayed = await hub.publish_once(idempotency_key, items)
        if replayed:
            response.status_code = 200
    return BatchOut(events=[EventOut.of(event) for event in stored])
