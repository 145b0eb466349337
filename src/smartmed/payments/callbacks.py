"""The provider's asynchronous callbacks: verified, deduplicated, applied once, audited.

| outcome | when | HTTP answer | effect |
|---|---|---|---|
| ``bad-signature`` | missing/invalid signature, stale timestamp, other merchant | 401 | none |
| ``malformed`` | signed, but not a callback we understand | 400 | none |
| ``replayed`` | a nonce seen before (a captured callback sent again) | 200 | none |
| ``unknown-order`` | signed, for an order we do not have | 404 | none |
| ``accepted`` | the payment of a created order, right amount | 200 | order paid, event |
| ``duplicate`` | a transaction counted before (retries, query first) | 200 | none |
| ``amount-mismatch``, ``late-payment``, | see ``service.apply_payment`` | 200 | counted, |
| ``double-payment`` | | | refund queued, people told |
| ``refund-noted`` / ``refund-duplicate`` | a refund the provider made | 200 | counted once |
| ``unknown-refund`` | signed, a refund we never asked for | 404 | none |

2xx tells the provider to stop retrying; every callback is logged (order id and outcome,
never personal data), kept in ``payment_callback`` and audited (AuditEvent subtype
``payment-callback``).
"""

from __future__ import annotations

from collections.abc import Mapping

import structlog
from sqlalchemy import select, update

from smartmed.fhir.context import FhirEngine
from smartmed.fhir.hooks import AuditRecord
from smartmed.fhir.model import utcnow
from smartmed.jobs.queue import insert_ignore
from smartmed.payments import service
from smartmed.payments.errors import BadCallback
from smartmed.payments.provider import get_provider
from smartmed.payments.tables import payment_callback, payment_order

log = structlog.get_logger("smartmed.payments")

STATUS = {
    "bad-signature": 401,
    "malformed": 400,
    "unknown-order": 404,
    "unknown-refund": 404,
    "unknown-provider": 404,
}
# AuditEvent.outcome: 0 success, 4 minor failure, 8 serious failure.
_AUDIT_OUTCOME = {
    "accepted": "0",
    "duplicate": "0",
    "replayed": "0",
    "refund-noted": "0",
    "refund-duplicate": "0",
    "unknown-order": "4",
    "unknown-refund": "4",
    "malformed": "4",
    "bad-signature": "8",
    "amount-mismatch": "8",
    "late-payment": "8",
    "double-payment": "8",
}


async def handle_callback(
    engine: FhirEngine,
    provider_name: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    source_ip: str | None = None,
    now: float | None = None,
) -> tuple[int, str]:
    """Verify and apply one callback; (HTTP status to answer, outcome)."""
    provider = get_provider(engine.settings)
    if provider_name != provider.name:
        return 404, "unknown-provider"
    order_id: str | None = None
    try:
        notice = provider.parse_callback(headers, body, now=now)
    except BadCallback as exc:
        outcome = exc.outcome
        async with engine.db.write() as conn:
            await conn.execute(
                payment_callback.insert().values(
                    provider=provider.name,
                    received_at=utcnow(),
                    outcome=outcome,
                    detail=exc.detail,
                )
            )
        log.warning("payment callback refused", outcome=outcome, reason=exc.detail)
        await _audit(engine, outcome, None, None, exc.detail, source_ip)
        return STATUS[outcome], outcome
    order_id = notice.out_trade_no
    async with engine.db.write() as conn:
        pk = (
            await conn.execute(
                insert_ignore(conn, payment_callback, ["provider", "nonce"])
                .values(
                    provider=provider.name,
                    received_at=utcnow(),
                    outcome="received",
                    order_id=order_id[:36],
                    nonce=notice.nonce,
                )
                .returning(payment_callback.c.pk)
            )
        ).scalar_one_or_none()
        if pk is None:  # kept without the nonce, which belongs to the first delivery
            outcome = "replayed"
            await conn.execute(
                payment_callback.insert().values(
                    provider=provider.name,
                    received_at=utcnow(),
                    outcome=outcome,
                    order_id=order_id[:36],
                )
            )
        elif notice.event == "payment":
            outcome = await service.apply_payment(
                engine,
                conn,
                order_id=order_id,
                transaction_id=notice.transaction_id,
                amount_fen=notice.amount_fen,
                source="callback",
            )
        else:
            known = (
                await conn.execute(select(payment_order.c.id).where(payment_order.c.id == order_id))
            ).first()
            if known is None:
                outcome = "unknown-order"
            else:
                result = await service.record_refund(
                    engine, conn, refund_id=notice.transaction_id, source="callback"
                )
                outcome = {"recorded": "refund-noted", "duplicate": "refund-duplicate"}.get(
                    result, "unknown-refund"
                )
        if pk is not None:
            await conn.execute(
                update(payment_callback)
                .where(payment_callback.c.pk == pk)
                .values(outcome=outcome[:20])
            )
        subject = (
            await conn.execute(
                select(payment_order.c.subject, payment_order.c.invoice_id).where(
                    payment_order.c.id == order_id
                )
            )
        ).first()
        # The audit names the resident whose record this is (the Invoice's subject), not
        # the payer, who may be a representative (RelatedPerson).
        patient = (
            await service.beneficiary_of(engine, conn, subject.invoice_id, subject.subject)
            if subject
            else None
        )
    level = log.info if _AUDIT_OUTCOME.get(outcome, "4") == "0" else log.warning
    level("payment callback", outcome=outcome, order=order_id, kind=notice.event)
    await _audit(
        engine,
        outcome,
        f"Invoice/{subject.invoice_id}" if subject else None,
        patient,
        f"{notice.event} callback: {outcome}",
        source_ip,
    )
    return STATUS.get(outcome, 200), outcome


async def _audit(
    engine: FhirEngine,
    outcome: str,
    entity: str | None,
    patient: str | None,
    detail: str,
    source_ip: str | None,
) -> None:
    if engine.audit is None:
        return
    await engine.audit.record(
        AuditRecord(
            action="E",
            subtype="payment-callback",
            outcome=_AUDIT_OUTCOME.get(outcome, "4"),
            recorded=utcnow(),
            client_id="payment-provider",
            source_ip=source_ip,
            entities=(entity,) if entity else (),
            patients=(patient,) if patient else (),
            detail=detail,
        )
    )
