"""Load many transaction Bundles: prepared on every core, written while the next are prepared.

``load_transactions`` takes Bundles in order and gives back each one's outcome. A bundle
the bulk path takes (``bulk.plan_transaction``) is prepared in a pool of worker
processes (validation, indexing and sealing: CPU work, one process per core) and written
by this process with ``COPY`` (``bulk.write``), several transactions in flight on
PostgreSQL; any other bundle — and one the engine refuses — goes through the ordinary
``bundles.transaction`` after everything before it is committed, so it sees the same
database it would see if the bundles were loaded one by one, and fails with the same
error. Each bundle is one database transaction either way: a bad one is rejected whole
and the others still load.

Workers are forked from this process when the platform allows it (they inherit the
loaded definitions and keys, so they start at once); elsewhere they are spawned and
build their own engine from the settings.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson

from smartmed.config import Settings
from smartmed.fhir import bundles
from smartmed.fhir.context import FhirEngine
from smartmed.fhir.errors import FhirError
from smartmed.fhir.repository import EngineServices
from smartmed.fhir.storage import bulk

T = TypeVar("T")

# Bulk transactions in flight at once on PostgreSQL (one writer on SQLite); prepared
# batches waiting per worker. Measured with bench/demo.py.
POSTGRES_WRITERS = 2
QUEUE_PER_WORKER = 2


@dataclass(frozen=True, slots=True)
class Outcome(Generic[T]):
    """What became of one Bundle: per entry (HTTP status, ``Type/id``), or the error."""

    item: T
    entries: list[tuple[int, str]]
    error: FhirError | None = None
    bulk: bool = False  # written by the bulk path (else by the ordinary transaction)


def default_workers() -> int:
    """Worker processes for preparing: one per core."""
    return max(1, os.cpu_count() or 1)


# -- the worker side --------------------------------------------------------------------

_services: EngineServices | None = None


# Collector thresholds in a worker: it allocates millions of short-lived index values
# that reference counting frees; each collection would also walk the definitions.
WORKER_GC_THRESHOLD = (50_000, 20, 100)


# The loading process: the engine's definitions, compiled plans and models (millions of
# objects) moved out of the collector's sight for the load, and collections rarer. Each
# full collection walked all of them: 93 µs per resource of this process's 409 (a
# quarter), 1,000-resident demo on PostgreSQL.
LOADER_GC_THRESHOLD = WORKER_GC_THRESHOLD
_gc_depth = 0
_gc_saved: tuple[int, int, int] | None = None


@contextmanager
def quiet_gc() -> Iterator[None]:
    """For a long load: what exists now frozen (out of the collector's sight), and
    collections rarer; as before afterwards (nested blocks: the outermost decides)."""
    global _gc_depth, _gc_saved
    if _gc_depth == 0:
        _gc_saved = gc.get_threshold()
        gc.freeze()
        gc.set_threshold(*LOADER_GC_THRESHOLD)
    _gc_depth += 1
    try:
        yield
    finally:
        _gc_depth -= 1
        if _gc_depth == 0 and _gc_saved is not None:
            gc.set_threshold(*_gc_saved)
            gc.unfreeze()


def _init_worker(settings: Settings | None) -> None:
    """Worker start: forked workers already hold the services; spawned ones build them.

    What the worker holds from then on (definitions, compiled plans) is moved out of the
    collector's sight, and collections are rarer: about a tenth less CPU per resource
    in extraction, measured."""
    global _services
    if _services is None:
        if settings is None:
            raise RuntimeError("a spawned bulk worker needs the settings")
        _services = FhirEngine.build(settings).services
    gc.freeze()
    gc.set_threshold(*WORKER_GC_THRESHOLD)


def _prepare(items: bytes | list[tuple[str, str, dict[str, Any]]], now: Any) -> bulk.Prepared:
    assert _services is not None
    if isinstance(items, bytes):  # decoded from JSON: plain values only
        decoded = [(t, i, body) for t, i, body in orjson.loads(items)]
        return bulk.prepare(_services, decoded, now, plain=True)
    return bulk.prepare(_services, items, now)


# Anything but plain JSON values (Decimal, datetime, subclasses) must not pass as JSON.
_PLAIN = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS


def _transport(
    items: list[tuple[str, str, dict[str, Any]]],
) -> bytes | list[tuple[str, str, dict[str, Any]]]:
    """The creates as JSON when they are plain JSON values (several times cheaper to
    decode in the worker than a pickle), else as they are (pickled, exact)."""
    try:
        return orjson.dumps(items, option=_PLAIN)
    except TypeError:  # a Decimal (exact FHIR decimal), a date, a huge int ...
        return items


class _Pool:
    """The worker processes, or this process alone (``workers == 0``)."""

    def __init__(self, engine: FhirEngine, workers: int) -> None:
        self.engine = engine
        self.executor: Executor | None = None
        self.forked = False
        if workers > 0:
            methods = multiprocessing.get_all_start_methods()
            if "fork" in methods:
                self.forked = True
                context: Any = multiprocessing.get_context("fork")
                init: tuple[Settings | None] = (None,)
            else:  # pragma: no cover - not on Linux
                context = multiprocessing.get_context("spawn")
                init = (engine.settings,)
            self.executor = ProcessPoolExecutor(
                workers, mp_context=context, initializer=_init_worker, initargs=init
            )

    async def start(self) -> None:
        """Load the protector's keys (the workers inherit them), then start the workers."""
        async with self.engine.db.read():
            pass  # handing out a connection loads (or first creates) the keys
        if self.executor is not None:
            global _services
            loop = asyncio.get_running_loop()
            if self.forked:
                _services = self.engine.services  # what the workers forked now inherit
            try:
                # The first task starts every worker (forked ones all at once).
                await loop.run_in_executor(self.executor, _prepare, [], None)
            finally:
                if self.forked:
                    _services = None

    def submit(self, creates: list[bulk.Create]) -> asyncio.Future[bulk.Prepared]:
        items = [(c.type_, c.id_, c.body) for c in creates]
        now = bulk.stamp_time()
        loop = asyncio.get_running_loop()
        if self.executor is None:
            future: asyncio.Future[bulk.Prepared] = loop.create_future()
            future.set_result(bulk.prepare(self.engine.services, items, now))
            return future
        return asyncio.wrap_future(self.executor.submit(_prepare, _transport(items), now))

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)


