"""``smartmed worker`` and ``smartmed jobs`` from the command line."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from smartmed.cli import app
from smartmed.config import get_settings
from smartmed.fhir.context import FhirEngine
from smartmed.jobs import enqueue
from smartmed.jobs.runner import JobRunner
from tests.jobs.test_websocket_admin import always_dead  # noqa: F401 - registers the kind


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, engine: FhirEngine) -> Iterator[None]:
    monkeypatch.setenv("SMARTMED_DATABASE_URL", str(engine.db.url.render_as_string(False)))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_worker_refuses_sqlite(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SMARTMED_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/x.db")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["worker"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2
    assert "workers need PostgreSQL" in result.output
    assert not (tmp_path / "x.db").exists()


async def test_jobs_list_and_retry(engine: FhirEngine, cli_env: None) -> None:
    async with engine.db.write() as conn:
        dead_id = await enqueue(conn, "test.admin-dead", {"n": 1})
    await JobRunner(engine).run_once()
    runner = CliRunner()  # in a thread: the commands run their own event loop
    result = await asyncio.to_thread(runner.invoke, app, ["jobs", "list", "--state", "dead"])
    assert result.exit_code == 0, result.output
    rows = [orjson.loads(line) for line in result.output.splitlines()]
    assert [(r["id"], r["state"], r["last_error"]) for r in rows] == [
        (dead_id, "dead", "ValueError: cannot")
    ]
    bad = await asyncio.to_thread(runner.invoke, app, ["jobs", "list", "--state", "zombie"])
    assert bad.exit_code == 2
    assert "state must be one of" in bad.output
    result = await asyncio.to_thread(runner.invoke, app, ["jobs", "retry", str(dead_id)])
    assert (result.exit_code, result.output) == (0, f"job {dead_id} queued\n")
    again = await asyncio.to_thread(runner.invoke, app, ["jobs", "retry", str(dead_id)])
    assert again.exit_code == 1
