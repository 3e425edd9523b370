"""The peer: sse-starlette + encode/broadcaster (memory backend, no persistence).

What a Python user would assemble instead of eventhub-log, exposing the same two
route shapes as the benchmarked service so one harness drives both:
``POST /v1/topics/{topic}/events`` with ``{"payload": ..., "exclude": null}``
(201) and ``GET /v1/stream?topic=...`` (an ``event: ready`` frame once
subscribed, then one frame per event). Ids are an in-memory counter; nothing is
stored, so there is no resume. Run: ``uvicorn peer_broadcaster:app --app-dir bench``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from broadcaster import Broadcast
from fastapi import FastAPI, Query
from pydantic import BaseModel, ConfigDict
from sse_starlette import EventSourceResponse

broadcast = Broadcast("memory://")
positions = itertools.count(1)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with broadcast:
        yield


app = FastAPI(lifespan=lifespan)


class PublishBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    payload: Any
    exclude: str | None = None


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/v1/topics/{topic}/events", status_code=201)
async def publish(topic: str, body: PublishBody) -> dict[str, Any]:
    position = next(positions)
    published_at = datetime.now(UTC).isoformat()
    # Encoded once here; broadcaster hands the same string to every subscriber.
    message = json.dumps(
        {"topic": topic, "seq": position, "payload": body.payload, "published_at": published_at}
    )
    await broadcast.publish(channel=topic, message=f"{position}\n{message}")
    return {"topic": topic, "seq": position, "id": str(position), "published_at": published_at}


@app.get("/v1/stream")
async def stream(topic: str = Query()) -> EventSourceResponse:
    async def frames() -> AsyncIterator[dict[str, str]]:
        async with broadcast.subscribe(channel=topic) as subscriber:
            yield {"event": "ready", "id": "0", "data": json.dumps({"topics": [topic]})}
            async for event in subscriber:  # type: ignore[union-attr]
                if event is None:
                    break
                position, data = event.message.split("\n", 1)
                yield {"id": position, "data": data}

    return EventSourceResponse(frames())
