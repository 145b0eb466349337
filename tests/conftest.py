"""Shared fixtures: an app per database backend, and an HTTP client that speaks to it.

PostgreSQL tests get a fresh database on the server named by SMARTMED_TEST_POSTGRES_URL
(default: the local server). Outside CI they skip when no server answers; in CI
(CI=true) a missing server is a failure, never a skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from hypothesis import settings

from smartmed.app import create_app
from smartmed.config import Settings

IN_CI = os.environ.get("CI", "").lower() == "true"
# CI replays the same hypothesis examples every run (reproducible verdicts); local runs
# keep exploring new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if IN_CI:
    settings.load_profile("ci")
PG_ADMIN_URL = os.environ.get(
    "SMARTMED_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
ROOT = Path(__file__).resolve().parents[1]
BODY_LIMIT = 40 * 1024 * 1024  # the largest official example (Bundle-resources) is 30 MB compact
EXAMPLES = ROOT / "node_modules" / "hl7.fhir.r4.examples"
# Third-party conformance material beside the project (never copied into it).
CONFORMANCE = Path(
    os.environ.get("SMARTMED_CONFORMANCE_DIR", ROOT.parent / "shared" / "conformance")
)


def need(condition: bool, reason: str) -> None:
    """Skip outside CI when ``condition`` fails; fail in CI."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


async def _pg_available() -> bool:
    try:
        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=3)
    except (OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


async def create_pg_database() -> str:
    """A new empty PostgreSQL database; its SQLAlchemy URL."""
    need(await _pg_available(), f"PostgreSQL not reachable at {PG_ADMIN_URL}")
    name = f"smartmed_test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    return f"{base.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{name}"


async def drop_pg_database(url: str) -> None:
    """Drop a database made by create_pg_database."""
    name = url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
async def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    """A fresh database per backend for the session."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('db')}/smartmed.db"
        return
    url = await create_pg_database()
    yield url
    await drop_pg_database(url)


@pytest.fixture(scope="session")
async def app(database_url: str) -> AsyncIterator[FastAPI]:
    """The application on the session's database, started (lifespan run)."""
    need((ROOT / "node_modules" / "hl7.fhir.r4.examples").is_dir(), "run `npm ci` first")
    application = create_app(Settings(database_url=database_url, max_body_bytes=BODY_LIMIT))
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture(scope="session")
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to the app in-process, at the FHIR base."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://testserver/fhir/R4/",
        headers={"Content-Type": "application/fhir+json"},
    ) as http:
        yield http
