"""Loaded at start-up by a server process that has this directory on its
``PYTHONPATH`` (tests/test_disk_full.py, where it cannot mount a filesystem):
SQLite's ``PRAGMA max_page_count`` on every pooled connection each time it is
checked out, read from the file ``EVENTHUB_TEST_MAX_PAGE_COUNT_FILE`` names, so
the test can run the database out of space and give it room again while the
server keeps running. Past the cap SQLite fails as on a full disk (SQLITE_FULL)."""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import event
from sqlalchemy.pool import Pool

_LIMIT_FILE = os.environ.get("EVENTHUB_TEST_MAX_PAGE_COUNT_FILE")

if _LIMIT_FILE:

    @event.listens_for(Pool, "checkout")
    def _cap_pages(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        with open(_LIMIT_FILE, encoding="ascii") as limit:
            pages = int(limit.read())
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA max_page_count = {pages}")
        cursor.close()
