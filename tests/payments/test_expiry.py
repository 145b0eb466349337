"""Timeouts: the expiry job asks the provider before it expires anything, closes the
provider's payment first, and counts a payment it finds instead of expiring the order."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import select, update

from smartmed.fhir.context import FhirEngine
from smartmed.fhir.errors import Conflict
from smartmed.fhir.model import utcnow
from smartmed.jobs import JobContext
from smartmed.payments import provider as provider_mod
from smartmed.payments import service, tasks
from smartmed.payments.tables import payment_order, sandbox_payment
from tests.payments.conftest import SANDBOX, drain, ledger_sum, new_order, order_row
from tests.payments.test_roundtrip import pay_on_page


async def overdue(engine: FhirEngine, order_id: str) -> None:
    async with engine.db.write() as conn:
        await conn.execute(
            update(payment_order)
            .where(payment_order.c.id == order_id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )


async def run_expiry(engine: FhirEngine) -> None:
    ctx = JobContext(engine, 0, "payments.expire", 1, 2, None)
    await tasks.expire_orders(ctx, {"occurrence": utcnow().isoformat()})


async def invoice(engine: FhirEngine, ref: str) -> dict[str, Any]:
    async with engine.db.read() as conn:
        stored = await engine.repository(conn).read(*ref.split("/", 1))
    return dict(orjson.loads(stored.content or "{}"))


async def test_unpaid_order_expires_and_its_payment_is_closed(engine: FhirEngine) -> None:
    order = await new_order(engine, "50.00")
    await service.start_checkout(engine, order_id=order.id)
    await run_expiry(engine)
    assert (await order_row(engine, order.id)).state == "created"  # not yet due
    await overdue(engine, order.id)
    await run_expiry(engine)
    row = await order_row(engine, order.id)
    assert (row.state, row.received_fen) == ("expired", 0)
    assert row.closed_at is not None
    async with engine.db.read() as conn:
        sbx = (
            await conn.execute(
                select(sandbox_payment.c.state).where(sandbox_payment.c.out_trade_no == order.id)
            )
        ).scalar_one()
    assert sbx == "closed"
    record = await invoice(engine, order.invoice)
    assert (record["status"], record["cancelledReason"]) == ("cancelled", "expired")
    assert (await invoice(engine, order.charge_item))["status"] == "aborted"


async def test_order_never_sent_to_the_provider_expires(engine: FhirEngine) -> None:
    order = await new_order(engine, "5.00")
    await overdue(engine, order.id)
    assert await service.expire_order(engine, order_id=order.id) == "expired"


async def test_paid_but_callback_not_yet_arrived_is_paid_not_expired(
    pay_app: Any, engine: FhirEngine
) -> None:
    order = await new_order(engine, "66.00")
    checkout = await service.start_checkout(engine, order_id=order.id)
    assert (await pay_on_page(checkout.pay_url, pay_app)).status_code == 303
    await overdue(engine, order.id)
    await run_expiry(engine)  # the callback job has not run: the query finds the payment
    row = await order_row(engine, order.id)
    assert (row.state, row.received_fen) == ("paid", 6600)
    await drain(engine)  # now the callback arrives: a duplicate
    row = await order_row(engine, order.id)
    assert (row.state, row.received_fen) == ("paid", 6600)
    assert await ledger_sum(engine, order.id, "payment") == 6600


async def test_provider_down_means_not_expired(engine: FhirEngine) -> None:
    order = await new_order(engine, "7.00")
    await service.start_checkout(engine, order_id=order.id)
    await overdue(engine, order.id)
    saved = provider_mod.MOUNTS[SANDBOX]
    provider_mod.MOUNTS[SANDBOX] = httpx.MockTransport(lambda _r: httpx.Response(503))
    try:
        await run_expiry(engine)
    finally:
        provider_mod.MOUNTS[SANDBOX] = saved
    assert (await order_row(engine, order.id)).state == "created"
    await run_expiry(engine)
    assert (await order_row(engine, order.id)).state == "expired"


async def test_created_orders_cannot_be_fulfilled_or_refunded(engine: FhirEngine) -> None:
    order = await new_order(engine, "9.00")
    with pytest.raises(Conflict, match="only a paid order"):
        async with engine.db.write() as conn:
            await service.mark_fulfilled(engine, conn, order_id=order.id, by="Contract/1")
    with pytest.raises(Conflict, match="only paid or fulfilled"):
        async with engine.db.write() as conn:
            await service.refund(engine, conn, order_id=order.id, reason="no", by="x")
    assert (await order_row(engine, order.id)).state == "created"
