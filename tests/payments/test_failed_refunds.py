"""Failed refunds (SQLite and PostgreSQL): administrators list them and retry them, through
the API and their portal page (CSRF-protected button); a retry goes through the
``payments.refund`` job with the same refund id, so a refund the provider made although
we never heard of it is counted and paid out once."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from smartmed.fhir.context import FhirEngine
from smartmed.identity.principal import Role
from smartmed.payments import service
from smartmed.payments.models import Order
from smartmed.payments.provider import get_provider
from smartmed.payments.tables import payment_refund, sandbox_payment
from tests.payments.conftest import drain, engine, http, new_order, order_row, pay_app, token
from tests.payments.test_roundtrip import pay_on_page
from tests.portal.conftest import browser, csrf_of, follow, login, make_user, portal_app

__all__ = ["engine", "http", "pay_app", "portal_app"]


async def _paid(engine: FhirEngine, app: FastAPI) -> Order:
    order = await new_order(engine, "80.00")
    checkout = await service.start_checkout(engine, order_id=order.id)
    assert (await pay_on_page(checkout.pay_url, app)).status_code == 303
    await drain(engine)
    assert (await order_row(engine, order.id)).state == "paid"
    return order


async def _failed_refund(engine: FhirEngine, order_id: str, *, made: bool) -> str:
    """Queue a full refund; the provider makes it (``made``) or not; either way we record
    it as failed (what the job does after a refusal or its last timeout)."""
    async with engine.db.write() as conn:
        refund = await service.refund(
            engine, conn, order_id=order_id, reason="resident asked", by="Practitioner/a"
        )
    if made:
        row = await order_row(engine, order_id)
        await get_provider(engine.settings).refund(
            out_trade_no=order_id, out_refund_no=refund.id, amount_fen=row.amount_fen
        )
    async with engine.db.write() as conn:
        assert await service.fail_refund(engine, conn, refund_id=refund.id, error="timed out")
    return refund.id


async def _state(engine: FhirEngine, refund_id: str) -> str:
    async with engine.db.read() as conn:
        return str(
            (
                await conn.execute(
                    select(payment_refund.c.state).where(payment_refund.c.id == refund_id)
                )
            ).scalar_one()
        )


@pytest.mark.parametrize("made", [False, True])
async def test_list_and_retry_failed_refunds_through_the_api(
    pay_app: FastAPI, engine: FhirEngine, http: httpx.AsyncClient, made: bool
) -> None:
    order = await _paid(engine, pay_app)
    refund_id = await _failed_refund(engine, order.id, made=made)
    admin = await token(pay_app, "Practitioner/admin1", ["platform-admin"])
    resident = await token(pay_app, order.subject, ["resident"])
    assert (await http.get("/api/payments/refunds", headers=resident)).status_code == 403
    listed = (await http.get("/api/payments/refunds", headers=admin)).json()["refunds"]
    mine = next(r for r in listed if r["id"] == refund_id)
    assert (mine["order"], mine["amount"], mine["error"], mine["payer"]) == (
        order.id,
        "80.00",
        "timed out",
        order.subject,
    )
    retry = f"/api/payments/refunds/{refund_id}/retry"
    assert (await http.post(retry, headers=resident)).status_code == 403
    r = await http.post(retry, headers=admin)
    assert r.status_code == 202, r.text
    assert r.json() == {"id": refund_id, "order": order.id, "amount": "80.00", "state": "pending"}
    assert (await http.post(retry, headers=admin)).status_code == 409  # pending, not failed
    assert (await http.post("/api/payments/refunds/nope/retry", headers=admin)).status_code == 404
    await drain(engine)
    assert await _state(engine, refund_id) == "succeeded"
    row = await order_row(engine, order.id)
    assert (row.state, row.refunded_fen, row.reserved_fen) == ("refunded", 8000, 0)
    async with engine.db.read() as conn:
        sbx = (
            await conn.execute(
                select(sandbox_payment).where(sandbox_payment.c.out_trade_no == order.id)
            )
        ).one()
    assert sbx.refunded_fen == 8000  # paid out once, also when the first attempt got through
    listed = (await http.get("/api/payments/refunds", headers=admin)).json()["refunds"]
    assert refund_id not in {r["id"] for r in listed}


async def _failed_in(app: FastAPI) -> tuple[FhirEngine, str]:
    """A failed refund of a paid order, without any provider traffic (the portal app)."""
    engine: FhirEngine = app.state.fhir
    order = await new_order(engine, "50.00")
    async with engine.db.write() as conn:
        await service.apply_payment(
            engine,
            conn,
            order_id=order.id,
            transaction_id=f"txn-{order.id}",
            amount_fen=5000,
            source="query",
        )
        refund = await service.refund(
            engine, conn, order_id=order.id, amount=Decimal("20.00"), reason="x", by="a"
        )
        await service.fail_refund(engine, conn, refund_id=refund.id, error="refused")
    return engine, refund.id


async def test_failed_refunds_page_and_retry_button(portal_app: FastAPI) -> None:
    engine, refund_id = await _failed_in(portal_app)
    admin = await make_user(portal_app, (Role.PLATFORM_ADMIN, None))
    doctor = await make_user(portal_app, (Role.FAMILY_DOCTOR, "Organization/x"))
    async with browser(portal_app, **{"Accept-Language": "en"}) as c:
        await login(c, doctor)
        assert (await c.get("/payments/admin/refunds")).status_code == 403
        r = await c.post(f"/payments/admin/refunds/{refund_id}/retry")
        assert r.status_code == 403
    async with browser(portal_app, **{"Accept-Language": "en"}) as c:
        await login(c, admin)
        page = await c.get("/payments/admin/refunds")
        assert page.status_code == 200
        assert f'data-refund="{refund_id}"' in page.text and "refused" in page.text
        assert "¥20.00" in page.text
        forged = await c.post(f"/payments/admin/refunds/{refund_id}/retry", data={"csrf": "x"})
        assert forged.status_code == 403
        assert await _state(engine, refund_id) == "failed"
        done = await follow(
            c,
            await c.post(
                f"/payments/admin/refunds/{refund_id}/retry", data={"csrf": csrf_of(page.text)}
            ),
        )
        assert done.status_code == 200 and 'data-testid="done"' in done.text
        assert f'data-refund="{refund_id}"' not in done.text
        assert await _state(engine, refund_id) == "pending"
        again = await c.post(
            f"/payments/admin/refunds/{refund_id}/retry", data={"csrf": csrf_of(page.text)}
        )
        assert again.status_code == 409 and 'data-testid="refund-error"' in again.text
