"""Cross-dialect parity: the starter views over a demo county give the same rows on
PostgreSQL (in the store) and DuckDB (on a snapshot of it); Spark under -m spark.

A few hundred residents here; the 20k-resident run is the slow variant
(``SMARTMED_PARITY_RESIDENTS``, default 20000, ``-m slow``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from smartmed.analytics import library, sources
from smartmed.analytics.run import prepare, run_store
from smartmed.config import Settings
from smartmed.demo.load import load_demo
from smartmed.fhir.storage.database import Database
from tests.analytics.suite import canonical
from tests.conftest import EXAMPLES, create_pg_database, drop_pg_database, need

pytestmark = pytest.mark.postgres


async def _county(residents: int) -> AsyncIterator[Database]:
    need(EXAMPLES.is_dir(), "run `npm ci` first")
    url = await create_pg_database()
    await load_demo(Settings(database_url=url), residents=residents, seed=11, if_empty=False)
    db = Database(url)
    yield db
    await db.dispose()
    await drop_pg_database(url)


@pytest.fixture(scope="module")
async def county() -> AsyncIterator[Database]:
    async for db in _county(300):
        yield db


async def _parity(db: Database, name: str) -> int:
    view = library.load(name)
    on_pg = (await run_store(db, view, "postgresql")).dicts()
    on_duck = (await run_store(db, view, "duckdb")).dicts()
    assert canonical(on_pg) == canonical(on_duck), name
    return len(on_pg)


@pytest.mark.parametrize("name", library.names())
async def test_starter_view_same_rows_on_postgresql_and_duckdb(county: Database, name: str) -> None:
    rows = await _parity(county, name)
    if name in ("patient_demographics", "conditions", "encounters", "observations"):
        assert rows > 0


async def test_demographics_content(county: Database) -> None:
    rows = (await run_store(county, library.load("patient_demographics"))).dicts()
    assert {r["gender"] for r in rows} <= {"male", "female", "other", "unknown"}
    assert {r["age_band"] for r in rows} <= {"0-6", "7-14", "15-44", "45-64", "65+"}
    assert all(r["township"] and r["village_clinic_id"] for r in rows)
    obs = (await run_store(county, library.load("observations"))).dicts()
    systolic = [r for r in obs if r["code"] == "8480-6"]
    assert systolic and all(r["unit"] == "mmHg" and r["part"] >= 0 for r in systolic)


@pytest.mark.spark
@pytest.mark.slow
async def test_starter_views_same_rows_on_spark(county: Database) -> None:
    pytest.importorskip("pyspark", reason="Spark needs the optional extra: uv sync --extra spark")
    from smartmed.analytics import spark

    conn = sources.new_duckdb()
    types = {library.load(n)["resource"] for n in library.names()}
    await sources.snapshot_store(county, types, conn)
    resources = [
        __import__("orjson").loads(c) for (c,) in conn.execute("SELECT content FROM fhir_resource")
    ]
    session = spark.local_session()
    spark.load_resources(session, resources)
    for name in library.names():
        view = library.load(name)
        compiled = prepare(view, "spark", spark.spark_source)
        names = [c.name for c in compiled.columns]
        got = [dict(zip(names, r, strict=True)) for r in spark.run_spark(session, compiled)]
        want = (await run_store(county, view, "postgresql")).dicts()
        assert canonical(got) == canonical(want), name


@pytest.mark.slow
async def test_parity_at_county_scale() -> None:
    residents = int(os.environ.get("SMARTMED_PARITY_RESIDENTS", "20000"))
    async for db in _county(residents):
        for name in library.names():
            await _parity(db, name)
