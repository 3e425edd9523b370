"""A hub in its own process, for tests of several instances on one database.

    python -m tests.instance_worker publish URL --topics a,b,c --publishers 20 --events 40
    python -m tests.instance_worker timed URL --topic t --count 20 --interval 0.02
    python -m tests.instance_worker stream URL --topic t --subscriber s --heartbeat 0.2

Each prints one JSON line when it is ready or done, so the test can follow it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time

from eventhub_log import EventHub


def _say(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def publish(args: argparse.Namespace) -> None:
    """Many concurrent publishers on one stateless hub; reports what was acknowledged."""
    topics = args.topics.split(",")
    acked: list[tuple[str, int]] = []

    async def publisher(hub: EventHub, number: int) -> None:
        rng = random.Random(number)
        for i in range(args.events):
            topic = rng.choice(topics)
            event = await hub.publish(topic, None, {"publisher": number, "i": i})
            acked.append((event.topic, event.seq))
            if rng.random() < 0.3:
                await asyncio.sleep(rng.random() * 0.005)

    async with EventHub(args.url, mode="stateless") as hub:
        _say(ready=True)
        await asyncio.gather(*(publisher(hub, n) for n in range(args.publishers)))
    _say(acked=len(acked))


async def timed(args: argparse.Namespace) -> None:
    """Publishes at a steady pace with the wall-clock time in each payload."""
    async with EventHub(args.url, mode="stateless") as hub:
        _say(ready=True)
        for i in range(args.count):
            await hub.publish(args.topic, None, {"i": i, "sent": time.time()})
            await asyncio.sleep(args.interval)
    _say(done=True)


async def stream(args: argparse.Namespace) -> None:
    """Holds a stream open (its subscription rows live) until killed."""
    async with (
        EventHub(
            args.url,
            mode="stateless",
            heartbeat_interval=args.heartbeat,
            instance_ttl=args.heartbeat * 10,
        ) as hub,
        hub.stream([args.topic], args.subscriber),
    ):
        _say(ready=True, instance=hub.instance_id)
        await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("publish")
    p.add_argument("url")
    p.add_argument("--topics", required=True)
    p.add_argument("--publishers", type=int, default=10)
    p.add_argument("--events", type=int, default=10)
    t = commands.add_parser("timed")
    t.add_argument("url")
    t.add_argument("--topic", required=True)
    t.add_argument("--count", type=int, default=10)
    t.add_argument("--interval", type=float, default=0.02)
    s = commands.add_parser("stream")
    s.add_argument("url")
    s.add_argument("--topic", required=True)
    s.add_argument("--subscriber", required=True)
    s.add_argument("--heartbeat", type=float, default=0.2)
    args = parser.parse_args()
    command = {"publish": publish, "timed": timed, "stream": stream}[args.command]
    asyncio.run(command(args))


if __name__ == "__main__":
    main()
