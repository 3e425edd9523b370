"""The topic list, and who is subscribed to a topic now."""

from __future__ import annotations

from fastapi import APIRouter

from ..deps import HubDep
from ..schemas import TopicOut, TopicsOut, TopicSubscribersOut, errors

router = APIRouter(prefix="/v1/topics", tags=["topics"])


@router.get("", summary="Every topic with its counts")
async def list_topics(hub: HubDep) -> TopicsOut:
    """``subscriber_count`` counts subscription rows, those of open streams included."""
    return TopicsOut(topics=[TopicOut.of(info) for info in await hub.topics()])


@router.get(
    "/{topic:path}/subscribers",
    summary="Who is subscribed to a topic now (presence)",
    responses=errors(400),
)
async def topic_subscribers(topic: str, hub: HubDep) -> TopicSubscribersOut:
    return TopicSubscribersOut(topic=topic, subscribers=await hub.subscribers(topic))
