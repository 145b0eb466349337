"""`smartmed reindex` and migration 0002: index rows rebuilt from stored content, both backends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import delete, insert, select, text
from typer.testing import CliRunner

from smartmed.cli import app
from smartmed.config import Settings, get_settings
from smartmed.fhir.context import FhirEngine
from smartmed.fhir.reindex import count_resources, reindex
from smartmed.fhir.storage.database import Database
from smartmed.fhir.storage.migrate import migrate
from smartmed.fhir.storage.tables import INDEX_TABLES, idx_quantity, idx_token, resource
from tests.conftest import create_pg_database, drop_pg_database

UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
BP = {
    "resourceType": "Observation",
    "status": "final",
    "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
    "subject": {"reference": "Patient/p1"},
    "text": {
        "status": "generated",
        "div": '<div xmlns="http://www.w3.org/1999/xhtml">高血压</div>',
    },
    "component": [
        {
            "code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
            "valueQuantity": {"value": 150, "system": UCUM, "code": "mm[Hg]"},
        }
    ],
}


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A new, empty database (not migrated)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/reindex.db"
        return
    url = await create_pg_database()
    yield url
    await drop_pg_database(url)


async def snapshot(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    """Every index row, per table, sorted."""
    out = {}
    async with db.read() as conn:
        for kind, table in INDEX_TABLES.items():
            rows = (await conn.execute(select(table))).all()
            out[kind] = sorted((tuple(row) for row in rows), key=repr)
    return out


async def test_reindex_restores_deleted_rows_and_is_idempotent(database_url: str) -> None:
    engine = FhirEngine.build(Settings(database_url=database_url))
    db = engine.db
    try:
        await migrate(db)
        async with db.write() as conn:
            repo = engine.repository(conn)
            for n in range(5):
                await repo.create({**BP, "subject": {"reference": f"Patient/p{n}"}})
            patient = await repo.create(
                {"resourceType": "Patient", "name": [{"family": "王", "given": ["小明"]}]}
            )
            await repo.delete("Patient", patient.id)
            location = {"latitude": 39.9, "longitude": 116.4}
            await repo.create({"resourceType": "Location", "position": location})
        written = await snapshot(db)
        assert written["geo"] and written["text"] and written["quantity"]
        # Rows lost by hand (a definitions change, a bad restore, a new migration...).
        async with db.write() as conn:
            await conn.execute(delete(idx_token))
            await conn.execute(delete(idx_quantity).where(idx_quantity.c.param.like("%$%")))
            await conn.execute(delete(INDEX_TABLES["text"]))
        assert (await snapshot(db)) != written
        assert await count_resources(db) == 7
        calls: list[tuple[int, int]] = []
        done = await reindex(
            db,
            engine.services.extractor,
            batch_size=2,
            progress=lambda n, pk: calls.append((n, pk)),
        )
        assert (done.resources, [n for n, _ in calls]) == (7, [2, 2, 2, 1])
        assert await snapshot(db) == written
        again = await reindex(db, engine.services.extractor, batch_size=3)
        assert again.rows == done.rows
        assert await snapshot(db) == written
        # Resuming after a key only touches the resources after it.
        resumed = await reindex(db, engine.services.extractor, start_after=calls[1][1])
        assert resumed.resources == 3
        assert await snapshot(db) == written
    finally:
        await db.dispose()


async def test_migration_from_0001_keeps_data_and_reindex_fills_new_values(
    database_url: str,
) -> None:
    db = Database(database_url)
    try:
        await migrate(db, "0001_resource_store")
        content = orjson.dumps({**BP, "id": "bp1", "meta": {"versionId": "1"}}).decode()
        async with db.write() as conn:
            await conn.execute(
                text(
                    "INSERT INTO resource (type, id, version_id, last_updated, deleted, content)"
                    " VALUES ('Observation', 'bp1', 1, '2026-01-01 00:00:00', false, "
                    + ("CAST(:c AS JSONB))" if db.is_postgres else ":c)")
                ),
                {"c": content},
            )
            pk = (await conn.execute(text("SELECT pk FROM resource"))).scalar_one()
            await conn.execute(
                text(
                    "INSERT INTO idx_token (res_pk, resource_type, param, system, code)"
                    " VALUES (:pk, 'Observation', 'code', :s, '85354-9')"
                ),
                {"pk": pk, "s": LOINC},
            )
        await migrate(db)
        async with db.read() as conn:
            stored = (await conn.execute(select(resource.c.id, resource.c.content))).one()
            old = (await conn.execute(select(idx_token))).one()
        assert stored.id == "bp1" and orjson.loads(stored.content)["component"]
        assert (old.code, old.type_system, old.type_code, old.grp) == ("85354-9", None, None, None)
        # Only reindexing adds the composite, canonical and text values.
        engine = FhirEngine.build(Settings(database_url=database_url))
        try:
            await reindex(db, engine.services.extractor)
        finally:
            await engine.db.dispose()
        async with db.read() as conn:
            rows = (
                await conn.execute(
                    select(idx_quantity.c.param, idx_quantity.c.grp, idx_quantity.c.canon_unit)
                )
            ).all()
            narrative = (await conn.execute(select(INDEX_TABLES["text"].c.value))).scalars()
            assert "高血压" in set(narrative)
        assert ("component-code-value-quantity$1", 0, "g.m-1.s-2") in rows
        assert ("component-value-quantity", None, "g.m-1.s-2") in rows
    finally:
        await db.dispose()


def test_reindex_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMARTMED_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/cli.db")
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        empty = runner.invoke(app, ["reindex"])  # migrates a new database first
        assert empty.exit_code == 0, empty.output
        assert "reindexed 0 resources" in empty.output
        loaded = runner.invoke(app, ["demo", "--residents", "3", "--seed", "5"])
        assert loaded.exit_code == 0, loaded.output
        result = runner.invoke(app, ["reindex", "--batch-size", "7"])
        assert result.exit_code == 0, result.output
        assert "reindexed" in result.output and "index rows" in result.output
        assert runner.invoke(app, ["reindex", "--batch-size", "0"]).exit_code != 0
    finally:
        get_settings.cache_clear()


async def test_inserting_old_style_rows_still_works_after_migration(database_url: str) -> None:
    """Code that writes index rows without the new columns (NULL) keeps working."""
    db = Database(database_url)
    try:
        await migrate(db)
        async with db.write() as conn:
            await conn.execute(
                insert(idx_token),
                [{"res_pk": 1, "resource_type": "Patient", "param": "gender", "code": "male"}],
            )
        async with db.read() as conn:
            row = (await conn.execute(select(idx_token))).one()
        assert (row.code, row.grp, row.type_code) == ("male", None, None)
    finally:
        await db.dispose()
