"""What jobs exist: job kinds, recurring schedules and workflow (event) handlers.

Registration happens at import time with decorators; a worker imports the modules that
define jobs (``smartmed.jobs.runtime.load_job_modules``) before it claims anything.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from croniter import croniter

if TYPE_CHECKING:
    from smartmed.fhir.context import FhirEngine


@dataclass(frozen=True, slots=True)
class JobContext:
    """What a running job knows about itself.

    No database connection is held while a job runs (a job may wait seconds on an HTTP
    endpoint); open your own transaction with ``ctx.engine.db.write()`` and commit your
    effects there. Jobs run at least once: pass ``ctx.idempotency_key`` to any outside
    recipient so that a retried job is recognised as the same one.
    """

    engine: FhirEngine
    job_id: int
    kind: str
    attempt: int  # 1 on the first run
    max_attempts: int
    key: str | None  # the key given to enqueue, if any

    @property
    def idempotency_key(self) -> str:
        """Stable across retries of this job: its enqueue key, else ``job-<id>``."""
        return self.key if self.key is not None else f"job-{self.job_id}"


JobFunction = Callable[[JobContext, dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class JobKind:
    """A registered job kind and its retry policy."""

    name: str
    function: JobFunction
    max_attempts: int = 5
    backoff_seconds: float = 30.0  # delay before the 2nd attempt; doubles each time
    max_backoff_seconds: float = 3600.0
    timeout_seconds: float = 300.0  # a run taking longer is cancelled and counts as failed


@dataclass(frozen=True, slots=True)
class Schedule:
    """A recurring job: the kind ``name`` enqueued once per cron occurrence (UTC)."""

    name: str
    cron: str


@dataclass(frozen=True, slots=True)
class Event:
    """One resource change from the outbox, as a workflow handler receives it."""

    outbox_pk: int
    resource_type: str
    resource_id: str
    version_id: int
    action: str  # create | update | delete
    created_at: datetime
    resource: dict[str, Any] | None  # that version's content (None for a deletion)


EventHandler = Callable[[JobContext, Event], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Handler:
    """A workflow handler for changes of one resource type."""

    name: str
    resource_type: str
    actions: frozenset[str]
    function: EventHandler


@dataclass(slots=True)
class Registry:
    """All job kinds, schedules and handlers of this process."""

    kinds: dict[str, JobKind] = field(default_factory=dict)
    schedules: dict[str, Schedule] = field(default_factory=dict)
    handlers: dict[str, Handler] = field(default_factory=dict)

    def handlers_for(self, resource_type: str, action: str) -> list[Handler]:
        return [
            h
            for h in self.handlers.values()
            if h.resource_type == resource_type and action in h.actions
        ]


registry = Registry()

_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
ACTIONS = frozenset({"create", "update", "delete"})


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise ValueError(f"job name {name!r}: 1-100 letters, digits, '_', '.', ':', '-'")


def job(
    name: str,
    *,
    max_attempts: int = 5,
    backoff_seconds: float = 30.0,
    max_backoff_seconds: float = 3600.0,
    timeout_seconds: float = 300.0,
) -> Callable[[JobFunction], JobFunction]:
    """Register ``async def f(ctx, payload)`` as the job kind ``name``."""
    _check_name(name)
    if max_attempts < 1 or backoff_seconds < 0 or timeout_seconds <= 0:
        raise ValueError("max_attempts >= 1, backoff_seconds >= 0 and timeout_seconds > 0")

    def register(function: JobFunction) -> JobFunction:
        registry.kinds[name] = JobKind(
            name, function, max_attempts, backoff_seconds, max_backoff_seconds, timeout_seconds
        )
        return function

    return register


def schedule(
    cron: str,
    *,
    name: str,
    max_attempts: int = 3,
    backoff_seconds: float = 60.0,
    timeout_seconds: float = 300.0,
) -> Callable[[JobFunction], JobFunction]:
    """Register a recurring job run once per occurrence of ``cron`` (UTC).

    The function receives ``{"occurrence": "<ISO datetime>"}``. Missed occurrences (every
    process down) are not replayed one by one: the newest missed one runs once.
    """
    if not croniter.is_valid(cron):
        raise ValueError(f"invalid cron expression {cron!r}")
    register_job = job(
        name,
        max_attempts=max_attempts,
        backoff_seconds=backoff_seconds,
        timeout_seconds=timeout_seconds,
    )

    def register(function: JobFunction) -> JobFunction:
        register_job(function)
        registry.schedules[name] = Schedule(name, cron)
        return function

    return register


def on_event(
    resource_type: str,
    *,
    actions: Iterable[str] = ("create", "update"),
    name: str | None = None,
    max_attempts: int = 10,
    backoff_seconds: float = 10.0,
    max_backoff_seconds: float = 3600.0,
    timeout_seconds: float = 300.0,
) -> Callable[[EventHandler], EventHandler]:
    """Register ``async def h(ctx, event)`` for changes of ``resource_type``.

    Run after commit from the outbox, at least once per (handler, event); never again
    once it succeeded. Each run is a job ``workflow:<name>`` with its own retries.
    """
    wanted = frozenset(actions)
    if not wanted or not wanted <= ACTIONS:
        raise ValueError(f"actions must be a non-empty subset of {sorted(ACTIONS)}")

    def register(function: EventHandler) -> EventHandler:
        handler_name = name or f"{function.__module__}.{function.__qualname__}"
        kind = f"workflow:{handler_name}"
        _check_name(kind)
        registry.handlers[handler_name] = Handler(handler_name, resource_type, wanted, function)

        async def run(ctx: JobContext, payload: dict[str, Any]) -> None:
            from smartmed.jobs.dispatch import run_handler

            await run_handler(ctx, handler_name, payload)

        registry.kinds[kind] = JobKind(
            kind, run, max_attempts, backoff_seconds, max_backoff_seconds, timeout_seconds
        )
        return function

    return register
