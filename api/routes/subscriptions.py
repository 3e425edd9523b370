"""Subscriptions over REST: the same rows the streams use, so a subscription added
here reaches an open stream of that subscriber."""

from __future__ import annotations

from fastapi import APIRouter, Response

from eventhub_log.errors import OwnerLimitReached
from eventhub_log.model import format_timestamp

from ..auth import IdentityDep, require, require_subscriber
from ..authz import Right
from ..deps import HubDep, SettingsDep
from ..errors import ApiError
from ..limits import TooManySubscriptions, check_topic_count
from ..schemas import RemovedOut, SubscriberTopicsOut, SubscriptionOut, errors

router = APIRouter(prefix="/v1/subscriptions", tags=["subscriptions"])


@router.put(
    "/{subscriber}/topics/{topic:path}",
    summary="Subscribe (idempotent)",
    responses=errors(400, 401, 403, 429),
)
async def subscribe(
    subscriber: str, topic: str, hub: HubDep, identity: IdentityDep, settings: SettingsDep
) -> SubscriptionOut:
    """Needs the ``subscribe`` right on the topic, and ``subscriber`` among the ids
    the token may act as. With no stream of the subscriber open, the subscription
    expires after ``EVENTHUB_SUBSCRIPTION_TTL`` seconds unless renewed or taken
    over by a stream; a client may hold ``EVENTHUB_MAX_SUBSCRIPTIONS_PER_CLIENT``
    of those."""
    require_subscriber(identity, subscriber)
    require(identity, Right.SUBSCRIBE, topic)
    # Rows made here reach the subscriber's open streams: the same topic limit.
    current = await hub.subscriptions(subscriber)
    if topic not in current:
        check_topic_count(len(current) + 1, settings.max_topics_per_stream)
    # A subscriber that never connects would keep a row forever: it gets a
    # lifetime, and each client a bound on how many such rows it holds.
    try:
        expires_at = await hub.subscribe(
            topic,
            subscriber,
            owner=identity.sub,
            ttl=settings.subscription_ttl,
            max_owned=settings.max_subscriptions_per_client,
        )
    except OwnerLimitReached as exc:
        raise TooManySubscriptions(exc.limit) from None
    return SubscriptionOut(
        subscriber=subscriber,
        topic=topic,
        expires_at=None if expires_at is None else format_timestamp(expires_at),
    )


@router.delete(
    "/{subscriber}/topics/{topic:path}",
    status_code=204,
    summary="Unsubscribe",
    responses=errors(400, 401, 403, 404),
)
async def unsubscribe(subscriber: str, topic: str, hub: HubDep, identity: IdentityDep) -> Response:
    require_subscriber(identity, subscriber)
    if not await hub.unsubscribe(topic, subscriber):
        raise ApiError(
            404, "not_subscribed", f"subscriber {subscriber!r} is not subscribed to {topic!r}"
        )
    return Response(status_code=204)


@router.get("/{subscriber}", summary="A subscriber's topics", responses=errors(400, 401, 403))
async def subscriber_topics(
    subscriber: str, hub: HubDep, identity: IdentityDep
) -> SubscriberTopicsOut:
    require_subscriber(identity, subscriber)
    return SubscriberTopicsOut(subscriber=subscriber, topics=await hub.subscriptions(subscriber))


@router.delete(
    "/{subscriber}",
    summary="Remove all of a subscriber's subscriptions in one transaction",
    responses=errors(400, 401, 403),
)
async def unsubscribe_all(subscriber: str, hub: HubDep, identity: IdentityDep) -> RemovedOut:
    require_subscriber(identity, subscriber)
    return RemovedOut(subscriber=subscriber, removed=await hub.unsubscribe_all(subscriber))
