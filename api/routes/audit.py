"""Tamper evidence: recompute a topic's hash chain from the stored rows, and
sign checkpoints of its head (contract section 8; the work is the library's,
``eventhub_log.audit`` and ``eventhub_log.checkpoints``)."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import APIRouter, Request
from fastapi.responses import Response

from eventhub_log.audit import verify_topic
from eventhub_log.checkpoints import NoStoredEvents, checkpoint, load_private_key, public_pem
from eventhub_log.validation import validate_topic

from ..auth import IdentityDep, require
from ..authz import Right
from ..deps import HubDep
from ..errors import ApiError
from ..schemas import CheckpointOut, VerificationOut, errors
from ..settings import Settings

router = APIRouter(prefix="/v1/topics", tags=["audit"])
keys_router = APIRouter(prefix="/v1/audit", tags=["audit"])

PEM_TYPE = "application/x-pem-file"


def audit_key_from_settings(settings: Settings) -> Ed25519PrivateKey | None:
    """The checkpoint signing key (``EVENTHUB_AUDIT_KEY``), loaded when the app is
    built so that a bad one stops the start; ``AuditKeyError`` says why."""
    return None if not settings.audit_key else load_private_key(settings.audit_key)


def _audit_key(request: Request) -> Ed25519PrivateKey:
    key: Ed25519PrivateKey | None = getattr(request.app.state, "audit_key", None)
    if key is None:
        raise ApiError(
            404,
            "checkpoints_disabled",
            "this hub signs no checkpoints: it was started without EVENTHUB_AUDIT_KEY",
        )
    return key


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


@router.get(
    "/{topic:path}/checkpoint",
    summary="A signed checkpoint of a topic's last event",
    responses=errors(400, 401, 403, 404, 409),
)
async def get_checkpoint(
    topic: str, request: Request, hub: HubDep, identity: IdentityDep
) -> CheckpointOut:
    """Needs the ``history`` right. ``seq`` and ``hash`` are the topic's last event;
    ``signature`` is Ed25519 over the contract's text (docs/audit.md). ``404``
    ``unknown_topic``, or ``404`` ``checkpoints_disabled`` when the hub has no
    ``EVENTHUB_AUDIT_KEY``; ``409`` ``no_stored_events`` when retention deleted
    every event of the topic (a checkpoint of an event no longer stored could
    never be checked)."""
    validate_topic(topic)
    require(identity, Right.HISTORY, topic)
    key = _audit_key(request)
    try:
        signed = await checkpoint(hub.database, key, topic)
    except NoStoredEvents as exc:
        raise ApiError(409, "no_stored_events", str(exc)) from None
    if signed is None:
        raise ApiError(404, "unknown_topic", f"no topic {topic!r}")
    return CheckpointOut(**signed.to_dict())


@keys_router.get(
    "/public-key",
    summary="The Ed25519 public key checkpoints are signed with (PEM)",
    response_class=Response,
    responses={200: {"content": {PEM_TYPE: {}}}, **errors(401, 404)},
)
async def public_key(request: Request, identity: IdentityDep) -> Response:
    """Any client the hub admits may fetch it (a valid token of any grant, or the
    anonymous grant when one is configured; anyone on an open hub): it is not
    secret, and an auditor needs it before holding any right. ``404``
    ``checkpoints_disabled`` without ``EVENTHUB_AUDIT_KEY``."""
    del identity  # asked for its 401: the key is served to admitted clients
    return Response(public_pem(_audit_key(request)), media_type=PEM_TYPE)
