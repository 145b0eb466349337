"""What deriving a contract's used / remaining counts at query time costs.

Run: ``.venv/bin/python bench/services.py [--services N] [--other M] [--rounds R]``. On a
scratch SQLite database (migrated, the default package catalogue, one resident with a
contract carrying the hypertension package, N service records (Encounters and
Procedures) naming the contract and M other Encounters of the same resident) it times:

- reading the Contract (``service.access_contract``: the baseline — what any contract
  page pays anyway);
- ``services.usage``: the package, the resident's Encounters and Procedures through the
  search index, the count per item, the performers' names;

and prints ms per call and the ratio to the baseline, for each N. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import SecretStr

from smartmed.config import Settings
from smartmed.contracting import packages, service, services
from smartmed.contracting.contracts import Signature
from smartmed.contracting.lifecycle import do_set_package
from smartmed.fhir.context import FhirEngine
from smartmed.fhir.storage.migrate import migrate

ITEMS = ("bp-followup", "home-visit", "medication-review", "consultation")


async def timed(call: Callable[[], Awaitable[object]], rounds: int) -> float:
    """Best of three runs of ``rounds`` calls, ms per call."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(rounds):
            await call()
        best = min(best, (time.perf_counter() - start) / rounds * 1e3)
    return best


async def scenario(folder: Path, n: int, other: int, rounds: int) -> tuple[float, float]:
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{folder}/bench-{n}.db",
        secret_key=SecretStr("synthetic-bench-secret-0123456789abcdef"),
    )
    engine = FhirEngine.build(settings)
    try:
        await migrate(engine.db)
        async with engine.db.write() as conn:
            repo = engine.repository(conn)
            doctor = (
                await repo.create({"resourceType": "Practitioner", "name": [{"family": "医"}]})
            ).reference
            team = await repo.create(
                {
                    "resourceType": "CareTeam",
                    "status": "active",
                    "participant": [{"member": {"reference": doctor}}],
                }
            )
            patient = (
                await repo.create({"resourceType": "Patient", "name": [{"family": "王"}]})
            ).reference
            refs = await packages.ensure_catalogue(engine, conn)
            contract = await service.do_sign_in_person(
                engine,
                conn,
                patient=patient,
                team=team.reference,
                doctor=doctor,
                signature=Signature("王", True),
            )
            await do_set_package(engine, conn, contract_id=contract["id"], package=refs[1])
            now = datetime.now(UTC)
            for i in range(n):
                await repo.create(
                    services.service_resource(
                        kind="Encounter" if i % 3 else "Procedure",
                        contract=contract,
                        item=ITEMS[i % len(ITEMS)],
                        performer=doctor,
                        when=now - timedelta(seconds=i),
                    )
                )
            for i in range(other):
                await repo.create(
                    {
                        "resourceType": "Encounter",
                        "status": "finished",
                        "class": {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                            "code": "AMB",
                        },
                        "subject": {"reference": patient},
                        "period": {"start": (now - timedelta(days=i)).isoformat()},
                    }
                )
        cid = str(contract["id"])

        async def baseline() -> None:
            async with engine.db.read() as conn:
                await service.access_contract(engine, conn, cid)

        async def usage() -> None:
            async with engine.db.read() as conn:
                found = await services.usage(engine, conn, contract_id=cid)
            assert sum(i["used"] for i in found.items) == n

        return await timed(baseline, rounds), await timed(usage, rounds)
    finally:
        await engine.db.dispose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--services", type=int, nargs="*", default=[0, 20, 100, 400])
    parser.add_argument("--other", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    print(f"SQLite; {args.other} other Encounters of the resident; best of 3 × {args.rounds}")
    print(f"{'services':>9} {'contract ms':>12} {'usage ms':>9} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as folder:
        for n in args.services:
            base, cost = await scenario(Path(folder), n, args.other, args.rounds)
            print(f"{n:>9} {base:>12.2f} {cost:>9.2f} {cost / base:>6.1f}")
    sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main())
