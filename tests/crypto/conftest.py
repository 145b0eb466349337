"""Fixtures for the encryption tests: fresh databases and apps with chosen keys.

Each test that needs one gets a new database (SQLite file or PostgreSQL database), so
keys made under one key-encryption key never meet another test's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from smartmed.app import create_app
from smartmed.config import Settings
from smartmed.fhir.context import FhirEngine
from tests.conftest import ROOT, create_pg_database, drop_pg_database, need

KEY_A = "A" * 16 + "first-key-encryption-key-0001"
KEY_B = "B" * 16 + "other-key-encryption-key-0002"
RESIDENT = "urn:smartmed:id:resident"
# The engine's tables that may hold resource data (the index tables included).
STORE_TABLES = (
    "resource",
    "resource_history",
    "idempotency_key",
    "outbox",
    "crypto_key",
    "idx_token",
    "idx_string",
    "idx_reference",
    "idx_date",
    "idx_number",
    "idx_quantity",
    "idx_uri",
    "idx_geo",
    "idx_text",
)


@pytest.fixture(params=["sqlite", "postgres"])
async def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A new empty database of each backend."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/crypto.db"
        return
    url = await create_pg_database()
    yield url
    await drop_pg_database(url)


def settings_for(url: str, **overrides: Any) -> Settings:
    """Settings on ``url`` with the first test key unless overridden."""
    values: dict[str, Any] = {"database_url": url, "encryption_key": KEY_A}
    values.update(overrides)
    return Settings(**values)


@asynccontextmanager
async def running(
    settings: Settings, *, raise_errors: bool = True
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The app started on ``settings`` and a client at its FHIR base.

    ``raise_errors=False`` gives the 500 response of an unhandled error instead of raising.
    """
    need((ROOT / "node_modules" / "hl7.fhir.r4.examples").is_dir(), "run `npm ci` first")
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_errors)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://testserver/fhir/R4/",
            headers={"Content-Type": "application/fhir+json"},
        ) as client:
            yield app, client


def engine_of(app: FastAPI) -> FhirEngine:
    engine: FhirEngine = app.state.fhir
    return engine


async def raw_rows(url: str, tables: tuple[str, ...] = STORE_TABLES) -> dict[str, list[str]]:
    """Every row of ``tables`` as text, read with a plain engine (nothing revealed)."""
    engine = create_async_engine(url)
    found: dict[str, list[str]] = {}
    try:
        async with engine.connect() as conn:
            for table in tables:
                if url.startswith("postgresql"):
                    query = text(f'SELECT t::text FROM "{table}" t')
                    found[table] = [row[0] for row in await conn.execute(query)]
                else:
                    query = text(f'SELECT * FROM "{table}"')
                    found[table] = [repr(tuple(row)) for row in await conn.execute(query)]
    finally:
        await engine.dispose()
    return found


def without_audit(rows: list[str]) -> list[str]:
    """Rows of the store minus the audit module's AuditEvents (written in the background)."""
    return [row for row in rows if "AuditEvent" not in row]


def leaks(rows: dict[str, list[str]], secrets: list[str]) -> list[tuple[str, str]]:
    """(table, secret) for every secret found in some row."""
    return sorted(
        {(table, s) for table, texts in rows.items() for t in texts for s in secrets if s in t}
    )


def patient(id_number: str, phone: str, **extra: Any) -> dict[str, Any]:
    """A Patient with a resident ID number and a mobile phone."""
    body: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [
            {"system": RESIDENT, "value": id_number},
            {"system": "urn:smartmed:mrn", "value": "MRN-" + id_number[-6:]},
        ],
        "telecom": [
            {"system": "phone", "value": phone, "use": "mobile"},
            {"system": "email", "value": "someone@example.org"},
        ],
        "name": [{"family": "张", "given": ["三"]}],
        "gender": "male",
    }
    body.update(extra)
    return body
