"""The HTTP ceiling: FastAPI endpoints that answer 201 without any database.

``POST /v1/topics/{topic}/events`` validates the same body model as the real
publish route and returns a response of the same shape; ``POST /empty`` does not
even read the body. Run: ``uvicorn http_ceiling:app --app-dir bench``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Response
from pydantic import BaseModel, ConfigDict

app = FastAPI()


class PublishBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    payload: Any
    exclude: str | None = None


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/empty", status_code=201)
async def empty() -> Response:
    return Response(status_code=201)


@app.post("/v1/topics/{topic}/events", status_code=201)
async def publish(topic: str, body: PublishBody) -> dict[str, Any]:
    return {
        "topic": topic,
        "seq": 1,
        "id": "1",
        "published_at": datetime.now(UTC).isoformat(),
    }
