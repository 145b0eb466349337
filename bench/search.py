"""Search latency at scale on PostgreSQL, beside the same queries written by hand in SQL.

Run: ``.venv/bin/python bench/search.py [--patients 20000 --per-patient 25 --clients 4
--seconds 10]``. Issue 3's figure is 1 million resources: 500k Observations across 20k
Patients (``--per-patient 25`` gives 500k Observations; the Patients, Encounters and the
team around them make up the rest when the demo is loaded instead, see bench/demo.py). In
one run, on one scratch database, it

1. loads N Patients (Chinese names, gender, birth date) with K vital-sign and lab
   Observations each (LOINC codes, UCUM units, dates over five years) through the engine's
   bulk load path (validated, indexed, versioned, like ``smartmed import``), then ANALYZE;
2. starts the real server (``smartmed serve``, security off: issue 4's bench measures
   what security adds) and, for each kind of search, runs a closed loop of C clients for S
   seconds through the HTTP API, then the same query written by hand in SQL over the
   same tables through asyncpg (what a person would write with the engine's indexes);
3. checks that both return the same resources for a sample of the parameters, and prints
   requests/s, p50 and p99 latency for both and their ratio. A benchmark, not a test: it
   never fails on a figure.

Searches (each with parameters drawn at random from the loaded data):

- token       ``Observation?code=http://loinc.org|<code>&_count=20``
- string      ``Patient?name=<family name>&_count=20`` (starts-with, Chinese)
- date range  ``Observation?subject=Patient/<id>&date=ge<Y>-01-01&date=lt<Y+1>-01-01``
- reference   ``Observation?subject=Patient/<id>``
- chained     ``Observation?subject:Patient.name=<family>&code=…|8867-4&_count=20``
- _include    ``Observation?subject=Patient/<id>&code=…|8867-4&_include=Observation:subject``
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fhir_api as fa  # noqa: E402
from smartmed.config import Settings  # noqa: E402
from smartmed.fhir.context import FhirEngine  # noqa: E402
from smartmed.fhir.storage.migrate import migrate  # noqa: E402
from smartmed.fhir.storage.pipeline import load_transactions  # noqa: E402

FAMILIES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华建国志红玉兰"
LOINC = "http://loinc.org"
# (code, display, unit, low, high): vital signs and common labs with UCUM units.
KINDS = [
    ("8867-4", "Heart rate", "/min", 55, 110),
    ("8480-6", "Systolic blood pressure", "mm[Hg]", 100, 180),
    ("8462-4", "Diastolic blood pressure", "mm[Hg]", 60, 110),
    ("29463-7", "Body weight", "kg", 45, 95),
    ("8310-5", "Body temperature", "Cel", 36, 38),
    ("2339-0", "Glucose [Mass/volume] in Blood", "mg/dL", 70, 250),
    ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 4, 11),
]
YEARS = (2021, 2025)
SEARCHES = ("token", "string", "date range", "reference", "chained", "_include")


def patient(rng: random.Random) -> dict[str, Any]:
    family = rng.choice(FAMILIES)
    given = "".join(rng.choice(GIVEN) for _ in range(rng.choice((1, 2))))
    return {
        "resourceType": "Patient",
        "name": [{"use": "official", "family": family, "given": [given], "text": family + given}],
        "gender": rng.choice(("male", "female")),
        "birthDate": f"{rng.randint(1935, 2020)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
    }


def observation(rng: random.Random, subject: str) -> dict[str, Any]:
    code, display, unit, low, high = rng.choice(KINDS)
    year = rng.randint(*YEARS)
    when = (
        f"{year}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T"
        f"{rng.randint(7, 18):02d}:{rng.randint(0, 59):02d}:00+08:00"
    )
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs" if unit != "%" and unit != "mg/dL" else "laboratory",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": LOINC, "code": code, "display": display}]},
        "subject": {"reference": subject},
        "effectiveDateTime": when,
        "valueQuantity": {
            "value": round(rng.uniform(low, high), 1),
            "unit": unit,
            "system": "http://unitsofmeasure.org",
            "code": unit,
        },
    }


def bundle(seed: int, batch: int, per_patient: int) -> dict[str, Any]:
    rng = random.Random(seed)
    entries: list[dict[str, Any]] = []
    for _ in range(batch):
        ref = f"urn:uuid:{uuid.UUID(int=rng.getrandbits(128), version=4)}"
        entries.append(
            {
                "fullUrl": ref,
                "resource": patient(rng),
                "request": {"method": "POST", "url": "Patient"},
            }
        )
        for _ in range(per_patient):
            entries.append(
                {
                    "resource": observation(rng, ref),
                    "request": {"method": "POST", "url": "Observation"},
                }
            )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


async def load(url: str, args: argparse.Namespace) -> tuple[list[str], int, float]:
    engine = FhirEngine.build(Settings(database_url=url))  # type: ignore[arg-type]
    try:
        await migrate(engine.db)
        batches = list(range(0, args.patients, args.batch))
        patients: list[str] = []
        stored = 0
        started = time.perf_counter()
        async for outcome in load_transactions(
            engine,
            batches,
            lambda start: bundle(args.seed * 1_000_003 + start, args.batch, args.per_patient),
        ):
            if outcome.error is not None:
                raise RuntimeError(f"batch {outcome.item}: {outcome.error}")
            stored += len(outcome.entries)
            patients += [
                ref.split("/", 1)[1] for _, ref in outcome.entries if ref.startswith("Patient/")
            ]
            if len(patients) % (args.batch * 50) == 0:
                rate = stored / (time.perf_counter() - started)
                print(f"   … {stored:,} resources ({rate:,.0f}/s)", flush=True)
        return patients, stored, time.perf_counter() - started
    finally:
        await engine.db.dispose()


# -- the searches: (API path and query, hand-written SQL and its parameters) ----------------

HAND = {
    "token": (
        "SELECT r.id FROM resource r WHERE r.type = 'Observation' AND NOT r.deleted "
        "AND EXISTS (SELECT 1 FROM idx_token t WHERE t.res_pk = r.pk "
        "AND t.resource_type = 'Observation' AND t.param = 'code' "
        "AND t.system = 'http://loinc.org' AND t.code = $1) ORDER BY r.pk LIMIT 21"
    ),
    "string": (
        "SELECT r.id FROM resource r WHERE r.type = 'Patient' AND NOT r.deleted "
        "AND EXISTS (SELECT 1 FROM idx_string s WHERE s.res_pk = r.pk "
        "AND s.resource_type = 'Patient' AND s.param = 'name' AND s.norm LIKE $1) "
        "ORDER BY r.pk LIMIT 21"
    ),
    "date range": (
        "SELECT r.id FROM resource r WHERE r.type = 'Observation' AND NOT r.deleted "
        "AND EXISTS (SELECT 1 FROM idx_reference f WHERE f.res_pk = r.pk "
        "AND f.resource_type = 'Observation' AND f.param = 'subject' "
        "AND f.target_type = 'Patient' AND f.target_id = $1) "
        "AND EXISTS (SELECT 1 FROM idx_date d WHERE d.res_pk = r.pk "
        "AND d.resource_type = 'Observation' AND d.param = 'date' "
        "AND d.high >= $2 AND d.low < $3) ORDER BY r.pk LIMIT 21"
    ),
    "reference": (
        "SELECT r.id FROM resource r WHERE r.type = 'Observation' AND NOT r.deleted "
        "AND EXISTS (SELECT 1 FROM idx_reference f WHERE f.res_pk = r.pk "
        "AND f.resource_type = 'Observation' AND f.param = 'subject' "
        "AND f.target_type = 'Patient' AND f.target_id = $1) ORDER BY r.pk LIMIT 21"
    ),
    "chained": (
        "SELECT r.id FROM resource r WHERE r.type = 'Observation' AND NOT r.deleted "
        "AND EXISTS (SELECT 1 FROM idx_token t WHERE t.res_pk = r.pk "
        "AND t.resource_type = 'Observation' AND t.param = 'code' "
        "AND t.system = 'http://loinc.org' AND t.code = '8867-4') "
        "AND EXISTS (SELECT 1 FROM idx_reference f JOIN resource p "
        "ON p.type = 'Patient' AND p.id = f.target_id AND NOT p.deleted "
        "JOIN idx_string s ON s.res_pk = p.pk AND s.resource_type = 'Patient' "
        "AND s.param = 'name' AND s.norm LIKE $1 "
        "WHERE f.res_pk = r.pk AND f.resource_type = 'Observation' AND f.param = 'subject' "
        "AND f.target_type = 'Patient') ORDER BY r.pk LIMIT 21"
    ),
    "_include": (
        "WITH m AS (SELECT r.pk, r.id FROM resource r WHERE r.type = 'Observation' "
        "AND NOT r.deleted AND EXISTS (SELECT 1 FROM idx_reference f WHERE f.res_pk = r.pk "
        "AND f.resource_type = 'Observation' AND f.param = 'subject' "
        "AND f.target_type = 'Patient' AND f.target_id = $1) "
        "AND EXISTS (SELECT 1 FROM idx_token t WHERE t.res_pk = r.pk "
        "AND t.resource_type = 'Observation' AND t.param = 'code' "
        "AND t.system = 'http://loinc.org' AND t.code = '8867-4') ORDER BY r.pk LIMIT 21) "
        "SELECT 'Observation/' || m.id AS ref, r.content FROM m JOIN resource r ON r.pk = m.pk "
        "UNION ALL SELECT 'Patient/' || p.id, p.content FROM resource p "
        "WHERE p.type = 'Patient' AND p.id = $1 AND NOT p.deleted"
    ),
}


def cases(rng: random.Random, patients: list[str]) -> dict[str, list[tuple[str, tuple[Any, ...]]]]:
    """Per search: (API query, hand-SQL parameters) samples."""
    from datetime import datetime

    made: dict[str, list[tuple[str, tuple[Any, ...]]]] = {s: [] for s in SEARCHES}
    for _ in range(400):
        pid = rng.choice(patients)
        code = rng.choice(KINDS)[0]
        family = rng.choice(FAMILIES)
        year = rng.randint(*YEARS)
        made["token"].append((f"Observation?code={LOINC}|{code}&_count=20", (code,)))
        made["string"].append((f"Patient?name={quote(family)}&_count=20", (f"{family}%",)))
        made["date range"].append(
            (
                f"Observation?subject=Patient/{pid}&date=ge{year}-01-01&date=lt{year + 1}-01-01",
                (pid, datetime(year, 1, 1), datetime(year + 1, 1, 1)),
            )
        )
        made["reference"].append((f"Observation?subject=Patient/{pid}", (pid,)))
        made["chained"].append(
            (
                f"Observation?subject:Patient.name={quote(family)}&code={LOINC}|8867-4&_count=20",
                (f"{family}%",),
            )
        )
        made["_include"].append(
            (
                f"Observation?subject=Patient/{pid}&code={LOINC}|8867-4"
                "&_include=Observation:subject",
                (pid,),
            )
        )
    return made


def ids_of(bundle: dict[str, Any]) -> list[str]:
    return [
        f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle.get("entry", [])
    ]


async def same_rows(
    port: int, pool: asyncpg.Pool, search: str, samples: list[tuple[str, tuple[Any, ...]]]
) -> bool:
    """The API and the hand-written SQL find the same resources (first page)."""
    conn = await fa.HttpConnection.open("127.0.0.1", port)
    try:
        for query, params in samples[:20]:
            status, body = await conn.request(fa.http_request("GET", f"{fa.PREFIX}/{query}", port))
            if status != 200:
                print(f"   {search}: HTTP {status}: {body[:300]!r}")
                return False
            api = sorted(ids_of(orjson.loads(body)))
            rows = await pool.fetch(HAND[search], *params)
            if search == "_include":
                hand = sorted({r["ref"] for r in rows})
            else:
                kind = "Patient" if search == "string" else "Observation"
                hand = sorted(f"{kind}/{r['id']}" for r in rows[:20])
            if api != hand:
                print(f"   {search}: {query}: API {len(api)} vs hand {len(hand)} resources")
                return False
        return True
    finally:
        conn.close()


def hand_op(
    pool: asyncpg.Pool, sql: str, samples: list[tuple[str, tuple[Any, ...]]], seed: int
) -> Callable[[], Awaitable[bool]]:
    rng = random.Random(seed)

    async def op() -> bool:
        _, params = samples[rng.randrange(len(samples))]
        await pool.fetch(sql, *params)
        return True

    return op


async def main(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="smartmed-search-"))
    url, dsn = await fa.create_pg_database()
    try:
        print(
            f"loading {args.patients:,} Patients × {args.per_patient} Observations "
            "through the bulk load path …",
            flush=True,
        )
        patients, stored, seconds = await load(url, args)
        print(f"   loaded {stored:,} resources in {seconds:.0f} s ({stored / seconds:,.0f}/s)")
        admin = await asyncpg.connect(dsn)
        try:
            await admin.execute("ANALYZE")  # as autovacuum would, shortly after a load
        finally:
            await admin.close()
        made = cases(random.Random(args.seed), patients)
        pool = await asyncpg.create_pool(dsn, min_size=args.clients, max_size=args.clients)
        server = await fa.start_server(
            url,
            args.workers,
            workdir,
            ["SMARTMED_AUTH_REQUIRED=false", "SMARTMED_AUDIT_ENABLED=false"],
        )
        results: dict[str, tuple[fa.PhaseResult, fa.PhaseResult, bool]] = {}
        try:
            for search in SEARCHES:
                samples = made[search]
                agree = await same_rows(server.port, pool, search, samples)
                raw = [fa.http_request("GET", f"{fa.PREFIX}/{q}", server.port) for q, _ in samples]
                clients = fa.HttpClients(server.port, raw, pick="random", seed=args.seed)
                ops = [await clients.make(i) for i in range(args.clients)]
                observe = fa.Observe(server_pids=server.pids(), postgres=True)
                api = await fa.run_phase(f"API: {search}", ops, args.warmup, args.seconds, observe)
                clients.close()
                hand_ops = [
                    hand_op(pool, HAND[search], samples, args.seed + i) for i in range(args.clients)
                ]
                observe = fa.Observe(server_pids=[], postgres=True)
                hand = await fa.run_phase(
                    f"SQL: {search}", hand_ops, args.warmup, args.seconds, observe
                )
                results[search] = (api, hand, agree)
        finally:
            server.stop()
            await pool.close()
    finally:
        await fa.drop_pg_database(dsn)
    print()
    print(
        f"search on PostgreSQL — {stored:,} resources ({args.patients:,} Patients × "
        f"{args.per_patient} Observations), {args.clients} clients, {args.seconds:.0f} s per "
        f"phase, server workers {args.workers}"
    )
    header = ["search", "API req/s", "p50 ms", "p99 ms", "SQL req/s", "p50 ms", "p99 ms",
              "API/SQL p50", "same rows"]  # fmt: skip
    rows = []
    for search, (api, hand, agree) in results.items():
        rows.append(
            [
                search,
                fa.num(api.rps),
                fa.num(api.pct(0.5), 2),
                fa.num(api.pct(0.99), 2),
                fa.num(hand.rps),
                fa.num(hand.pct(0.5), 2),
                fa.num(hand.pct(0.99), 2),
                f"{api.pct(0.5) / hand.pct(0.5):.1f}×" if hand.latencies else "n/a",
                "yes" if agree else "NO",
            ]
        )
    for line in fa.render(header, rows):
        print(line)
    print(
        "API = HTTP request to smartmed serve (parse, plan, SQL, JSON Bundle); SQL = the same "
        "query written by hand over the same index tables through asyncpg (ids only)."
    )
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=20_000)
    parser.add_argument("--per-patient", type=int, default=25)
    parser.add_argument("--batch", type=int, default=20, help="Patients per transaction")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1, help="server processes")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=3)
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(parse_args())))
