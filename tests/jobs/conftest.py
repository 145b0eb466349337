"""Fixtures for the jobs tests: a fresh database per test on each backend, an engine on it
(write hooks installed, no background runner: tests step the runner themselves), and the
application on it for the HTTP-level tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import update

from smartmed.app import create_app
from smartmed.config import Settings
from smartmed.fhir.context import FhirEngine
from smartmed.fhir.storage.migrate import migrate
from smartmed.jobs import subscriptions
from smartmed.jobs.queue import utcnow
from smartmed.jobs.runner import JobRunner
from smartmed.jobs.tables import job
from tests.conftest import ROOT, create_pg_database, drop_pg_database, need


@pytest.fixture(params=["sqlite", "postgres"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[str]:
    """A new empty database for one test."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/jobs.db"
        return
    url = await create_pg_database()
    yield url
    await drop_pg_database(url)


def settings_for(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": url,
        "jobs_in_app": False,
        "subscription_allowed_hosts": "127.0.0.1",
        "subscription_max_failures": 3,
        "subscription_timeout_seconds": 2.0,
        "jobs_poll_seconds": 0.05,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[FhirEngine]:
    need((ROOT / "node_modules" / "hl7.fhir.r4.examples").is_dir(), "run `npm ci` first")
    eng = FhirEngine.build(settings_for(db_url))
    await migrate(eng.db)
    subscriptions.install(eng)
    yield eng
    await eng.db.dispose()


@pytest.fixture
def runner(engine: FhirEngine) -> JobRunner:
    return JobRunner(engine, concurrency=8, lease_seconds=5, worker_id="test-runner")


@pytest.fixture
async def jobs_app(db_url: str) -> AsyncIterator[FastAPI]:
    need((ROOT / "node_modules" / "hl7.fhir.r4.examples").is_dir(), "run `npm ci` first")
    app = create_app(settings_for(db_url))
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
async def module_app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[FastAPI]:
    """One application per module and backend, for tests that write nothing."""
    need((ROOT / "node_modules" / "hl7.fhir.r4.examples").is_dir(), "run `npm ci` first")
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('jobs')}/jobs.db"
    else:
        url = await create_pg_database()
    app = create_app(settings_for(url))
    async with app.router.lifespan_context(app):
        yield app
    if request.param == "postgres":
        await drop_pg_database(url)


async def make_due(engine: FhirEngine) -> None:
    """Skip every back-off: queued jobs become due now."""
    async with engine.db.write() as conn:
        await conn.execute(update(job).where(job.c.state == "queued").values(run_at=utcnow()))
