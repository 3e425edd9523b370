"""The topic list, and who is subscribed to a topic now."""

from __future__ import annotations

from fastapi import APIRouter

from ..auth import IdentityDep, require
from ..authz import Right
from ..deps import HubDep
from ..schemas import TopicOut, TopicsOut, TopicSubscribersOut, errors

router = APIRouter(prefix="/v1/topics", tags=["topics"])


@router.get("", summary="Every topic with its counts", responses=errors(401))
async def list_topics(hub: HubDep, identity: IdentityDep) -> TopicsOut:
    """``subscriber_count`` counts subscription rows, those of open streams included.
    Lists only the topics the token may subscribe to or read the history of."""
    return TopicsOut(
        topics=[TopicOut.of(info) for info in await hub.topics() if identity.may_read(info.topic)]
    )


@router.get(
    "/{topic:path}/subscribers",
    summary="Who is subscribed to a topic now (presence)",
    responses=errors(400, 401, 403),
)
async def topic_subscribers(topic: str, hub: HubDep, identity: IdentityDep) -> TopicSubscribersOut:
    """Needs the ``subscribe`` right on the topic."""
    require(identity, Right.SUBSCRIBE, topic)
    return TopicSubscribersOut(topic=topic, subscribers=await hub.subscribers(topic))
