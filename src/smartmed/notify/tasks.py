"""The delivery job (``notify.deliver``) and how steps are queued (smartmed.jobs).

One job per (notification, plan step, attempt), keyed ``notify:<id>:<step>:<attempt>``
so each is queued once whatever retries the caller's code makes. Back-off between sends
on one channel and the move to the next channel are decided by the delivery flow, which
queues the next step itself (``run_at``), because the job kind's own retry policy is one
fixed curve for all channels and cannot say "now try SMS instead". The job runner's
retries remain for what the flow did not foresee (a database error mid-step); after its
last attempt the notification is recorded as undeliverable rather than left queued.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from smartmed.jobs import JobContext, enqueue, job

KIND = "notify.deliver"


async def schedule_step(
    conn: AsyncConnection, notification_id: str, *, step: int, attempt: int, run_at: datetime
) -> None:
    """Queue delivery step ``step`` (attempt ``attempt``) in the caller's transaction."""
    await enqueue(
        conn,
        KIND,
        {"id": notification_id, "step": step, "attempt": attempt},
        run_at=run_at,
        key=f"notify:{notification_id}:{step}:{attempt}",
    )


@job(KIND, max_attempts=5, backoff_seconds=30)
async def deliver(ctx: JobContext, payload: dict[str, Any]) -> None:
    """Run one delivery step (see ``smartmed.notify.flows``)."""
    from smartmed.notify.flows import deliver_step, give_up

    notification_id = str(payload["id"])
    try:
        await deliver_step(
            ctx.engine, notification_id, int(payload["step"]), int(payload["attempt"])
        )
    except Exception as exc:
        if ctx.attempt >= ctx.max_attempts:
            await give_up(ctx.engine, notification_id, f"{type(exc).__name__}: {exc}")
        raise
