"""Bring a database to the head revision, or refuse one we do not understand."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from alembic import command

from .errors import SchemaError
from .store.database import Database, translate_errors

# Advisory lock key so that instances starting together migrate one at a time.
_PG_MIGRATION_LOCK = 7_302_215_001


def script_location() -> Path:
    """The Alembic folder: inside the installed package, or the source checkout's."""
    packaged = Path(__file__).with_name("_alembic")
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parent.parent / "alembic"
    if checkout.is_dir():
        return checkout
    raise SchemaError("the Alembic migrations folder is missing from this installation")


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(script_location()))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _check(connection: Connection, *, upgrade: bool) -> str | None:
    config = alembic_config()
    scripts = ScriptDirectory.from_config(config)
    current = _current(connection)
    known = {rev.revision for rev in scripts.walk_revisions()}
    if current is not None and current not in known:
        raise SchemaError(
            f"database schema is at revision {current!r}, which this version of "
            "eventhub-log does not know; it was written by a newer release. "
            "Upgrade eventhub-log or point it at another database."
        )
    if current == scripts.get_current_head():
        return current
    if not upgrade:
        raise SchemaError(
            f"database schema is at revision {current or 'none'} but this version needs "
            f"{scripts.get_current_head()}; run `eventhub-log migrate --database-url ...` first"
        )
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
        if _current(connection) == scripts.get_current_head():
            return _current(connection)
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
    return _current(connection)


async def ensure_schema(database: Database, *, upgrade: bool) -> str | None:
    """Upgrade to head (when ``upgrade``) or check that the schema is at head."""
    with translate_errors():
        async with database.write() as conn:
            return await conn.run_sync(_check_wrapper, upgrade)


def _check_wrapper(connection: Connection, upgrade: bool) -> str | None:
    return _check(connection, upgrade=upgrade)


async def current_revision(database: Database) -> str | None:
    async with database.read() as conn:
        return await conn.run_sync(_current)
