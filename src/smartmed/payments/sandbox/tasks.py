"""The sandbox's signed callbacks to the merchant, retried with back-off until acknowledged.

Like real providers (WeChat Pay retries over about a day: 15 s, 15 s, 30 s, 3 min, ...),
a callback not answered 2xx is sent again later; each attempt is freshly signed (new
timestamp and nonce) over the same body.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import structlog
from sqlalchemy import select, update

from smartmed.fhir.model import fhir_instant, utcnow
from smartmed.jobs import JobContext, job
from smartmed.payments.provider import http_client, signing_secret
from smartmed.payments.signing import sign_headers
from smartmed.payments.tables import sandbox_payment, sandbox_refund

log = structlog.get_logger("smartmed.payments.sandbox")


def callback_body(payment: Any, refund: Any | None) -> bytes:
    """The JSON the merchant receives (the sandbox's wire format)."""
    if refund is None:
        document = {
            "id": f"evt-{payment.transaction_id}",
            "event_type": "TRANSACTION.SUCCESS",
            "merchant_id": payment.merchant_id,
            "out_trade_no": payment.out_trade_no,
            "payment_id": payment.id,
            "transaction_id": payment.transaction_id,
            "amount_fen": payment.paid_fen,
            "paid_at": fhir_instant(payment.paid_at),
        }
    else:
        document = {
            "id": f"evt-{refund.id}",
            "event_type": "REFUND.SUCCESS",
            "merchant_id": payment.merchant_id,
            "out_trade_no": payment.out_trade_no,
            "out_refund_no": refund.out_refund_no,
            "refund_id": refund.id,
            "amount_fen": refund.amount_fen,
        }
    return orjson.dumps(document)


@job("sandbox.notify", max_attempts=15, backoff_seconds=15, max_backoff_seconds=1800)
async def send_callback(ctx: JobContext, payload: dict[str, Any]) -> None:
    """POST one signed callback to the merchant's notify URL; raise unless 2xx."""
    engine = ctx.engine
    async with engine.db.read() as conn:
        payment = (
            await conn.execute(
                select(sandbox_payment).where(sandbox_payment.c.id == payload["payment"])
            )
        ).first()
        refund = None
        if payload.get("refund"):
            refund = (
                await conn.execute(
                    select(sandbox_refund).where(sandbox_refund.c.id == payload["refund"])
                )
            ).first()
    if payment is None or (payload.get("refund") and refund is None):
        return
    body = callback_body(payment, refund)
    headers = sign_headers(signing_secret(engine.settings), payment.merchant_id, body)
    headers["content-type"] = "application/json"
    async with engine.db.write() as conn:
        await conn.execute(
            update(sandbox_payment)
            .where(sandbox_payment.c.id == payment.id)
            .values(notify_attempts=sandbox_payment.c.notify_attempts + 1)
        )
    try:
        async with http_client(payment.notify_url) as http:
            response = await http.post(payment.notify_url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        raise RuntimeError(f"merchant unreachable: {type(exc).__name__}") from None
    if not 200 <= response.status_code < 300:
        raise RuntimeError(f"merchant answered HTTP {response.status_code}")
    if refund is None:
        async with engine.db.write() as conn:
            await conn.execute(
                update(sandbox_payment)
                .where(sandbox_payment.c.id == payment.id)
                .values(notified_at=utcnow())
            )
    log.info("sandbox callback acknowledged", payment=payment.id, refund=bool(refund))
