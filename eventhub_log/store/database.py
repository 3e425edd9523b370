"""Engines and transactions, chosen by URL, with driver errors translated."""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from types import ModuleType

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ..errors import DatabaseUnavailable, EventHubError, StorageError, StorageFull
from . import postgresql, sqlite

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///eventhub.db"


@dataclass(frozen=True)
class Database:
    """An engine plus the module that knows its dialect's quirks."""

    engine: AsyncEngine
    dialect: ModuleType

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction (``BEGIN IMMEDIATE`` on SQLite)."""
        with translate_errors():
            async with self.engine.connect() as conn:
                await conn.execution_options(**{sqlite.WRITE_OPTION: True})
                async with conn.begin():
                    yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        with translate_errors():
            async with self.engine.connect() as conn:
                yield conn


def open_database(
    url_or_engine: str | AsyncEngine,
    *,
    sqlite_synchronous: str = "FULL",
    busy_timeout_ms: int = 30_000,
    pool_size: int = 10,
    pool_timeout: float = 10.0,
) -> Database:
    """``pool_timeout``: how long a request waits for a pooled connection before
    it fails with ``DatabaseUnavailable`` (a 503 over HTTP), rather than SQLAlchemy's
    30 s: a client is better told to retry than kept waiting."""
    if isinstance(url_or_engine, AsyncEngine):
        engine = url_or_engine
        dialect = _dialect_module(engine.dialect.name)
    else:
        url = make_url(url_or_engine)
        dialect = _dialect_module(url.get_backend_name())
        if url.get_backend_name() == "sqlite":
            _ensure_parent_directory(url.database)
            engine = create_async_engine(
                url, pool_size=pool_size, max_overflow=pool_size, pool_timeout=pool_timeout
            )
        else:
            # No pre-ping: with asyncpg it is BEGIN, a ping and ROLLBACK, three round
            # trips on every checkout, more than most of our transactions cost. A
            # connection that died (server restart) fails its first statement
            # instead; that request gets DatabaseUnavailable (503, retry) and
            # SQLAlchemy drops every pooled connection older than the failure.
            engine = create_async_engine(
                url, pool_size=pool_size, max_overflow=pool_size, pool_timeout=pool_timeout
            )
    if sqlite_synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise ValueError("sqlite_synchronous must be OFF, NORMAL, FULL or EXTRA")
    dialect.configure(
        engine, synchronous=sqlite_synchronous.upper(), busy_timeout_ms=busy_timeout_ms
    )
    return Database(engine=engine, dialect=dialect)


def _dialect_module(name: str) -> ModuleType:
    if name == "sqlite":
        return sqlite
    if name in ("postgresql", "postgres"):
        return postgresql
    raise ValueError(
        f"unsupported database {name!r}: use sqlite+aiosqlite:///FILE or "
        "postgresql+asyncpg://USER@HOST/DB"
    )


def _ensure_parent_directory(database: str | None) -> None:
    if database and database != ":memory:" and not database.startswith("file:"):
        parent = os.path.dirname(os.path.abspath(database))
        os.makedirs(parent, exist_ok=True)


@contextmanager
def translate_errors() -> Iterator[None]:
    try:
        yield
    except EventHubError:
        raise
    except sa_exc.TimeoutError as exc:
        # Every pooled connection stayed busy for ``pool_timeout``: come back later.
        raise DatabaseUnavailable("database busy: no connection free in the pool") from exc
    except (sa_exc.OperationalError, sa_exc.InterfaceError, OSError) as exc:
        if is_storage_full(exc):
            raise StorageFull(f"no space left: {_first_line(exc)}") from exc
        raise DatabaseUnavailable(f"database unavailable: {_first_line(exc)}") from exc
    except sa_exc.DBAPIError as exc:
        if is_storage_full(exc):
            raise StorageFull(f"no space left: {_first_line(exc)}") from exc
        if exc.connection_invalidated:
            raise DatabaseUnavailable(f"database connection lost: {_first_line(exc)}") from exc
        if _is_unavailable(getattr(exc.orig, "sqlstate", None)) or _broken_driver_state(exc):
            raise DatabaseUnavailable(f"database unavailable: {_first_line(exc)}") from exc
        raise StorageError(f"database error: {_first_line(exc)}") from exc
    except sa_exc.SQLAlchemyError as exc:
        raise StorageError(f"database error: {_first_line(exc)}") from exc


def is_storage_full(exc: BaseException) -> bool:
    """The database ran out of space: SQLite's SQLITE_FULL (its disk, or a
    ``max_page_count``), PostgreSQL's ``disk_full`` (53100), or ENOSPC. SQLite has
    rolled the statement back, and the hub's own transaction around it goes too."""
    seen: BaseException = getattr(exc, "orig", None) or exc
    if isinstance(seen, OSError):
        return seen.errno == errno.ENOSPC
    if getattr(seen, "sqlstate", None) == "53100":
        return True
    return sqlite.is_full(seen)


def _is_unavailable(sqlstate: object) -> bool:
    """Connection exceptions (class 08), a server shutting down or starting up
    (57P01-57P03), too many connections (53300): come back later, nothing is wrong
    with the request."""
    if not isinstance(sqlstate, str):
        return False
    return sqlstate.startswith("08") or sqlstate in ("57P01", "57P02", "57P03", "53300")


def _broken_driver_state(exc: BaseException) -> bool:
    """asyncpg's InternalClientError: a connection that broke mid-operation (a
    server restart) and is stuck; the pool replaces it, so come back later."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if type(seen).__name__ == "InternalClientError":
            return True
        seen = getattr(seen, "orig", None) or seen.__cause__
    return False


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.splitlines()[0] if text else type(exc).__name__
