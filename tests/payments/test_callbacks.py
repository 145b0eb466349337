"""Callbacks that must not count twice or at all: duplicates, replays, forgeries, stale
signatures, unknown orders, wrong amounts, late and double payments. Each is answered,
logged in ``payment_callback`` and leaves the money and state exactly as stated."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
from sqlalchemy import select, update

from smartmed.audit.record import from_body
from smartmed.audit.tables import audit_log
from smartmed.fhir.context import FhirEngine
from smartmed.notify.tables import notification
from smartmed.payments import service
from smartmed.payments.provider import PaymentRequest, SandboxProvider
from smartmed.payments.tables import (
    payment_callback,
    payment_ledger,
    payment_order,
    payment_refund,
    sandbox_payment,
)
from tests.payments.conftest import (
    MERCHANT,
    SANDBOX,
    drain,
    ledger_sum,
    new_order,
    order_row,
    paid_notice,
    post_callback,
    signed,
)
from tests.payments.test_roundtrip import pay_on_page


async def outcomes(engine: FhirEngine, order_id: str) -> list[str]:
    async with engine.db.read() as conn:
        rows = await conn.execute(
            select(payment_callback.c.outcome)
            .where(payment_callback.c.order_id == order_id)
            .order_by(payment_callback.c.pk)
        )
        return list(rows.scalars().all())


async def refunds(engine: FhirEngine, order_id: str) -> list[Any]:
    async with engine.db.read() as conn:
        return list(
            (
                await conn.execute(
                    select(payment_refund).where(payment_refund.c.order_id == order_id)
                )
            ).all()
        )


async def test_duplicate_and_replayed_callbacks_count_once(
    engine: FhirEngine, http: httpx.AsyncClient
) -> None:
    order = await new_order(engine, "35.50")
    notice = paid_notice(order.id, 3550)
    first = await post_callback(http, *signed(notice))
    assert (first.status_code, first.json()["outcome"]) == (200, "accepted")
    again = await post_callback(http, *signed(notice))  # the provider retries: new nonce
    assert (again.status_code, again.json()["outcome"]) == (200, "duplicate")
    body, headers = signed(notice)
    await post_callback(http, body, headers)
    replay = await post_callback(http, body, headers)  # the very same request once more
    assert (replay.status_code, replay.json()["outcome"]) == (200, "replayed")
    row = await order_row(engine, order.id)
    assert (row.state, row.received_fen) == ("paid", 3550)
    assert await ledger_sum(engine, order.id, "payment") == 3550
    assert await outcomes(engine, order.id) == ["accepted", "duplicate", "duplicate", "replayed"]


async def test_forged_and_stale_callbacks_change_nothing(
    engine: FhirEngine, http: httpx.AsyncClient
) -> None:
    order = await new_order(engine, "80.00")
    notice = paid_notice(order.id, 8000)
    forged = await post_callback(http, *signed(notice, secret="not-the-shared-secret-000"))
    assert (forged.status_code, forged.json()["outcome"]) == (401, "bad-signature")
    stale = await post_callback(http, *signed(notice, now=time.time() - 3600))
    assert stale.status_code == 401
    body, headers = signed(notice)
    tampered = await post_callback(http, body.replace(b"8000", b"8001"), headers)
    assert tampered.status_code == 401
    unsigned = await http.post(
        "/api/payments/notify/sandbox", content=body, headers={"content-type": "application/json"}
    )
    assert unsigned.status_code == 401
    other_provider = await http.post("/api/payments/notify/alipay", content=body, headers=headers)
    assert other_provider.status_code == 404
    row = await order_row(engine, order.id)
    assert (row.state, row.received_fen) == ("created", 0)
    assert await ledger_sum(engine, order.id, "payment") == 0
    async with engine.db.read() as conn:
        refused = (
            await conn.execute(
                select(payment_callback.c.outcome, payment_callback.c.order_id).where(
                    payment_callback.c.outcome == "bad-signature"
                )
            )
        ).all()
    assert len(refused) >= 4 and all(r.order_id is None for r in refused)
    async with engine.db.read() as conn:
        audited = [
            from_body(b)
            for b in (await conn.execute(select(audit_log.c.body))).scalars().all()
            if '"payment-callback"' in b
        ]
    bad = [r for r in audited if r.outcome == "8" and r.entities == ()]
    assert len(bad) >= 4
    assert all(r.patients == () and order.subject not in (r.detail or "") for r in bad)


async def test_callback_for_unknown_order(engine: FhirEngine, http: httpx.AsyncClient) -> None:
    response = await post_callback(
        http, *signed(paid_notice("00000000-0000-0000-0000-000000000000", 100))
    )
    assert (response.status_code, response.json()["outcome"]) == (404, "unknown-order")
    async with engine.db.read() as conn:
        counted = (
            await conn.execute(
                select(payment_ledger.c.pk).where(
                    payment_ledger.c.order_id == "00000000-0000-0000-0000-000000000000"
                )
            )
        ).all()
    assert counted == []


async def test_malformed_but_signed_callback(http: httpx.AsyncClient) -> None:
    response = await post_callback(http, *signed({"event_type": "TRANSACTION.SUCCESS"}))
    assert (response.status_code, response.json()["outcome"]) == (400, "malformed")


async def test_amount_mismatch_is_refunded_and_escalated_never_activated(
    engine: FhirEngine, http: httpx.AsyncClient
) -> None:
    order = await new_order(engine, "120.00")
    # The provider holds a payment of 1.20 for this order (a tampered or buggy request):
    # the payer really pays it, and its callback says so.
    notify_url = f"{MERCHANT}/api/payments/notify/sandbox"
    made = await SandboxProvider(engine.settings).create_payment(
        PaymentRequest(order.id, 120, "tampered", notify_url, "", order.expires_at)
    )
    assert made.pay_url is not None
    paid = await pay_on_page(made.pay_url, http._transport.app)  # type: ignore[attr-defined]
    assert paid.status_code == 303
    await drain(engine)
    row = await order_row(engine, order.id)
    assert (row.state, row.anomaly, row.received_fen, row.refunded_fen) == (
        "created",
        "amount-mismatch",
        120,
        120,
    )
    assert [r.state for r in await refunds(engine, order.id)] == ["succeeded"]
    async with engine.db.read() as conn:
        sbx = (
            await conn.execute(
                select(sandbox_payment).where(sandbox_payment.c.out_trade_no == order.id)
            )
        ).one()
        told = (
            (
                await conn.execute(
                    select(notification.c.recipient).where(
                        notification.c.template == "payment-review",
                        notification.c.key.like(f"payment-review:{order.id}:%"),
                    )
                )
            )
            .scalars()
            .all()
        )
    assert (sbx.paid_fen, sbx.refunded_fen) == (120, 120)
    assert told == [order.subject]
    assert "amount-mismatch" in await outcomes(engine, order.id)
    # The order can no longer be paid through that payment: it expires.
    async with engine.db.write() as conn:
        await conn.execute(
            update(payment_order)
            .where(payment_order.c.id == order.id)
            .values(expires_at=row.created_at)
        )
    assert await service.expire_order(engine, order_id=order.id) == "expired"
    assert await ledger_sum(engine, order.id, "payment") == 120  # counted once, still


async def test_late_payment_after_expiry_is_refunded(
    engine: FhirEngine, http: httpx.AsyncClient
) -> None:
    order = await new_order(engine, "60.00")
    checkout = await service.start_checkout(engine, order_id=order.id)
    async with engine.db.write() as conn:
        await conn.execute(
            update(payment_order)
            .where(payment_order.c.id == order.id)
            .values(expires_at=order.created_at)
        )
    assert await service.expire_order(engine, order_id=order.id) == "expired"
    async with engine.db.read() as conn:
        sbx = (
            await conn.execute(
                select(sandbox_payment).where(sandbox_payment.c.out_trade_no == order.id)
            )
        ).one()
    assert sbx.state == "closed"  # closed at the provider before the order expired
    await closed_page_refuses(checkout.pay_url, http._transport.app)  # type: ignore[attr-defined]
    # The provider raced us and took the money anyway; its callback arrives late.
    async with engine.db.write() as conn:
        await conn.execute(
            update(sandbox_payment)
            .where(sandbox_payment.c.id == sbx.id)
            .values(state="paid", paid_fen=6000, transaction_id="sbxlate000000000000000001")
        )
    late = await post_callback(
        http, *signed(paid_notice(order.id, 6000, "sbxlate000000000000000001"))
    )
    assert (late.status_code, late.json()["outcome"]) == (200, "late-payment")
    await drain(engine)
    row = await order_row(engine, order.id)
    assert (row.state, row.anomaly, row.received_fen, row.refunded_fen, row.paid_at) == (
        "expired",
        "late-payment",
        6000,
        6000,
        None,
    )


async def closed_page_refuses(pay_url: str, app: Any) -> None:
    """The checkout page of a closed payment offers no pay button and refuses a POST."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=SANDBOX) as b:
        page = await b.get(pay_url, headers={"accept-language": "en"})
        assert page.status_code == 200
        assert 'data-testid="pay"' not in page.text
        assert "This payment can no longer be made." in page.text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf is not None
        posted = await b.post(f"{pay_url}/pay", data={"csrf": csrf.group(1)})
    assert posted.status_code == 409


