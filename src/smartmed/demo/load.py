"""Load the synthetic county into the store through the engine (``smartmed demo``).

Every resource is validated against the R4 definitions, indexed for every search
parameter, versioned (history row), sealed where it holds a sensitive identifier and
announced in the outbox, and the access grants it carries are written with it. What
this module chooses is how the work is cut (measured with ``bench/demo.py``):

* the organisation Bundle first, alone, through the ordinary transaction; its response
  gives the id of every organisation and practitioner, so the households' conditional
  references (``Organization?identifier=…``) are rewritten to literal ones before they
  are sent — one dictionary look-up instead of one search per reference and transaction;
* then the households, several per transaction, through the bulk path
  (``fhir/storage/pipeline.py``): prepared in worker processes on every core, written
  with ``COPY`` on PostgreSQL while the next ones are prepared (``bulk=True``, the
  default), or through the ordinary transaction engine (``bulk=False``: several
  transactions in flight on PostgreSQL, the loader as it was before).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import select

from smartmed.config import Settings
from smartmed.console import progress
from smartmed.demo.contracting import tag_contracts
from smartmed.demo.generator import generate_county
from smartmed.fhir import bundles
from smartmed.fhir.context import FhirEngine
from smartmed.fhir.storage.migrate import is_current, migrate
from smartmed.fhir.storage.pipeline import load_transactions, quiet_gc
from smartmed.fhir.storage.tables import resource

Bundle = dict[str, Any]

HOUSEHOLDS_PER_TRANSACTION = 10  # about 80 resources; measured in bench/demo.py
BULK_HOUSEHOLDS_PER_TRANSACTION = 50  # the bulk path's, measured in bench/demo.py
POSTGRES_CONCURRENCY = 3  # transactions in flight on PostgreSQL; measured in bench/demo.py


@dataclass(slots=True)
class LoadReport:
    """What one load created and how long it took."""

    residents: int = 0
    households: int = 0
    created: Counter[str] = field(default_factory=Counter)
    reused: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # of this process (the engine's Python work), not the database's
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
    results = []
    for answer in answers:
        status = str(answer.get("response", {}).get("status", "")).split(" ", 1)[0]
        results.append((int(status) if status.isdigit() else 0, str(answer.get("fullUrl", ""))))
    return _count(bundle, results, report)


def _count(bundle: Bundle, results: list[tuple[int, str]], report: LoadReport) -> list[str]:
    """Count (status, reference) per entry of ``bundle``; the references."""
    stored = []
    for request, (status, reference) in zip(bundle["entry"], results, strict=True):
        kind = request["resource"]["resourceType"]
        if status == 201:
            report.created[kind] += 1
        elif status == 200:
            report.reused[kind] += 1
        stored.append(reference)
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


async def _send(
    engine: FhirEngine,
    chunks: Iterable[tuple[Bundle, int]],
    report: LoadReport,
    concurrency: int,
    advance: Callable[[int], None],
) -> None:
    """Load the transaction Bundles with up to ``concurrency`` of them in flight."""

    async def send(bundle: Bundle, people: int) -> None:
        stored = _tally(bundle, await _transaction(engine, bundle), report)
        if not report.sample:
            report.sample = list(zip(bundle["entry"], stored, strict=True))
        advance(people)

    pending: set[asyncio.Task[None]] = set()
    try:
        for bundle, people in chunks:
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


async def _send_bulk(
    engine: FhirEngine,
    chunks: Iterable[tuple[Bundle, int]],
    report: LoadReport,
    writers: int | None,
    workers: int | None,
    targets: dict[str, str],
    advance: Callable[[int], None],
) -> None:
    """Load the transaction Bundles through the bulk pipeline; a failed one stops the load."""
    outcomes = load_transactions(
        engine, chunks, lambda chunk: chunk[0], workers=workers, writers=writers, known=targets
    )
    async for outcome in outcomes:
        if outcome.error is not None:
            raise outcome.error
        bundle, people = outcome.item
        stored = _count(bundle, outcome.entries, report)
        if not report.sample:
            report.sample = list(zip(bundle["entry"], stored, strict=True))
        advance(people)


def _households(
    county: Iterator[Bundle],
    report: LoadReport,
    targets: dict[str, str],
    known: dict[str, str] | None = None,
) -> Iterator[Bundle]:
    """The household bundles, references resolved with ``targets`` and Contracts tagged
    (team, assignee: what contracting writes when it signs) from ``known`` ids."""
    for bundle in county:
        report.households += 1
        if targets:
            resolve_references(bundle, targets)
        if known:
            tag_contracts(bundle, known)
        yield bundle


async def load_county(
    engine: FhirEngine,
    *,
    residents: int,
    seed: int,
    households_per_transaction: int | None = None,
    concurrency: int | None = None,
    processes: int = 1,
    resolve: bool = True,
    show_progress: bool = True,
    bulk: bool = True,
    workers: int | None = None,
) -> LoadReport:
    """Generate the county for ``seed`` and load it; what was created and how fast.

    With ``bulk`` (the default) the households go through the bulk path: ``workers``
    processes prepare them (default: one per core; 0: this process), ``concurrency``
    transactions are written at once (default: ``pipeline.POSTGRES_WRITERS`` on
    PostgreSQL, 1 on SQLite). Without it, through the ordinary transaction engine:
    ``concurrency`` transactions in flight in each loader process (default:
    ``POSTGRES_CONCURRENCY`` on PostgreSQL, 1 on SQLite) and ``processes`` > 1
    (PostgreSQL only) loader processes, each with its own engine. ``resolve`` rewrites
    conditional references to the organisations and staff into literal ones.
    """
    if households_per_transaction is None:
        households_per_transaction = (
            BULK_HOUSEHOLDS_PER_TRANSACTION if bulk else HOUSEHOLDS_PER_TRANSACTION
        )
    if bulk and processes > 1:
        raise ValueError("the bulk path prepares in worker processes: use workers=")
    in_flight = concurrency
    if in_flight is None:
        in_flight = POSTGRES_CONCURRENCY if engine.db.is_postgres else 1
    if processes > 1 and not engine.db.is_postgres:
        raise ValueError("several loader processes need PostgreSQL (SQLite has one writer)")
    report = LoadReport(residents=residents)
    started, cpu_started = time.perf_counter(), time.process_time()
    # The bulk path's loading process: the collector kept off the engine's definitions.
    with quiet_gc() if bulk else nullcontext():
        county = generate_county(residents=residents, seed=seed)
        organisations = next(county)
        response = await _transaction(engine, organisations)
        tally = _tally(organisations, response, report)
        report.references = conditional_targets(organisations, tally)
        targets = report.references if resolve else {}
        with progress(residents, "residents") if show_progress else _silent() as advance:
            if bulk:  # the references are resolved while each bundle is planned
                chunks = merge(_households(county, report, {}, targets), households_per_transaction)
                await _send_bulk(engine, chunks, report, concurrency, workers, targets, advance)
            elif processes > 1:
                await _load_in_processes(
                    engine, report, seed, households_per_transaction, in_flight, processes,
                    targets, advance,
                )  # fmt: skip
            else:
                chunks = merge(
                    _households(county, report, targets, targets), households_per_transaction
                )
                await _send(engine, chunks, report, in_flight, advance)
    await engine.db.analyze()  # the planner's statistics for the new rows
    report.seconds = time.perf_counter() - started
    report.cpu_seconds += time.process_time() - cpu_started
    return report


@dataclass(frozen=True, slots=True)
class _Part:
    """The share of the county one loader process loads: every ``parts``-th transaction."""

    settings: Settings
    residents: int
    seed: int
    part: int
    parts: int
    households_per_transaction: int
    concurrency: int
    targets: dict[str, str]


def _load_part(part: _Part, queue: Any) -> LoadReport:
    """Loader process: regenerate the county, load this part's transactions (blocking)."""

    async def run() -> LoadReport:
        engine = FhirEngine.build(part.settings)
        report = LoadReport()
        cpu_started = time.process_time()
        try:
            county = generate_county(residents=part.residents, seed=part.seed)
            next(county)  # the organisations: loaded by the parent
            chunks = (
                chunk
                for number, chunk in enumerate(
                    merge(_households(county, LoadReport(), {}), part.households_per_transaction)
                )
                if number % part.parts == part.part
            )

            def resolved() -> Iterator[tuple[Bundle, int]]:
                for bundle, people in chunks:
                    report.households += sum(
                        1
                        for e in bundle["entry"]
                        if e["resource"]["resourceType"] == "Patient"
                        and "link" not in e["resource"]
                    )
                    if part.targets:
                        resolve_references(bundle, part.targets)
                        tag_contracts(bundle, part.targets)
                    yield bundle, people

            await _send(engine, resolved(), report, part.concurrency, queue.put)
        finally:
            await engine.db.dispose()
        report.cpu_seconds = time.process_time() - cpu_started
        report.sample = report.sample if part.part == 0 else []
        return report

    return asyncio.run(run())


async def _load_in_processes(
    engine: FhirEngine,
    report: LoadReport,
    seed: int,
    households_per_transaction: int,
    concurrency: int,
    processes: int,
    targets: dict[str, str],
    advance: Callable[[int], None],
) -> None:
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, ProcessPoolExecutor(processes, mp_context=context) as pool:
        queue = manager.Queue()
        loop = asyncio.get_running_loop()
        futures = [
            loop.run_in_executor(
                pool,
                _load_part,
                _Part(
                    engine.settings,
                    report.residents,
                    seed,
                    part,
                    processes,
                    households_per_transaction,
                    concurrency,
                    targets,
                ),
                queue,
            )
            for part in range(processes)
        ]
        while not all(f.done() for f in futures):
            await asyncio.sleep(0.2)
            while not queue.empty():
                advance(queue.get())
        while not queue.empty():
            advance(queue.get())
        for future in futures:
            part_report = future.result()
            report.created += part_report.created
            report.reused += part_report.reused
            report.households += part_report.households
            report.cpu_seconds += part_report.cpu_seconds
            report.sample = report.sample or part_report.sample


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
