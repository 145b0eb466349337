"""A family representative (a RelatedPerson account holding the resident's
``sign-on-behalf`` delegation) buys and pays the member's paid service package
(SQLite and PostgreSQL): through the service, the contracting API and the generic
payments API. The order, its refunds and the payer's notifications belong to the
representative; the ChargeItem and Invoice are the resident's. An unrelated
RelatedPerson, one whose delegation expired and one whose delegation was revoked cannot
pay (403, nothing ordered); a delegation revoked after the order was made gets the
payment refunded, never the package."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from smartmed.audit.record import from_body
from smartmed.audit.tables import audit_log
from smartmed.contracting import packages, service
from smartmed.contracting.contracts import package_of
from smartmed.fhir.context import FhirEngine
from smartmed.fhir.errors import FhirError, Forbidden
from smartmed.notify.tables import notification
from smartmed.payments import service as payments
from tests.contracting.conftest import delegation
from tests.contracting.test_packages import PAY_APPS, contract_for, county, pay, read_contract
from tests.payments.conftest import SANDBOX, create, drain, engine, http, pay_app, token
from tests.payments.test_roundtrip import pay_on_page

__all__ = ["engine", "http", "pay_app"]
API = "/api/contracting"


async def _representative(
    engine: FhirEngine, patient: str, *, actions: tuple[str, ...], period: dict[str, str]
) -> tuple[str, str]:
    """A RelatedPerson of ``patient`` and the delegation Consent naming them."""
    person = await create(
        engine,
        {
            "resourceType": "RelatedPerson",
            "patient": {"reference": patient},
            "name": [{"family": "王", "given": ["代理"]}],
        },
    )
    consent = delegation(patient.split("/", 1)[1], person, actions)
    consent["provision"]["period"] = period
    return person, await create(engine, consent)


async def _revoke(engine: FhirEngine, consent: str) -> None:
    kind, _, id_ = consent.partition("/")
    async with engine.db.write() as conn:
        repo = engine.repository(conn)
        stored = await repo.read(kind, id_)
        body = orjson.loads(stored.content or "{}")
        body["status"] = "inactive"
        await repo.update(kind, id_, body)


OPEN = {"start": "2020-01-01", "end": "2099-01-01"}


@pytest.fixture(autouse=True)
def _app(pay_app: FastAPI) -> None:
    PAY_APPS.append(pay_app)


@pytest.fixture
async def family(engine: FhirEngine) -> dict[str, Any]:
    c: dict[str, Any] = await county(engine)
    c["contract"] = await contract_for(engine, c, c["p1"])
    c["son"], c["son-consent"] = await _representative(
        engine, c["p1"], actions=("view-records", "sign-on-behalf"), period=OPEN
    )
    c["viewer"], _ = await _representative(engine, c["p1"], actions=("view-records",), period=OPEN)
    c["expired"], _ = await _representative(
        engine,
        c["p1"],
        actions=("sign-on-behalf",),
        period={"start": "2020-01-01", "end": "2021-01-01"},
    )
    c["revoked"], revoked_consent = await _representative(
        engine, c["p1"], actions=("sign-on-behalf",), period=OPEN
    )
    await _revoke(engine, revoked_consent)
    # Someone else's representative: a delegation from p2, not from p1.
    c["stranger"], _ = await _representative(
        engine, c["p2"], actions=("sign-on-behalf",), period=OPEN
    )
    return c


async def _told(engine: FhirEngine, order_id: str) -> list[str]:
    async with engine.db.read() as conn:
        rows = await conn.execute(
            select(notification.c.recipient).where(
                notification.c.key.like(f"payment-review:{order_id}:%")
            )
        )
        return sorted(str(r) for r in rows.scalars())


async def test_representative_pays_for_the_parents_package(
    engine: FhirEngine, family: dict[str, Any]
) -> None:
    c, cid = family, family["contract"]
    async with engine.db.write() as conn:
        bought = await packages.do_choose(
            engine, conn, contract_id=cid, package=c["hypertension"], actor=c["son"]
        )
    order = bought.order
    assert order is not None and order.subject == c["son"]
    async with engine.db.read() as conn:
        assert [o.id for o in await payments.list_orders(conn, subject=c["son"])] == [order.id]
        charge = await service.read(engine, conn, order.charge_item, ("ChargeItem",))
        invoice = await service.read(engine, conn, order.invoice, ("Invoice",))
    # The purchase is the resident's; the representative ordered it and is billed.
    assert charge["subject"] == {"reference": c["p1"]}
    assert charge["enterer"] == {"reference": c["son"]}
    assert invoice["subject"] == {"reference": c["p1"]}
    assert invoice["recipient"] == {"reference": c["son"]}
    await pay(engine, order.id)
    assert package_of(await read_contract(engine, cid)) == c["hypertension"]
    # The callback's audit record names the resident whose Invoice it is, not the payer.
    async with engine.db.read() as conn:
        audited = [
            from_body(b)
            for b in (await conn.execute(select(audit_log.c.body))).scalars().all()
            if '"payment-callback"' in b and order.invoice in b
        ]
    assert audited and all(r.patients == (c["p1"],) for r in audited)
    async with engine.db.read() as conn:
        paid = await payments.get_order(conn, order.id)
    assert paid is not None and paid.state == "fulfilled"
    # A refund goes back on the representative's order; if the provider refuses it, the
    # representative (and the reviewer, none configured here) is told.
    async with engine.db.write() as conn:
        made = await payments.refund(
            engine, conn, order_id=order.id, amount="20.00", reason="partial", by="Practitioner/a"
        )
        assert await payments.fail_refund(engine, conn, refund_id=made.id, error="refused")
    assert await _told(engine, order.id) == [c["son"]]


@pytest.mark.parametrize("who", ["stranger", "viewer", "expired", "revoked"])
async def test_others_cannot_buy(engine: FhirEngine, family: dict[str, Any], who: str) -> None:
    c, cid = family, family["contract"]
    async with engine.db.write() as conn:
        with pytest.raises(FhirError) as caught:
            await packages.do_choose(
                engine, conn, contract_id=cid, package=c["hypertension"], actor=c[who]
            )
    assert service.reason_of(caught.value) == "not-representative"
    # Nor through payments directly, naming the resident as beneficiary.
    async with engine.db.read() as conn:
        hyper = await packages.get_package(engine, conn, c["hypertension"])
    async with engine.db.write() as conn:
        with pytest.raises(Forbidden):
            await payments.create_order(
                engine,
                conn,
                subject=c[who],
                beneficiary=c["p1"],
                target=f"Contract/{cid}",
                description="x",
                amount=hyper.price,
                definition=hyper.price_ref,
            )
    async with engine.db.read() as conn:
        assert await payments.list_orders(conn, target=f"Contract/{cid}") == []


async def test_delegation_revoked_after_ordering_is_refunded(
    engine: FhirEngine, family: dict[str, Any]
) -> None:
    c, cid = family, family["contract"]
    async with engine.db.write() as conn:
        bought = await packages.do_choose(
            engine, conn, contract_id=cid, package=c["hypertension"], actor=c["son"]
        )
    assert bought.order is not None
    await _revoke(engine, c["son-consent"])
    await pay(engine, bought.order.id)
    async with engine.db.read() as conn:
        got = await payments.get_order(conn, bought.order.id)
    assert got is not None and got.state == "refunded" and got.subject == c["son"]
    assert package_of(await read_contract(engine, cid)) is None


async def test_representative_buys_through_the_apis(
    pay_app: FastAPI, http: httpx.AsyncClient, engine: FhirEngine, family: dict[str, Any]
) -> None:
    c, cid = family, family["contract"]
    body = {"package": c["hypertension"]}
    for who in ("stranger", "viewer", "expired", "revoked"):
        headers = await token(pay_app, c[who], ["family-representative"])
        r = await http.post(f"{API}/contracts/{cid}/package", json=body, headers=headers)
        assert r.status_code == 403, r.text
        assert r.json()["resourceType"] == "OperationOutcome"
    son = await token(pay_app, c["son"], ["family-representative"])
    r = await http.post(f"{API}/contracts/{cid}/package", json=body, headers=son)
    assert r.status_code == 201, r.text
    bought = r.json()
    assert bought["order"]["payer"] == c["son"]
    assert bought["payUrl"].startswith(f"{SANDBOX}/sandbox/pay/checkout/")
    # The order is the representative's: visible to him, 404 for the resident herself.
    order_id = bought["order"]["id"]
    assert (await http.get(f"/api/payments/orders/{order_id}", headers=son)).status_code == 200
    mine = (await http.get("/api/payments/orders", headers=son)).json()["orders"]
    assert [o["id"] for o in mine] == [order_id]
    resident = await token(pay_app, c["p1"], ["resident"])
    assert (await http.get(f"/api/payments/orders/{order_id}", headers=resident)).status_code == 404
    done = await pay_on_page(bought["payUrl"], pay_app)
    assert done.status_code == 303
    await drain(engine)
    assert package_of(await read_contract(engine, cid)) == c["hypertension"]


async def test_generic_payments_api_takes_a_representative_with_a_beneficiary(
    pay_app: FastAPI, http: httpx.AsyncClient, engine: FhirEngine, family: dict[str, Any]
) -> None:
    c, cid = family, family["contract"]
    async with engine.db.read() as conn:
        hyper = await packages.get_package(engine, conn, c["hypertension"])
    order = {"product": hyper.price_ref, "for": f"Contract/{cid}", "beneficiary": c["p1"]}
    son = await token(pay_app, c["son"], ["family-representative"])
    # Without the beneficiary a RelatedPerson's order is incomplete (400).
    nobody = {k: v for k, v in order.items() if k != "beneficiary"}
    r = await http.post("/api/payments/orders", json=nobody, headers=son)
    assert r.status_code == 400, r.text
    for who in ("stranger", "expired", "revoked"):
        headers = await token(pay_app, c[who], ["family-representative"])
        r = await http.post("/api/payments/orders", json=order, headers=headers)
        assert r.status_code == 403, r.text
    r = await http.post("/api/payments/orders", json=order, headers=son)
    assert r.status_code == 201, r.text
    assert r.json()["subject"] == c["son"]
    await pay_on_page(r.json()["payUrl"], pay_app)
    await drain(engine)
    assert package_of(await read_contract(engine, cid)) == c["hypertension"]
    async with engine.db.read() as conn:
        assert [o.state for o in await payments.list_orders(conn, target=f"Contract/{cid}")] == [
            "fulfilled"
        ]
