"""One suite, every database: tests taking ``database_url`` or ``hub`` run on SQLite
and on PostgreSQL. Without a PostgreSQL server the PostgreSQL half is skipped with
the reason shown, unless ``EVENTHUB_REQUIRE_PG=1`` (set by CI), where it fails."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from eventhub_log import EventHub

from . import databases
from .server import Server

BACKENDS = ["sqlite", "postgres"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A PostgreSQL restart must not land in the middle of other tests of this run.
    items.sort(key=lambda item: item.get_closest_marker("restarts_postgres") is not None)


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[None]:
    problem = asyncio.run(databases.pg_available())
    if problem is not None:
        message = f"PostgreSQL not reachable at {databases.PG_URL} ({problem})"
        if os.environ.get("EVENTHUB_REQUIRE_PG") == "1":
            pytest.fail(message + "; EVENTHUB_REQUIRE_PG=1 demands it", pytrace=False)
        pytest.skip(message + "; set EVENTHUB_TEST_PG_URL to run these tests")
    asyncio.run(databases.create_template())
    yield
    asyncio.run(databases.drop_template())


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty database at schema head (SQLite: a file not yet created)."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'eventhub.db'}"
        return
    request.getfixturevalue("postgres_template")
    name, url = asyncio.run(databases.create_pg_database())
    yield url
    asyncio.run(databases.drop_pg_database(name))


@pytest.fixture
def pg_database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh PostgreSQL database, for tests of what only PostgreSQL has."""
    request.getfixturevalue("postgres_template")
    name, url = asyncio.run(databases.create_pg_database())
    yield url
    asyncio.run(databases.drop_pg_database(name))


@pytest.fixture
async def hub(database_url: str) -> AsyncIterator[EventHub]:
    async with EventHub(database_url, auto_migrate=True) as running:
        yield running


@pytest.fixture
def server(database_url: str) -> Iterator[Server]:
    """A running ``eventhub-log serve`` on a fresh database."""
    running = Server(database_url).start()
    yield running
    running.kill()


# Browser tests drive Debian's chromium, never a browser Playwright would download.
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def missing(message: str) -> None:
    """A missing browser fails the test in CI and skips it elsewhere."""
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture
def chromium() -> str:
    if not Path(CHROMIUM).exists():
        missing(f"chromium is not installed at {CHROMIUM} (scripts/setup installs it)")
    return CHROMIUM


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Any]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        missing("playwright is not installed (it is in the dev extra)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()
