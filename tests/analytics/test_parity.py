"""Cross-dialect parity: the starter views over a demo county give the same rows on
PostgreSQL (in the store), DuckDB (on a snapshot of it) and Spark (local mode).

A 300-resident county checks PostgreSQL against DuckDB through ``run_store`` on every
run. The county-scale county (``SMARTMED_PARITY_RESIDENTS``, default 20 000, ``-m slow``)
is loaded once per run through the demo's bulk path and shared: every starter view on
PostgreSQL, then the same views on one DuckDB snapshot of the store and (``-m spark``)
on Spark reading that snapshot as Bulk Data NDJSON, row for row.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pytest

from smartmed.analytics import library, sources
from smartmed.analytics.run import prepare, run_duckdb, run_store
from smartmed.config import Settings
from smartmed.demo.load import load_demo
from smartmed.fhir.storage.database import Database
from tests.analytics.suite import canonical
from tests.conftest import EXAMPLES, create_pg_database, drop_pg_database, need

pytestmark = pytest.mark.postgres
# Views that must not come out empty on a demo county.
FILLED = ("patient_demographics", "conditions", "encounters", "observations", "contracts")


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
    if name in FILLED:
        assert rows > 0


async def test_demographics_content(county: Database) -> None:
    rows = (await run_store(county, library.load("patient_demographics"))).dicts()
    assert {r["gender"] for r in rows} <= {"male", "female", "other", "unknown"}
    assert {r["age_band"] for r in rows} <= {"0-6", "7-14", "15-44", "45-64", "65+"}
    assert all(r["township"] and r["village_clinic_id"] for r in rows)
    obs = (await run_store(county, library.load("observations"))).dicts()
    systolic = [r for r in obs if r["code"] == "8480-6"]
    assert systolic and all(r["unit"] == "mmHg" and r["part"] >= 0 for r in systolic)


@dataclass
class Scale:
    """The county-scale store, one DuckDB snapshot of it and each view's PostgreSQL rows."""

    db: Database
    snapshot: duckdb.DuckDBPyConnection
    ndjson: Path
    _pg: dict[str, list[str]] = field(default_factory=dict)

    async def postgresql(self, name: str) -> list[str]:
        """The view's rows on PostgreSQL (canonical), computed once."""
        if name not in self._pg:
            rows = (await run_store(self.db, library.load(name), "postgresql")).dicts()
            self._pg[name] = canonical(rows)
            if name in FILLED:
                assert rows, name
        return self._pg[name]


@pytest.fixture(scope="module")
async def scale(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Scale]:
    residents = int(os.environ.get("SMARTMED_PARITY_RESIDENTS", "20000"))
    async for db in _county(residents):
        conn = sources.new_duckdb()
        types = {library.load(n)["resource"] for n in library.names()}
        await sources.snapshot_store(db, types, conn)  # one read transaction
        ndjson = tmp_path_factory.mktemp("bulk") / "resources.ndjson"
        with ndjson.open("w") as out:  # the same snapshot for Spark, one resource a line
            cursor = conn.execute("SELECT content FROM fhir_resource")
            while batch := cursor.fetchmany(10_000):
                out.writelines(f"{content}\n" for (content,) in batch)
        yield Scale(db, conn, ndjson)
        conn.close()


@pytest.mark.slow
@pytest.mark.parametrize("name", library.names())
async def test_parity_at_county_scale(scale: Scale, name: str) -> None:
    got = run_duckdb(scale.snapshot, prepare(library.load(name), "duckdb")).dicts()
    assert canonical(got) == await scale.postgresql(name), name


@pytest.fixture(scope="module")
def spark_county(scale: Scale, spark_session: Any) -> Iterator[Any]:
    from smartmed.analytics import spark

    spark.load_ndjson(spark_session, [scale.ndjson])
    spark_session.sql(f"CACHE TABLE {spark.VIEW}")  # parsed once for all the views
    yield spark_session
    spark_session.sql(f"UNCACHE TABLE IF EXISTS {spark.VIEW}")


@pytest.mark.spark
@pytest.mark.slow
@pytest.mark.parametrize("name", library.names())
async def test_starter_views_same_rows_on_spark(scale: Scale, spark_county: Any, name: str) -> None:
    from smartmed.analytics import spark

    compiled = prepare(library.load(name), "spark", spark.spark_source)
    names = [c.name for c in compiled.columns]
    got = [dict(zip(names, r, strict=True)) for r in spark.run_spark(spark_county, compiled)]
    assert canonical(got) == await scale.postgresql(name), name
