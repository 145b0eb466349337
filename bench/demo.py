"""Demo county load throughput: resources/s on SQLite and PostgreSQL, baseline vs variants.

Run: ``.venv/bin/python bench/demo.py [--residents N] [--db sqlite|postgres|both]
[--profile]``. Every variant loads the same county (``--seed``) into a new scratch
database (a SQLite file in a temporary folder; a new PostgreSQL database on
``SMARTMED_BENCH_POSTGRES_URL``, default ``postgresql://postgres@127.0.0.1:5432/postgres``,
dropped afterwards) through ``smartmed.demo.load.load_county`` — the engine's transaction
path with full validation, indexing, history and outbox — and prints resources/s next to
the baseline measured in the same run:

* ``baseline``: one household per transaction, conditional references resolved by the
  engine (a search per reference and transaction), one transaction at a time — the
  loader as it was first written;
* ``literal refs``: the organisation Bundle's ids substituted before sending;
* ``N households/tx``: several households per transaction;
* ``… K in flight`` (PostgreSQL): K transactions at once on separate connections;
* ``… x P processes`` (PostgreSQL): P loader processes, each with its own engine;
* ``bulk …``: the bulk path (``fhir/storage/pipeline.py``, the default of ``smartmed
  demo``): W worker processes prepare (validation, sealing, index extraction), this
  process writes with COPY (PostgreSQL) or prepared executemany (SQLite), K bulk
  transactions in flight, H households per transaction.

``main CPU µs/res`` is the CPU time of the loading process per resource, ``workers`` that
of its worker processes (bulk) or loader processes (``x P processes``): unlike the
wall-clock rate they hardly move when other programs share the machine.

It also prints the CPU ceiling of one core: the engine's per-resource work that no
loader choice avoids (validation + search-index extraction + serialisation, on the
resources as the loader stamps them, and ``bulk.prepare`` whole, which adds the sealing
of identifiers and the index rows), in µs per resource and the resources/s it allows.
``--profile`` runs the chosen variant once more under pyinstrument and prints where the
time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
import orjson

from smartmed.config import Settings
from smartmed.demo.generator import generate_county
from smartmed.demo.load import LoadReport, load_county
from smartmed.fhir import jsonio
from smartmed.fhir.context import FhirEngine
from smartmed.fhir.storage import bulk
from smartmed.fhir.storage.migrate import migrate

PG_ADMIN = os.environ.get(
    "SMARTMED_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@dataclass(frozen=True)
class Variant:
    name: str
    per_transaction: int
    resolve: bool
    concurrency: int | None
    postgres_only: bool = False
    processes: int = 1
    bulk: bool = False
    workers: int | None = None


VARIANTS = (
    Variant("baseline (1 household/tx, engine-resolved refs)", 1, False, 1),
    Variant("literal refs, 1 household/tx", 1, True, 1),
    Variant("literal refs, 10 households/tx", 10, True, 1),
    Variant("literal refs, 25 households/tx", 25, True, 1),
    Variant("literal refs, 50 households/tx", 50, True, 1),
    Variant("10 households/tx, 2 in flight", 10, True, 2, True),
    Variant("10 households/tx, 3 in flight", 10, True, 3, True),
    Variant("10 households/tx, 4 in flight", 10, True, 4, True),
    Variant("10 households/tx, 2 in flight x 2 processes", 10, True, 2, True, 2),
    Variant("10 households/tx, 3 in flight x 2 processes", 10, True, 3, True, 2),
    Variant("10 households/tx, 2 in flight x 3 processes", 10, True, 2, True, 3),
    # 12-: the bulk path
    Variant("bulk: 2 workers, 50 households/tx (default)", 50, True, None, bulk=True, workers=2),
    Variant("bulk: in-process (0 workers)", 50, True, None, bulk=True, workers=0),
    Variant("bulk: 1 worker", 50, True, None, bulk=True, workers=1),
    Variant("bulk: 3 workers", 50, True, None, bulk=True, workers=3),
    Variant("bulk: 2 workers, 10 households/tx", 10, True, None, bulk=True, workers=2),
    Variant("bulk: 2 workers, 25 households/tx", 25, True, None, bulk=True, workers=2),
    Variant("bulk: 2 workers, 100 households/tx", 100, True, None, bulk=True, workers=2),
    Variant("bulk: 2 workers, 1 writer", 50, True, 1, True, bulk=True, workers=2),
    Variant("bulk: 2 workers, 3 writers", 50, True, 3, True, bulk=True, workers=2),
)


@asynccontextmanager
async def scratch_database(kind: str) -> AsyncIterator[str]:
    """A new empty database URL, removed afterwards."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            yield f"sqlite+aiosqlite:///{folder}/bench.db"
        return
    name = f"smartmed_bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        conn = await asyncpg.connect(PG_ADMIN)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


async def run_variant(
    kind: str, variant: Variant, residents: int, seed: int
) -> tuple[LoadReport, float]:
    """Load the county with one variant into a new database; the report and the CPU
    seconds of worker processes (bulk workers; loader processes)."""
    async with scratch_database(kind) as url:
        engine = FhirEngine.build(Settings(database_url=url))
        try:
            await migrate(engine.db)
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            report = await load_county(
                engine,
                residents=residents,
                seed=seed,
                households_per_transaction=variant.per_transaction,
                concurrency=variant.concurrency,
                processes=variant.processes,
                resolve=variant.resolve,
                show_progress=False,
                bulk=variant.bulk,
                workers=variant.workers,
            )
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            children = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
            if variant.processes > 1:  # their CPU is already in the report
                children = 0.0
            return report, children
        finally:
            await engine.db.dispose()


