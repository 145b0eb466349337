"""The whole flow over HTTP with the sandbox: order, checkout page, pay, signed callback
(a durable job), paid event, fulfilment, refund through the API; the FHIR record follows."""

from __future__ import annotations

import re
from typing import Any

import httpx
import orjson
from fastapi import FastAPI
from sqlalchemy import select

from smartmed.fhir.context import FhirEngine
from smartmed.jobs import JobContext
from smartmed.payments import STATE_TAG_SYSTEM, PaymentEvent, on_payment, service
from smartmed.payments.tables import payment_callback, sandbox_payment
from tests.payments.conftest import (
    MERCHANT,
    SANDBOX,
    drain,
    ledger_sum,
    new_order,
    order_row,
    token,
)

SEEN: list[PaymentEvent] = []


@on_payment("paid", name="tests.payments.record_paid")
async def record_paid(ctx: JobContext, event: PaymentEvent) -> None:
    SEEN.append(event)


async def read(engine: FhirEngine, ref: str) -> dict[str, Any]:
    async with engine.db.read() as conn:
        stored = await engine.repository(conn).read(*ref.split("/", 1))
    return dict(orjson.loads(stored.content or "{}"))


async def pay_on_page(pay_url: str, app: FastAPI) -> httpx.Response:
    """What the payer's browser does on the sandbox checkout page."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=SANDBOX) as b:
        page = await b.get(pay_url, headers={"accept-language": "en"})
        assert page.status_code == 200, page.text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf is not None
        action = re.search(r'action="([^"]+/pay)"', page.text)
        assert action is not None
        return await b.post(action.group(1), data={"csrf": csrf.group(1)})


async def test_pay_fulfil_refund_round_trip(
    pay_app: FastAPI, engine: FhirEngine, http: httpx.AsyncClient
) -> None:
    order = await new_order(engine, "120.00")
    invoice = await read(engine, order.invoice)
    assert invoice["status"] == "draft"
    assert invoice["totalGross"] == {"value": 120.00, "currency": "CNY"}
    checkout = await service.start_checkout(engine, order_id=order.id)
    assert checkout.pay_url.startswith(f"{SANDBOX}/sandbox/pay/checkout/")
    assert checkout.qr == checkout.pay_url
    again = await service.start_checkout(engine, order_id=order.id)
    assert again == checkout  # idempotent: one payment at the provider
    assert (await read(engine, order.invoice))["status"] == "issued"

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=pay_app), base_url=SANDBOX
    ) as browser:
        page = await browser.get(checkout.pay_url, headers={"accept-language": "en"})
    assert page.status_code == 200
    assert "¥120.00" in page.text and "<svg" in page.text and "Pay ¥120.00" in page.text
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=pay_app), base_url=SANDBOX
    ) as browser:
        zh = await browser.get(checkout.pay_url, headers={"accept-language": "zh-CN"})
    assert "支付 ¥120.00" in zh.text

    done = await pay_on_page(checkout.pay_url, pay_app)
    assert done.status_code == 303
    assert done.headers["location"] == (f"{MERCHANT}/payments/orders/{order.id}/return?result=paid")
    assert (await order_row(engine, order.id)).state == "created"  # not before the callback
    await drain(engine)
    row = await order_row(engine, order.id)
    assert (row.state, row.received_fen, row.refunded_fen) == ("paid", 12000, 0)
    assert await ledger_sum(engine, order.id, "payment") == 12000
    invoice = await read(engine, order.invoice)
    assert invoice["status"] == "balanced"
    assert {"system": STATE_TAG_SYSTEM, "code": "paid"} in invoice["meta"]["tag"]
    assert (await read(engine, order.charge_item))["status"] == "billed"
    async with engine.db.read() as conn:
        sbx = (
            await conn.execute(
                select(sandbox_payment).where(sandbox_payment.c.out_trade_no == order.id)
            )
        ).one()
        outcomes = (
            (
                await conn.execute(
                    select(payment_callback.c.outcome).where(
                        payment_callback.c.order_id == order.id
                    )
                )
            )
            .scalars()
            .all()
        )
    assert sbx.notified_at is not None and sbx.notify_attempts == 1
    assert outcomes == ["accepted"]
    events = [e for e in SEEN if e.order_id == order.id]
    assert len(events) == 1
    assert (events[0].name, events[0].target, events[0].amount) == (
        "payment.paid",
        order.target,
        order.amount,
    )

    async with engine.db.write() as conn:
        await service.mark_fulfilled(engine, conn, order_id=order.id, by=order.target)
    assert (await order_row(engine, order.id)).state == "fulfilled"

    resident = await token(pay_app, order.subject, ["resident"])
    refused = await http.post(
        f"/api/payments/orders/{order.id}/refund", json={"reason": "x"}, headers=resident
    )
    assert refused.status_code == 403
    admin = await token(pay_app, "Practitioner/admin1", ["platform-admin"])
    part = await http.post(
        f"/api/payments/orders/{order.id}/refund",
        json={"amount": "20.00", "reason": "one visit not wanted"},
        headers=admin,
    )
    assert part.status_code == 202, part.text
    too_much = await http.post(
        f"/api/payments/orders/{order.id}/refund",
        json={"amount": "100.01", "reason": "more than is left"},
        headers=admin,
    )
    assert too_much.status_code == 409
    assert too_much.json()["resourceType"] == "OperationOutcome"
    rest = await http.post(
        f"/api/payments/orders/{order.id}/refund", json={"reason": "cancelled"}, headers=admin
    )
    assert rest.status_code == 202 and rest.json()["amount"] == "100.00"
    await drain(engine)
    row = await order_row(engine, order.id)
    assert (row.state, row.received_fen, row.refunded_fen, row.reserved_fen) == (
        "refunded",
        12000,
        12000,
        0,
    )
    assert await ledger_sum(engine, order.id, "refund") == 12000
    async with engine.db.read() as conn:
        outcomes = (
            (
                await conn.execute(
                    select(payment_callback.c.outcome)
                    .where(payment_callback.c.order_id == order.id)
                    .order_by(payment_callback.c.pk)
                )
            )
            .scalars()
            .all()
        )
    # The sandbox also reports each refund; the refund job had counted them already.
    assert outcomes == ["accepted", "refund-duplicate", "refund-duplicate"]
    invoice = await read(engine, order.invoice)
    assert (invoice["status"], invoice["cancelledReason"]) == ("cancelled", "refunded")
    status = await http.get(f"/api/payments/orders/{order.id}", headers=resident)
    assert status.status_code == 200
    assert (status.json()["state"], status.json()["refunded"]) == ("refunded", "120.00")
    other = await token(pay_app, "Patient/someone-else", ["resident"])
    hidden = await http.get(f"/api/payments/orders/{order.id}", headers=other)
    assert hidden.status_code == 404
