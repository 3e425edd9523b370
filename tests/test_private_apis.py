"""The private and undocumented APIs of other packages that the code relies on.

Each is a shortcut measured to matter, and each can go in any release with no
deprecation. These tests exercise the real objects (an aiosqlite connection, a
FastAPI app, asyncio futures on both loops, uvicorn's Server), so an upgrade
that removes or changes one fails here, by name, rather than in production
(or, where the code falls back quietly, as a slowdown or a lost feature that
nobody sees). Each failure says what depends on it and what to do.

The uses, and what breaks without them:

- aiosqlite ``Connection._execute`` / ``._connection``: eventhub_log/store/sqlite.py
  ``append_batch`` appends a whole batch in one call on aiosqlite's thread; without
  them it returns None and the writer takes the slower SQLAlchemy path.
- FastAPI ``FastAPI._native_telemetry``: api/app.py ``_telemetry_enabled`` decides
  whether the publish fast path may skip FastAPI's layers; without it, configured
  OpenTelemetry would silently stop seeing publishes.
- asyncio's future protocol (``Future._asyncio_future_blocking``, a coroutine
  step yielding the future it waits on): api/sse.py ``_emit`` / ``_finish`` step
  the ASGI send by hand.
- uvicorn's SIGTERM handler is ``Server.handle_exit``, a bound method, and
  ``Server.should_exit``: api/sse.py and api/channels.py ``_server_exiting`` end
  endless streams on shutdown; without it shutdown waits for the graceful timeout.
- uvicorn's internal ``HttpToolsProtocol`` (its httptools callbacks): api/http_protocol.py
  subclasses it to put a deadline on request headers.
- ``argparse._SubParsersAction``: the type the CLI modules annotate subcommands with.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from eventhub_log.migrations import ensure_schema
from eventhub_log.model import PendingEvent
from eventhub_log.store import sqlite
from eventhub_log.store.database import open_database


def broken(dependency: str, used_by: str, todo: str) -> str:
    return (
        f"private API gone or changed: {dependency} (used by {used_by}). {todo} "
        "See tests/test_private_apis.py."
    )


# aiosqlite -------------------------------------------------------------------

AIOSQLITE = broken(
    "aiosqlite Connection._execute(fn, *args) / Connection._connection",
    "eventhub_log/store/sqlite.py append_batch, the one-call SQLite append",
    "Find aiosqlite's new way to run a function on its thread with its sqlite3 "
    "connection and use it there (or pin aiosqlite below this release in "
    "pyproject.toml); until then every SQLite append takes the slower path.",
)


async def test_aiosqlite_runs_a_call_on_its_thread(tmp_path: Path) -> None:
    database = open_database(f"sqlite+aiosqlite:///{tmp_path / 'private.db'}")
    try:
        async with database.engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            run = getattr(driver, "_execute", None)
            db = getattr(driver, "_connection", None)
            assert callable(run), AIOSQLITE
            assert isinstance(db, sqlite3.Connection), AIOSQLITE

            def on_thread(connection: sqlite3.Connection, a: int, *, b: int) -> tuple[int, int]:
                ((value,),) = connection.execute("SELECT ? + ?", (a, b)).fetchall()
                return value, threading.get_ident()

            value, thread = await run(on_thread, db, 2, b=3)
            assert value == 5, AIOSQLITE
            # On aiosqlite's own thread: sqlite3 refuses a connection used elsewhere.
            assert thread != threading.get_ident(), AIOSQLITE

            def fails(connection: sqlite3.Connection) -> None:
                connection.execute("SELECT * FROM no_such_table")

            with pytest.raises(sqlite3.OperationalError):
                await run(fails, db)
    finally:
        await database.engine.dispose()


async def test_sqlite_append_batch_takes_the_one_call_path(tmp_path: Path) -> None:
    database = open_database(f"sqlite+aiosqlite:///{tmp_path / 'append.db'}")
    try:
        await ensure_schema(database, upgrade=True)
        async with database.engine.connect() as conn:
            pending = [PendingEvent("t:a", json.dumps({"n": n})) for n in range(3)]
            stored = await sqlite.append_batch(conn, pending, datetime.now(UTC))
        assert stored is not None, AIOSQLITE
        assert [(e.topic, e.seq) for e in stored] == [("t:a", 1), ("t:a", 2), ("t:a", 3)]
    finally:
        await database.engine.dispose()


# FastAPI ---------------------------------------------------------------------

FASTAPI = broken(
    "FastAPI app._native_telemetry.enabled()",
    "api/app.py _telemetry_enabled, which keeps the publish fast path off when "
    "FastAPI's OpenTelemetry instrumentation is on",
    "Find FastAPI's new way to tell whether it instruments requests and use it "
    "there; until then a hub with OpenTelemetry configured loses its publish spans.",
)


def test_fastapi_says_whether_it_instruments_requests() -> None:
    from opentelemetry import trace

    from api.app import EventHubApp, _telemetry_enabled

    plain = EventHubApp()
    telemetry = getattr(plain, "_native_telemetry", None)
    assert telemetry is not None, FASTAPI
    assert callable(getattr(telemetry, "enabled", None)), FASTAPI
    assert telemetry.enabled() is False, FASTAPI
    assert _telemetry_enabled(plain) is False

    traced = EventHubApp(telemetry={"tracer_provider": trace.NoOpTracerProvider()})
    assert traced._native_telemetry.enabled() is True, FASTAPI
    # The case the fallback would get wrong: FastAPI instruments, the check must see it.
    assert _telemetry_enabled(traced) is True, FASTAPI


# asyncio ---------------------------------------------------------------------

ASYNCIO = broken(
    "asyncio's future protocol: a coroutine's step yields the Future it awaits, "
    "flagged Future._asyncio_future_blocking",
    "api/sse.py _emit and _finish, which step the ASGI send by hand",
    "Make _emit await the send in a task (asyncio.ensure_future(send(message))) "
    "and drop _finish; measure the SSE fan-out bench before and after.",
)


def loop_factories() -> list[Any]:
    factories: list[Any] = [pytest.param(asyncio.new_event_loop, id="asyncio")]
    try:
        import uvloop  # uvicorn[standard] serves on it
    except ImportError:  # pragma: no cover - a platform without uvloop
        return factories
    return [*factories, pytest.param(uvloop.new_event_loop, id="uvloop")]


@pytest.mark.parametrize("loop_factory", loop_factories())
def test_a_send_stepped_by_hand_is_finished_like_a_task(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    from api.sse import _finish

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        gate: asyncio.Future[str] = loop.create_future()
        steps: list[str] = []

        async def send() -> None:  # like uvicorn's send waiting on the transport
            steps.append(await gate)
            await asyncio.sleep(0)  # a bare yield
            steps.append("done")

        sending = send().__await__()
        awaited = sending.send(None)
        assert awaited is gate, ASYNCIO
        assert awaited._asyncio_future_blocking is True, ASYNCIO
        finishing = asyncio.ensure_future(_finish(sending, awaited))
        await asyncio.sleep(0.01)
        assert not finishing.done()
        assert steps == []
        gate.set_result("written")
        await asyncio.wait_for(finishing, 5)
        assert steps == ["written", "done"], ASYNCIO

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(scenario())


# uvicorn ---------------------------------------------------------------------

UVICORN = broken(
    "uvicorn installs Server.handle_exit (a bound method) as its SIGTERM handler "
    "and sets Server.should_exit",
    "api/sse.py and api/channels.py _server_exiting, which end endless streams "
    "when the server stops",
    "Find uvicorn's new shutdown signal and read it there; until then a SIGTERM "
    "waits the whole graceful timeout for open streams.",
)


def test_uvicorn_shutdown_is_seen_through_its_signal_handler() -> None:
    import uvicorn

    from api import channels, sse

    assert threading.current_thread() is threading.main_thread()
    server = uvicorn.Server(uvicorn.Config(app=lambda *_: None))
    assert not sse._server_exiting()
    with server.capture_signals():
        handler = signal.getsignal(signal.SIGTERM)
        assert getattr(handler, "__self__", None) is server, UVICORN
        assert sse._server_exiting() is False, UVICORN
        assert channels._server_exiting() is False, UVICORN
        server.should_exit = True
        assert sse._server_exiting() is True, UVICORN
        assert channels._server_exiting() is True, UVICORN
    assert not sse._server_exiting()

    # Outside capture_signals (which re-raises what it caught): the real handler.
    other = uvicorn.Server(uvicorn.Config(app=lambda *_: None))
    other.handle_exit(signal.SIGTERM, None)
    assert other.should_exit is True, UVICORN


# argparse --------------------------------------------------------------------


def test_argparse_subparsers_action_is_the_annotated_type() -> None:
    commands = argparse.ArgumentParser().add_subparsers()
    assert isinstance(commands, argparse._SubParsersAction), broken(
        "argparse._SubParsersAction",
        "the type annotations of the eventhub_log/cli*.py command builders",
        "Annotate with the type add_subparsers() now returns.",
    )


UVICORN_PROTOCOL = broken(
    "uvicorn.protocols.http.httptools_impl.HttpToolsProtocol, its httptools "
    "callbacks on_message_begin / on_headers_complete and its loop / transport",
    "api/http_protocol.py HeaderDeadlineProtocol, the deadline on request headers",
    "Re-hook the deadline on uvicorn's new protocol class (tests/test_limits.py "
    "test_trickled_request_headers_are_cut_off is the behaviour to keep).",
)


async def test_the_header_deadline_hooks_uvicorns_protocol(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import socket

    import uvicorn
    from uvicorn.server import ServerState

    from api import http_protocol

    monkeypatch.setattr(http_protocol, "header_timeout", lambda: 0.3)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    config = uvicorn.Config(app, http=http_protocol.HeaderDeadlineProtocol, log_level="error")
    config.load()
    loop = asyncio.get_running_loop()

    async def connect() -> tuple[http_protocol.HeaderDeadlineProtocol, socket.socket]:
        ours, theirs = socket.socketpair()
        theirs.setblocking(False)
        protocol = http_protocol.HeaderDeadlineProtocol(
            config=config, server_state=ServerState(), app_state={}
        )
        await loop.connect_accepted_socket(lambda: protocol, ours)
        return protocol, theirs

    async def read(client: socket.socket, wait: float) -> bytes:
        try:
            return await asyncio.wait_for(loop.sock_recv(client, 4096), wait)
        except TimeoutError:
            return b""

    # Complete headers disarm the deadline: the answer comes, and no 408 after it.
    protocol, client = await connect()
    assert protocol._deadline is not None, UVICORN_PROTOCOL  # armed by connection_made
    await loop.sock_sendall(client, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read(client, 5)).startswith(b"HTTP/1.1 204"), UVICORN_PROTOCOL
    assert protocol._deadline is None, UVICORN_PROTOCOL
    assert await read(client, 0.6) == b"", UVICORN_PROTOCOL
    client.close()

    # Headers that never end: cut off at the deadline.
    protocol, client = await connect()
    await loop.sock_sendall(client, b"GET / HTTP/1.1\r\nHost: x\r\n")
    assert (await read(client, 5)).startswith(b"HTTP/1.1 408"), UVICORN_PROTOCOL
    client.close()


UVICORN_CYCLE = broken(
    "uvicorn.protocols.http.httptools_impl.RequestResponseCycle: the bound send an "
    "app is given, its transport / flow / chunked_encoding / response_started / "
    "response_complete / disconnected, and its chunk framing",
    "api/direct_writes.py, the SSE stream's body writes that skip the ASGI send",
    "Follow uvicorn's new cycle in direct_target and write_chunk, or make "
    "direct_target return None (every write then takes the ASGI send, correct "
    "but slower at many streams).",
)


async def test_direct_chunks_are_written_as_uvicorns_send_writes_them() -> None:
    import socket

    import uvicorn
    from uvicorn.server import ServerState

    from api import http_protocol
    from api.direct_writes import direct_target, write_chunk

    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        async def wrapped(message: Any) -> None:  # a middleware's send
            await send(message)

        seen["before_start"] = direct_target(send)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        cycle = seen["cycle"] = direct_target(send)
        seen["wrapped"] = direct_target(wrapped)
        await send({"type": "http.response.body", "body": b"asgi:", "more_body": True})
        seen["direct"] = cycle is not None and write_chunk(cycle, b"direct:")
        seen["empty"] = cycle is not None and write_chunk(cycle, b"")
        if cycle is not None:
            cycle.flow.pause_writing()  # the transport pushes back
            seen["paused"] = write_chunk(cycle, b"never")
            cycle.flow.resume_writing()
        await send({"type": "http.response.body", "body": b"end", "more_body": False})
        seen["complete"] = cycle is not None and write_chunk(cycle, b"late")

    config = uvicorn.Config(app, http=http_protocol.HeaderDeadlineProtocol, log_level="error")
    config.load()
    loop = asyncio.get_running_loop()
    ours, client = socket.socketpair()
    client.setblocking(False)
    protocol = http_protocol.HeaderDeadlineProtocol(
        config=config, server_state=ServerState(), app_state={}
    )
    await loop.connect_accepted_socket(lambda: protocol, ours)
    await loop.sock_sendall(client, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    received = b""
    while not received.endswith(b"0\r\n\r\n"):
        part = await asyncio.wait_for(loop.sock_recv(client, 65536), 5)
        assert part, received
        received += part
    client.close()

    assert seen["before_start"] is None, UVICORN_CYCLE  # nothing to write into yet
    assert seen["cycle"] is not None, UVICORN_CYCLE
    assert seen["wrapped"] is None  # only uvicorn's own send is written around
    assert seen["direct"] is True
    assert seen["empty"] is False  # would end the body
    assert seen["paused"] is False, UVICORN_CYCLE
    assert seen["complete"] is False, UVICORN_CYCLE
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower(), UVICORN_CYCLE
    # The direct chunk is framed as uvicorn frames the chunks around it.
    assert body == b"5\r\nasgi:\r\n7\r\ndirect:\r\n3\r\nend\r\n0\r\n\r\n", UVICORN_CYCLE
