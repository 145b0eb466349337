"""Benchmark compiled ViewDefinitions on DuckDB beside the same views hand-written in SQL.

Run: ``.venv/bin/python bench/views.py [--resources 100000] [--threads 2] [--repeat 5]``.
Generates a demo county of about ``--resources`` resources (references resolved to
``Type/id`` as the store keeps them), loads it into a scratch DuckDB table
``(type, content JSON)``, then materialises (``CREATE TEMP TABLE … AS``) the starter
``patient_demographics`` view and the ``observations`` view (a ``forEach`` over
components in a ``unionAll``), each next to two hand-written DuckDB queries in the same
run: the plain one (``->``/``->>`` per column, as most people write it) and a tuned one
(the JSON parsed once per row, what a DuckDB expert writes). Both must give exactly the
compiled view's rows (checked with ``EXCEPT ALL`` both ways, or the bench stops). Prints
rows/s, resources/s and the compiled/hand ratios; the faster hand query is the limit.
"""

from __future__ import annotations

import argparse
import re
import time
from typing import Any

import duckdb
import orjson

from smartmed.analytics import library, sources
from smartmed.analytics.run import prepare
from smartmed.demo.generator import generate_county

_REF = r"'([A-Z][A-Za-z]+)/([A-Za-z0-9\-\.]{1,64})(/_history/[^/]+)?$'"


def _key(ref: str, type_: str) -> str:
    """getReferenceKey(type_) by hand."""
    return (
        f"CASE WHEN regexp_extract({ref}, {_REF}, 1) = '{type_}' "
        f"THEN NULLIF(regexp_extract({ref}, {_REF}, 2), '') END"
    )


def _age_band(birth: str) -> str:
    def cut(years: int) -> str:
        return f"CAST(CAST(current_date - INTERVAL ({years}) YEAR AS DATE) AS VARCHAR)"

    return f"""CASE WHEN {birth} IS NULL THEN NULL
       WHEN {birth} > {cut(7)} THEN '0-6' WHEN {birth} > {cut(15)} THEN '7-14'
       WHEN {birth} > {cut(45)} THEN '15-44' WHEN {birth} > {cut(65)} THEN '45-64'
       ELSE '65+' END"""


_HOME = "list_filter(json_extract(content, '$.address[*]'), lambda a: a->>'use' = 'home')"

HAND_PATIENT = f"""
SELECT content->>'id' AS id, content->>'gender' AS gender, content->>'birthDate' AS birth_date,
  {_age_band("(content->>'birthDate')")} AS age_band,
  CAST(content->>'deceasedBoolean' AS BOOLEAN) AS deceased,
  content->'maritalStatus'->'coding'->0->>'code' AS marital_status,
  home[1]->>'district' AS district,
  home[1]->'line'->>0 AS township,
  home[1]->'line'->>1 AS village,
  {_key("(content->'managingOrganization'->>'reference')", "Organization")} AS village_clinic_id,
  content->'managingOrganization'->>'display' AS village_clinic,
  {_key("(content->'generalPractitioner'->0->>'reference')", "Practitioner")}
    AS general_practitioner_id,
  CAST(content->>'active' AS BOOLEAN) AS active
FROM (SELECT content, {_HOME} AS home FROM fhir_resource WHERE type = 'Patient')
"""

_PATIENT_PATHS = [
    "id",
    "gender",
    "birthDate",
    "deceasedBoolean",
    "maritalStatus.coding[0].code",
    "managingOrganization.reference",
    "managingOrganization.display",
    "generalPractitioner[0].reference",
    "active",
]
_P = {p: i + 1 for i, p in enumerate(_PATIENT_PATHS)}

TUNED_PATIENT = f"""
SELECT f[{_P["id"]}] AS id, f[{_P["gender"]}] AS gender, f[{_P["birthDate"]}] AS birth_date,
  {_age_band(f"f[{_P['birthDate']}]")} AS age_band,
  CAST(f[{_P["deceasedBoolean"]}] AS BOOLEAN) AS deceased,
  f[{_P["maritalStatus.coding[0].code"]}] AS marital_status,
  home->>'district' AS district, home->'line'->>0 AS township, home->'line'->>1 AS village,
  {_key(f"f[{_P['managingOrganization.reference']}]", "Organization")} AS village_clinic_id,
  f[{_P["managingOrganization.display"]}] AS village_clinic,
  {_key(f"f[{_P['generalPractitioner[0].reference']}]", "Practitioner")}
    AS general_practitioner_id,
  CAST(f[{_P["active"]}] AS BOOLEAN) AS active
FROM (SELECT json_extract_string(content, [{", ".join(f"'$.{p}'" for p in _PATIENT_PATHS)}]) AS f,
        {_HOME}[1] AS home
      FROM fhir_resource WHERE type = 'Patient')
"""

