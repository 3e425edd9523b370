"""Tamper evidence: recompute a topic's hash chain from the stored rows."""

from __future__ import annotations

from fastapi import APIRouter

from eventhub_log.audit import verify_topic
from eventhub_log.validation import validate_topic

from ..auth import IdentityDep, require
from ..authz import Right
from ..deps import HubDep
from ..errors import ApiError
from ..schemas import VerificationOut, errors

router = APIRouter(prefix="/v1/topics", tags=["audit"])


@router.get(
    "/{topic:path}/verify",
    summary="Recompute a topic's hash chain",
    responses=errors(400, 401, 403, 404),
)
async def verify(topic: str, hub: HubDep, identity: IdentityDep) -> VerificationOut:
    """Needs the ``history`` right. Reads the topic a page at a time, so it answers
    in constant memory whatever the topic's length (and in time proportional to it).
    ``ok`` false names the first seq whose hash, or whose place in the sequence,
    does not hold; see docs/audit.md."""
    validate_topic(topic)
    require(identity, Right.HISTORY, topic)
    result = await verify_topic(hub.database, topic)
    if result is None:
        raise ApiError(404, "unknown_topic", f"no topic {topic!r}")
    return VerificationOut(**result.to_dict())
