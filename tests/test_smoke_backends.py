from __future__ import annotations

from eventhub_log import EventHub


async def test_publish_and_read_back(hub: EventHub) -> None:
    event = await hub.publish("room:lobby", None, {"text": "hi"})
    assert (event.topic, event.seq) == ("room:lobby", 1)
    (stored,) = await hub.history("room:lobby")
    assert stored.payload == {"text": "hi"}
    assert stored.id == event.id
