"""Durable jobs, recurring schedules, workflow handlers and FHIR Subscription delivery.

Public API for other modules (docs/events.md)::

    from smartmed.jobs import job, enqueue, schedule, on_event, JobContext, Event

    @job("notify.deliver", max_attempts=5, backoff_seconds=30)
    async def deliver(ctx: JobContext, payload: dict[str, Any]) -> None: ...

    await enqueue(conn, "notify.deliver", {"to": "..."}, key="idempotency-key")

    @schedule("0 8 * * *", name="followup.reminders")
    async def reminders(ctx: JobContext, payload: dict[str, Any]) -> None: ...

    @on_event("Observation", actions={"create"})
    async def on_observation(ctx: JobContext, event: Event) -> None: ...

A job that raises is retried with exponential back-off and jitter until its
``max_attempts``, then kept as ``dead`` for administrators (``GET /api/admin/jobs``).
Jobs and handlers run at least once; effects outside the database must be idempotent
(``ctx.idempotency_key``).
"""

from smartmed.jobs.queue import enqueue
from smartmed.jobs.registry import Event, JobContext, job, on_event, schedule

__all__ = ["Event", "JobContext", "enqueue", "job", "on_event", "schedule"]
