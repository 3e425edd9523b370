"""Lean request and response handling for the hot publish routes.

FastAPI's parameter machinery (body, header and dependency resolution, response
model validation) costs several times the route's own work at thousands of
requests a second. The publish routes read their body with the same pydantic
model straight from the bytes, and write pre-encoded JSON; ``openapi_body``
keeps the OpenAPI description the same as a declared body parameter would.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from .errors import ApiError

Model = TypeVar("Model", bound=BaseModel)


async def read_json(request: Request, model: type[Model]) -> Model:
    """Validate the body as ``model``: 415 for another media type, 422 for bad JSON
    or a body that does not fit (unknown fields included).

    Only ``application/json`` (parameters such as ``charset`` allowed), and never
    a missing header: a plain cross-site form or ``fetch`` without a preflight can
    only send ``text/plain``, form or multipart bodies, so insisting on JSON keeps
    another site from publishing through a visitor's browser (CSRF)."""
    if not is_json(request.headers.get("content-type")):
        raise ApiError(415, "unsupported_media_type", "the body must be application/json")
    raw = await request.body()
    try:
        return model.model_validate_json(raw)
    except PydanticValidationError as exc:
        errors = [
            {**error, "loc": ("body", *error.get("loc", ()))}
            for error in exc.errors(include_url=False, include_context=False, include_input=False)
        ]
        raise RequestValidationError(errors) from None


def is_json(content_type: str | None) -> bool:
    if content_type is None:
        return False
    return content_type.split(";")[0].strip().lower() == "application/json"


def json_bytes(content: Any) -> bytes:
    return json.dumps(content, separators=(",", ":"), ensure_ascii=False).encode()


def openapi_body(model: type[BaseModel], *headers: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` describing a JSON body of ``model`` (and header parameters)."""
    extra: dict[str, Any] = {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _inline(model.model_json_schema())}},
        }
    }
    if headers:
        extra["parameters"] = list(headers)
    return extra


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """Replace ``$defs`` references by the definitions (the models are not recursive):
    inside an OpenAPI document ``#/$defs/...`` would point at the document's root."""
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(definitions[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved
