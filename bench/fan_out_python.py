"""The Python work of announcing one live event to many parked SSE streams.

    .venv/bin/python bench/fan_out_python.py [--streams 1000,10000] [--events 30]

No sockets and no database: N feeds on one topic in a ``Dispatcher``, each with
the shipped SSE stream (``api.sse._Stream``) parked on it, whose ``send`` is a
real uvicorn httptools request cycle over a transport whose ``write`` only
counts, so every chunk takes the direct write (api/direct_writes.py) as in the
server. Each event is handed to ``Dispatcher.deliver`` and timed until every
stream has written it. What is left is the event loop's and the interpreter's
share of a delivery: the dispatcher's offer, the sliced announcement, the
stream's take, the frame cache, the chunk framing. The kernel's share (the
``write`` system call and, on loopback, the receiving side's TCP) is what
bench/streams_10k.py adds on top.

Prints a markdown table: per stream count, the best and the median of the
events' process CPU time per delivery. With many streams the per-stream objects
no longer fit the CPU's caches, which is why 10,000 cost more per delivery
than 1,000.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from api.sse import StreamRegistry, _Stream
from eventhub_log.delivery import Dispatcher, Feed
from eventhub_log.model import Event

TOPIC = "bench"


class CountingTransport:
    """Counts the writes of every stream; ``done`` is set at the ``wanted``-th."""

    writes = 0
    wanted = 0
    done: asyncio.Event | None = None

    def write(self, data: bytes) -> None:
        counter = CountingTransport
        counter.writes += 1
        if counter.writes == counter.wanted and counter.done is not None:
            counter.done.set()

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _no_log(*_args: object) -> list[Event]:
    raise AssertionError("live events only: nothing is read from the log")


async def _head() -> int:
    return 0


async def _never() -> dict[str, str]:
    await asyncio.get_running_loop().create_future()
    raise AssertionError


def _cycle(transport: CountingTransport) -> RequestResponseCycle:
    log = logging.getLogger("bench")
    cycle = RequestResponseCycle(
        {"method": "GET"},  # type: ignore[typeddict-item]
        transport,  # type: ignore[arg-type]
        FlowControl(transport),  # type: ignore[arg-type]
        log,
        log,
        False,
        [],
        asyncio.Event(),
        False,
        True,
        lambda: None,
    )
    cycle.response_started = True  # as after the stream's head and opening frame
    cycle.chunked_encoding = True
    return cycle


async def measure(streams: int, events: int) -> list[float]:
    """CPU seconds per delivery for each of ``events`` events to ``streams`` streams."""
    dispatcher = Dispatcher(_no_log, _head)
    registry = StreamRegistry(heartbeat_interval=3600, write_timeout=3600)
    tasks = []
    for n in range(streams):
        feed = Feed(_no_log, f"s{n}", [TOPIC])
        feed.start(0, replay=False)
        dispatcher.add(feed)
        cycle = _cycle(CountingTransport())
        stream = _Stream(feed, cycle.send, _never, registry)
        tasks.append(asyncio.create_task(stream.run()))
    await asyncio.sleep(0.05)  # every stream parks on its feed
    per_delivery = []
    payload = '{"n":%d,"text":"' + "x" * 100 + '"}'
    for position in range(1, events + 1):
        event = Event(TOPIC, position, position, datetime.now(UTC), payload % position)
        CountingTransport.writes, CountingTransport.wanted = 0, streams
        done = CountingTransport.done = asyncio.Event()
        started = time.process_time()
        dispatcher.deliver([event])
        await done.wait()
        per_delivery.append((time.process_time() - started) / streams)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await dispatcher.stop()
    return per_delivery


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", default="1000,10000", help="comma-separated counts")
    parser.add_argument("--events", type=int, default=30, help="events per count")
    args = parser.parse_args()
    try:
        import uvloop

        run = uvloop.run
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        run = asyncio.run
    print("| streams | best us/delivery | median us/delivery |")
    print("| ---: | ---: | ---: |")
    for count in (int(part) for part in args.streams.split(",")):
        figures = run(measure(count, args.events))
        best, median = min(figures) * 1e6, statistics.median(figures) * 1e6
        print(f"| {count:,} | {best:.2f} | {median:.2f} |")
    print(
        f"\nPython {sys.version.split()[0]}, {args.events} events each; process CPU time "
        "from deliver() until every stream has written the event (writes a no-op). "
        "Reproduce: `.venv/bin/python bench/fan_out_python.py`."
    )


if __name__ == "__main__":
    main()
