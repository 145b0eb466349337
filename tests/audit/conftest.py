"""An engine on a fresh migrated database per test and backend; raw tampering; the CLI."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import Result
from pydantic import SecretStr
from sqlalchemy import text
from typer.testing import CliRunner

from smartmed.audit import AuditLog
from smartmed.audit.chain import chain_pending
from smartmed.cli import app as cli_app
from smartmed.config import Settings, get_settings
from smartmed.fhir.context import FhirEngine
from smartmed.fhir.hooks import AuditRecord
from smartmed.fhir.storage.migrate import migrate
from tests.conftest import EXAMPLES, create_pg_database, drop_pg_database, need
from tests.identity.conftest import auth_app, identity  # noqa: F401 - login-event tests use them

SECRET = "synthetic-audit-test-secret-0123456789"
_SQLITE_GUARDS = ("audit_log_insert_guard", "audit_log_update_guard", "audit_log_delete_guard")


@pytest.fixture(params=["sqlite", "postgres"])
async def engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[FhirEngine]:
    need(EXAMPLES.is_dir(), "run `npm ci` first")
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('audit')}/smartmed.db"
    else:
        url = await create_pg_database()
    built = FhirEngine.build(Settings(database_url=url, secret_key=SecretStr(SECRET)))
    await migrate(built.db)
    yield built
    await built.db.dispose()
    if request.param == "postgres":
        await drop_pg_database(url)


def rec(n: int = 0, *, days_ago: float = 0, **fields: object) -> AuditRecord:
    """A read of Observation/o<n> of Patient/p<n % 3> by Practitioner/d1."""
    values: dict[str, object] = {
        "action": "R",
        "subtype": "read",
        "outcome": "0",
        "recorded": datetime.now(UTC) - timedelta(days=days_ago),
        "agent": "Practitioner/d1",
        "account": "acct-d1",
        "client_id": "portal",
        "roles": ("family-doctor",),
        "source_ip": "10.1.2.3",
        "purpose_of_use": "TREAT",
        "entities": (f"Observation/o{n}",),
        "patients": (f"Patient/p{n % 3}",),
    }
    values.update(fields)
    return AuditRecord(**values)  # type: ignore[arg-type]


async def seed(engine: FhirEngine, count: int, *, days_ago: float = 0, start: int = 1) -> None:
    """``count`` records, one at a time (seq order = n order), then chained."""
    audit = AuditLog(engine.db)
    for n in range(start, start + count):
        await audit.record(rec(n, days_ago=days_ago))
    await audit.close()
    await chain_pending(engine.db)


async def raw(engine: FhirEngine, *statements: str, guards_off: bool = True) -> None:
    """Run SQL on the database directly, as an intruder with DDL rights would."""
    async with engine.db.engine.begin() as conn:
        if guards_off:
            if engine.db.is_postgres:
                await conn.execute(text("ALTER TABLE audit_log DISABLE TRIGGER USER"))
            else:
                for name in _SQLITE_GUARDS:
                    await conn.execute(text(f"DROP TRIGGER IF EXISTS {name}"))
        for statement in statements:
            await conn.execute(text(statement))


async def rows(engine: FhirEngine) -> list[tuple[int, str, int | None, str | None]]:
    async with engine.db.read() as conn:
        result = await conn.execute(
            text("SELECT seq, body, prev_seq, hash FROM audit_log ORDER BY seq")
        )
        return [(int(r[0]), r[1], r[2], r[3]) for r in result]


async def cli(engine: FhirEngine, monkeypatch: pytest.MonkeyPatch, *args: str) -> Result:
    """Run ``smartmed <args>`` against the engine's database (in a thread: it runs its loop)."""
    monkeypatch.setenv("SMARTMED_DATABASE_URL", str(engine.settings.database_url))
    monkeypatch.setenv("SMARTMED_SECRET_KEY", SECRET)
    get_settings.cache_clear()
    try:
        return await asyncio.to_thread(CliRunner().invoke, cli_app, list(args))
    finally:
        get_settings.cache_clear()
