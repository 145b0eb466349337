"""Schema migrations (Alembic), run by ``smartmed migrate`` and at start-up of a new database."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from smartmed.fhir.storage.database import Database

_MIGRATIONS = Path(__file__).with_name("migrations")
# Arbitrary constant: serialises concurrent migrators (several app processes starting at once).
_PG_LOCK_KEY = 7_140_000_001


def alembic_config() -> Config:
    """An Alembic config pointing at the packaged migrations."""
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    return cfg


def _upgrade(sync_conn: Connection, revision: str) -> None:
    if sync_conn.dialect.name == "postgresql":
        sync_conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
    cfg = alembic_config()
    cfg.attributes["connection"] = sync_conn
    command.upgrade(cfg, revision)


def _current(sync_conn: Connection) -> str | None:
    return MigrationContext.configure(sync_conn).get_current_revision()


async def migrate(db: Database, revision: str = "head") -> None:
    """Upgrade the database schema to ``revision``."""
    async with db.engine.begin() as conn:
        await conn.run_sync(_upgrade, revision)


async def is_current(db: Database) -> bool:
    """Whether the schema is at the newest revision."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    async with db.engine.connect() as conn:
        return await conn.run_sync(_current) == head
