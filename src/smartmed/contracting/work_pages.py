"""Portal pages of team co-management, team work reports and contract analytics
(templates in ``portal/templates/contracting/``: ``workbench.html``, ``reports.html``,
``report.html``, ``analytics.html``).

======  ====================================  =============================================
method  path                                  what
======  ====================================  =============================================
GET     /contracting/workbench                team member: my residents (leader: the team,
                                              the unassigned; assign and move), due
                                              follow-ups, open tasks; filters and pages
POST    /contracting/{id}/assign              team leader: make a member responsible
GET     /contracting/reports?team=&kind=      team member: the team's stored reports
POST    /contracting/reports                  team member: report a period now
GET     /contracting/reports/{id}             one report (``?format=csv|xlsx`` downloads)
GET     /contracting/analytics                institution administrator, analyst: charts
                                              and tables (aggregate-only for analysts)
======  ====================================  =============================================
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from fastapi import APIRouter, Request, Response

from smartmed.contracting import api, populations, reports, service, teamwork, work_api
from smartmed.fhir.errors import FhirError, Invalid
from smartmed.portal.forms import form_data
from smartmed.portal.i18n import translations
from smartmed.portal.nav import require
from smartmed.portal.pages import see_other
from smartmed.portal.render import render, request_locale
from smartmed.portal.session import get_session

BASE = "/contracting"
_ID = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.")


def _error(request: Request, exc: FhirError, status: int | None = None) -> Response:
    return render(
        request, "contracting/work_error.html", status or exc.status, reason=service.reason_of(exc)
    )


def _bad(reason: str) -> FhirError:
    return service.refuse(Invalid, reason, reason)


def _int(value: str | None, default: int) -> int:
    if value in (None, ""):
        return default
    assert value is not None
    if not value.isdigit() or len(value) > 6:
        raise _bad("bad-filter")
    return int(value)


def _team_param(value: str | None, teams: list[dict[str, Any]]) -> str | None:
    if value:
        kind, _, id_ = value.partition("/")
        if kind != "CareTeam" or not id_ or not set(id_) <= _ID or len(id_) > 64:
            raise _bad("bad-team")
        return value
    return f"CareTeam/{teams[0]['id']}" if teams else None


def chart(name: str, rows: list[dict[str, Any]], key: str, scale: float = 1.0) -> dict[str, Any]:
    """A bar chart's data (portal.js ``data-chart``); suppressed values are left out."""
    shown = [r for r in rows if r.get(key) is not None]
    return {
        "name": name,
        "labels": [str(r.get("label") or r.get("name") or r.get("group")) for r in shown],
        "values": [round(float(r[key]) * scale, 1) for r in shown],
    }


