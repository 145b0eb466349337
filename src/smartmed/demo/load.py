"""Load the synthetic county into the store through the transaction engine (``smartmed demo``).

Every resource goes through ``bundles.transaction``: validated, indexed, versioned, with
its outbox event. What this module chooses is how the work is cut (measured with
``bench/demo.py``):

* the organisation Bundle first, alone; its response gives the id of every organisation
  and practitioner, so the households' conditional references
  (``Organization?identifier=…``) are rewritten to literal ones before they are sent —
  one dictionary look-up instead of one search per reference and transaction;
* several households per transaction (fewer commits and statements per resource);
* on PostgreSQL, several transactions in flight on separate connections, so that the
  Python work of one overlaps the database work of the others (SQLite has one writer).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
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

Bundle = dict[str, Any]

HOUSEHOLDS_PER_TRANSACTION = 25  # about 200 resources; measured in bench/demo.py
POSTGRES_CONCURRENCY = 3  # transactions in flight on PostgreSQL; measured in bench/demo.py


@dataclass(slots=True)
class LoadReport:
    """What one load created and how long it took."""

    residents: int = 0
    households: int = 0
    created: Counter[str] = field(default_factory=Counter)
    reused: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    references: dict[str, str] = field(default_factory=dict)  # conditional → literal
    # The first households' entries with their stored references (demo account sample).
    sample: list[tuple[Bundle, str]] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Resources created."""
        return sum(self.created.values())

    @property
    def rate(self) -> float:
        """Resources created per second."""
        return self.total / self.seconds if self.seconds > 0 else float("inf")


def _tally(bundle: Bundle, response: str, report: LoadReport) -> list[str]:
    """Count created (201) and reused (200, ifNoneExist matched) resources; their references."""
    answers = orjson.loads(response).get("entry", [])
    stored = []
    for request, answer in zip(bundle["entry"], answers, strict=True):
        status = str(answer.get("response", {}).get("status", ""))
        kind = request["resource"]["resourceType"]
        if status.startswith("201"):
            report.created[kind] += 1
        elif status.startswith("200"):
            report.reused[kind] += 1
        stored.append(str(answer.get("fullUrl", "")))
    return stored


def conditional_targets(bundle: Bundle, stored: list[str]) -> dict[str, str]:
    """``Type?identifier=system|value`` → ``Type/id`` for every identified entry of ``bundle``."""
    found = {}
    for item, reference in zip(bundle["entry"], stored, strict=True):
        resource_ = item["resource"]
        for ident in resource_.get("identifier", []):
            key = f"{resource_['resourceType']}?identifier={ident['system']}|{ident['value']}"
            found[key] = reference
    return found


