"""Wiring: which modules define jobs, and starting/stopping the jobs machinery.

The app's lifespan calls :func:`start` (hooks always; the runner unless
``SMARTMED_JOBS_IN_APP=false``) and :func:`stop`; ``smartmed worker`` runs
:func:`run_worker` until SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from smartmed.jobs import subscriptions
from smartmed.jobs.runner import JobRunner
from smartmed.jobs.websocket import hub

if TYPE_CHECKING:
    from smartmed.config import Settings
    from smartmed.fhir.context import FhirEngine

log = structlog.get_logger("smartmed.jobs")

# Packages whose import registers jobs, handlers or schedules (a worker process must know
# every job the app processes enqueue); absent ones are skipped.
BUILTIN_JOB_MODULES = (
    "smartmed.jobs.subscriptions",
    "smartmed.notify",
    "smartmed.payments.tasks",
    "smartmed.payments.sandbox.tasks",
    "smartmed.contracting.tasks",
    "smartmed.contracting.reports",
)


def load_job_modules(settings: Settings) -> list[str]:
    """Import the modules that register jobs; the names imported."""
    extra = [m.strip() for m in settings.job_modules.split(",") if m.strip()]
    loaded = []
    for name in (*BUILTIN_JOB_MODULES, *extra):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if name in BUILTIN_JOB_MODULES and exc.name == name:
                continue
            raise
        loaded.append(name)
    return loaded


@dataclass(slots=True)
class Jobs:
    """The jobs machinery of one process."""

    engine: FhirEngine
    runner: JobRunner | None


def make_runner(engine: FhirEngine, *, concurrency: int | None = None) -> JobRunner:
    """A runner configured from the engine's settings."""
    settings = engine.settings
    return JobRunner(
        engine,
        concurrency=concurrency or settings.jobs_concurrency,
        poll_seconds=settings.jobs_poll_seconds,
        lease_seconds=settings.jobs_lease_seconds,
    )


async def start(engine: FhirEngine, *, run_jobs: bool | None = None) -> Jobs:
    """Install the write hooks, load job modules, start the runner and websocket fan-out."""
    load_job_modules(engine.settings)
    subscriptions.install(engine)
    await hub.listen(engine)
    runner = None
    if engine.settings.jobs_in_app if run_jobs is None else run_jobs:
        runner = make_runner(engine)
        await runner.start()
    return Jobs(engine, runner)


async def stop(jobs: Jobs) -> None:
    """Stop the runner (running jobs get a grace period) and the fan-out listener."""
    if jobs.runner is not None:
        await jobs.runner.stop()
    await hub.close()


async def run_worker(settings: Settings, *, concurrency: int | None = None) -> None:
    """A worker process: run jobs (and chain and materialise the audit log) until SIGTERM
    or SIGINT."""
    from smartmed.fhir.context import FhirEngine
    from smartmed.fhir.storage.migrate import is_current, migrate

    engine = FhirEngine.build(settings)
    if not await is_current(engine.db):
        await migrate(engine.db)
    load_job_modules(settings)
    subscriptions.install(engine)
    runner = make_runner(engine, concurrency=concurrency)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stopped.set)
    await runner.start()
    audit_task = None
    if settings.audit_enabled:
        from smartmed import audit

        audit_task = asyncio.create_task(audit.maintain(engine, stopped), name="audit-maintain")
    try:
        await stopped.wait()
    finally:
        await runner.stop()
        if audit_task is not None:
            await audit_task
        await engine.db.dispose()