_VALUE = (
    "COALESCE(content->'valueQuantity', content->'valueCodeableConcept', content->'valueString',"
    " content->'valueBoolean', content->'valueInteger', content->'valueRange',"
    " content->'valueRatio', content->'valueSampledData', content->'valueTime',"
    " content->'valueDateTime', content->'valuePeriod')"
)


def _values(x: str) -> str:
    return f"""{x}->'code'->'coding'->0->>'code' AS code,
    {x}->'code'->'coding'->0->>'display' AS display,
    CAST({x}->'valueQuantity'->>'value' AS DOUBLE) AS value,
    {x}->'valueQuantity'->>'unit' AS unit, {x}->'valueQuantity'->>'code' AS ucum"""


HAND_OBSERVATIONS = f"""
WITH o AS (
  SELECT content, content->>'id' AS id,
    {_key("(content->'subject'->>'reference')", "Patient")} AS patient_id,
    {_key("(content->'encounter'->>'reference')", "Encounter")} AS encounter_id,
    content->>'status' AS status,
    json_extract_string(content, '$.category[*].coding[*].code')[1] AS category,
    content->>'effectiveDateTime' AS effective
  FROM fhir_resource WHERE type = 'Observation')
SELECT id, patient_id, encounter_id, status, category, effective, -1 AS part,
  {_values("content")}
FROM o WHERE {_VALUE} IS NOT NULL
UNION ALL
SELECT o.id, patient_id, encounter_id, status, category, effective, CAST(c.key AS INTEGER),
  {_values("c.value")}
FROM o, json_each(content->'component') AS c
"""

_OBS_KEYS = ["id", "subject", "encounter", "status", "category", "effectiveDateTime", "code"]
_OBS_KEYS += ["component", "valueQuantity", "valueCodeableConcept", "valueString"]
_OBS_KEYS += ["valueBoolean", "valueInteger", "valueRange", "valueRatio", "valueSampledData"]
_OBS_KEYS += ["valueTime", "valueDateTime", "valuePeriod"]
_O = {k: f"e[{i + 1}]" for i, k in enumerate(_OBS_KEYS)}


def _tuned_values(code: str, quantity: str) -> str:
    return f"""{code}->'coding'->0->>'code' AS code, {code}->'coding'->0->>'display' AS display,
    CAST({quantity}->>'value' AS DOUBLE) AS value, {quantity}->>'unit' AS unit,
    {quantity}->>'code' AS ucum"""


TUNED_OBSERVATIONS = f"""
WITH o AS MATERIALIZED (
  SELECT {_O["id"]}->>'$' AS id,
    {_key(f"({_O['subject']}->>'reference')", "Patient")} AS patient_id,
    {_key(f"({_O['encounter']}->>'reference')", "Encounter")} AS encounter_id,
    {_O["status"]}->>'$' AS status,
    json_extract_string({_O["category"]}, '$[*].coding[*].code')[1] AS category,
    {_O["effectiveDateTime"]}->>'$' AS effective, {_O["code"]} AS code,
    {_O["component"]} AS component, {_O["valueQuantity"]} AS quantity,
    COALESCE({", ".join(_O[k] for k in _OBS_KEYS[8:])}) IS NOT NULL AS has_value
  FROM (SELECT json_extract(content, [{", ".join(f"'$.{k}'" for k in _OBS_KEYS)}]) AS e
        FROM fhir_resource WHERE type = 'Observation'))
SELECT id, patient_id, encounter_id, status, category, effective, -1 AS part,
  {_tuned_values("code", "quantity")}
FROM o WHERE has_value
UNION ALL
SELECT id, patient_id, encounter_id, status, category, effective, CAST(u.i - 1 AS INTEGER),
  {_tuned_values("u.c->'code'", "u.c->'valueQuantity'")}
FROM o, unnest(json_extract(component, '$[*]')) WITH ORDINALITY AS u(c, i)
"""

WHAT = {"compiled": "compiled view", "hand": "hand SQL", "tuned": "tuned hand SQL"}
_REFERENCE = re.compile(r'"reference":"([^"]+)"')


