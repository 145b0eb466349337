"""Delivery: one step of one notification, run by the ``notify.deliver`` job.

A step is one send on one channel of the plan. Its outcome and the next step are
recorded together in one transaction, fenced on (status, step, attempts) so that a
duplicate or stale job changes nothing:

- sent: the notification is delivered; its Communication completed;
- temporary failure with attempts left: the same channel again after
  ``SMARTMED_NOTIFY_RETRY_SECONDS * 2**(attempt-1)``;
- permanent failure, or attempts used up: the next channel at once;
- no channel left: delivered if the in-app inbox got it, else undeliverable
  (Communication not-done), for staff to follow up.

The in-app inbox, when asked for, is written at the first step, before any other send.
No database connection is held while a provider is called.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import orjson
import structlog
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from smartmed.fhir.context import FhirEngine
from smartmed.fhir.model import utcnow
from smartmed.notify.channels import Message, build_channels
from smartmed.notify.communication import completed, not_done, update_communication
from smartmed.notify.errors import PermanentFailure, TemporaryFailure
from smartmed.notify.tables import notification, notify_attempt
from smartmed.notify.tasks import schedule_step
from smartmed.notify.templates import Rendered

log = structlog.get_logger("smartmed.notify")


def _message(row: Any, channel: str, address: str) -> Message:
    rendered = Rendered.from_json(orjson.loads(row.rendered))
    return Message(
        notification_id=row.id,
        idempotency_key=f"{row.id}:{channel}",
        recipient=row.recipient,
        owner=row.owner,
        address=address,
        template=row.template,
        urgency=row.urgency,
        locale=rendered.locale,
        subject=rendered.subject,
        body=rendered.body,
        sms=rendered.sms,
        wechat=rendered.wechat,
    )


async def _load(engine: FhirEngine, notification_id: str) -> Any:
    async with engine.db.read() as conn:
        return (
            await conn.execute(select(notification).where(notification.c.id == notification_id))
        ).first()


async def _claim_step(
    conn: AsyncConnection, notification_id: str, at: tuple[int, int], **values: Any
) -> bool:
    """Change the notification only if it is still queued at ``at`` (step, attempts)."""
    step, attempts = at
    n = notification.c
    result = await conn.execute(
        update(notification)
        .where(
            n.id == notification_id,
            n.status == "queued",
            n.step == step,
            n.attempts == attempts,
        )
        .values(**values)
    )
    return bool(result.rowcount == 1)


async def _log_attempt(
    conn: AsyncConnection,
    notification_id: str,
    channel: str,
    attempt: int,
    outcome: str,
    detail: str | None,
) -> None:
    await conn.execute(
        notify_attempt.insert().values(
            notification_id=notification_id,
            channel=channel,
            attempt=attempt,
            at=utcnow(),
            outcome=outcome,
            detail=detail,
        )
    )


async def deliver_step(engine: FhirEngine, notification_id: str, step: int, attempt: int) -> None:
    """Run step ``step`` (attempt ``attempt``) of a notification's delivery."""
    row = await _load(engine, notification_id)
    if row is None or row.status != "queued" or row.step != step or row.attempts != attempt - 1:
        return  # a duplicate or stale job: the notification has moved on
    providers = build_channels(engine)
    delivered: list[str] = orjson.loads(row.delivered_by) if row.delivered_by else []
    plan: list[list[str]] = orjson.loads(row.plan)
    if row.inapp and "inapp" not in delivered:
        await providers["inapp"].send(_message(row, "inapp", row.owner))
        delivered.append("inapp")
        async with engine.db.write() as conn:
            if not await _claim_step(
                conn,
                notification_id,
                (step, attempt - 1),
                delivered_by=orjson.dumps(delivered).decode(),
            ):
                return
            await _log_attempt(conn, notification_id, "inapp", 1, "sent", None)
            if not plan:
                await _finish(engine, conn, row, delivered, reason=None)
                return
    if step >= len(plan):
        return
    channel, address = plan[step]
    try:
        await providers[channel].send(_message(row, channel, address))
    except TemporaryFailure as exc:
        if attempt < engine.settings.notify_max_attempts:
            await _retry(engine, row, step, attempt, channel, str(exc))
        else:
            await _next_channel(engine, row, step, attempt, channel, str(exc), delivered)
        return
    except PermanentFailure as exc:
        await _next_channel(engine, row, step, attempt, channel, str(exc), delivered)
        return
    async with engine.db.write() as conn:
        if not await _claim_step(conn, notification_id, (step, attempt - 1), attempts=attempt):
            return
        await _log_attempt(conn, notification_id, channel, attempt, "sent", None)
        await _finish(engine, conn, row, [*delivered, channel], reason=None)


