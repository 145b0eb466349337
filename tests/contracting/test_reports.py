"""Team work reports on the fixture county of test_teamwork.py (SQLite and PostgreSQL):
hand-computed figures for the week 2026-11-09 … 11-15, one stored MeasureReport per team
and period however often the schedule runs, on-demand replacement with history, API
access and downloads (CSV, XLSX)."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime

import httpx
import pytest
from fastapi import FastAPI
from openpyxl import load_workbook  # type: ignore[import-untyped]

from smartmed.contracting import reports, service
from smartmed.fhir.context import FhirEngine
from smartmed.jobs.registry import registry
from tests.contracting.test_teamwork import build_county, clients_for

WEEK = reports.Period("weekly", date(2026, 11, 9), date(2026, 11, 16))
AFTER_WEEK = datetime(2026, 11, 16, 2, 0, tzinfo=UTC)  # the weekly schedule's occurrence

# Team A over WEEK: signings a1 (11-10), a3 (11-11), b1 (11-12); b2 renewed (11-10); a3
# terminated (11-12); b1 moved to team B (11-13); a1's bp-followup (11-12). Follow-ups of
# the residents under contract at the week's end (a1, a2, b2), each with hypertension or
# diabetes and no follow-up before the week: all three due, a1 followed up.
TEAM_A = {
    "new-signings": 3,
    "renewals": 1,
    "terminations": 1,
    "transfers-in": 0,
    "transfers-out": 1,
    "services": {"bp-followup": 1},
    "follow-up-visits": 1,
    "follow-ups": {"due": 3, "done": 1},
}
# Team B: b1 arrives (11-13); c1's follow-up of 10-01 is next due on 12-31.
TEAM_B = {
    "new-signings": 0,
    "renewals": 0,
    "terminations": 0,
    "transfers-in": 1,
    "transfers-out": 0,
    "services": {},
    "follow-up-visits": 0,
    "follow-ups": {"due": 0, "done": 0},
}


@pytest.fixture(scope="module")
async def county(auth_app: FastAPI) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    await build_county(auth_app)
    clients = await clients_for(auth_app)
    yield clients
    for client in clients.values():
        await client.aclose()


def engine_of(app: FastAPI) -> FhirEngine:
    engine: FhirEngine = app.state.fhir
    return engine


def test_periods() -> None:
    assert reports.period_of("weekly", date(2026, 11, 15)) == WEEK
    assert reports.previous_period("weekly", AFTER_WEEK) == WEEK
    assert reports.period_of("monthly", date(2026, 12, 31)) == reports.Period(
        "monthly", date(2026, 12, 1), date(2027, 1, 1)
    )
    assert reports.previous_period("monthly", datetime(2026, 3, 1, 2, tzinfo=UTC)) == (
        reports.Period("monthly", date(2026, 2, 1), date(2026, 3, 1))
    )
    with pytest.raises(Exception) as bad:
        reports.period_of("daily", date(2026, 1, 1))
    assert service.reason_of(bad.value) == "bad-kind"  # type: ignore[arg-type]
    assert {reports.WEEKLY_JOB, reports.MONTHLY_JOB} <= set(registry.schedules)
    assert registry.schedules[reports.WEEKLY_JOB].cron == "0 2 * * 1"


async def test_figures_of_the_week(auth_app: FastAPI, county: dict[str, httpx.AsyncClient]) -> None:
    engine = engine_of(auth_app)
    async with engine.db.read() as conn:
        a = await reports.figures(engine, conn, team="CareTeam/teamA", period=WEEK)
        b = await reports.figures(engine, conn, team="CareTeam/teamB", period=WEEK)
    assert (a, b) == (TEAM_A, TEAM_B)


async def test_the_schedule_stores_one_report_per_team_and_period(
    auth_app: FastAPI, county: dict[str, httpx.AsyncClient]
) -> None:
    engine = engine_of(auth_app)
    written = await reports.generate_all(engine, kind="weekly", now=AFTER_WEEK)
    assert len(written) == 2
    again = await reports.generate_all(engine, kind="weekly", now=AFTER_WEEK)
    assert again == []  # idempotent: the complete reports are kept
    async with engine.db.read() as conn:
        stored = await service.search(engine, conn, "MeasureReport", [("measure", reports.MEASURE)])
        a = await reports.reports_of(engine, conn, team="CareTeam/teamA")
    assert len(stored) == 2
    assert [reports.summary(r)["figures"] for r in a] == [TEAM_A]
    assert (a[0]["status"], a[0]["period"]) == (
        "complete",
        {"start": "2026-11-09", "end": "2026-11-15"},
    )
    assert a[0]["identifier"] == [
        {"system": reports.REPORT_SYSTEM, "value": "teamA/weekly/2026-11-09"}
    ]


async def test_api_lists_generates_and_downloads(
    auth_app: FastAPI, county: dict[str, httpx.AsyncClient]
) -> None:
    c = county
    r = await c["gp1"].get("/api/contracting/team/reports", params={"team": "CareTeam/teamA"})
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert [(i["kind"], i["period"]["start"], i["figures"]) for i in items] == [
        ("weekly", "2026-11-09", TEAM_A)
    ]
    rid = items[0]["id"]
    # On demand: the same period again replaces the stored report (a new version).
    r = await c["gp1"].post(
        "/api/contracting/team/reports",
        json={"team": "CareTeam/teamA", "kind": "weekly", "day": "2026-11-11"},
    )
    assert r.status_code == 201, r.text
    assert (r.json()["id"], r.json()["version"], r.json()["figures"]) == (rid, "2", TEAM_A)
    # Bad input and access.
    for body in (
        {"team": "CareTeam/teamA", "kind": "daily"},
        {"team": "teamA", "kind": "weekly"},
        {"team": "CareTeam/teamA", "kind": "weekly", "day": "11/11/2026"},
        {"team": "CareTeam/teamA", "kind": "weekly", "day": "2999-01-01"},
        {"team": "CareTeam/teamA", "kind": "weekly", "extra": True},
    ):
        r = await c["gp1"].post("/api/contracting/team/reports", json=body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["resourceType"] == "OperationOutcome"
    r = await c["lead2"].post(
        "/api/contracting/team/reports", json={"team": "CareTeam/teamA", "kind": "weekly"}
    )
    assert r.status_code == 403
    assert (await c["lead2"].get(f"/api/contracting/team/reports/{rid}")).status_code == 403
    assert (await c["analyst"].get(f"/api/contracting/team/reports/{rid}")).status_code == 403
    r = await c["gp1"].get(f"/api/contracting/team/reports/{rid}", params={"format": "pdf"})
    assert r.status_code == 400
    # Downloads.
    r = await c["gp1"].get(f"/api/contracting/team/reports/{rid}", params={"format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    lines = r.content.decode("utf-8-sig").splitlines()
    assert lines[0] == "figure,item,value"
    assert "new-signings,,3" in lines and "services,bp-followup,1" in lines
    assert "follow-ups-due,,3" in lines and "follow-ups-done,,1" in lines
    r = await c["gp1"].get(f"/api/contracting/team/reports/{rid}", params={"format": "xlsx"})
    assert r.status_code == 200
    sheet = load_workbook(io.BytesIO(r.content)).active
    cells = [tuple(row) for row in sheet.iter_rows(values_only=True)]
    assert cells[0] == ("figure", "item", "value")
    assert ("renewals", None, 1) in cells or ("renewals", "", 1) in cells
