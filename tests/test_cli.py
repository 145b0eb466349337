"""The ``smartmed`` command line: migrate and demo on a fresh SQLite database."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from smartmed.cli import app
from smartmed.config import get_settings

runner = CliRunner()


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "cli.db"
    monkeypatch.setenv("SMARTMED_DATABASE_URL", f"sqlite+aiosqlite:///{path}")
    get_settings.cache_clear()
    yield path
    get_settings.cache_clear()


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("serve", "migrate", "demo"):
        assert command in result.output


def test_migrate_creates_the_schema_and_is_repeatable(database: Path) -> None:
    first = runner.invoke(app, ["migrate"])
    assert first.exit_code == 0, first.output
    second = runner.invoke(app, ["migrate"])
    assert second.exit_code == 0, second.output
    with sqlite3.connect(database) as conn:
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
    assert {"resource", "resource_history", "idx_token", "outbox", "alembic_version"} <= tables


def test_demo_loads_a_county_once(database: Path) -> None:
    result = runner.invoke(app, ["demo", "--residents", "8", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "Patient" in result.output
    with sqlite3.connect(database) as conn:
        patients = conn.execute("SELECT count(*) FROM resource WHERE type='Patient'").fetchone()[0]
    assert patients == 8
    again = runner.invoke(app, ["demo", "--residents", "8", "--seed", "3", "--if-empty"])
    assert again.exit_code == 0
    with sqlite3.connect(database) as conn:
        assert conn.execute("SELECT count(*) FROM resource WHERE type='Patient'").fetchone()[0] == 8


def test_serve_refuses_workers_on_sqlite(database: Path) -> None:
    result = runner.invoke(app, ["serve", "--workers", "2"])
    assert result.exit_code != 0
    assert "PostgreSQL" in result.output
