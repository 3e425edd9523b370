"""PostgreSQL LISTEN/NOTIFY: wake-ups between instances within milliseconds.

One raw asyncpg connection per hub, outside the SQLAlchemy pool: a pooled
connection would be handed to other work, and LISTEN belongs to a session. It
listens on two channels (``store/postgresql.py`` names them):

- events: the payload is a log position (a cursor), never an event, so
  NOTIFY's 8,000-byte payload limit never matters. A listener whose dispatcher
  has already delivered that far ignores it (its own signals come back to it
  too); otherwise it reads the log from where it is.
- subscriptions: no payload; the ``subscription_changes`` table says what changed.

Nothing is sent from here: every write transaction sends its own NOTIFY
(``postgresql.signal_appended``, and inside the writer's append statement), so
the signal goes out with the commit, costs no round trip, and comes in commit
order. When the connection drops (the server restarted, the network failed) the
notifier reconnects with backoff and listens again, and then wakes its hub
once, because whatever was published meanwhile sent signals nobody heard. A
periodic ``SELECT 1`` finds connections that died silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from ..store.postgresql import EVENTS_CHANNEL, SUBSCRIPTIONS_CHANNEL
from ..waiting import wait_event
from .base import Notifier

log = logging.getLogger(__name__)
RECONNECT_DELAYS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)


def asyncpg_dsn(url: str | URL) -> str:
    """The plain ``postgresql://`` DSN asyncpg wants, from a SQLAlchemy URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def track_backends(engine: AsyncEngine) -> set[int]:
    """The server pids of the engine's pooled connections, kept current.

    A hub hears its own NOTIFYs too, often before its writer has handed the batch
    to the dispatcher; it ignores those (the writer delivers them, and
    ``publish_in`` wakes the dispatcher itself) rather than read the log for
    events it already has. Register before the engine opens a connection.
    """
    pids: set[int] = set()

    def connected(dbapi_connection: Any, record: Any) -> None:
        driver = getattr(dbapi_connection, "driver_connection", None)
        if driver is not None and hasattr(driver, "get_server_pid"):
            record.info["eventhub_pid"] = pid = driver.get_server_pid()
            pids.add(pid)

    def closed(_dbapi_connection: Any, record: Any) -> None:
        pids.discard(record.info.pop("eventhub_pid", None))

    event.listen(engine.sync_engine, "connect", connected)
    event.listen(engine.sync_engine, "close", closed)
    event.listen(engine.sync_engine, "invalidate", lambda conn, record, _exc: closed(conn, record))
    return pids


class PostgresNotifier(Notifier):
    def __init__(
        self,
        dsn: str,
        delivered: Callable[[], int],
        *,
        on_subscriptions: Callable[[], None] | None = None,
        check_interval: float = 5.0,
        reconnect_delays: Sequence[float] = RECONNECT_DELAYS,
        application_name: str = "eventhub-log listen",
        own_backends: set[int] | None = None,
    ) -> None:
        self._dsn = dsn
        self._own_backends = own_backends if own_backends is not None else set()
        self._application_name = application_name[:63]
        self._delivered = delivered
        self._on_subscriptions = on_subscriptions or (lambda: None)
        self._check_interval = check_interval
        self._reconnect_delays = tuple(reconnect_delays)
        self._wake: Callable[[], None] = lambda: None
        self._task: asyncio.Task[None] | None = None
        #: Set while LISTEN is in effect (tests and readiness checks wait on it).
        self.listening = asyncio.Event()
        #: How many times a connection was (re-)established.
        self.connections = 0

    async def start(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._task = asyncio.create_task(self._run(), name="eventhub-log LISTEN")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # The connection --------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                conn: asyncpg.Connection[Any] = await asyncpg.connect(
                    self._dsn,
                    timeout=5,
                    server_settings={"application_name": self._application_name},
                )
            except Exception as exc:
                delay = self._reconnect_delays[min(failures, len(self._reconnect_delays) - 1)]
                if failures == 0:
                    log.warning("LISTEN connection failed (%s); retrying", exc)
                failures += 1
                await asyncio.sleep(delay)
                continue
            if failures:
                log.info("LISTEN connection back after %d attempts", failures)
            failures = 0
            try:
                await self._serve(conn)
            except Exception as exc:
                log.warning("LISTEN connection lost (%s); reconnecting", exc)
            finally:
                self.listening.clear()
                await _close(conn)

    async def _serve(self, conn: asyncpg.Connection[Any]) -> None:
        lost = asyncio.Event()  # this connection's own: a closed one may still call back
        conn.add_termination_listener(lambda _conn: lost.set())
        await conn.add_listener(EVENTS_CHANNEL, self._heard_event)
        await conn.add_listener(SUBSCRIPTIONS_CHANNEL, self._heard_subscriptions)
        self.connections += 1
        self.listening.set()
        # Signals sent while nobody listened are lost: look at the log once now.
        self._wake()
        self._on_subscriptions()
        while not lost.is_set():
            await wait_event(lost, self._check_interval)
            if not lost.is_set():
                await conn.fetchval("SELECT 1", timeout=self._check_interval)

    # Listener callbacks (run in the event loop, must not block) --------------

    def _heard_event(self, _conn: Any, pid: int, _channel: str, payload: str) -> None:
        if pid in self._own_backends:
            return
        try:
            position = int(payload)
        except ValueError:
            position = -1
        if position < 0 or position > self._delivered():
            self._wake()

    def _heard_subscriptions(self, _conn: Any, _pid: int, _channel: str, _payload: str) -> None:
        self._on_subscriptions()


async def _close(conn: asyncpg.Connection[Any]) -> None:
    try:
        await asyncio.wait_for(conn.close(), 2)
    except Exception:
        conn.terminate()