async def cpu_ceiling(residents: int, seed: int) -> tuple[float, float, float, float, float, int]:
    """CPU µs per resource, as the loader prepares them (references resolved, id and meta
    stamped): validation, index extraction, serialisation, and ``bulk.prepare`` whole
    (those three plus sealing of identifiers and the index rows as tuples), in process
    and as a worker runs it (from JSON, with the conversions shared across resources)."""
    with tempfile.TemporaryDirectory() as folder:
        engine = FhirEngine.build(Settings(database_url=f"sqlite+aiosqlite:///{folder}/c.db"))
        try:
            await migrate(engine.db)
            async with engine.db.read():
                pass  # the keys, for sealing
            services = engine.services
            county = generate_county(residents=residents, seed=seed)
            organisations = next(county)
            known = {  # stand-ins for the organisation Bundle's stored ids
                f"{e['resource']['resourceType']}?identifier={i['system']}|{i['value']}": (
                    f"{e['resource']['resourceType']}/{n}"
                )
                for n, e in enumerate(organisations["entry"])
                for i in e["resource"].get("identifier", [])
            }
            items = []
            for bundle in county:
                plan = bulk.plan_transaction(bundle, engine.resource_types, known)
                assert plan is not None
                items += [(c.type_, c.id_, c.body) for c in plan.creates]
            now = bulk.stamp_time()
            bulk.prepare(services, items[:200], now)  # warm caches (UCUM, compiled paths)
            started = time.process_time()
            prepared = bulk.prepare(services, items, now)
            whole = time.process_time() - started
            # As a worker does it: the creates decoded from JSON, conversions shared.
            started = time.process_time()
            for first in range(0, len(items), 470):
                decoded = orjson.loads(orjson.dumps(items[first : first + 470]))
                bulk.prepare(services, [(t, i, b) for t, i, b in decoded], now, plain=True)
            worker = time.process_time() - started
            stamped = [orjson.loads(content) for _, _, content, _ in prepared.resources]
            # CPU time of this process: the figure hardly moves when the machine is shared.
            started = time.process_time()
            for r in stamped:
                services.validator.validate(r, resource_type=r["resourceType"])
            validated = time.process_time()
            for r in stamped:
                services.extractor.extract(r)
            extracted = time.process_time()
            for r in stamped:
                jsonio.dumps(r)
            dumped = time.process_time()
        finally:
            await engine.db.dispose()
    n = len(items)
    return (
        (validated - started) / n * 1e6,
        (extracted - validated) / n * 1e6,
        (dumped - extracted) / n * 1e6,
        whole / n * 1e6,
        worker / n * 1e6,
        n,
    )


def generation_rate(residents: int, seed: int) -> float:
    """Resources per second generated (no I/O)."""
    started = time.perf_counter()
    n = sum(len(b["entry"]) for b in generate_county(residents=residents, seed=seed))
    return n / (time.perf_counter() - started)


async def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--residents", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument(
        "--only", default="", help="comma-separated variant numbers (1-based) to run"
    )
    parser.add_argument("--profile", action="store_true", help="profile the last variant run")
    args = parser.parse_args()
    kinds = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    chosen = [int(x) for x in args.only.split(",") if x] or list(range(1, len(VARIANTS) + 1))

    rate = generation_rate(args.residents, args.seed)
    print(f"generation alone: {rate:,.0f} resources/s", flush=True)
    ceiling = await cpu_ceiling(min(args.residents, 1000), args.seed)
    valid, extract, dump, whole, worker, n = ceiling
    per = valid + extract + dump
    print(
        f"engine CPU per resource ({n:,} generated resources, stamped and resolved): "
        f"validate {valid:.0f} µs + extract index {extract:.0f} µs + serialise {dump:.0f} µs "
        f"= {per:.0f} µs; bulk.prepare whole (with sealing and index rows) {whole:.0f} µs, "
        f"as a worker runs it (from JSON, shared conversions) {worker:.0f} µs "
        f"-> at most {1e6 / worker:,.0f} resources/s per core before any SQL",
        flush=True,
    )
    last: tuple[str, Variant] | None = None
    for kind in kinds:
        print(f"\n{kind}: {args.residents:,} residents, seed {args.seed}")
        print(
            f"  {'variant':<50} {'resources':>9} {'seconds':>8} {'res/s':>7} {'x base':>7} "
            f"{'main CPU µs/res':>15} {'workers':>8}"
        )
        base_rate: float | None = None
        for number in chosen:
            variant = VARIANTS[number - 1]
            if variant.postgres_only and kind != "postgres":
                continue
            report, children = await run_variant(kind, variant, args.residents, args.seed)
            base_rate = base_rate or report.rate
            print(
                f"  {number:>2}. {variant.name:<46} {report.total:>9,} {report.seconds:>8.1f} "
                f"{report.rate:>7,.0f} {report.rate / base_rate:>6.2f}x "
                f"{report.cpu_seconds / report.total * 1e6:>15,.0f} "
                f"{max(children, 0.0) / report.total * 1e6:>8,.0f}",
                flush=True,
            )
            last = (kind, variant)
    if args.profile and last is not None:
        from pyinstrument import Profiler

        kind, variant = last
        profiler = Profiler(async_mode="enabled")
        with profiler:
            await run_variant(kind, variant, args.residents, args.seed)
        print(profiler.output_text(unicode=True, color=False, show_all=False))


if __name__ == "__main__":
    asyncio.run(main())
