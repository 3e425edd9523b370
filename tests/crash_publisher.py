"""Publish until killed, printing each event's id once ``publish()`` has returned.

    python -m tests.crash_publisher URL [--publishers 20]

The crash test kills this process with SIGKILL and then checks that every id it
printed is in the log: an acknowledged publish must survive the crash.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from eventhub_log import EventHub


async def main(url: str, publishers: int) -> None:
    async with EventHub(url, auto_migrate=True) as hub:

        async def publisher(number: int) -> None:
            n = 0
            while True:
                event = await hub.publish(f"crash:{number % 3}", None, {"p": number, "n": n})
                sys.stdout.write(f"{event.id}\n")
                sys.stdout.flush()
                n += 1

        await asyncio.gather(*(publisher(number) for number in range(publishers)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--publishers", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(main(args.url, args.publishers))