# -- the writing side -------------------------------------------------------------------


async def _ordinary(engine: FhirEngine, bundle: dict[str, Any]) -> list[tuple[int, str]]:
    """The ordinary transaction (or batch); (status, reference) per entry."""
    process = bundles.batch if bundle.get("type") == "batch" else bundles.transaction
    async with engine.db.write() as conn:
        response = await process(
            conn, engine.services, bundle, engine.resource_types, return_resources=False
        )
    answers = orjson.loads(response).get("entry", [])
    entries = []
    for answer in answers:
        status = str(answer.get("response", {}).get("status", "")).split(" ", 1)[0]
        entries.append((int(status) if status.isdigit() else 0, str(answer.get("fullUrl", ""))))
    return entries


async def _bulk_write(engine: FhirEngine, batch: bulk.Prepared) -> None:
    async with engine.db.write() as conn:
        await bulk.write(conn, engine.services, batch)


async def load_transactions(
    engine: FhirEngine,
    items: Iterable[T],
    bundle_of: Callable[[T], dict[str, Any]],
    *,
    workers: int | None = None,
    writers: int | None = None,
    known: dict[str, str] | None = None,
) -> AsyncIterator[Outcome[T]]:
    """Load the transaction Bundle of every item, in order; yield each outcome when done.

    (A ``batch`` Bundle goes through the ordinary ``bundles.batch``, entry by entry.)

    ``workers`` processes prepare (default: one per core; 0: this process does it);
    ``writers`` bulk transactions are in flight at once (default ``POSTGRES_WRITERS`` on
    PostgreSQL, 1 on SQLite); ``known``: conditional references already resolved
    (``bulk.plan_transaction``). A bundle's ``FhirError`` is its outcome's ``error``; any
    other exception stops the load.
    """
    workers = default_workers() if workers is None else workers
    if writers is None:
        writers = POSTGRES_WRITERS if engine.db.is_postgres else 1
    pool = _Pool(engine, workers)
    preparing: deque[tuple[T, bulk.Plan, asyncio.Future[bulk.Prepared]]] = deque()
    writing: deque[tuple[T, list[bulk.Create], asyncio.Task[None]]] = deque()
    ready: deque[Outcome[T]] = deque()
    depth = max(1, workers) * QUEUE_PER_WORKER

    async def finish_write() -> None:
        item, creates, task = writing.popleft()
        try:
            await task
        except FhirError as exc:  # a write hook refused it: rolled back, like the ordinary path
            ready.append(Outcome(item, [], exc, bulk=True))
            return
        ready.append(Outcome(item, [(201, f"{c.type_}/{c.id_}") for c in creates], bulk=True))

    async def ordinary(item: T) -> None:
        while writing:  # everything before it committed first
            await finish_write()
        try:
            ready.append(Outcome(item, await _ordinary(engine, bundle_of(item))))
        except FhirError as exc:
            ready.append(Outcome(item, [], exc))

    async def finish_prepare() -> None:
        item, plan, future = preparing.popleft()
        batch = await future
        if batch.error is not None:
            # Refused by the engine: the ordinary path gives the error as it always did
            # (the ids drawn here are discarded, the references put back as they were).
            plan.restore()
            await ordinary(item)
            return
        while len(writing) >= writers:
            await finish_write()
        task = asyncio.create_task(_bulk_write(engine, batch))
        writing.append((item, plan.creates, task))

    quiet = quiet_gc()
    quiet.__enter__()
    try:
        await pool.start()
        fast = bulk.may_bulk_write()
        for item in items:
            bundle = bundle_of(item)
            plan = bulk.plan_transaction(bundle, engine.resource_types, known) if fast else None
            if plan is None:
                while preparing:
                    await finish_prepare()
                await ordinary(item)
            else:
                preparing.append((item, plan, pool.submit(plan.creates)))
                while len(preparing) > depth:
                    await finish_prepare()
            while ready:
                yield ready.popleft()
        while preparing:
            await finish_prepare()
        while writing:
            await finish_write()
        while ready:
            yield ready.popleft()
    finally:
        for _, _, task in writing:
            task.cancel()
        for _, _, task in writing:
            try:
                await task
            except BaseException:  # noqa: BLE001 - already failing; the first error wins
                pass
        pool.close()
        quiet.__exit__(None, None, None)


__all__ = ["Outcome", "default_workers", "load_transactions", "quiet_gc"]