def build_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get(BASE + "/workbench")
    async def workbench_page(request: Request) -> Response:
        require(request, "workbench")
        who = work_api.practitioner(request.state.principal)
        engine = api.engine_of(request)
        q = request.query_params
        try:
            group = q.get("group") or None
            filters = teamwork.Filters(
                scope=q.get("scope") or "mine",
                group=group,
                due_only=q.get("due") == "1",
                query=q.get("q", ""),
                page=_int(q.get("page"), 1),
                size=_int(q.get("size"), 25),
            )
            async with engine.db.read() as conn:
                teams = await service.teams_of(engine, conn, who)
                team = _team_param(q.get("team"), teams)
                bench = None
                if team is not None:
                    bench = await teamwork.workbench(
                        engine,
                        conn,
                        team=team,
                        practitioner=who,
                        filters=filters,
                        at=service.now_utc(),
                    )
        except FhirError as exc:
            return _error(request, exc)
        return render(
            request,
            "contracting/workbench.html",
            teams=teams,
            bench=bench,
            groups=populations.GROUPS,
            done=get_session(request).pop("contracting_done"),
        )

    @router.post(BASE + "/{cid}/assign")
    async def assign(request: Request, cid: str) -> Response:
        require(request, "workbench")
        who = work_api.practitioner(request.state.principal)
        values = await form_data(request)
        engine = api.engine_of(request)
        back = values.get("back", "")
        if not back.startswith(BASE + "/workbench"):
            back = BASE + "/workbench"
        try:
            async with engine.db.write() as conn:
                await teamwork.do_assign(
                    engine, conn, contract_id=cid, member=values.get("member", ""), leader=who
                )
        except FhirError as exc:
            return _error(request, exc)
        get_session(request).set("contracting_done", "assigned")
        return see_other(back)

    @router.get(BASE + "/reports")
    async def reports_page(request: Request) -> Response:
        require(request, "team-reports")
        who = api.team_member(request.state.principal)
        engine = api.engine_of(request)
        kind = request.query_params.get("kind") or None
        try:
            if kind is not None and kind not in reports.KINDS:
                raise _bad("bad-kind")
            async with engine.db.read() as conn:
                teams = await service.teams_of(engine, conn, who)
                team = _team_param(request.query_params.get("team"), teams)
                found: list[dict[str, Any]] = []
                if team is not None:
                    await service.access_team(engine, conn, team=team, member=who)
                    found = await reports.reports_of(engine, conn, team=team, kind=kind)
        except FhirError as exc:
            return _error(request, exc)
        return render(
            request,
            "contracting/reports.html",
            teams=teams,
            team=team,
            kind=kind,
            items=[reports.summary(r) for r in found],
            done=get_session(request).pop("contracting_done"),
        )

    @router.post(BASE + "/reports")
    async def generate(request: Request) -> Response:
        require(request, "team-reports")
        who = api.team_member(request.state.principal)
        values = await form_data(request)
        engine = api.engine_of(request)
        now = service.now_utc()
        try:
            kind = values.get("kind", "")
            if kind not in reports.KINDS:
                raise _bad("bad-kind")
            team = _team_param(values.get("team"), [])
            if team is None:
                raise _bad("bad-team")
            try:
                day = date.fromisoformat(values["day"]) if values.get("day") else now.date()
            except ValueError:
                raise _bad("bad-day") from None
            period = reports.period_of(kind, day)
            if datetime.combine(period.start, time(0), tzinfo=UTC) > now:
                raise _bad("future-period")
            async with engine.db.write() as conn:
                await service.access_team(engine, conn, team=team, member=who)
                report, _ = await reports.do_generate(
                    engine, conn, team=team, period=period, replace=True, now=now
                )
        except FhirError as exc:
            return _error(request, exc)
        get_session(request).set("contracting_done", "report")
        return see_other(f"{BASE}/reports/{report['id']}")

    @router.get(BASE + "/reports/{rid}")
    async def report_page(request: Request, rid: str) -> Response:
        require(request, "team-reports")
        fmt = request.query_params.get("format") or "html"
        try:
            if fmt not in ("html", "csv", "xlsx") or not set(rid) <= _ID or len(rid) > 64:
                raise _bad("bad-format" if fmt not in ("html", "csv", "xlsx") else "not-found")
            body = await work_api.report_for_member(request, request.state.principal, rid)
        except FhirError as exc:
            return _error(request, exc)
        if fmt != "html":
            return work_api.download(body, fmt, download_labels(request))
        return render(
            request,
            "contracting/report.html",
            report=reports.summary(body),
            done=get_session(request).pop("contracting_done"),
        )

    @router.get(BASE + "/analytics")
    async def analytics_page(request: Request) -> Response:
        require(request, "contract-analytics")
        session = get_session(request)
        q = request.query_params
        try:
            at = service.now_utc()
            if q.get("at"):
                try:
                    day = date.fromisoformat(q["at"])
                except ValueError:
                    raise _bad("bad-day") from None
                at = datetime.combine(day, time(23, 59, 59), tzinfo=UTC)
            window = _int(q.get("window"), 365)
            if not 1 <= window <= 3660:
                raise _bad("bad-filter")
            found = await work_api.figures_for(
                request,
                request.state.principal,
                at=at,
                window_days=window,
                active=session.active_role,
            )
        except FhirError as exc:
            return _error(request, exc)
        _ = translations(request_locale(request)).gettext
        groups = [{**g, "label": _group_label(g["group"], _)} for g in found["groups"]]
        charts = {
            "townships": chart(_("Signing rate (%)"), found["townships"], "rate", 100),
            "teams": chart(_("Signing rate (%)"), found["teams"], "rate", 100),
            "groups": chart(_("Coverage (%)"), groups, "coverage", 100),
            "never": chart(_("Signed but never served"), found["teams"], "neverServed"),
        }
        return render(
            request,
            "contracting/analytics.html",
            figures=found,
            groups=groups,
            charts=charts,
            window=window,
            at_day=at.date().isoformat(),
            since=(at - timedelta(days=window)).date().isoformat(),
        )

    return router


def _group_label(code: str, gettext: Any) -> str:
    labels = {
        "elderly": "65 and over",
        "child": "Child 0–6",
        "pregnant": "Pregnant",
        "hypertension": "Hypertension",
        "diabetes": "Diabetes",
        "mental": "Severe mental disorder",
        "tuberculosis": "Tuberculosis",
    }
    return str(gettext(labels.get(code, code)))


def download_labels(request: Request) -> dict[str, str]:
    """Column and figure names of a downloaded report, in the reader's language."""
    _ = translations(request_locale(request)).gettext
    return {
        "figure": _("Figure"),
        "item": _("Service item"),
        "value": _("Value"),
        "new-signings": _("New signings"),
        "renewals": _("Renewals"),
        "terminations": _("Terminations"),
        "transfers-in": _("Transfers in"),
        "transfers-out": _("Transfers out"),
        "services": _("Services delivered"),
        "follow-up-visits": _("Follow-up visits"),
        "follow-ups-due": _("Residents due a follow-up"),
        "follow-ups-done": _("Of those, followed up"),
    }
