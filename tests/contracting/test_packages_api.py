"""The packages and service-records API over HTTP (SQLite and PostgreSQL): publishing by
administrators only, bad input as OperationOutcomes with nothing stored, choosing and
buying through the sandbox, service records for the team and the resident only."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from smartmed.contracting import packages
from smartmed.fhir.context import FhirEngine
from smartmed.payments import service as payments
from tests.contracting.test_packages import contract_for, county, read_contract
from tests.payments.conftest import SANDBOX, drain, engine, http, pay_app, token
from tests.payments.test_roundtrip import pay_on_page

__all__ = ["engine", "http", "pay_app"]
API = "/api/contracting"
GOOD: dict[str, Any] = {
    "code": "api-extra",
    "title": "加强随访包",
    "titleEn": "Extra follow-up",
    "price": "66.00",
    "items": [{"code": "bp-followup", "quantity": 4}, {"code": "hba1c", "quantity": 2}],
}


def outcome(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    return str(body["issue"][0].get("diagnostics", ""))


@pytest.fixture
async def people(pay_app: FastAPI, engine: FhirEngine) -> dict[str, Any]:
    c: dict[str, Any] = await county(engine)
    c["contract"] = await contract_for(engine, c, c["p1"])
    c["admin"] = await token(pay_app, "Practitioner/admin1", ["institution-admin"])
    c["doc"] = await token(pay_app, c["doctor"], ["family-doctor"])
    c["other-doc"] = await token(pay_app, "Practitioner/stranger", ["family-doctor"])
    c["r1"] = await token(pay_app, c["p1"], ["resident"])
    c["r2"] = await token(pay_app, c["p2"], ["resident"])
    return c


async def test_publish_edit_retire_rights_and_bad_input(
    http: httpx.AsyncClient, engine: FhirEngine, people: dict[str, Any]
) -> None:
    for who in ("r1", "doc"):
        outcome(await http.post(f"{API}/packages", json=GOOD, headers=people[who]), 403)
    outcome(await http.get(f"{API}/packages?retired=true", headers=people["r1"]), 403)
    outcome(await http.post(f"{API}/packages", json=GOOD), 401)
    bad_bodies = [
        {**GOOD, "items": [{"code": "bp-followup", "quantity": -4}]},
        {**GOOD, "items": [{"code": "bp-followup", "quantity": 1_000_000}]},
        {**GOOD, "items": [{"code": "bp-followup", "quantity": 0}]},
        {**GOOD, "items": [{"code": "brain-surgery", "quantity": 1}]},
        {**GOOD, "items": []},
        {**GOOD, "price": "-5"},
        {**GOOD, "price": "12.345"},
        {**GOOD, "price": "NaN"},
        {**GOOD, "code": "UPPER case"},
        {**GOOD, "surprise": 1},
        {**GOOD, "items": [{"code": "hba1c", "quantity": "many"}]},
    ]
    for body in bad_bodies:
        outcome(await http.post(f"{API}/packages", json=body, headers=people["admin"]), 400)
    async with engine.db.read() as conn:
        assert await packages.by_code(engine, conn, "api-extra") is None
    r = await http.post(f"{API}/packages", json=GOOD, headers=people["admin"])
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["price"] == "66.00" and made["items"][1] == {
        "code": "hba1c",
        "display": "HbA1c test",
        "quantity": 2,
    }
    outcome(await http.post(f"{API}/packages", json=GOOD, headers=people["admin"]), 409)
    edited = await http.put(
        f"{API}/packages/{made['id']}", json={**GOOD, "price": "70"}, headers=people["admin"]
    )
    assert edited.status_code == 200 and edited.json()["price"] == "70.00"
    outcome(await http.put(f"{API}/packages/nope", json=GOOD, headers=people["admin"]), 404)
    r = await http.post(f"{API}/packages/{made['id']}/retire", headers=people["admin"])
    assert r.status_code == 200 and r.json()["status"] == "retired"
    outcome(await http.post(f"{API}/packages/{made['id']}/retire", headers=people["admin"]), 409)
    listed = await http.get(f"{API}/packages", headers=people["r1"])
    assert made["id"] not in {p["id"] for p in listed.json()["items"]}
    everything = await http.get(f"{API}/packages?retired=true", headers=people["admin"])
    assert made["id"] in {p["id"] for p in everything.json()["items"]}
    # Buying a retired, unknown or non-package resource is refused; nothing ordered.
    cid = people["contract"]
    for package, status in (
        (f"PlanDefinition/{made['id']}", 409),
        ("PlanDefinition/unknown", 404),
    ):
        r = await http.post(
            f"{API}/contracts/{cid}/package", json={"package": package}, headers=people["r1"]
        )
        outcome(r, status)
    r = await http.post(
        f"{API}/contracts/{cid}/package", json={"package": "Patient/1"}, headers=people["r1"]
    )
    outcome(r, 400)
    async with engine.db.read() as conn:
        assert await payments.list_orders(conn, target=f"Contract/{cid}") == []


async def test_choose_buy_and_service_records(
    pay_app: FastAPI, http: httpx.AsyncClient, engine: FhirEngine, people: dict[str, Any]
) -> None:
    cid, r1 = people["contract"], people["r1"]
    listed = (await http.get(f"{API}/packages", headers=r1)).json()["items"]
    assert listed[0]["free"] and listed[0]["code"] == "basic"
    # Someone else's contract: 403, and a doctor cannot choose for a resident.
    body = {"package": people["hypertension"]}
    outcome(await http.post(f"{API}/contracts/{cid}/package", json=body, headers=people["r2"]), 403)
    outcome(
        await http.post(f"{API}/contracts/{cid}/package", json=body, headers=people["doc"]), 403
    )
    outcome(await http.post(f"{API}/contracts/nope/package", json=body, headers=r1), 404)
    # Free: active at once.
    r = await http.post(
        f"{API}/contracts/{cid}/package", json={"package": people["basic"]}, headers=r1
    )
    assert r.status_code == 200 and r.json()["active"], r.text
    # Paid: an order and the sandbox's checkout page; not active until paid.
    r = await http.post(f"{API}/contracts/{cid}/package", json=body, headers=r1)
    assert r.status_code == 201, r.text
    bought = r.json()
    assert not bought["active"] and bought["order"]["amount"] == "120.00"
    assert bought["payUrl"].startswith(f"{SANDBOX}/sandbox/pay/checkout/")
    usage = (await http.get(f"{API}/contracts/{cid}/services", headers=r1)).json()
    assert usage["package"]["code"] == "basic"
    done = await pay_on_page(bought["payUrl"], pay_app)
    assert done.status_code == 303
    await drain(engine)
    contract = await read_contract(engine, cid)
    assert any(
        e.get("valueReference", {}).get("reference") == people["hypertension"]
        for e in contract["extension"]
    )
    # The team's doctor records services; beyond the quantity it is flagged, not dropped.
    for _ in range(3):
        r = await http.post(
            f"{API}/contracts/{cid}/services", json={"item": "home-visit"}, headers=people["doc"]
        )
        assert r.status_code == 201, r.text
    for bad in (
        {"item": "nope"},
        {"item": "hba1c", "kind": "Observation"},
        {"x": 1},
        {"item": "hba1c", "date": "2026-01-01T00:00:00"},
    ):
        outcome(
            await http.post(f"{API}/contracts/{cid}/services", json=bad, headers=people["doc"]), 400
        )
    outcome(
        await http.post(
            f"{API}/contracts/{cid}/services",
            json={"item": "home-visit"},
            headers=people["other-doc"],
        ),
        403,
    )
    outcome(
        await http.post(f"{API}/contracts/{cid}/services", json={"item": "home-visit"}, headers=r1),
        403,
    )
    for who in ("doc", "r1"):
        r = await http.get(f"{API}/contracts/{cid}/services", headers=people[who])
        assert r.status_code == 200, r.text
        usage = r.json()
        home = next(i for i in usage["items"] if i["code"] == "home-visit")
        assert (home["quantity"], home["used"], home["remaining"], home["over"]) == (2, 3, 0, 1)
        assert [s["flag"] for s in usage["services"]] == [None, None, "over-quota"]
        assert usage["services"][0]["performers"][0]["reference"] == people["doctor"]
    for who in ("r2", "other-doc"):
        outcome(await http.get(f"{API}/contracts/{cid}/services", headers=people[who]), 403)
    # Applying or signing with a paid package is refused: it is bought afterwards.
    r = await http.post(
        f"{API}/in-person",
        json={
            "patient": people["p2"],
            "team": people["team"],
            "signature": {"typedName": "王", "agreed": True},
            "package": people["hypertension"],
        },
        headers=people["doc"],
    )
    outcome(r, 409)


async def test_a_package_paid_for_an_application_never_signed_is_given_back(
    pay_app: FastAPI, http: httpx.AsyncClient, engine: FhirEngine, people: dict[str, Any]
) -> None:
    """p2 applies, pays for a package, and the team rejects the application: the money is
    refunded (and nothing is active); the same for a withdrawn application."""
    from smartmed.contracting import service
    from tests.contracting.test_packages import SIG

    for ending in ("reject", "withdraw"):
        async with engine.db.write() as conn:
            applied = await service.do_apply(
                engine,
                conn,
                patient=people["p2"],
                team=people["team"],
                applicant=people["p2"],
                signature=SIG,
            )
        cid = str(applied["id"])
        r = await http.post(
            f"{API}/contracts/{cid}/package",
            json={"package": people["hypertension"]},
            headers=people["r2"],
        )
        assert r.status_code == 201, r.text
        assert (await pay_on_page(r.json()["payUrl"], pay_app)).status_code == 303
        await drain(engine)
        async with engine.db.write() as conn:
            if ending == "reject":
                await service.do_review(
                    engine,
                    conn,
                    contract_id=cid,
                    reviewer=people["doctor"],
                    accept=False,
                    reason="outside the team's service area",
                )
            else:
                await service.do_withdraw(engine, conn, contract_id=cid, actor=people["p2"])
        await drain(engine)
        async with engine.db.read() as conn:
            orders = await payments.list_orders(conn, target=f"Contract/{cid}")
        assert [(o.state, o.refunded) for o in orders] == [("refunded", o.amount) for o in orders]
        assert len(orders) == 1
