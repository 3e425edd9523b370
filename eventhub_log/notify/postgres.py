"""PostgreSQL LISTEN/NOTIFY: wake-ups between instances within milliseconds.

One raw asyncpg connection per hub, outside the SQLAlchemy pool: a pooled
connection would be handed to other work, and LISTEN belongs to a session. It
listens on two channels and also sends this instance's signals, so a hub costs
the database one extra connection.

- ``eventhub_log_events``: the payload is a log position (a cursor), never an
  event, so NOTIFY's 8,000-byte payload limit never matters. A listener whose
  dispatcher has already delivered that far ignores it (its own signals come
  back to it too); otherwise it reads the log from where it is.
- ``eventhub_log_subscriptions``: no payload; the ``subscription_changes`` table
  says what changed.

Signals are sent after the commit, coalesced: while one NOTIFY is in flight,
further commits only raise the position the next one carries. When the
connection drops (the server restarted, the network failed) the notifier
reconnects with backoff and listens again, and then wakes its hub once, because
whatever was published meanwhile sent signals nobody heard. A periodic ``SELECT
1`` finds connections that died silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.engine import URL, make_url

from .base import Notifier

log = logging.getLogger(__name__)

EVENTS_CHANNEL = "eventhub_log_events"
SUBSCRIPTIONS_CHANNEL = "eventhub_log_subscriptions"
RECONNECT_DELAYS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)


def asyncpg_dsn(url: str | URL) -> str:
    """The plain ``postgresql://`` DSN asyncpg wants, from a SQLAlchemy URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


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
    ) -> None:
        self._dsn = dsn
        self._application_name = application_name[:63]
        self._delivered = delivered
        self._on_subscriptions = on_subscriptions or (lambda: None)
        self._check_interval = check_interval
        self._reconnect_delays = tuple(reconnect_delays)
        self._wake: Callable[[], None] = lambda: None
        self._task: asyncio.Task[None] | None = None
        self._signal = asyncio.Event()
        self._position_to_send = 0
        self._subscriptions_to_send = False
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

    def published(self, position: int) -> None:
        self._position_to_send = max(self._position_to_send, position)
        self._signal.set()

    def subscriptions_changed(self) -> None:
        self._subscriptions_to_send = True
        self._signal.set()

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
        lost = asyncio.Event()

        def terminated(_conn: Any) -> None:
            lost.set()
            self._signal.set()  # end the wait below now, not at the next check

        conn.add_termination_listener(terminated)
        await conn.add_listener(EVENTS_CHANNEL, self._heard_event)
        await conn.add_listener(SUBSCRIPTIONS_CHANNEL, self._heard_subscriptions)
        self.connections += 1
        self.listening.set()
        # Signals sent while nobody listened are lost: look at the log once now.
        self._wake()
        self._on_subscriptions()
        while not lost.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._signal.wait(), self._check_interval)
            if lost.is_set():
                return
            if self._signal.is_set():
                self._signal.clear()
                await self._send(conn)
            else:
                await conn.fetchval("SELECT 1", timeout=self._check_interval)

    async def _send(self, conn: asyncpg.Connection[Any]) -> None:
        position, self._position_to_send = self._position_to_send, 0
        subscriptions, self._subscriptions_to_send = self._subscriptions_to_send, False
        try:
            # Subscription changes first: a listener then applies a subscribe
            # before it reads events published after it.
            if subscriptions:
                await conn.execute("SELECT pg_notify($1, '')", SUBSCRIPTIONS_CHANNEL, timeout=5)
            if position:
                await conn.execute(
                    "SELECT pg_notify($1, $2)", EVENTS_CHANNEL, str(position), timeout=5
                )
        except BaseException:
            # Keep them for the next connection (the others' polls cover the gap).
            self.published(position)
            if subscriptions:
                self.subscriptions_changed()
            raise

    # Listener callbacks (run in the event loop, must not block) --------------

    def _heard_event(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
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