async def _retry(
    engine: FhirEngine, row: Any, step: int, attempt: int, channel: str, detail: str
) -> None:
    delay = engine.settings.notify_retry_seconds * 2 ** (attempt - 1)
    async with engine.db.write() as conn:
        if not await _claim_step(conn, row.id, (step, attempt - 1), attempts=attempt):
            return
        await _log_attempt(conn, row.id, channel, attempt, "retry", detail)
        await schedule_step(
            conn,
            row.id,
            step=step,
            attempt=attempt + 1,
            run_at=utcnow() + timedelta(seconds=delay),
        )
    log.info("notification send failed; retrying", notification=row.id, channel=channel)


async def _next_channel(
    engine: FhirEngine,
    row: Any,
    step: int,
    attempt: int,
    channel: str,
    detail: str,
    delivered: list[str],
) -> None:
    plan = orjson.loads(row.plan)
    async with engine.db.write() as conn:
        if step + 1 < len(plan):
            if not await _claim_step(conn, row.id, (step, attempt - 1), step=step + 1, attempts=0):
                return
            await _log_attempt(conn, row.id, channel, attempt, "failed", detail)
            await schedule_step(conn, row.id, step=step + 1, attempt=1, run_at=utcnow())
            log.info("notification falls back", notification=row.id, failed=channel)
            return
        if not await _claim_step(conn, row.id, (step, attempt - 1), attempts=attempt):
            return
        await _log_attempt(conn, row.id, channel, attempt, "failed", detail)
        reason = await _failures(conn, row)
        await _finish(engine, conn, row, delivered, reason=reason)


async def _failures(conn: AsyncConnection, row: Any) -> str:
    """Why no channel delivered: the last failure of each channel, and what was skipped."""
    a = notify_attempt.c
    rows = (
        await conn.execute(
            select(a.channel, a.attempt, a.detail)
            .where(a.notification_id == row.id, a.outcome == "failed")
            .order_by(a.pk)
        )
    ).all()
    parts = [f"{r.channel} failed after {r.attempt} attempt(s): {r.detail}" for r in rows]
    parts += [f"{c}: {why}" for c, why in orjson.loads(row.skipped).items()]
    return "; ".join(parts)


async def _finish(
    engine: FhirEngine,
    conn: AsyncConnection,
    row: Any,
    delivered: list[str],
    *,
    reason: str | None,
) -> None:
    """Close the notification and its Communication (the caller claimed the step)."""
    now = utcnow()
    status = "delivered" if delivered else "undeliverable"
    await conn.execute(
        update(notification)
        .where(notification.c.id == row.id)
        .values(
            status=status,
            delivered_by=orjson.dumps(delivered).decode(),
            reason=reason,
            finished_at=now,
        )
    )
    repo = engine.repository(conn)
    if delivered:
        await update_communication(repo, row.communication_id, completed, delivered, now)
    else:
        await update_communication(repo, row.communication_id, not_done, reason or "unknown")
        log.warning("notification undeliverable", notification=row.id, reason=reason)


async def give_up(engine: FhirEngine, notification_id: str, error: str) -> None:
    """Record a notification whose delivery job keeps failing as undeliverable."""
    async with engine.db.write() as conn:
        row = (
            await conn.execute(select(notification).where(notification.c.id == notification_id))
        ).first()
        if row is None or row.status != "queued":
            return
        reason = f"delivery failed with an internal error: {error}"
        delivered = orjson.loads(row.delivered_by) if row.delivered_by else []
        if delivered:  # the inbox has it: delivered, with the error noted
            await _finish(engine, conn, row, delivered, reason=reason)
            return
        await conn.execute(
            update(notification)
            .where(notification.c.id == notification_id)
            .values(status="undeliverable", reason=reason, finished_at=utcnow())
        )
        repo = engine.repository(conn)
        await update_communication(repo, row.communication_id, not_done, reason, system_error=True)
