"""Benchmark events end to end on PostgreSQL: outbox -> dispatcher -> workflow handler job.

Run: ``.venv/bin/python bench/events.py [--events N] [--rate R] [--seconds S]``
(figures in ``docs/events.md``). For 1 and then 2 ``smartmed worker`` processes it:

1. makes a scratch database on ``SMARTMED_BENCH_POSTGRES_URL`` (default the local
   server), migrates it, writes the throughput events (parked), starts the workers
   (``SMARTMED_JOB_MODULES=events``: this file registers the handler below) and waits
   until a first event comes through;
2. **throughput**: N Observations written beforehand and parked are released in one
   transaction (a burst of N committed events) once the workers are up; events
   processed per second from that commit to the last delivery;
3. **latency**: writes R Observations per second, one transaction each, for S seconds
   (open loop; R at most half the measured throughput) and reports
   commit -> delivery p50/p99: from the outbox row's time (taken in the writing
   transaction, just before commit) to the moment the handler records the event.

The handler records each event once in ``bench_delivery`` (its outbox key is the
primary key: a re-delivered event is not counted twice). A benchmark: it prints figures
and never fails on a slow one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from smartmed.jobs import Event, JobContext, on_event

ROOT = Path(__file__).resolve().parents[1]
ADMIN_URL = os.environ.get(
    "SMARTMED_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
DDL = (
    "CREATE TABLE IF NOT EXISTS bench_delivery ("
    " outbox_pk BIGINT PRIMARY KEY, created_at TIMESTAMP NOT NULL,"
    " delivered_at TIMESTAMP NOT NULL, pid INTEGER NOT NULL)"
)


@on_event("Observation", actions={"create"}, name="bench.observation")
async def record(ctx: JobContext, event: Event) -> None:
    """The measured handler: record the delivery (idempotently) in its own transaction."""
    from sqlalchemy import text

    now = datetime.now(UTC).replace(tzinfo=None)
    async with ctx.engine.db.write() as conn:
        await conn.execute(
            text(
                "INSERT INTO bench_delivery VALUES (:pk, :created, :now, :pid)"
                " ON CONFLICT (outbox_pk) DO NOTHING"
            ),
            {"pk": event.outbox_pk, "created": event.created_at, "now": now, "pid": os.getpid()},
        )


def observation(n: int) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
        "subject": {"reference": f"Patient/p{n % 500}"},
        "valueQuantity": {"value": 110 + n % 60, "unit": "mmHg"},
    }


async def delivered(engine: Any) -> int:
    from sqlalchemy import text

    async with engine.db.read() as conn:
        return int((await conn.execute(text("SELECT count(*) FROM bench_delivery"))).scalar_one())


async def wait_for(engine: Any, count: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await delivered(engine) >= count:
            return True
        await asyncio.sleep(0.05)
    return False


async def write(engine: Any, numbers: range) -> None:
    async with engine.db.write() as conn:
        repo = engine.repository(conn)
        for n in numbers:
            await repo.create(observation(n))


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def run(workers: int, args: argparse.Namespace) -> dict[str, float]:
    import asyncpg
    from sqlalchemy import text

    from smartmed.config import Settings
    from smartmed.fhir.context import FhirEngine
    from smartmed.fhir.storage.migrate import migrate
    from smartmed.jobs import subscriptions

    name = f"smartmed_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    base = ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    url = f"{base}/{name}"
    engine = FhirEngine.build(Settings(database_url=url, jobs_in_app=False))
    await migrate(engine.db)
    subscriptions.install(engine)  # as in the app: writes wake the dispatchers (NOTIFY)
    async with engine.db.write() as conn:
        await conn.execute(text(DDL))
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).parent),
        "SMARTMED_DATABASE_URL": url,
        "SMARTMED_JOB_MODULES": "events",
        "SMARTMED_JOBS_CONCURRENCY": str(args.concurrency),
        "SMARTMED_LOG_LEVEL": "WARNING",
    }
    # Throughput needs a backlog that is not limited by how fast one process can write:
    # the N events are written first and parked (outbox rows marked processed), then
    # released in one transaction once the workers are up, like N commits at once.
    for first in range(1, args.events + 1, 100):
        await write(engine, range(first, min(first + 100, args.events + 1)))
    async with engine.db.write() as conn:
        parked = (
            await conn.execute(text("UPDATE outbox SET processed_at = now() RETURNING pk"))
        ).all()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "smartmed.cli", "worker"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(workers)
    ]
    result: dict[str, float] = {}
    try:
        await write(engine, range(1))  # warm-up: every worker up and a first event through
        if not await wait_for(engine, 1, 300):
            raise SystemExit("workers did not start")
        await asyncio.sleep(10)  # the slower worker finishes loading too

        start = time.monotonic()
        async with engine.db.write() as conn:
            released = datetime.now(UTC).replace(tzinfo=None)
            await conn.execute(
                text("UPDATE outbox SET processed_at = NULL WHERE pk <= :last"),
                {"last": max(r.pk for r in parked)},
            )
            await conn.execute(text("NOTIFY smartmed_outbox"))
        ok = await wait_for(engine, args.events + 1, 900)
        async with engine.db.read() as conn:
            last = (
                await conn.execute(text("SELECT max(delivered_at) FROM bench_delivery"))
            ).scalar_one()
        span = (last - released).total_seconds()
        result["throughput"] = args.events / span if ok else float("nan")
        result["drain_seconds"] = time.monotonic() - start

        # Latency: an open-loop stream at a fixed rate.
        async with engine.db.read() as conn:
            mark = (
                await conn.execute(text("SELECT coalesce(max(outbox_pk), 0) FROM bench_delivery"))
            ).scalar_one()
        # Offered load: at most half the measured capacity, so that the figure is the
        # pipeline's latency rather than a queue growing without bound.
        rate = min(args.rate, result["throughput"] / 2)
        result["rate"] = rate
        total = int(rate * args.seconds)
        begin = time.monotonic()
        pending: set[asyncio.Task[None]] = set()
        for n in range(total):
            delay = begin + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            number = args.events + 1 + n
            task = asyncio.create_task(write(engine, range(number, number + 1)))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)
        await wait_for(engine, args.events + 1 + total, 300)
        async with engine.db.read() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT extract(epoch FROM delivered_at - created_at) * 1000"
                        " FROM bench_delivery WHERE outbox_pk > :mark"
                    ),
                    {"mark": mark},
                )
            ).scalars()
            latencies = [float(v) for v in rows]
            pids = (
                await conn.execute(text("SELECT count(DISTINCT pid) FROM bench_delivery"))
            ).scalar_one()
        result["p50"] = statistics.median(latencies)
        result["p99"] = percentile(latencies, 99)
        result["latency_events"] = len(latencies)
        result["processes"] = pids
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
        await engine.db.dispose()
        admin = await asyncpg.connect(ADMIN_URL)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=2000, help="events for throughput")
    parser.add_argument(
        "--rate", type=float, default=50.0, help="events/s for latency (at most half capacity)"
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="latency phase length")
    parser.add_argument("--concurrency", type=int, default=8, help="jobs at once per worker")
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    args = parser.parse_args()
    print(
        f"cpus: {os.cpu_count()}; events: {args.events}; "
        f"latency: {args.rate:g}/s for {args.seconds:g} s"
    )
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    print("workers | events/s | rate/s | p50 ms | p99 ms | latency n | processes")
    for workers in args.workers:
        r = await run(workers, args)
        print(
            f"{workers:7d} | {r['throughput']:8.0f} | {r['rate']:6.1f} | "
            f"{r['p50']:6.0f} | {r['p99']:6.0f} | {int(r['latency_events']):9d} | "
            f"{int(r['processes'])}"
        )


if __name__ == "__main__":
    asyncio.run(main())
