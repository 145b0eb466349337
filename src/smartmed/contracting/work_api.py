"""HTTP API of team co-management, team work reports and contract analytics (under
``/api/contracting``; errors as OperationOutcome, callers as in ``api.py``).

======  ======================================  ==========================================
method  path                                    who and what
======  ======================================  ==========================================
GET     /team/workbench?team=&scope=&group=     team member: my residents (leader: ``scope``
        &due=&q=&page=&size=                    ``team`` or ``unassigned``), due follow-ups,
                                                open tasks
POST    /contracts/{id}/assign                  team leader: ``{"member": "Practitioner/x"}``
GET     /contracts/{id}/assignments             team member: the assignment history
GET     /team/reports?team=&kind=               team member: the team's stored reports
POST    /team/reports                           team member: ``{"team", "kind", "day"?}``
                                                report that period now (replaces it)
GET     /team/reports/{id}?format=              team member: one report, json, csv or xlsx
GET     /analytics?at=&windowDays=              institution administrator (their
                                                organisations), health-authority analyst
                                                (aggregate-only, small counts suppressed)
======  ======================================  ==========================================
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from smartmed.contracting import analytics, reports, service, teamwork
from smartmed.contracting.api import Caller, _json, engine_of, team_member
from smartmed.fhir.errors import Forbidden, Invalid, NotFound
from smartmed.identity.principal import Principal, Role

TEAM = r"^CareTeam/[A-Za-z0-9\-.]{1,64}$"
ID = r"^[A-Za-z0-9\-.]{1,64}$"
ANALYTICS_ROLES = frozenset({Role.INSTITUTION_ADMIN, Role.HEALTH_AUTHORITY_ANALYST})


class AssignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    member: str = Field(pattern=r"^Practitioner/[A-Za-z0-9\-.]{1,64}$")


class ReportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    team: str = Field(pattern=TEAM)
    kind: Literal["weekly", "monthly"]
    day: date | None = Field(default=None, description="a day of the period (default today)")


def practitioner(principal: Principal) -> str:
    who = team_member(principal)
    if not who.startswith("Practitioner/"):
        raise Forbidden("the workbench is a practitioner's (sign in as your Practitioner)")
    return who


def viewer(principal: Principal, active: Role | None = None) -> tuple[bool, set[str] | None]:
    """(aggregate-only, organisation ids or None for all) of an analytics caller."""
    held = [r for r in principal.roles if r.role in ANALYTICS_ROLES]
    if active is not None:
        held = [r for r in held if r.role == active]
    if not held:
        raise Forbidden("contract analytics are for institution administrators and analysts")
    if any(r.role == Role.HEALTH_AUTHORITY_ANALYST for r in held):
        return True, None
    orgs = {
        str(r.organization).split("/", 1)[1]
        for r in held
        if r.organization and str(r.organization).startswith("Organization/")
    }
    if not orgs:
        raise Forbidden("an institution administrator's role must name their organisation")
    return False, orgs


async def figures_for(
    request: Request, principal: Principal, *, at: datetime, window_days: int, active: Role | None
) -> dict[str, Any]:
    aggregate, orgs = viewer(principal, active)
    engine = engine_of(request)
    found = await analytics.compute(
        engine, at=at, organizations=orgs, window=timedelta(days=window_days)
    )
    threshold = analytics.threshold_of(engine)
    if aggregate:
        found = analytics.suppress(found, threshold)
    return {**found, "aggregateOnly": aggregate, "threshold": threshold if aggregate else None}


async def report_for_member(
    request: Request, principal: Principal, report_id: str
) -> dict[str, Any]:
    """A stored report, if the caller is a member of its team."""
    who = team_member(principal)
    engine = engine_of(request)
    async with engine.db.read() as conn:
        body = await service.read(engine, conn, f"MeasureReport/{report_id}", ("MeasureReport",))
        team = reports.summary(body)["team"]
        if body.get("measure") != reports.MEASURE or not team:
            raise service.refuse(NotFound, "not-found", "no such team work report")
        await service.access_team(engine, conn, team=str(team), member=who)
    return body


def download(body: dict[str, Any], fmt: str, labels: dict[str, str] | None = None) -> Response:
    period = body.get("period") or {}
    name = f"team-report-{period.get('start', '')}-{body.get('id')}"
    if fmt == "csv":
        return Response(
            reports.to_csv(body, labels).encode("utf-8-sig"),  # BOM: Excel opens it as UTF-8
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}.csv"'},
        )
    return Response(
        reports.to_xlsx(body, labels),
        media_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        headers={"Content-Disposition": f'attachment; filename="{name}.xlsx"'},
    )


def build_router() -> APIRouter:
    router = APIRouter(prefix="/api/contracting", tags=["contracting"])

    @router.get("/team/workbench")
    async def workbench(
        request: Request,
        principal: Caller,
        team: Annotated[str, Query(pattern=TEAM)],
        scope: Annotated[Literal["mine", "team", "unassigned"], Query()] = "mine",
        group: Annotated[str | None, Query(max_length=20)] = None,
        due: Annotated[bool, Query()] = False,
        q: Annotated[str, Query(max_length=100)] = "",
        page: Annotated[int, Query(ge=1, le=100000)] = 1,
        size: Annotated[int, Query(ge=1, le=teamwork.MAX_PAGE_SIZE)] = 25,
    ) -> JSONResponse:
        who = practitioner(principal)
        engine = engine_of(request)
        filters = teamwork.Filters(scope, group or None, due, q, page, size)
        async with engine.db.read() as conn:
            bench = await teamwork.workbench(
                engine, conn, team=team, practitioner=who, filters=filters, at=service.now_utc()
            )
        return _json(
            {
                "team": bench.team,
                "member": bench.me.practitioner,
                "leader": bench.me.leader,
                "members": [
                    {"practitioner": m.practitioner, "name": m.name, "leader": m.leader}
                    for m in bench.members
                ],
                "total": bench.total,
                "due": bench.due,
                "page": filters.page,
                "pages": bench.pages,
                "items": [{k: v for k, v in r.items() if k != "followUps"} for r in bench.rows],
                "tasks": bench.tasks,
            }
        )

    @router.post("/contracts/{cid}/assign")
    async def assign(request: Request, cid: str, body: AssignIn, principal: Caller) -> JSONResponse:
        who = practitioner(principal)
        engine = engine_of(request)
        async with engine.db.write() as conn:
            contract = await teamwork.do_assign(
                engine, conn, contract_id=cid, member=body.member, leader=who
            )
        return _json(contract)

    @router.get("/contracts/{cid}/assignments")
    async def assignments(request: Request, cid: str, principal: Caller) -> JSONResponse:
        who = team_member(principal)
        engine = engine_of(request)
        async with engine.db.read() as conn:
            contract = await service.access_contract(engine, conn, cid)
            await service.access_team(engine, conn, team=str(service.team_of(contract)), member=who)
        return _json({"contract": f"Contract/{cid}", "items": teamwork.assignments(contract)})

    @router.get("/team/reports")
    async def list_reports(
        request: Request,
        principal: Caller,
        team: Annotated[str, Query(pattern=TEAM)],
        kind: Annotated[Literal["weekly", "monthly"] | None, Query()] = None,
    ) -> JSONResponse:
        who = team_member(principal)
        engine = engine_of(request)
        async with engine.db.read() as conn:
            await service.access_team(engine, conn, team=team, member=who)
            found = await reports.reports_of(engine, conn, team=team, kind=kind)
        return _json({"items": [reports.summary(r) for r in found]})

    @router.post("/team/reports")
    async def generate(request: Request, body: ReportIn, principal: Caller) -> JSONResponse:
        who = team_member(principal)
        engine = engine_of(request)
        now = service.now_utc()
        period = reports.period_of(body.kind, body.day or now.date())
        if datetime.combine(period.start, time(0), tzinfo=UTC) > now:
            raise service.refuse(Invalid, "future-period", "that period has not begun")
        async with engine.db.write() as conn:
            await service.access_team(engine, conn, team=body.team, member=who)
            report, _wrote = await reports.do_generate(
                engine, conn, team=body.team, period=period, replace=True, now=now
            )
        return _json(reports.summary(report), 201)

    @router.get("/team/reports/{rid}")
    async def one_report(
        request: Request,
        rid: Annotated[str, Path(pattern=ID)],
        principal: Caller,
        format: Annotated[Literal["json", "csv", "xlsx"], Query()] = "json",
    ) -> Response:
        body = await report_for_member(request, principal, rid)
        if format == "json":
            return _json({**reports.summary(body), "resource": body})
        return download(body, format)

    @router.get("/analytics")
    async def contract_analytics(
        request: Request,
        principal: Caller,
        at: Annotated[date | None, Query()] = None,
        windowDays: Annotated[int, Query(ge=1, le=3660)] = 365,
    ) -> JSONResponse:
        moment = service.now_utc()
        if at is not None:
            moment = datetime.combine(at, time(23, 59, 59), tzinfo=UTC)
        found = await figures_for(
            request, principal, at=moment, window_days=windowDays, active=None
        )
        return _json(found)

    return router