async def test_double_payment_is_refunded(engine: FhirEngine, http: httpx.AsyncClient) -> None:
    order = await new_order(engine, "10.00")
    await service.start_checkout(engine, order_id=order.id)
    first = await post_callback(http, *signed(paid_notice(order.id, 1000)))
    assert first.json()["outcome"] == "accepted"
    second = await post_callback(http, *signed(paid_notice(order.id, 1000)))
    assert (second.status_code, second.json()["outcome"]) == (200, "double-payment")
    row = await order_row(engine, order.id)
    assert (row.state, row.received_fen, row.reserved_fen) == ("paid", 2000, 1000)
    assert [(r.amount_fen, r.reason) for r in await refunds(engine, order.id)] == [
        (1000, "double-payment")
    ]


async def test_refund_the_provider_refuses_is_failed_released_and_escalated(
    engine: FhirEngine, http: httpx.AsyncClient
) -> None:
    order = await new_order(engine, "20.00")
    # A signed notice of a payment the sandbox never took: its refund will be refused.
    mismatch = await post_callback(http, *signed(paid_notice(order.id, 1999)))
    assert mismatch.json()["outcome"] == "amount-mismatch"
    assert (await order_row(engine, order.id)).reserved_fen == 1999
    await drain(engine)
    row = await order_row(engine, order.id)
    assert (row.state, row.received_fen, row.refunded_fen, row.reserved_fen) == (
        "created",
        1999,
        0,
        0,
    )
    [refund] = await refunds(engine, order.id)
    assert refund.state == "failed" and "refused" in refund.error
    async with engine.db.read() as conn:
        keys = (
            (
                await conn.execute(
                    select(notification.c.key).where(
                        notification.c.key.like(f"payment-review:{order.id}:%")
                    )
                )
            )
            .scalars()
            .all()
        )
    assert sorted(k.split(":")[2] for k in keys) == ["amount-mismatch", "refund-failed"]


async def test_payment_pages_need_a_login_and_speak_the_payers_language(
    http: httpx.AsyncClient,
) -> None:
    missing = "00000000-0000-0000-0000-000000000001"
    anonymous = await http.get(f"/payments/orders/{missing}/pay")
    assert anonymous.status_code == 303
    assert anonymous.headers["location"].startswith("/login?next=")


async def test_refund_callback_for_a_refund_never_asked(
    engine: FhirEngine, http: httpx.AsyncClient
) -> None:
    order = await new_order(engine, "3.00")
    notice = {
        "id": "evt-x",
        "event_type": "REFUND.SUCCESS",
        "merchant_id": "merchant-test",
        "out_trade_no": order.id,
        "out_refund_no": "00000000-0000-0000-0000-00000000beef",
        "refund_id": "r-1",
        "amount_fen": 300,
    }
    response = await post_callback(http, *signed(notice))
    assert (response.status_code, response.json()["outcome"]) == (404, "unknown-refund")
    assert await ledger_sum(engine, order.id, "refund") == 0
