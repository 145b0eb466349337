"""Package and service-record pages over HTTP (SQLite and PostgreSQL): who may open them,
CSRF, localized errors in both languages, choosing a free package, buying a paid one
(sent to the payments checkout, nothing active yet), recording services with over-quota
flagged, publishing with bad input."""

from __future__ import annotations

import re

from fastapi import FastAPI

from smartmed.contracting.contracts import package_of
from smartmed.fhir.context import FhirEngine
from smartmed.identity.principal import Role
from tests.contracting.test_packages import contract_for, county, read_contract
from tests.portal.conftest import browser, csrf_of, follow, login, make_user, portal_app

__all__ = ["portal_app"]


async def test_resident_browses_chooses_and_is_sent_to_pay(portal_app: FastAPI) -> None:
    engine: FhirEngine = portal_app.state.fhir
    c = await county(engine)
    cid = await contract_for(engine, c, c["p1"])
    resident = await make_user(portal_app, (Role.RESIDENT, None), fhir_user=c["p1"])
    stranger = await make_user(portal_app, (Role.RESIDENT, None), fhir_user=c["p2"])
    async with browser(portal_app, **{"Accept-Language": "en"}) as b:
        await login(b, resident)
        page = await b.get("/contracting/packages")
        assert page.status_code == 200, page.text
        assert "Hypertension care package" in page.text and "¥120.00" in page.text
        assert "Blood pressure follow-up × 4" in page.text and "Free" in page.text
        assert 'data-testid="no-package"' in page.text
        csrf = csrf_of(page.text)
        fields = {"contract": cid, "package": c["basic"]}
        assert (await b.post("/contracting/packages/choose", data=fields)).status_code == 403
        done = await follow(
            b, await b.post("/contracting/packages/choose", data={**fields, "csrf": csrf})
        )
        assert "The package is now on your contract." in done.text
        assert 'data-item="health-check" data-used="0" data-remaining="1"' in done.text
        r = await b.post(
            "/contracting/packages/choose",
            data={"contract": cid, "package": c["hypertension"], "csrf": csrf},
        )
        assert r.status_code == 303
        assert re.fullmatch(r"/payments/orders/[0-9a-f-]+/pay", r.headers["location"])
        assert package_of(await read_contract(engine, cid)) == c["basic"]
        waiting = await b.get("/contracting/packages")
        assert 'data-testid="waiting-order"' in waiting.text
        bad = await b.post(
            "/contracting/packages/choose",
            data={"contract": cid, "package": "PlanDefinition/nope", "csrf": csrf},
        )
        assert bad.status_code == 404 and "This package does not exist." in bad.text
        assert (await b.get("/contracting/admin/packages")).status_code == 403
        assert (await b.get(f"/contracting/services/{cid}")).status_code == 403
    async with browser(portal_app, **{"Accept-Language": "zh-CN"}) as b:
        await login(b, stranger)
        page = await b.get("/contracting/packages")
        assert "高血压个性化服务包" in page.text and "签约" in page.text
        r = await b.post(
            "/contracting/packages/choose",
            data={"contract": cid, "package": c["basic"], "csrf": csrf_of(page.text)},
        )
        assert r.status_code == 403 and 'data-reason="not-representative"' in r.text
        assert "You may not" not in r.text  # localized


async def test_team_records_services_and_admin_publishes(portal_app: FastAPI) -> None:
    engine: FhirEngine = portal_app.state.fhir
    c = await county(engine)
    cid = await contract_for(engine, c, c["p1"])
    from smartmed.contracting.lifecycle import do_set_package

    async with engine.db.write() as conn:
        await do_set_package(engine, conn, contract_id=cid, package=c["hypertension"])
    doctor = await make_user(portal_app, (Role.FAMILY_DOCTOR, None), fhir_user=c["doctor"])
    other = await make_user(
        portal_app, (Role.FAMILY_DOCTOR, None), fhir_user="Practitioner/not-on-team"
    )
    admin = await make_user(portal_app, (Role.INSTITUTION_ADMIN, None))
    async with browser(portal_app, **{"Accept-Language": "en"}) as b:
        await login(b, doctor)
        page = await b.get(f"/contracting/services/{cid}")
        assert page.status_code == 200, page.text
        assert 'data-item="home-visit" data-used="0" data-remaining="2"' in page.text
        csrf = csrf_of(page.text)
        for _ in range(3):
            r = await b.post(
                f"/contracting/services/{cid}", data={"item": "home-visit", "csrf": csrf}
            )
            assert r.status_code == 303, r.text
        page = await b.get(f"/contracting/services/{cid}")
        assert 'data-item="home-visit" data-used="3" data-remaining="0"' in page.text
        assert page.text.count('data-flag="over-quota"') == 1 and "Over quota" in page.text
        bad = await b.post(f"/contracting/services/{cid}", data={"item": "x", "csrf": csrf})
        assert bad.status_code == 422 and "Please choose a service item" in bad.text
    async with browser(portal_app, **{"Accept-Language": "en"}) as b:
        await login(b, other)
        r = await b.get(f"/contracting/services/{cid}")
        assert r.status_code == 403 and "You are not a member of this team." in r.text
    async with browser(portal_app, **{"Accept-Language": "zh-CN"}) as b:
        await login(b, admin)
        page = await b.get("/contracting/admin/packages")
        assert page.status_code == 200 and 'data-code="hypertension"' in page.text
        csrf = csrf_of(page.text)
        form = {
            "csrf": csrf,
            "code": "page-extra",
            "title": "页面包",
            "price": "-3",
            "q_hba1c": "2",
        }
        bad = await b.post("/contracting/admin/packages", data=form)
        assert bad.status_code == 422 and 'data-reason="bad-price"' in bad.text
        assert "The price must be" not in bad.text  # shown in Chinese
        absurd = await b.post(
            "/contracting/admin/packages", data={**form, "price": "9", "q_hba1c": "9999"}
        )
        assert absurd.status_code == 422 and 'data-reason="bad-quantity"' in absurd.text
        ok = await follow(
            b, await b.post("/contracting/admin/packages", data={**form, "price": "9"})
        )
        assert 'data-code="page-extra" data-status="active"' in ok.text
        pid = re.search(r'action="/contracting/admin/packages/([^"/]+)/retire"', ok.text)
        assert pid is not None
        retired = await follow(
            b,
            await b.post(f"/contracting/admin/packages/{pid.group(1)}/retire", data={"csrf": csrf}),
        )
        assert 'data-status="retired"' in retired.text
