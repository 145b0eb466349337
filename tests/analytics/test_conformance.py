"""The official SQL-on-FHIR v2 suite on DuckDB and PostgreSQL (Spark under -m spark).

Every shareable case must pass on DuckDB and PostgreSQL; experimental cases run and are
reported, and may fail. Reports go to test-artifacts/sql-on-fhir-report-<dialect>.json.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from smartmed.analytics import sources
from smartmed.analytics.run import prepare, run_duckdb, run_postgres
from smartmed.fhir.errors import Invalid
from smartmed.fhir.storage.database import Database
from tests.analytics.suite import SUITE, Case, Report, cases, check
from tests.conftest import create_pg_database, drop_pg_database, need

CASES = cases()
IDS = [c.id for c in CASES]
REPORTS = {name: Report(name) for name in ("duckdb", "postgresql", "spark")}
PG_TABLE = "sof_resource"
# Spark refuses correlated recursive CTEs (repeat) and outer references two subquery
# levels down (first() of a nested path, a forEach over a nested path inside a unionAll
# branch, whose position needs a window): these cases are known gaps. unionAll itself
# is expanded into UNION ALL of flat queries on Spark (query.py).
SPARK_GAPS = {
    "fn_first/table and field level first()",
    "union/basic",
    "union/unionAll + column",
    "union/nested",
    "union/one empty operand",
    "row_index/%rowIndex with repeat",
    "repeat/basic",
    "repeat/item and answer.item",
    "repeat/empty expression",
    "repeat/empty child expression",
    "repeat/combined with forEach",
    "repeat/combined with forEachOrNull",
    "repeat/combined with unionAll",
}


def test_suite_is_present() -> None:
    need(SUITE.is_dir(), f"SQL-on-FHIR v2 suite not found at {SUITE}")
    assert len(CASES) >= 134


@pytest.fixture(scope="module", autouse=True)
def write_reports() -> Iterator[None]:
    yield
    for report in REPORTS.values():
        report.write()


def _outcome(case: Case, run: object) -> str | None:
    """Run one case with ``run(compiled) -> rows``; why it failed, or None."""
    try:
        compiled = run.prepare(case.view)  # type: ignore[attr-defined]
    except Invalid as exc:
        return None if case.test.get("expectError") else f"rejected: {exc}"
    try:
        rows = run.execute(compiled)  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001 - any engine error is a failed case
        if case.test.get("expectError"):
            return None
        return f"{type(exc).__name__}: {exc}"
    return check(case, [c.name for c in compiled.columns], rows)


def _record(dialect: str, case: Case, error: str | None) -> None:
    REPORTS[dialect].add(case, error)
    if error is None:
        return
    if not case.shareable:
        pytest.xfail(f"experimental case: {error[:200]}")
    if dialect == "spark" and case.id in SPARK_GAPS:
        pytest.xfail(f"known Spark gap: {error[:200]}")
    pytest.fail(error)


class _DuckRun:
    def __init__(self, case: Case) -> None:
        self.conn = sources.new_duckdb()
        sources.load_resources(self.conn, case.resources)

    def prepare(self, view: object) -> object:
        return prepare(view, "duckdb")

    def execute(self, compiled: object) -> list[dict[str, object]]:
        return run_duckdb(self.conn, compiled).dicts()  # type: ignore[arg-type]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_duckdb(case: Case) -> None:
    runner = _DuckRun(case)
    try:
        _record("duckdb", case, _outcome(case, runner))
    finally:
        runner.conn.close()


@pytest.fixture(scope="module")
async def pg_db() -> AsyncIterator[Database]:
    url = await create_pg_database()
    db = Database(url)
    async with db.write() as conn:
        await conn.exec_driver_sql(
            f"CREATE TABLE {PG_TABLE} (file TEXT, type TEXT, content JSONB, "
            "deleted BOOLEAN NOT NULL DEFAULT FALSE)"
        )
    raw = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        rows = []
        for name in sorted({c.file for c in CASES}):
            case = next(c for c in CASES if c.file == name)
            rows += [(name, r.get("resourceType"), r) for r in case.resources]
        await raw.set_type_codec("jsonb", encoder=_dumps, decoder=str, schema="pg_catalog")
        await raw.executemany(f"INSERT INTO {PG_TABLE} VALUES ($1, $2, $3)", rows)
    finally:
        await raw.close()
    yield db
    await db.dispose()
    await drop_pg_database(url)


def _dumps(value: object) -> str:
    import json

    return json.dumps(value)


@pytest.mark.postgres
@pytest.mark.parametrize("case", CASES, ids=IDS)
async def test_postgresql(case: Case, pg_db: Database) -> None:
    table = f"(SELECT * FROM {PG_TABLE} WHERE file = '{case.file}') AS s"
    error: str | None
    try:
        compiled = prepare(case.view, "postgresql", lambda t: sources.postgres_source(t, table))
    except Invalid as exc:
        error = None if case.test.get("expectError") else f"rejected: {exc}"
    else:
        try:
            rows = (await run_postgres(pg_db, compiled)).dicts()
        except Exception as exc:  # noqa: BLE001 - any engine error is a failed case
            error = None if case.test.get("expectError") else f"{type(exc).__name__}: {exc}"
        else:
            error = check(case, [c.name for c in compiled.columns], rows)
    _record("postgresql", case, error)


@pytest.mark.spark
@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_spark(case: Case, spark_session: object) -> None:
    from smartmed.analytics import spark

    spark.load_resources(spark_session, case.resources)  # type: ignore[arg-type]
    error: str | None
    try:
        compiled = prepare(case.view, "spark", spark.spark_source)
    except Invalid as exc:
        error = None if case.test.get("expectError") else f"rejected: {exc}"
    else:
        try:
            names = [c.name for c in compiled.columns]
            raw = spark.run_spark(spark_session, compiled)  # type: ignore[arg-type]
            rows = [dict(zip(names, r, strict=True)) for r in raw]
        except Exception as exc:  # noqa: BLE001 - any engine error is a failed case
            error = None if case.test.get("expectError") else f"{type(exc).__name__}: {exc}"
        else:
            error = check(case, names, rows)
    _record("spark", case, error)
