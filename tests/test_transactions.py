"""publish_in: the event exists if and only if the caller's transaction commits."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from eventhub_log import Event, EventHub, InvalidPayload

from .test_feed import take

app_metadata = MetaData()
orders = Table(
    "app_orders",
    app_metadata,
    Column("id", Integer, primary_key=True),
    Column("item", String(50), nullable=False),
)


class Rollback(Exception):
    """Raised inside a transaction block to abandon it."""


async def _create_orders(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(app_metadata.create_all)


async def _order_count(hub: EventHub) -> int:
    async with hub.database.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(orders))).scalar_one())


async def test_hub_transaction_commits_the_event_with_the_callers_rows(hub: EventHub) -> None:
    await _create_orders(hub.database.engine)
    async with hub.stream(["orders"], "shop") as feed:
        async with hub.transaction() as conn:
            await conn.execute(orders.insert().values(id=1, item="tea"))
            event = await hub.publish_in(conn, "orders", None, {"order": 1})
        assert await take(feed, 1) == [event]
    assert await hub.history("orders") == [event]
    assert await _order_count(hub) == 1


async def test_hub_transaction_rollback_leaves_no_event_and_burns_no_seq(hub: EventHub) -> None:
    await _create_orders(hub.database.engine)
    before = await hub.publish("orders", None, {"order": 0})

    doomed: list[Event] = []

    async def order_then_fail() -> None:
        async with hub.transaction() as conn:
            await conn.execute(orders.insert().values(id=1, item="tea"))
            doomed.append(await hub.publish_in(conn, "orders", None, {"order": 1}))
            assert doomed[0].seq == 2
            raise Rollback

    with pytest.raises(Rollback):
        await order_then_fail()
    assert await hub.history("orders") == [before]
    assert await _order_count(hub) == 0
    after = await hub.publish("orders", None, {"order": 2})
    # The rolled-back event's seq and id are handed out again: no hole.
    assert (after.seq, after.id) == (2, doomed[0].id)
    assert [e.seq for e in await hub.history("orders")] == [1, 2]


async def test_session_commit_publishes_and_reaches_an_open_feed(hub: EventHub) -> None:
    await _create_orders(hub.database.engine)
    sessions = async_sessionmaker(hub.database.engine)
    async with hub.stream(["orders"], "shop") as feed:
        async with sessions() as session, session.begin():
            await session.execute(orders.insert().values(id=7, item="cake"))
            first = await hub.publish_in(session, "orders", None, {"order": 7})
            second = await hub.publish_in(session, "orders", "shop", {"not for": "shop"})
            third = await hub.publish_in(session, "orders", None, {"order": 7, "paid": True})
        assert [e.seq for e in (first, second, third)] == [1, 2, 3]
        # The excluded one stays in the log but never reaches "shop".
        assert await take(feed, 2) == [first, third]
    assert await hub.history("orders") == [first, second, third]
    assert await _order_count(hub) == 1


async def test_session_rollback_leaves_no_event_and_burns_no_seq(hub: EventHub) -> None:
    await _create_orders(hub.database.engine)
    sessions = async_sessionmaker(hub.database.engine)
    async with hub.stream(["orders"], "shop") as feed:
        async with sessions() as session, session.begin():
            await session.execute(orders.insert().values(id=7, item="cake"))
            doomed = await hub.publish_in(session, "orders", None, {"order": 7})
            await session.rollback()
        assert await hub.history("orders") == []
        assert await _order_count(hub) == 0
        kept = await hub.publish("orders", None, {"order": 8})
        assert (kept.seq, kept.id) == (1, doomed.id)
        # The feed never sees the rolled-back event, only the kept one.
        assert await take(feed, 1) == [kept]


async def test_publishers_wait_for_an_open_transaction_and_keep_seqs_contiguous(
    hub: EventHub,
) -> None:
    """The writer queues behind the caller's transaction (no deadlock, no hole)."""
    publishing: list[asyncio.Task[Event]] = []

    async def hold_the_log_then_fail() -> None:
        async with hub.transaction() as conn:
            await hub.publish_in(conn, "t", None, "rolled back")
            publishing.extend(
                asyncio.create_task(hub.publish("t", None, n), name=f"publish {n}")
                for n in range(5)
            )
            await asyncio.sleep(0.05)  # let them queue up behind the transaction
            raise Rollback

    with pytest.raises(Rollback):
        await hold_the_log_then_fail()
    published = await asyncio.wait_for(asyncio.gather(*publishing), 30)
    assert sorted(e.seq for e in published) == [1, 2, 3, 4, 5]
    assert [e.payload for e in await hub.history("t")] == sorted(e.payload for e in published)


async def test_bad_input_to_publish_in_leaves_the_transaction_usable(hub: EventHub) -> None:
    async with hub.transaction() as conn:
        with pytest.raises(InvalidPayload):
            await hub.publish_in(conn, "t", None, {1, 2})
        event = await hub.publish_in(conn, "t", None, "fine")
    assert await hub.history("t") == [event]
