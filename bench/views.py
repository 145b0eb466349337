"""Benchmark compiled ViewDefinitions on DuckDB beside the same views hand-written in SQL.

Run: ``.venv/bin/python bench/views.py [--resources 100000] [--threads 2] [--repeat 3]``.
Generates a demo county of about ``--resources`` resources, loads it into an in-memory
DuckDB table ``(type, content JSON)``, then materialises (``CREATE TEMP TABLE … AS``)
the starter ``patient_demographics`` view and the ``observations`` view (a ``forEach``
over components in a ``unionAll``), each next to hand-written DuckDB SQL returning the
same rows, in the same run. Prints rows/s, resources/s and the compiled/hand ratio.
"""

from __future__ import annotations

import argparse
import time

import orjson

from smartmed.analytics import library, sources
from smartmed.analytics.run import prepare
from smartmed.demo.generator import generate_county

_REF = r"'([A-Z][A-Za-z]+)/([A-Za-z0-9\-\.]{1,64})(/_history/[^/]+)?$'"
_ID = f"NULLIF(regexp_extract(content->'subject'->>'reference', {_REF}, 2), '')"


def _age(years: int) -> str:
    return f"CAST(CAST(current_date - INTERVAL ({years}) YEAR AS DATE) AS VARCHAR)"


HAND_PATIENT = f"""
SELECT content->>'id' AS id, content->>'gender' AS gender, content->>'birthDate' AS birth_date,
  CASE WHEN (content->>'birthDate') IS NULL THEN NULL
       WHEN (content->>'birthDate') > {_age(7)} THEN '0-6'
       WHEN (content->>'birthDate') > {_age(15)} THEN '7-14'
       WHEN (content->>'birthDate') > {_age(45)} THEN '15-44'
       WHEN (content->>'birthDate') > {_age(65)} THEN '45-64' ELSE '65+' END AS age_band,
  CAST(content->>'deceasedBoolean' AS BOOLEAN) AS deceased,
  content->'maritalStatus'->'coding'->0->>'code' AS marital_status,
  content->'address'->0->>'district' AS district,
  content->'address'->0->'line'->>0 AS township,
  content->'address'->0->'line'->>1 AS village,
  NULLIF(regexp_extract(content->'managingOrganization'->>'reference', {_REF}, 2), '')
    AS village_clinic_id,
  content->'managingOrganization'->>'display' AS village_clinic,
  NULLIF(regexp_extract(content->'generalPractitioner'->0->>'reference', {_REF}, 2), '')
    AS general_practitioner_id,
  CAST(content->>'active' AS BOOLEAN) AS active
FROM fhir_resource WHERE type = 'Patient'
"""

HAND_OBSERVATIONS = f"""
WITH o AS (SELECT content FROM fhir_resource WHERE type = 'Observation'),
own AS (
  SELECT content->>'id' AS id, {_ID} AS patient_id, -1 AS part,
    content->'code'->'coding'->0->>'code' AS code,
    CAST(content->'valueQuantity'->>'value' AS DOUBLE) AS value,
    content->'valueQuantity'->>'unit' AS unit
  FROM o WHERE (content->'valueQuantity') IS NOT NULL),
comp AS (
  SELECT content->>'id' AS id, {_ID} AS patient_id, CAST(c.key AS INTEGER) AS part,
    c.value->'code'->'coding'->0->>'code' AS code,
    CAST(c.value->'valueQuantity'->>'value' AS DOUBLE) AS value,
    c.value->'valueQuantity'->>'unit' AS unit
  FROM o, json_each(content->'component') AS c)
SELECT * FROM own UNION ALL SELECT * FROM comp
"""


def _county(resources: int) -> list[bytes]:
    lines: list[bytes] = []
    residents = max(50, resources // 6)
    for bundle in generate_county(residents=residents, seed=1):
        for entry in bundle["entry"]:
            resource = entry["resource"]
            resource.setdefault("id", entry["fullUrl"].rsplit(":", 1)[-1])
            lines.append(orjson.dumps(resource))
            if len(lines) >= resources:
                return lines
    return lines


def _time(conn: object, sql: str, repeat: int) -> tuple[float, int]:
    best = float("inf")
    rows = 0
    for _ in range(repeat):
        started = time.perf_counter()
        conn.execute(f"CREATE OR REPLACE TEMP TABLE bench_out AS {sql}")  # type: ignore[attr-defined]
        best = min(best, time.perf_counter() - started)
        rows = conn.execute("SELECT count(*) FROM bench_out").fetchone()[0]  # type: ignore[attr-defined]
    return best, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resources", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    started = time.perf_counter()
    lines = _county(args.resources)
    conn = sources.new_duckdb(threads=args.threads)
    sources.load_lines(conn, lines)
    counts = dict(conn.execute("SELECT type, count(*) FROM fhir_resource GROUP BY 1").fetchall())
    print(f"{len(lines)} resources loaded in {time.perf_counter() - started:.1f} s: {counts}")
    print(f"DuckDB threads={args.threads}, best of {args.repeat}")
    cases = [
        ("patient_demographics", "Patient", HAND_PATIENT),
        ("observations (forEach)", "Observation", HAND_OBSERVATIONS),
    ]
    for label, type_, hand in cases:
        view = library.load(label.split(" ")[0])
        compiled = prepare(view, "duckdb").sql
        t_view, rows = _time(conn, compiled, args.repeat)
        t_hand, hand_rows = _time(conn, hand, args.repeat)
        n = counts.get(type_, 0)
        print(
            f"{label:24} compiled: {rows:>7} rows {t_view * 1000:8.1f} ms "
            f"{rows / t_view:>11,.0f} rows/s {n / t_view:>11,.0f} resources/s\n"
            f"{'':24} hand SQL: {hand_rows:>7} rows {t_hand * 1000:8.1f} ms "
            f"{hand_rows / t_hand:>11,.0f} rows/s   ratio compiled/hand {t_view / t_hand:.2f}x"
        )


if __name__ == "__main__":
    main()