def _county(resources: int) -> list[bytes]:
    """About ``resources`` demo resources as JSON, references resolved to Type/id."""
    found: list[dict[str, Any]] = []
    residents = max(50, resources // 6)
    for bundle in generate_county(residents=residents, seed=1):
        for entry in bundle["entry"]:
            resource = entry["resource"]
            resource.setdefault("id", entry["fullUrl"].rsplit(":", 1)[-1])
            found.append(resource)
        if len(found) >= resources:
            break
    found = found[:resources]
    target: dict[str, str] = {}
    for r in found:
        key = f"{r['resourceType']}/{r['id']}"
        target[f"urn:uuid:{r['id']}"] = key
        for ident in r.get("identifier", []):
            query = f"identifier={ident.get('system')}|{ident.get('value')}"
            target[f"{r['resourceType']}?{query}"] = key

    def resolve(m: re.Match[str]) -> str:
        return f'"reference":"{target.get(m.group(1), m.group(1))}"'

    return [_REFERENCE.sub(resolve, orjson.dumps(r).decode()).encode() for r in found]


def _time(conn: duckdb.DuckDBPyConnection, queries: dict[str, str], repeat: int) -> dict[str, Any]:
    """Best wall and CPU seconds of materialising each query, taken in turns (a busy
    machine slows all of them alike); CPU time is of every DuckDB thread of this process."""
    wall = dict.fromkeys(queries, float("inf"))
    cpu = dict.fromkeys(queries, float("inf"))
    for _ in range(repeat):
        for table, sql in queries.items():
            started, cpu_started = time.perf_counter(), time.process_time()
            conn.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS {sql}")
            wall[table] = min(wall[table], time.perf_counter() - started)
            cpu[table] = min(cpu[table], time.process_time() - cpu_started)
    return {"wall": wall, "cpu": cpu}


def _count(conn: duckdb.DuckDBPyConnection, sql: str) -> int:
    row = conn.execute(sql).fetchone()
    return int(row[0]) if row else 0


def _same_rows(conn: duckdb.DuckDBPyConnection, a: str, b: str) -> None:
    diff = _count(conn, f"SELECT count(*) FROM (FROM {a} EXCEPT ALL FROM {b})")
    diff += _count(conn, f"SELECT count(*) FROM (FROM {b} EXCEPT ALL FROM {a})")
    if diff:
        raise SystemExit(f"{b} differs from {a} in {diff} rows: the comparison would be unfair")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--resources", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    started = time.perf_counter()
    lines = _county(args.resources)
    conn = sources.new_duckdb(threads=args.threads)
    sources.load_lines(conn, lines)
    counts = dict(conn.execute("SELECT type, count(*) FROM fhir_resource GROUP BY 1").fetchall())
    print(f"{len(lines)} resources loaded in {time.perf_counter() - started:.1f} s: {counts}")
    print(f"DuckDB {duckdb.__version__}, threads={args.threads}, best of {args.repeat}")
    cases = [
        ("patient_demographics", "Patient", HAND_PATIENT, TUNED_PATIENT),
        ("observations", "Observation", HAND_OBSERVATIONS, TUNED_OBSERVATIONS),
    ]
    for name, type_, hand, tuned in cases:
        compiled = prepare(library.load(name), "duckdb").sql
        queries = {"compiled": compiled, "hand": hand, "tuned": tuned}
        times = _time(conn, queries, args.repeat)
        _same_rows(conn, "compiled", "hand")
        _same_rows(conn, "compiled", "tuned")
        rows = _count(conn, "SELECT count(*) FROM compiled")
        n = counts.get(type_, 0)
        label = name if type_ == "Patient" else f"{name} (forEach)"
        print(f"{label}: {rows} rows from {n} {type_} resources (identical in all three)")
        wall, cpu = times["wall"], times["cpu"]
        for table, what in WHAT.items():
            t = wall[table]
            print(
                f"  {what:15} {t * 1000:8.1f} ms {rows / t:>11,.0f} rows/s "
                f"{n / t:>11,.0f} res/s   CPU {cpu[table] * 1000:8.1f} ms"
            )
        for clock, got in (("wall", wall), ("CPU", cpu)):
            limit = min(got["hand"], got["tuned"])
            print(
                f"  {clock:4} ratio compiled/hand {got['compiled'] / got['hand']:.2f}x, "
                f"compiled/tuned {got['compiled'] / got['tuned']:.2f}x, "
                f"compiled/fastest hand {got['compiled'] / limit:.2f}x (target <= 1.5x)"
            )


if __name__ == "__main__":
    main()