def resolve_references(node: Any, targets: dict[str, str]) -> None:
    """Rewrite, in place, conditional references that ``targets`` knows into literal ones."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                if value in targets:
                    node[key] = targets[value]
            elif isinstance(value, dict | list):
                resolve_references(value, targets)
    elif isinstance(node, list):
        for item in node:
            resolve_references(item, targets)


def merge(households: Iterable[Bundle], size: int) -> Iterator[tuple[Bundle, int]]:
    """Transaction Bundles of ``size`` households each, with their resident counts.

    The households' ``urn:uuid`` full URLs are unique across the county, so their entries
    can share one transaction.
    """
    entries: list[Bundle] = []
    count = residents = 0
    for bundle in households:
        entries += bundle["entry"]
        residents += sum(1 for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
        count += 1
        if count == size:
            yield {"resourceType": "Bundle", "type": "transaction", "entry": entries}, residents
            entries, count, residents = [], 0, 0
    if entries:
        yield {"resourceType": "Bundle", "type": "transaction", "entry": entries}, residents


async def _transaction(engine: FhirEngine, bundle: Bundle) -> str:
    async with engine.db.write() as conn:
        return await bundles.transaction(
            conn, engine.services, bundle, engine.resource_types, return_resources=False
        )


async def load_county(
    engine: FhirEngine,
    *,
    residents: int,
    seed: int,
    households_per_transaction: int = HOUSEHOLDS_PER_TRANSACTION,
    concurrency: int | None = None,
    resolve: bool = True,
    show_progress: bool = True,
) -> LoadReport:
    """Generate the county for ``seed`` and load it; what was created and how fast.

    ``concurrency`` transactions are in flight at once (default: ``POSTGRES_CONCURRENCY``
    on PostgreSQL, 1 on SQLite); ``resolve`` rewrites conditional references to the
    organisations and staff into literal ones before sending the households.
    """
    if concurrency is None:
        concurrency = POSTGRES_CONCURRENCY if engine.db.is_postgres else 1
    report = LoadReport(residents=residents)
    started = time.perf_counter()
    county = generate_county(residents=residents, seed=seed)
    organisations = next(county)
    response = await _transaction(engine, organisations)
    report.references = conditional_targets(organisations, _tally(organisations, response, report))
    targets = report.references if resolve else {}

    def households() -> Iterator[Bundle]:
        for bundle in county:
            report.households += 1
            if targets:
                resolve_references(bundle, targets)
            yield bundle

    pending: set[asyncio.Task[None]] = set()
    with progress(residents, "residents") if show_progress else _silent() as advance:

        async def send(bundle: Bundle, people: int) -> None:
            stored = _tally(bundle, await _transaction(engine, bundle), report)
            if not report.sample:
                report.sample = list(zip(bundle["entry"], stored, strict=True))
            advance(people)

        try:
            for bundle, people in merge(households(), households_per_transaction):
                if len(pending) >= concurrency:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        task.result()  # a failed transaction stops the load
                pending.add(asyncio.create_task(send(bundle, people)))
            if pending:
                for outcome in await asyncio.gather(*pending, return_exceptions=True):
                    if isinstance(outcome, BaseException):
                        raise outcome
                pending = set()
        finally:
            for task in pending:
                task.cancel()
    report.seconds = time.perf_counter() - started
    return report


class _silent:
    """A progress context that shows nothing."""

    def __enter__(self) -> Any:
        return lambda n: None

    def __exit__(self, *exc: object) -> None:
        return None


async def has_patients(engine: FhirEngine) -> bool:
    """Whether the store holds a live Patient."""
    query = (
        select(resource.c.pk)
        .where(resource.c.type == "Patient", resource.c.deleted.is_(False))
        .limit(1)
    )
    async with engine.db.read() as conn:
        return (await conn.execute(query)).first() is not None


def summary(report: LoadReport, seed: int) -> str:
    """What the load created, by resource type, and its throughput."""
    lines = [
        f"Demo county loaded (seed {seed}): {report.residents:,} residents in "
        f"{report.households:,} households; {report.total:,} resources created in "
        f"{report.seconds:.1f} s ({report.rate:,.0f} resources/s).",
    ]
    width = max((len(kind) for kind in report.created), default=0)
    for kind, count in sorted(report.created.items(), key=lambda item: (-item[1], item[0])):
        lines.append(f"  {kind:<{width}}  {count:>9,}")
    if report.reused:
        kept = ", ".join(f"{kind} {count:,}" for kind, count in sorted(report.reused.items()))
        lines.append(f"Already present and reused (matched by identifier): {kept}.")
    return "\n".join(lines)


async def load_demo(settings: Settings, *, residents: int, seed: int, if_empty: bool) -> str:
    """Generate the county for ``seed``, load it and create the demo accounts; a summary.

    With ``if_empty``, nothing is loaded when the database already holds a Patient.
    """
    from smartmed.demo.accounts import accounts_table, create_demo_accounts

    engine = FhirEngine.build(settings)
    try:
        if not await is_current(engine.db):
            await migrate(engine.db)
        if if_empty and await has_patients(engine):
            return "The database already holds patients: demo county not loaded (--if-empty)."
        report = await load_county(engine, residents=residents, seed=seed)
        accounts = await create_demo_accounts(
            engine,
            settings,
            residents=residents,
            seed=seed,
            references=report.references,
            sample=report.sample,
        )
        return summary(report, seed) + "\n\n" + accounts_table(accounts)
    finally:
        await engine.db.dispose()
