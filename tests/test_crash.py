"""A crash loses no event whose publish() had returned."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from eventhub_log import EventHub

ROOT = Path(__file__).resolve().parent.parent
ACKNOWLEDGED_BEFORE_KILL = 300


async def _run_and_kill(url: str) -> list[str]:
    """Start a publishing process, SIGKILL it mid-flight, return every id it printed."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.crash_publisher",
        url,
        "--publishers",
        "20",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert child.stdout is not None
    printed: list[str] = []
    try:
        async with asyncio.timeout(60):
            while len(printed) < ACKNOWLEDGED_BEFORE_KILL:
                line = await child.stdout.readline()
                assert line, f"the publisher exited early (status {await child.wait()})"
                printed.append(line.decode().strip())
        child.send_signal(signal.SIGKILL)
    finally:
        if child.returncode is None:
            child.kill()
        # Whatever complete lines it printed before dying count too.
        rest = await child.stdout.read()
        await child.wait()
    printed.extend(line for line in rest.decode().split("\n")[:-1])
    assert child.returncode == -signal.SIGKILL
    return printed


async def test_every_acknowledged_event_survives_sigkill(database_url: str) -> None:
    printed = await _run_and_kill(database_url)
    assert len(printed) >= ACKNOWLEDGED_BEFORE_KILL
    assert len(set(printed)) == len(printed)

    async with EventHub(database_url, auto_migrate=True) as hub:
        stored: dict[str, list[int]] = {}
        for topic in ("crash:0", "crash:1", "crash:2"):
            stored[topic] = [event.position async for event in hub.export(topic)]
        stored_ids = {str(position) for positions in stored.values() for position in positions}
        missing = [event_id for event_id in printed if event_id not in stored_ids]
        assert missing == [], f"{len(missing)} acknowledged events lost: {missing[:10]}"
        # The log is still whole after the crash: seqs contiguous, positions unique.
        for topic in stored:
            seqs = [event.seq async for event in hub.export(topic)]
            assert seqs == list(range(1, len(seqs) + 1))
        # And it takes new events where it left off.
        event = await hub.publish("crash:0", None, {"after": "crash"})
        assert event.seq == len(stored["crash:0"]) + 1
