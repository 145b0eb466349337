"""Load the synthetic county into the store through the transaction engine (``smartmed demo``)."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import orjson
from sqlalchemy import select

from smartmed.config import Settings
from smartmed.console import progress
from smartmed.demo.generator import generate_county
from smartmed.fhir import bundles
from smartmed.fhir.context import FhirEngine
from smartmed.fhir.storage.migrate import is_current, migrate
from smartmed.fhir.storage.tables import resource


def _tally(
    bundle: dict[str, Any], response: str, created: Counter[str], reused: Counter[str]
) -> None:
    """Count the created (201) and reused (200, ifNoneExist matched) resources by type."""
    answers = orjson.loads(response).get("entry", [])
    for request, answer in zip(bundle["entry"], answers, strict=True):
        status = str(answer.get("response", {}).get("status", ""))
        kind = request["resource"]["resourceType"]
        if status.startswith("201"):
            created[kind] += 1
        elif status.startswith("200"):
            reused[kind] += 1


async def _has_patients(engine: FhirEngine) -> bool:
    query = (
        select(resource.c.pk)
        .where(resource.c.type == "Patient", resource.c.deleted.is_(False))
        .limit(1)
    )
    async with engine.db.read() as conn:
        return (await conn.execute(query)).first() is not None


def _summary(
    residents: int,
    seed: int,
    households: int,
    created: Counter[str],
    reused: Counter[str],
    seconds: float,
) -> str:
    total = sum(created.values())
    rate = total / seconds if seconds > 0 else float("inf")
    lines = [
        f"Demo county loaded (seed {seed}): {residents:,} residents in {households:,} households; "
        f"{total:,} resources created in {seconds:.1f} s ({rate:,.0f} resources/s).",
    ]
    width = max((len(kind) for kind in created), default=0)
    for kind, count in sorted(created.items(), key=lambda item: (-item[1], item[0])):
        lines.append(f"  {kind:<{width}}  {count:>9,}")
    if reused:
        kept = ", ".join(f"{kind} {count:,}" for kind, count in sorted(reused.items()))
        lines.append(f"Already present and reused (matched by identifier): {kept}.")
    return "\n".join(lines)


async def load_demo(settings: Settings, *, residents: int, seed: int, if_empty: bool) -> str:
    """Generate the county for ``seed`` and load it, one transaction per Bundle; a summary.

    With ``if_empty``, nothing is loaded when the database already holds a Patient.
    """
    engine = FhirEngine.build(settings)
    try:
        if not await is_current(engine.db):
            await migrate(engine.db)
        if if_empty and await _has_patients(engine):
            return "The database already holds patients: demo county not loaded (--if-empty)."
        created: Counter[str] = Counter()
        reused: Counter[str] = Counter()
        households = 0
        started = time.perf_counter()
        with progress(residents, "residents") as advance:
            for number, bundle in enumerate(generate_county(residents=residents, seed=seed)):
                async with engine.db.write() as conn:
                    response = await bundles.transaction(
                        conn,
                        engine.services,
                        bundle,
                        engine.resource_types,
                        return_resources=False,
                    )
                _tally(bundle, response, created, reused)
                if number:  # the first Bundle holds the organisations and staff
                    households += 1
                    advance(
                        sum(
                            1 for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"
                        )
                    )
        seconds = time.perf_counter() - started
        return _summary(residents, seed, households, created, reused, seconds)
    finally:
        await engine.db.dispose()
