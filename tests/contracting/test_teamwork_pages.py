"""The workbench, team report and analytics pages over HTTP: who may open them, CSRF on
assigning, localized errors for bad parameters (Chinese by default), nothing written on a
refused form."""

from __future__ import annotations

from fastapi import FastAPI

from smartmed.contracting import service, teamwork
from smartmed.fhir.context import FhirEngine
from smartmed.identity.principal import Role
from tests.contracting.test_teamwork import SEED, SIG, at
from tests.portal.conftest import browser, csrf_of, follow, login, make_user, portal_app

__all__ = ["portal_app"]


async def seed(app: FastAPI) -> tuple[FhirEngine, str]:
    engine: FhirEngine = app.state.fhir
    async with engine.db.write() as conn:
        repo = engine.repository(conn)
        for body in SEED:
            await repo.update(body["resourceType"], body["id"], body)
        made = await service.do_sign_in_person(
            engine,
            conn,
            patient="Patient/a2",
            team="CareTeam/teamA",
            doctor="Practitioner/lead1",
            signature=SIG,
            now=at("2026-06-01"),
        )
    return engine, str(made["id"])


async def assignee(engine: FhirEngine, contract: str) -> str | None:
    async with engine.db.read() as conn:
        return teamwork.assignee_of(await service.access_contract(engine, conn, contract))


async def test_pages_by_role_csrf_and_errors(portal_app: FastAPI) -> None:
    engine, contract = await seed(portal_app)
    leader = await make_user(
        portal_app, (Role.FAMILY_DOCTOR, "Organization/T1"), fhir_user="Practitioner/lead1"
    )
    gp = await make_user(
        portal_app, (Role.FAMILY_DOCTOR, "Organization/T1"), fhir_user="Practitioner/gp1"
    )
    analyst = await make_user(portal_app, (Role.HEALTH_AUTHORITY_ANALYST, "Organization/county"))
    resident = await make_user(portal_app, (Role.RESIDENT, None), fhir_user="Patient/a2")
    async with browser(portal_app) as c:  # Chinese by default
        home = await login(c, leader)
        assert 'data-nav="workbench"' in home.text and 'data-nav="team-reports"' in home.text
        assert 'data-nav="contract-analytics"' not in home.text
        assert (await c.get("/contracting/analytics")).status_code == 403
        page = await c.get("/contracting/workbench", params={"scope": "unassigned"})
        assert page.status_code == 200 and "工作台" in page.text
        assert 'data-patient="Patient/a2"' in page.text
        for params, text in (
            ({"size": "0"}, "筛选条件无效"),
            ({"page": "x"}, "筛选条件无效"),
            ({"group": "smokers"}, "筛选条件无效"),
            ({"team": "CareTeam/teamB"}, "您不是该团队的成员。"),
            ({"team": "Patient/a2"}, "请选择团队。"),
        ):
            bad = await c.get("/contracting/workbench", params=params)
            assert bad.status_code in (400, 403, 404) and text in bad.text, params
        fields = {"member": "Practitioner/gp1", "back": "/contracting/workbench"}
        forged = await c.post(f"/contracting/{contract}/assign", data=fields)  # no CSRF
        assert forged.status_code == 403
        assert await assignee(engine, contract) is None
        done = await follow(
            c,
            await c.post(
                f"/contracting/{contract}/assign", data={**fields, "csrf": csrf_of(page.text)}
            ),
        )
        assert "已分配该居民。" in done.text
        assert await assignee(engine, contract) == "Practitioner/gp1"
        reports = await c.get("/contracting/reports", params={"kind": "daily"})
        assert reports.status_code == 400 and "报表为周报或月报。" in reports.text
        future = await c.post(
            "/contracting/reports",
            data={
                "team": "CareTeam/teamA",
                "kind": "weekly",
                "day": "2999-01-01",
                "csrf": csrf_of(page.text),
            },
        )
        assert future.status_code == 400 and "该期间尚未开始。" in future.text
    async with browser(portal_app, **{"Accept-Language": "en"}) as c:
        await login(c, gp)
        page = await c.get("/contracting/workbench")
        assert 'data-patient="Patient/a2"' in page.text and "Due" in page.text
        # Only the leader assigns: gp1 gets no member picker and a refused form.
        assert 'data-testid="assign"' not in page.text
        refused = await c.post(
            f"/contracting/{contract}/assign",
            data={"member": "Practitioner/hm1", "csrf": csrf_of(page.text)},
        )
        assert refused.status_code == 403 and "Only the team leader may do this." in refused.text
        assert await assignee(engine, contract) == "Practitioner/gp1"
        assert (await c.get("/contracting/workbench", params={"scope": "team"})).status_code == 403
    async with browser(portal_app, **{"Accept-Language": "en"}) as c:
        await login(c, analyst)
        assert (await c.get("/contracting/workbench")).status_code == 403
        assert (await c.get("/contracting/reports")).status_code == 403
        page = await c.get("/contracting/analytics", params={"at": "2026-11-18"})
        assert page.status_code == 200 and "Aggregate figures only" in page.text
        assert "Patient/" not in page.text
        bad = await c.get("/contracting/analytics", params={"window": "0"})
        assert bad.status_code == 400 and "The filters are not valid" in bad.text
    async with browser(portal_app) as c:
        await login(c, resident)
        for path in ("/contracting/workbench", "/contracting/reports", "/contracting/analytics"):
            assert (await c.get(path)).status_code == 403, path
