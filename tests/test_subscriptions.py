"""Subscriptions are rows: subscribe, unsubscribe, unsubscribe_all and the listings."""

from __future__ import annotations

import asyncio

from sqlalchemy import event, func, select

from eventhub_log import EventHub
from eventhub_log.store.tables import subscriptions


async def _rows(hub: EventHub, subscriber_id: str | None = None) -> int:
    query = select(func.count()).select_from(subscriptions)
    if subscriber_id is not None:
        query = query.where(subscriptions.c.subscriber_id == subscriber_id)
    async with hub.database.read() as conn:
        return int((await conn.execute(query)).scalar_one())


async def test_subscribe_is_idempotent(hub: EventHub) -> None:
    for _ in range(3):
        await hub.subscribe("room:lobby", "ch-1")
    assert await _rows(hub) == 1
    assert await hub.subscribers("room:lobby") == ["ch-1"]
    assert await hub.subscriptions("ch-1") == ["room:lobby"]


async def test_unsubscribe_reports_whether_a_row_went(hub: EventHub) -> None:
    await hub.subscribe("room:lobby", "ch-1")
    await hub.subscribe("room:lobby", "ch-2")

    assert await hub.unsubscribe("room:lobby", "ch-1") is True
    assert await hub.unsubscribe("room:lobby", "ch-1") is False
    assert await hub.unsubscribe("room:nowhere", "ch-9") is False
    assert await hub.subscribers("room:lobby") == ["ch-2"]
    assert await _rows(hub) == 1


async def test_unsubscribe_all_removes_every_row_of_one_subscriber(hub: EventHub) -> None:
    for topic in ("room:lobby", "presence:updates", "notifications:42"):
        await hub.subscribe(topic, "ch-1")
    await hub.subscribe("room:lobby", "ch-2")

    assert await hub.unsubscribe_all("ch-1") == 3
    assert await _rows(hub, "ch-1") == 0
    assert await hub.subscriptions("ch-1") == []
    assert await hub.subscribers("room:lobby") == ["ch-2"]
    # Nothing left: not an error, nothing removed.
    assert await hub.unsubscribe_all("ch-1") == 0


async def test_unsubscribe_all_removes_all_rows_in_one_statement(hub: EventHub) -> None:
    """One DELETE in one transaction: no reader ever sees a half-removed subscriber."""
    for n in range(200):
        await hub.subscribe(f"t:{n}", "ch-1")
    statements: list[str] = []

    def watch(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        # Only deletes of subscription rows: the heartbeat's sweep may run meanwhile.
        text = statement.lstrip().upper()
        if text.startswith("DELETE FROM SUBSCRIPTIONS") and "SUBSCRIBER_ID" in text:
            statements.append(statement)

    sync_engine = hub.database.engine.sync_engine
    event.listen(sync_engine, "before_cursor_execute", watch)
    try:
        removed = await hub.unsubscribe_all("ch-1")
    finally:
        event.remove(sync_engine, "before_cursor_execute", watch)

    assert removed == 200
    assert await _rows(hub, "ch-1") == 0
    assert len(statements) == 1, statements


async def test_listings_are_sorted_and_per_topic(hub: EventHub) -> None:
    await hub.subscribe("user:123", "b")
    await hub.subscribe("user:123", "a")
    await hub.subscribe("room:lobby", "a")

    assert await hub.subscribers("user:123") == ["a", "b"]
    assert await hub.subscribers("room:lobby") == ["a"]
    assert await hub.subscribers("room:empty") == []
    assert await hub.subscriptions("a") == ["room:lobby", "user:123"]
    assert await hub.subscriptions("nobody") == []

    infos = {info.topic: info for info in await hub.topics()}
    # Subscribing creates no topic: topics come from publishing.
    assert infos == {}
    await hub.publish("user:123", None, {})
    (info,) = await hub.topics()
    assert (info.topic, info.subscriber_count) == ("user:123", 2)


async def test_subscriptions_survive_a_restart(database_url: str) -> None:
    async with EventHub(database_url, auto_migrate=True) as hub:
        await hub.subscribe("room:lobby", "ch-1")
    async with EventHub(database_url, auto_migrate=True) as hub:
        assert await hub.subscribers("room:lobby") == ["ch-1"]


async def test_streams_closing_together_remove_their_rows_in_a_few_statements(
    hub: EventHub,
) -> None:
    """300 clients leaving at once: every stream's rows go (with its subscriber's
    rows made with no stream) in a DELETE or a few, not one per stream; another
    subscriber's rows stay, and so do those a newer stream of the same
    subscriber has taken over."""
    await hub.subscribe("lobby", "bystander")
    await hub.subscribe("extra", "reader-7")  # made with no stream: goes with reader-7's
    opened = 0
    all_open = asyncio.Event()
    leave = asyncio.Event()

    async def client(n: int) -> None:
        nonlocal opened
        async with hub.stream([f"t:{n}"], f"reader-{n}"):
            opened += 1
            if opened == 300:
                all_open.set()
            await leave.wait()

    clients = [asyncio.create_task(client(n)) for n in range(300)]
    await asyncio.wait_for(all_open.wait(), 60)
    assert await _rows(hub, "reader-7") == 2
    statements: list[str] = []

    def watch(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if statement.lstrip().upper().startswith("DELETE FROM SUBSCRIPTIONS"):
            statements.append(statement)

    async with hub.stream(["t:9"], "reader-9") as newer:  # takes reader-9's row over
        sync_engine = hub.database.engine.sync_engine
        event.listen(sync_engine, "before_cursor_execute", watch)
        try:
            leave.set()
            await asyncio.wait_for(asyncio.gather(*clients), 60)
        finally:
            event.remove(sync_engine, "before_cursor_execute", watch)
        assert [n for n in range(300) if await _rows(hub, f"reader-{n}")] == [9]
        assert await hub.subscriptions("reader-9") == ["t:9"]
        assert newer.connection_id
        assert await _rows(hub, "bystander") == 1
        # One statement a group of closes (up to 500 a group); one per stream before.
        assert 1 <= len(statements) <= 10, len(statements)
    assert await _rows(hub, "reader-9") == 0
