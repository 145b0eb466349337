"""Portal pages over HTTP: who may open them, CSRF, localized link errors, English."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi import FastAPI

from smartmed.contracting import flows, links, service
from smartmed.fhir.context import FhirEngine
from smartmed.identity.principal import Role
from tests.contracting.conftest import SEED
from tests.portal.conftest import browser, csrf_of, follow, login, make_user, portal_app

__all__ = ["portal_app"]


async def seed(app: FastAPI) -> FhirEngine:
    engine: FhirEngine = app.state.fhir
    async with engine.db.write() as conn:
        repo = engine.repository(conn)
        for body in SEED:
            await repo.update(body["resourceType"], body["id"], body)
    return engine


async def test_pages_by_role_csrf_and_link_errors(portal_app: FastAPI) -> None:
    engine = await seed(portal_app)
    resident = await make_user(portal_app, (Role.RESIDENT, None), fhir_user="Patient/p2")
    doctor = await make_user(
        portal_app, (Role.FAMILY_DOCTOR, "Organization/town"), fhir_user="Practitioner/doc1"
    )
    admin = await make_user(portal_app, (Role.INSTITUTION_ADMIN, "Organization/town"))
    now = datetime.now(UTC)
    async with engine.db.read() as conn:
        token, _ = await flows.make_card_link(
            engine, conn, doctor="Practitioner/doc1", team="CareTeam/team1", now=now
        )
    old, _ = links.make_token(
        engine,
        kind="card",
        claims={"team": "CareTeam/team1", "doctor": "Practitioner/doc1"},
        now=now - timedelta(days=400),
    )
    async with browser(portal_app, **{"Accept-Language": "en"}) as c:
        await login(c, resident)
        page = await c.get("/contracting")
        assert page.status_code == 200 and "No contract in force" in page.text
        assert (await c.get("/contracting/team")).status_code == 403
        expired = await c.get("/contracting/apply", params={"t": old})
        assert expired.status_code == 400
        assert "This link has expired. Ask your family doctor for a new one." in expired.text
        bad = await c.get("/contracting/apply", params={"t": "x.y"})
        assert bad.status_code == 400 and "This link is not valid" in bad.text
        form = await c.get("/contracting/apply", params={"t": token})
        assert form.status_code == 200 and "第一团队" in form.text
        fields = {"t": token, "typed_name": "王 p2", "agreed": "true"}
        forged = await c.post("/contracting/apply", data=fields)  # no CSRF token
        assert forged.status_code == 403
        assert await contracts_of(engine, "Patient/p2") == []
        unticked = await c.post(
            "/contracting/apply", data={**fields, "agreed": "", "csrf": csrf_of(form.text)}
        )
        assert unticked.status_code == 422
        assert "Please tick the box to agree to the contract." in unticked.text
        assert await contracts_of(engine, "Patient/p2") == []
        done = await follow(
            c, await c.post("/contracting/apply", data={**fields, "csrf": csrf_of(form.text)})
        )
        assert "Your application has been sent to the team." in done.text
        assert [x["status"] for x in await contracts_of(engine, "Patient/p2")] == ["offered"]
    async with browser(portal_app) as c:
        await login(c, admin)
        assert (await c.get("/contracting")).status_code == 403
        assert (await c.get("/contracting/team")).status_code == 403
    async with browser(portal_app) as c:  # Chinese by default
        home = await login(c, doctor)
        assert 'data-nav="contracting"' in home.text
        team = await c.get("/contracting/team")
        assert "待审核的申请" in team.text and "王" in team.text
        (pending,) = await contracts_of(engine, "Patient/p2")
        no_reason = await c.post(
            f"/contracting/{pending['id']}/review",
            data={"decision": "reject", "reason": "", "csrf": csrf_of(team.text)},
        )
        assert no_reason.status_code == 400 and "请填写原因。" in no_reason.text
        card = await c.get("/contracting/card", params={"team": "CareTeam/team2"})
        assert card.status_code == 403 and "您不是该团队的成员。" in card.text
        accepted = await follow(
            c,
            await c.post(
                f"/contracting/{pending['id']}/review",
                data={"decision": "accept", "csrf": csrf_of(team.text)},
            ),
        )
        assert "已同意申请，签约已生效。" in accepted.text
        (signed,) = await contracts_of(engine, "Patient/p2")
        assert signed["status"] == "executed"
        assert f'action="/contracting/{signed["id"]}/transfer"' in accepted.text
        moved = await follow(
            c,
            await c.post(
                f"/contracting/{signed['id']}/transfer",
                data={"team": "CareTeam/team2", "csrf": csrf_of(accepted.text)},
            ),
        )
        assert "居民已转签至新团队。" in moved.text
    history = await contracts_of(engine, "Patient/p2")
    assert [x["status"] for x in history] == ["executed", "terminated"]
    assert service.team_of(history[0]) == "CareTeam/team2"
    assert service.status_reason(history[1]) == ("transfer", None)


async def contracts_of(engine: FhirEngine, patient: str) -> list[dict[str, object]]:
    async with engine.db.read() as conn:
        return await service.contracts_of(engine, conn, patient=patient)
