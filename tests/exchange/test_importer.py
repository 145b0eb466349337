"""``smartmed import``: Synthea bundles load; a bad bundle is rejected whole, the rest load."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from smartmed.cli import app
from smartmed.config import Settings, get_settings
from smartmed.exchange.importer import import_files
from tests.conftest import CONFORMANCE, create_pg_database, drop_pg_database, need

SYNTHEA = CONFORMANCE / "synthea-r4-sample"


def synthea_files() -> list[Path]:
    need(SYNTHEA.is_dir(), f"Synthea sample not found at {SYNTHEA} (SMARTMED_CONFORMANCE_DIR)")
    return sorted(SYNTHEA.glob("*.json"))


def count_entries(path: Path) -> int:
    return len(orjson.loads(path.read_bytes())["entry"])


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_synthea_sample_imports_whole(backend: str, tmp_path: Path) -> None:
    files = synthea_files()
    expected = sum(count_entries(f) for f in files)
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path}/import.db"
    else:
        url = await create_pg_database()
    try:
        report = await import_files(Settings(database_url=url), files)
    finally:
        if backend == "postgres":
            await drop_pg_database(url)
    assert report.failed == []
    assert len(report.bundles) == len(files) == 20
    assert sum(sum(b.created.values()) for b in report.bundles) == expected
    assert sum(b.created["Patient"] for b in report.bundles) == 20


def test_bad_bundle_is_rejected_whole_and_others_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = synthea_files()[0]
    shutil.copy(good, tmp_path / "good.json")
    broken = orjson.loads(good.read_bytes())
    broken["entry"][5]["resource"]["status"] = "no-such-status"
    (tmp_path / "broken.json").write_bytes(orjson.dumps(broken))
    (tmp_path / "garbage.json").write_bytes(b"{not json")
    lines = [
        orjson.dumps(
            {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [
                    {
                        "resource": {"resourceType": "Patient", "gender": "female"},
                        "request": {"method": "POST", "url": "Patient"},
                    }
                ],
            }
        ),
        b"[]",
    ]
    (tmp_path / "two.ndjson").write_bytes(b"\n".join(lines))
    database = tmp_path / "cli.db"
    monkeypatch.setenv("SMARTMED_DATABASE_URL", f"sqlite+aiosqlite:///{database}")
    get_settings.cache_clear()
    try:
        names = ["good.json", "broken.json", "garbage.json", "two.ndjson"]
        result = CliRunner().invoke(app, ["import", *[str(tmp_path / n) for n in names]])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1, result.output
    assert "Imported 2 of 5 bundles" in result.output
    assert "REJECTED broken.json" in result.output
    assert "REJECTED garbage.json: not valid JSON" in result.output
    assert "REJECTED two.ndjson:2: not a FHIR Bundle" in result.output
    with sqlite3.connect(database) as conn:
        stored = conn.execute("SELECT count(*) FROM resource").fetchone()[0]
        patients = conn.execute("SELECT count(*) FROM resource WHERE type='Patient'").fetchone()[0]
    assert stored == count_entries(good) + 1
    assert patients == 2
