"""What following edited role rights costs a process: the version check against a baseline.

Run: ``.venv/bin/python bench/rights.py --db sqlite|postgres [--rounds N]``. On a scratch
database (migrated, 20 saved versions of the rights matrix) it measures, in one run:

- ``SELECT 1`` through the engine's read connection (the cheapest query: the baseline);
- ``PolicySync.refresh()`` when no check is due (what nearly every request pays);
- the due check when nothing changed (one ``max(version)``, every 2 s per process);
- the due check when a new version was saved (read it, ``AccessControl.set_policy``);

and prints µs per call and each against the baseline, plus the amortised cost per
request at 10 and 100 requests/s per process. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fhir_api as fa  # noqa: E402
from smartmed.access.policy_store import (  # noqa: E402
    CHECK_SECONDS,
    rights_of,
    sync_of,
)
from smartmed.config import Settings  # noqa: E402
from smartmed.fhir.context import FhirEngine  # noqa: E402
from smartmed.fhir.storage.migrate import migrate  # noqa: E402


async def timed(call: Callable[[], Awaitable[object]], rounds: int) -> float:
    """Best of five runs of ``rounds`` calls, µs per call."""
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(rounds):
            await call()
        best = min(best, (time.perf_counter() - start) / rounds * 1e6)
    return best


async def run(url: str, rounds: int) -> None:
    engine = FhirEngine.build(Settings(database_url=url))
    await migrate(engine.db)
    sync = sync_of(engine.access)
    assert sync is not None
    rights = rights_of(sync.shipped)
    for i in range(20):
        rights["nurse"]["other"] = "rs" if i % 2 else "crus"
        sync.apply(
            await sync.store.save(
                rights, base_version=sync.version, author="bench", author_name=None, reason="b"
            )
        )

    async def select_one() -> None:
        async with engine.db.read() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def not_due() -> None:
        await sync.refresh()

    async def due_unchanged() -> None:
        await sync.refresh(force=True)

    async def due_changed() -> None:
        sync.version = 0  # as if a newer version had been saved elsewhere
        await sync.refresh(force=True)

    await sync.refresh(force=True)
    base = await timed(select_one, rounds)
    figures = {
        "SELECT 1 (baseline)": base,
        "refresh, not due": await timed(not_due, rounds * 10),
        "refresh, due, unchanged": await timed(due_unchanged, rounds),
        "refresh, due, new version": await timed(due_changed, max(rounds // 10, 10)),
    }
    print(f"{engine.db.url.get_backend_name()}: µs per call (best of 5)")
    for name, micros in figures.items():
        print(f"  {name:28} {micros:10.2f} µs  {micros / base:8.3f} × baseline")
    check = figures["refresh, due, unchanged"]
    for rate in (10, 100):
        per_request = figures["refresh, not due"] + check / (rate * CHECK_SECONDS)
        print(
            f"  amortised at {rate:3d} req/s: {per_request:8.2f} µs per request"
            f" ({per_request / base:.3f} × baseline)"
        )
    await engine.db.dispose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--rounds", type=int, default=500)
    args = parser.parse_args()
    if args.db == "postgres":
        url, _dsn = await fa.create_pg_database()
        try:
            await run(url, args.rounds)
        finally:
            await fa.drop_pg_database(url)
    else:
        with tempfile.TemporaryDirectory() as folder:
            await run(f"sqlite+aiosqlite:///{folder}/bench.db", args.rounds)


if __name__ == "__main__":
    asyncio.run(main())
