"""The topic list, and who is subscribed to a topic now."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Query

from eventhub_log.hub import MAX_HISTORY_LIMIT
from eventhub_log.validation import validate_topic

from ..auth import IdentityDep, require
from ..authz import Right
from ..deps import HubDep
from ..schemas import TopicOut, TopicsOut, TopicSubscribersOut, errors

router = APIRouter(prefix="/v1/topics", tags=["topics"])


# Topics read per query while filling a page, and the most read for one request:
# a token that may read few of many topics gets a short page and a ``next``
# rather than making one request scan the whole table.
_SCAN_CHUNK = 500
_SCAN_BUDGET = 10_000


@router.get("", summary="Topics with their counts, a page at a time", responses=errors(401, 422))
async def list_topics(
    hub: HubDep,
    identity: IdentityDep,
    limit: Annotated[int, Query(ge=1, le=MAX_HISTORY_LIMIT)] = 100,
    after: Annotated[
        str | None, Query(max_length=255, description="continue after this topic name")
    ] = None,
) -> TopicsOut:
    """In name order. ``subscriber_count`` counts subscription rows, those of open
    streams included. Lists only the topics the token may subscribe to or read the
    history of; ``next`` is the following page, or null on the last one."""
    if after is not None:
        # A topic name, as in the ``next`` links: other text (a NUL byte, which
        # PostgreSQL cannot hold) would reach the query and fail there.
        validate_topic(after)
    found: list[TopicOut] = []
    cursor, scanned, more = after, 0, True
    while more and len(found) < limit and scanned < _SCAN_BUDGET:
        chunk = await hub.topics(after=cursor, limit=_SCAN_CHUNK)
        scanned += len(chunk)
        more = len(chunk) == _SCAN_CHUNK
        for info in chunk:
            cursor = info.topic
            if identity.may_read(info.topic):
                found.append(TopicOut.of(info))
                if len(found) == limit:
                    more = more or info is not chunk[-1]
                    break
    link = None
    if more and cursor is not None:
        link = f"/v1/topics?{urlencode({'limit': limit, 'after': cursor})}"
    return TopicsOut(topics=found, next=link)


@router.get(
    "/{topic:path}/subscribers",
    summary="Who is subscribed to a topic now (presence)",
    responses=errors(400, 401, 403),
)
async def topic_subscribers(topic: str, hub: HubDep, identity: IdentityDep) -> TopicSubscribersOut:
    """Needs the ``subscribe`` right on the topic."""
    require(identity, Right.SUBSCRIBE, topic)
    return TopicSubscribersOut(topic=topic, subscribers=await hub.subscribers(topic))
