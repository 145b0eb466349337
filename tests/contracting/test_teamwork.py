"""Team co-management on a small fixture county (SQLite and PostgreSQL): the leader
assigns and moves residents (history kept, searchable), each member's workbench with
key populations, due follow-ups (4 a year: due 91 days after the last) and open tasks,
filters and paging; the API's access rules and bad input.

The county (also used by test_reports.py and test_contract_analytics.py), as of
NOW = 2026-11-18 03:00 UTC:

=====  ======  ==========  ===================  =================================================
who    lives   born        conditions           contract
=====  ======  ==========  ===================  =================================================
a1     V1/T1   1950        I10                  team A from 2026-11-10 (package pkg1), served
                                                bp-followup 2026-11-12 (a follow-up)
a2     V1/T1   1980        E11                  team A from 2026-06-01; served hba1c 2026-10-01
a3     V1/T1   1990        —                    team A 2026-11-11, terminated 11-12 (moved-away)
a4     V1/T1   2022        —                    none
d1     V1/T1   1940        —                    none; inactive (not a resident)
b1     V2/T1   1955        —                    team A 2026-11-12, transferred to team B 11-13
b2     V2/T1   1985        I10                  team A 2025-11-10, renewed 2026-11-10
c1     V3/T2   1970        I10                  team B from 2026-01-05; demo-style follow-up 10-01
c2     V3/T2   1992        —                    none
=====  ======  ==========  ===================  =================================================

Team A (managing organisation T1): lead1 (leader), gp1 (GP), hm1 (public health, through
PractitionerRole role-hm1). Team B (T2): lead2 (leader).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from smartmed.contracting import lifecycle, service, teamwork
from smartmed.fhir.context import FhirEngine
from smartmed.fhir.errors import FhirError
from smartmed.identity.service import get_identity
from tests.identity.conftest import BASE, FHIR, http, system_token

JSON = {"Content-Type": "application/fhir+json"}
NOW = datetime(2026, 11, 18, 3, 0, tzinfo=UTC)
SIG = service.Signature("王 签名", True)
ROLE = "urn:smartmed:care-team-role"
ICD = "http://hl7.org/fhir/sid/icd-10"


def _org(oid: str, name: str, part_of: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"resourceType": "Organization", "id": oid, "name": name}
    if part_of:
        body["partOf"] = {"reference": f"Organization/{part_of}"}
    return body


def _member(ref: str, role: str, name: str) -> dict[str, Any]:
    return {
        "role": [{"coding": [{"system": ROLE, "code": role}]}],
        "member": {"reference": ref, "display": name},
    }


def _patient(pid: str, birth: str, clinic: str, active: bool = True) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "active": active,
        "name": [{"family": "张", "given": [pid]}],
        "birthDate": birth,
        "managingOrganization": {"reference": f"Organization/{clinic}"},
    }


def _condition(cid: str, patient: str, code: str) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": cid,
        "clinicalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "code": "active",
                }
            ]
        },
        "code": {"coding": [{"system": ICD, "code": code}]},
        "subject": {"reference": f"Patient/{patient}"},
    }


def _task(tid: str, owner: str, status: str, patient: str) -> dict[str, Any]:
    return {
        "resourceType": "Task",
        "id": tid,
        "status": status,
        "intent": "order",
        "description": f"task {tid}",
        "for": {"reference": f"Patient/{patient}"},
        "owner": {"reference": owner},
        "authoredOn": "2026-11-15T08:00:00Z",
    }


SEED: list[dict[str, Any]] = [
    _org("county", "县卫生健康局"),
    _org("T1", "东镇卫生院", "county"),
    _org("T2", "西镇卫生院", "county"),
    _org("V1", "东村卫生室", "T1"),
    _org("V2", "南村卫生室", "T1"),
    _org("V3", "西村卫生室", "T2"),
    *[
        {"resourceType": "Practitioner", "id": p, "name": [{"family": "医", "given": [p]}]}
        for p in ("lead1", "gp1", "hm1", "lead2", "outsider")
    ],
    {
        "resourceType": "PractitionerRole",
        "id": "role-hm1",
        "practitioner": {"reference": "Practitioner/hm1"},
        "organization": {"reference": "Organization/T1"},
    },
    {
        "resourceType": "CareTeam",
        "id": "teamA",
        "status": "active",
        "name": "东镇团队",
        "managingOrganization": [{"reference": "Organization/T1"}],
        "participant": [
            _member("Practitioner/lead1", "leader", "医lead1"),
            _member("Practitioner/gp1", "gp", "医gp1"),
            _member("PractitionerRole/role-hm1", "public-health", "医hm1"),
        ],
    },
    {
        "resourceType": "CareTeam",
        "id": "teamB",
        "status": "active",
        "name": "西镇团队",
        "managingOrganization": [{"reference": "Organization/T2"}],
        "participant": [
            {"role": [{"text": "团队长"}], "member": {"reference": "Practitioner/lead2"}}
        ],
    },
    {
        "resourceType": "PlanDefinition",
        "id": "pkg1",
        "status": "active",
        "type": {"coding": [{"system": "urn:smartmed:plan-type", "code": "service-package"}]},
        "action": [
            {
                "title": "血压随访",
                "code": [
                    {"coding": [{"system": "urn:smartmed:service-item", "code": "bp-followup"}]}
                ],
                "extension": [
                    {"url": "urn:smartmed:extension:service-quantity", "valueInteger": 1}
                ],
            }
        ],
    },
    _patient("a1", "1950-03-01", "V1"),
    _patient("a2", "1980-01-01", "V1"),
    _patient("a3", "1990-01-01", "V1"),
    _patient("a4", "2022-01-01", "V1"),
    _patient("d1", "1940-01-01", "V1", active=False),
    _patient("b1", "1955-01-01", "V2"),
    _patient("b2", "1985-01-01", "V2"),
    _patient("c1", "1970-01-01", "V3"),
    _patient("c2", "1992-01-01", "V3"),
    _condition("k-a1", "a1", "I10"),
    _condition("k-a2", "a2", "E11.9"),
    _condition("k-b2", "b2", "I10"),
    _condition("k-c1", "c1", "I10"),
    _task("t1", "Practitioner/gp1", "requested", "a1"),
    _task("t2", "Practitioner/gp1", "completed", "a1"),
    _task("t3", "PractitionerRole/role-hm1", "in-progress", "a2"),
]

PEOPLE: dict[str, tuple[str, str, str | None]] = {
    "lead1": ("Practitioner/lead1", "family-doctor", "Organization/T1"),
    "gp1": ("Practitioner/gp1", "family-doctor", "Organization/T1"),
    "hm1": ("Practitioner/hm1", "public-health-worker", "Organization/T1"),
    "lead2": ("Practitioner/lead2", "family-doctor", "Organization/T2"),
    "outsider": ("Practitioner/outsider", "family-doctor", "Organization/T2"),
    "admin2": ("Practitioner/outsider", "institution-admin", "Organization/T2"),
    "analyst": ("Practitioner/outsider", "health-authority-analyst", "Organization/county"),
}


def at(day: str, hour: int = 3) -> datetime:
    return datetime.combine(date.fromisoformat(day), datetime.min.time(), tzinfo=UTC).replace(
        hour=hour
    )


def service_record(kind: str, rid: str, patient: str, contract: str, item: str, day: str) -> Any:
    ext = {
        "url": teamwork.SERVICE_EXT,
        "extension": [
            {"url": "contract", "valueReference": {"reference": contract}},
            {"url": "item", "valueCoding": {"system": "urn:smartmed:service-item", "code": item}},
        ],
    }
    if kind == "Encounter":
        return {
            "resourceType": "Encounter",
            "id": rid,
            "extension": [ext],
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": f"Patient/{patient}"},
            "period": {"start": f"{day}T09:00:00Z", "end": f"{day}T09:20:00Z"},
        }
    return {
        "resourceType": "Procedure",
        "id": rid,
        "extension": [ext],
        "status": "completed",
        "code": {"text": item},
        "subject": {"reference": f"Patient/{patient}"},
        "performedDateTime": f"{day}T09:00:00Z",
    }


async def build_county(app: FastAPI) -> dict[str, str]:
    """Seed the county and write its contracts through the service; contract ids."""
    seed = await system_token(app)
    async with http(app, headers={"Authorization": f"Bearer {seed}"}) as c:
        for body in SEED:
            r = await c.put(
                f"/fhir/R4/{body['resourceType']}/{body['id']}", json=body, headers=JSON
            )
            assert r.status_code in (200, 201), r.text
    engine: FhirEngine = app.state.fhir
    ids: dict[str, str] = {}

    async def sign(
        patient: str, team: str, doctor: str, day: str, package: str | None = None
    ) -> str:
        async with engine.db.write() as conn:
            made = await service.do_sign_in_person(
                engine,
                conn,
                patient=f"Patient/{patient}",
                team=f"CareTeam/{team}",
                doctor=f"Practitioner/{doctor}",
                signature=SIG,
                package=package,
                now=at(day),
            )
        return str(made["id"])

    ids["b2-old"] = await sign("b2", "teamA", "lead1", "2025-11-10")
    ids["c1"] = await sign("c1", "teamB", "lead2", "2026-01-05")
    ids["a2"] = await sign("a2", "teamA", "gp1", "2026-06-01")
    ids["a1"] = await sign("a1", "teamA", "lead1", "2026-11-10", "PlanDefinition/pkg1")
    ids["a3"] = await sign("a3", "teamA", "lead1", "2026-11-11")
    ids["b1-old"] = await sign("b1", "teamA", "lead1", "2026-11-12")
    async with engine.db.write() as conn:
        renewed = await lifecycle.do_renew(
            engine,
            conn,
            contract_id=ids["b2-old"],
            actor="Practitioner/lead1",
            now=at("2026-11-10"),
        )
        ids["b2"] = str(renewed["id"])
        await lifecycle.do_terminate(
            engine,
            conn,
            contract_id=ids["a3"],
            actor="Practitioner/lead1",
            reason="moved-away",
            now=at("2026-11-12"),
        )
        _ended, moved = await lifecycle.do_transfer(
            engine,
            conn,
            contract_id=ids["b1-old"],
            team="CareTeam/teamB",
            actor="Practitioner/lead1",
            now=at("2026-11-13"),
        )
        ids["b1"] = str(moved["id"])
    records = [
        service_record(
            "Encounter", "s-a1", "a1", f"Contract/{ids['a1']}", "bp-followup", "2026-11-12"
        ),
        service_record("Procedure", "s-a2", "a2", f"Contract/{ids['a2']}", "hba1c", "2026-10-01"),
        {
            "resourceType": "Encounter",
            "id": "f-c1",
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "type": [
                {"coding": [{"system": "urn:smartmed:encounter-type", "code": "chronic-follow-up"}]}
            ],
            "subject": {"reference": "Patient/c1"},
            "period": {"start": "2026-10-01T09:00:00Z"},
        },
    ]
    async with http(app, headers={"Authorization": f"Bearer {seed}"}) as c:
        for body in records:
            r = await c.put(
                f"/fhir/R4/{body['resourceType']}/{body['id']}", json=body, headers=JSON
            )
            assert r.status_code in (200, 201), r.text
    return ids


async def clients_for(app: FastAPI) -> dict[str, httpx.AsyncClient]:
    identity = get_identity(app)
    clients: dict[str, httpx.AsyncClient] = {}
    for name, (fhir_user, role, org) in PEOPLE.items():
        token, _ = await identity.tokens.access_token(
            issuer=BASE,
            audience=FHIR,
            subject=f"account-{name}",
            client_id="teamwork-tests",
            scope="openid fhirUser user/*.cruds",
            fhir_user=fhir_user,
            roles=[{"role": role, "organization": org}],
        )
        clients[name] = http(app, headers={"Authorization": f"Bearer {token}"})
    return clients


@pytest.fixture(scope="module")
async def work_county(
    auth_app: FastAPI,
) -> AsyncIterator[tuple[dict[str, str], dict[str, httpx.AsyncClient]]]:
    ids = await build_county(auth_app)
    clients = await clients_for(auth_app)
    yield ids, clients
    for client in clients.values():
        await client.aclose()


def engine_of(app: FastAPI) -> FhirEngine:
    engine: FhirEngine = app.state.fhir
    return engine


async def bench(
    app: FastAPI, who: str, team: str = "CareTeam/teamA", **filters: Any
) -> teamwork.Workbench:
    engine = engine_of(app)
    async with engine.db.read() as conn:
        return await teamwork.workbench(
            engine,
            conn,
            team=team,
            practitioner=f"Practitioner/{who}",
            filters=teamwork.Filters(**filters),
            at=NOW,
        )


async def assign(
    app: FastAPI, contract: str, member: str, leader: str = "lead1", day: str | None = "2026-11-14"
) -> Any:
    engine = engine_of(app)
    async with engine.db.write() as conn:
        return await teamwork.do_assign(
            engine,
            conn,
            contract_id=contract,
            member=f"Practitioner/{member}",
            leader=f"Practitioner/{leader}",
            now=at(day) if day else None,
        )


async def test_leader_assigns_and_moves_residents_with_history(
    auth_app: FastAPI, work_county: tuple[dict[str, str], dict[str, httpx.AsyncClient]]
) -> None:
    ids, _clients = work_county
    engine = engine_of(auth_app)
    # Before any assignment the leader's "unassigned" view holds team A's three contracts.
    unassigned = await bench(auth_app, "lead1", scope="unassigned")
    assert [r["patient"] for r in unassigned.rows] == ["Patient/a1", "Patient/a2", "Patient/b2"]
    # A member who is not the leader may not assign; nobody outside the team may be assigned.
    for leader, member, reason in (
        ("gp1", "hm1", "not-team-leader"),
        ("lead1", "lead2", "not-team-member"),
        ("lead2", "gp1", "not-team-member"),
    ):
        with pytest.raises(FhirError) as refused:
            await assign(auth_app, ids["a1"], member, leader=leader)
        assert service.reason_of(refused.value) == reason
    async with engine.db.read() as conn:
        untouched = await service.access_contract(engine, conn, ids["a1"])
    assert teamwork.assignments(untouched) == []
    await assign(auth_app, ids["a1"], "gp1")
    await assign(auth_app, ids["a2"], "gp1")
    await assign(auth_app, ids["b2"], "hm1")
    moved = await assign(auth_app, ids["a2"], "hm1", day="2026-11-15")
    with pytest.raises(FhirError) as again:
        await assign(auth_app, ids["a2"], "hm1", day="2026-11-16")
    assert service.reason_of(again.value) == "already-assigned"
    with pytest.raises(FhirError) as ended:
        await assign(auth_app, ids["a3"], "gp1")  # terminated on 11-12: not in force
    assert service.reason_of(ended.value) == "not-in-force"
    assert teamwork.assignments(moved) == [
        {
            "member": "Practitioner/gp1",
            "start": "2026-11-14T03:00:00Z",
            "end": "2026-11-15T03:00:00Z",
            "by": "Practitioner/lead1",
        },
        {
            "member": "Practitioner/hm1",
            "start": "2026-11-15T03:00:00Z",
            "end": None,
            "by": "Practitioner/lead1",
        },
    ]
    # Searchable: one _tag search gives a member's contracts.
    async with engine.db.read() as conn:
        tagged = await service.search(
            engine, conn, "Contract", [("_tag", f"{teamwork.ASSIGNEE_TAG}|Practitioner/hm1")]
        )
    assert sorted(c["id"] for c in tagged) == sorted([ids["a2"], ids["b2"]])


async def test_workbench_lists_residents_due_follow_ups_and_tasks(
    auth_app: FastAPI, work_county: tuple[dict[str, str], dict[str, httpx.AsyncClient]]
) -> None:
    gp = await bench(auth_app, "gp1")
    assert [(r["patient"], r["keyPopulations"], r["due"]) for r in gp.rows] == [
        ("Patient/a1", ["elderly", "hypertension"], False)
    ]
    # a1's last follow-up (the bp-followup service on 11-12) + 91 days.
    assert (gp.rows[0]["lastFollowUp"], gp.rows[0]["followUpDue"]) == ("2026-11-12", "2027-02-11")
    assert [t["id"] for t in gp.tasks] == ["t1"]  # t2 is completed
    hm = await bench(auth_app, "hm1")
    assert [(r["patient"], r["due"], r["followUpDue"]) for r in hm.rows] == [
        ("Patient/a2", True, "2026-11-18"),  # diabetes, never followed up: due today
        ("Patient/b2", True, "2026-11-18"),
    ]
    assert (hm.due, [t["id"] for t in hm.tasks]) == (2, ["t3"])  # t3 owned through a role
    # Team B: c1's demo-style follow-up on 10-01 is due 91 days later; lead2 is the
    # leader by the text 团队长 and sees the team.
    team_b = await bench(auth_app, "lead2", team="CareTeam/teamB", scope="team")
    assert [(r["patient"], r["due"], r["followUpDue"]) for r in team_b.rows] == [
        ("Patient/b1", False, None),
        ("Patient/c1", False, "2026-12-31"),
    ]
    # Filters and paging over the whole team.
    whole = await bench(auth_app, "lead1", scope="team", size=2)
    assert (whole.total, whole.pages, [r["patient"] for r in whole.rows]) == (
        3,
        2,
        ["Patient/a1", "Patient/a2"],
    )
    page2 = await bench(auth_app, "lead1", scope="team", size=2, page=2)
    assert [r["patient"] for r in page2.rows] == ["Patient/b2"]
    due = await bench(auth_app, "lead1", scope="team", due_only=True)
    assert [r["patient"] for r in due.rows] == ["Patient/a2", "Patient/b2"]
    hyper = await bench(auth_app, "lead1", scope="team", group="hypertension")
    assert [r["patient"] for r in hyper.rows] == ["Patient/a1", "Patient/b2"]
    named = await bench(auth_app, "lead1", scope="team", query="A2")
    assert [r["patient"] for r in named.rows] == ["Patient/a2"]
    assert [r["assigneeName"] for r in whole.rows] == ["医gp1", "医hm1"]


async def test_workbench_refuses_outsiders_and_bad_filters(
    auth_app: FastAPI, work_county: tuple[dict[str, str], dict[str, httpx.AsyncClient]]
) -> None:
    for who, filters, reason in (
        ("outsider", {}, "not-team-member"),
        ("gp1", {"scope": "team"}, "not-team-leader"),
        ("gp1", {"group": "smokers"}, "bad-filter"),
        ("gp1", {"size": 0}, "bad-filter"),
        ("gp1", {"size": 101}, "bad-filter"),
        ("gp1", {"page": 0}, "bad-filter"),
        ("gp1", {"scope": "everyone"}, "bad-filter"),
    ):
        with pytest.raises(FhirError) as refused:
            await bench(auth_app, who, **filters)
        assert service.reason_of(refused.value) == reason, (who, filters)


def test_next_due_follows_the_quarterly_interval() -> None:
    day = date(2026, 1, 1)
    assert teamwork.next_due(["hypertension"], [day]) == date(2026, 4, 2)
    assert teamwork.next_due(["diabetes"], []) == date.min
    assert teamwork.next_due(["elderly"], [day]) is None
    assert teamwork.FOLLOW_UP_INTERVAL.days * teamwork.FOLLOW_UPS_PER_YEAR <= 365


async def test_api_workbench_assign_and_access(
    auth_app: FastAPI, work_county: tuple[dict[str, str], dict[str, httpx.AsyncClient]]
) -> None:
    ids, clients = work_county
    r = await clients["hm1"].get(
        "/api/contracting/team/workbench", params={"team": "CareTeam/teamA"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert [i["patient"] for i in body["items"]] == ["Patient/a2", "Patient/b2"]
    assert [i["due"] for i in body["items"]] == [True, True]
    assert [t["id"] for t in body["tasks"]] == ["t3"]
    assert (body["leader"], body["total"], body["pages"]) == (False, 2, 1)
    # A member sees only their team's residents: team B's leader cannot open team A.
    r = await clients["lead2"].get(
        "/api/contracting/team/workbench", params={"team": "CareTeam/teamA"}
    )
    assert r.status_code == 403 and r.json()["resourceType"] == "OperationOutcome"
    r = await clients["analyst"].get(
        "/api/contracting/team/workbench", params={"team": "CareTeam/teamA"}
    )
    assert r.status_code == 403
    for params in (
        {"team": "teamA"},
        {"team": "CareTeam/teamA", "size": "0"},
        {"team": "CareTeam/teamA", "scope": "all"},
        {"team": "CareTeam/teamA", "group": "smokers"},
        {"team": "CareTeam/teamA", "page": "x"},
    ):
        r = await clients["lead1"].get("/api/contracting/team/workbench", params=params)
        assert r.status_code == 400, (params, r.text)
        assert r.json()["resourceType"] == "OperationOutcome"
    # Assign through the API: the leader moves a1 from gp1 to hm1; gp1 may not.
    url = f"/api/contracting/contracts/{ids['a1']}/assign"
    r = await clients["gp1"].post(url, json={"member": "Practitioner/hm1"})
    assert r.status_code == 403
    r = await clients["lead1"].post(url, json={"member": "Patient/a1"})
    assert r.status_code == 400
    r = await clients["lead1"].post(url, json={"member": "Practitioner/hm1", "extra": 1})
    assert r.status_code == 400
    history = await clients["gp1"].get(f"/api/contracting/contracts/{ids['a1']}/assignments")
    assert [a["member"] for a in history.json()["items"]] == ["Practitioner/gp1"]
    r = await clients["lead1"].post(url, json={"member": "Practitioner/hm1"})
    assert r.status_code == 200, r.text
    history = await clients["gp1"].get(f"/api/contracting/contracts/{ids['a1']}/assignments")
    assert [(a["member"], a["end"] is None) for a in history.json()["items"]] == [
        ("Practitioner/gp1", False),
        ("Practitioner/hm1", True),
    ]
    r = await clients["lead2"].get(f"/api/contracting/contracts/{ids['a1']}/assignments")
    assert r.status_code == 403
    r = await clients["gp1"].get(
        "/api/contracting/team/workbench", params={"team": "CareTeam/teamA"}
    )
    assert r.json()["items"] == []
    # Put it back for the other tests of this module.
    await assign(auth_app, ids["a1"], "gp1", day=None)


async def test_a_renewal_keeps_the_member_responsible(
    auth_app: FastAPI, work_county: tuple[dict[str, str], dict[str, httpx.AsyncClient]]
) -> None:
    ids, _clients = work_county
    engine = engine_of(auth_app)
    # a2 (hm1's since 11-15) renews in April 2027: the new contract, from 2027-06-01,
    # carries hm1's assignment over (and its tag, so hm1's _tag search finds it).
    async with engine.db.write() as conn:
        renewed = await lifecycle.do_renew(
            engine, conn, contract_id=ids["a2"], actor="Practitioner/lead1", now=at("2027-04-01")
        )
    assert teamwork.assignee_of(renewed) == "Practitioner/hm1"
    assert {"system": teamwork.ASSIGNEE_TAG, "code": "Practitioner/hm1"} in renewed["meta"]["tag"]
    later = datetime(2027, 6, 15, 3, 0, tzinfo=UTC)
    async with engine.db.read() as conn:
        mine = await teamwork.workbench(
            engine,
            conn,
            team="CareTeam/teamA",
            practitioner="Practitioner/hm1",
            filters=teamwork.Filters(),
            at=later,
        )
        unassigned = await teamwork.workbench(
            engine,
            conn,
            team="CareTeam/teamA",
            practitioner="Practitioner/lead1",
            filters=teamwork.Filters(scope="unassigned"),
            at=later,
        )
    assert [(r["patient"], r["contract"], r["assignee"]) for r in mine.rows] == [
        ("Patient/a2", f"Contract/{renewed['id']}", "Practitioner/hm1"),
        ("Patient/b2", f"Contract/{ids['b2']}", "Practitioner/hm1"),  # assigned on 11-14
    ]
    assert "Patient/a2" not in [r["patient"] for r in unassigned.rows]
