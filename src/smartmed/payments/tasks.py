"""Durable jobs of the payments module: refunds at the provider, and expiry of unpaid orders.

Registered when the module is imported (the app does; ``smartmed worker`` processes need
``SMARTMED_JOB_MODULES=smartmed.payments.tasks`` on PostgreSQL).
"""

from __future__ import annotations

from typing import Any

import structlog
from sqlalchemy import select

from smartmed.fhir.model import utcnow
from smartmed.jobs import JobContext, job, schedule
from smartmed.payments import service
from smartmed.payments.errors import ProviderError, ProviderRejected
from smartmed.payments.provider import get_provider
from smartmed.payments.tables import payment_refund

log = structlog.get_logger("smartmed.payments")


@job("payments.refund", max_attempts=8, backoff_seconds=30, max_backoff_seconds=3600)
async def refund_at_provider(ctx: JobContext, payload: dict[str, Any]) -> None:
    """Ask the provider for one refund (idempotent on the refund id) and count it."""
    refund_id = str(payload["refund"])
    engine = ctx.engine
    async with engine.db.read() as conn:
        ref = (
            await conn.execute(select(payment_refund).where(payment_refund.c.id == refund_id))
        ).first()
    if ref is None or ref.state != "pending":
        return
    provider = get_provider(engine.settings)
    try:
        await provider.refund(
            out_trade_no=ref.order_id, out_refund_no=refund_id, amount_fen=ref.amount_fen
        )
    except ProviderRejected as exc:
        async with engine.db.write() as conn:
            await service.fail_refund(engine, conn, refund_id=refund_id, error=str(exc))
        return
    except ProviderError as exc:
        if ctx.attempt >= ctx.max_attempts:
            async with engine.db.write() as conn:
                await service.fail_refund(engine, conn, refund_id=refund_id, error=str(exc))
            return
        raise
    async with engine.db.write() as conn:
        await service.record_refund(engine, conn, refund_id=refund_id, source="refund")


@schedule("* * * * *", name="payments.expire", max_attempts=2)
async def expire_orders(ctx: JobContext, payload: dict[str, Any]) -> None:
    """Every minute: created orders past their deadline are checked with the provider."""
    async with ctx.engine.db.read() as conn:
        due = await service.due_for_expiry(conn, now=utcnow())
    failed = 0
    for order_id in due:
        try:
            await service.expire_order(ctx.engine, order_id=order_id)
        except ProviderError as exc:  # unsure whether it was paid: leave it for next time
            failed += 1
            log.warning("order not expired: provider unavailable", order=order_id, error=str(exc))
    if due:
        log.info("payment orders checked for expiry", due=len(due), failed=failed)
