"""Contract analytics on the fixture county of test_teamwork.py (SQLite and PostgreSQL),
with hand-computed oracles; the institution administrator's scope, the analyst's
aggregate-only view with small counts suppressed, and bad input."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st

from smartmed.contracting import analytics
from smartmed.fhir.context import FhirEngine
from tests.contracting.test_teamwork import build_county, clients_for

AT = datetime(2026, 11, 18, 23, 59, 59, tzinfo=UTC)


def area(key: str, name: str, res: int, con: int, kres: int, kcon: int) -> dict[str, Any]:
    return {
        "key": key,
        "name": name,
        "residents": res,
        "contracted": con,
        "rate": round(con / res, 4),
        "keyResidents": kres,
        "keyContracted": kcon,
        "coverage": round(kcon / kres, 4),
    }


# Residents: a1 a2 a3 a4 (V1), b1 b2 (V2), c1 c2 (V3); d1 is inactive. In force at AT:
# a1 a2 b2 (team A), b1 c1 (team B). Key populations: a1 (elderly, hypertension), a2
# (diabetes), a4 (child), b1 (elderly), b2 and c1 (hypertension).
VILLAGES = [
    area("V1", "东村卫生室", 4, 2, 3, 2),
    area("V2", "南村卫生室", 2, 2, 2, 2),
    area("V3", "西村卫生室", 2, 1, 1, 1),
]
TOWNSHIPS = [area("T1", "东镇卫生院", 6, 4, 5, 4), area("T2", "西镇卫生院", 2, 1, 1, 1)]
# A team's area is its township; its signings only those with the team. Served: a1
# (bp-followup) and a2 (hba1c), both team A.
TEAMS = [
    area("teamA", "东镇团队", 6, 3, 5, 3)
    | {"active": 3, "served": 2, "neverServed": 1, "fulfilment": 0.6667},
    area("teamB", "西镇团队", 2, 1, 1, 1)
    | {"active": 2, "served": 0, "neverServed": 2, "fulfilment": 0.0},
]
GROUPS = [
    {"group": "elderly", "residents": 2, "contracted": 2, "coverage": 1.0},
    {"group": "child", "residents": 1, "contracted": 0, "coverage": 0.0},
    {"group": "pregnant", "residents": 0, "contracted": 0, "coverage": None},
    {"group": "hypertension", "residents": 3, "contracted": 3, "coverage": 1.0},
    {"group": "diabetes", "residents": 1, "contracted": 1, "coverage": 1.0},
    {"group": "mental", "residents": 0, "contracted": 0, "coverage": None},
    {"group": "tuberculosis", "residents": 0, "contracted": 0, "coverage": None},
]
# Over 2025-11-18 … 2026-11-18: new c1, a2, a1, a3, b1 (its first contract); b2 renewed;
# b1 transferred; a3 terminated (moved away). b2's first contract ran out on 11-09 and was
# renewed.
CHANGES = {
    "from": "2025-11-18",
    "to": "2026-11-18",
    "new": 5,
    "renewals": 1,
    "transfers": 1,
    "terminations": 1,
    "terminationReasons": {"moved-away": 1},
    "expired": 1,
    "renewed": 1,
    "renewalRate": 1.0,
    "months": [
        {"month": "2026-01", "new": 1, "renewals": 0, "transfers": 0, "terminations": 0},
        {"month": "2026-06", "new": 1, "renewals": 0, "transfers": 0, "terminations": 0},
        {"month": "2026-11", "new": 3, "renewals": 1, "transfers": 1, "terminations": 1},
    ],
}
FULFILMENT = {
    "active": 5,
    "served": 2,
    "neverServed": 3,
    "fulfilment": 0.4,
    "neverServedShare": 0.6,
    "withPackage": 1,
    "fullyDelivered": 1,  # a1's package: bp-followup x1, delivered once
    "fullyDeliveredShare": 1.0,
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


async def test_figures_match_the_hand_computed_county(
    auth_app: FastAPI, county: dict[str, httpx.AsyncClient]
) -> None:
    found = await analytics.compute(engine_of(auth_app), at=AT)
    assert found["total"] == area("total", "total", 8, 5, 6, 5)
    assert found["villages"] == VILLAGES
    assert found["townships"] == TOWNSHIPS
    assert found["teams"] == TEAMS
    assert found["groups"] == GROUPS
    assert found["changes"] == CHANGES
    assert found["fulfilment"] == FULFILMENT


async def test_an_institution_administrator_sees_their_organisations(
    auth_app: FastAPI, county: dict[str, httpx.AsyncClient]
) -> None:
    r = await county["admin2"].get("/api/contracting/analytics", params={"at": "2026-11-18"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["aggregateOnly"], body["threshold"]) == (False, None)
    assert body["total"] == area("total", "total", 2, 1, 1, 1)
    assert body["villages"] == VILLAGES[2:]
    assert body["townships"] == TOWNSHIPS[1:]
    assert body["teams"] == TEAMS[1:]
    # Team B's contracts: c1 (new in January) and b1 (transferred in); neither served.
    assert (body["changes"]["new"], body["changes"]["transfers"]) == (1, 1)
    assert (body["fulfilment"]["active"], body["fulfilment"]["neverServed"]) == (2, 2)


async def test_an_analyst_sees_aggregates_with_small_counts_suppressed(
    auth_app: FastAPI, county: dict[str, httpx.AsyncClient]
) -> None:
    r = await county["analyst"].get("/api/contracting/analytics", params={"at": "2026-11-18"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["aggregateOnly"], body["threshold"]) == (True, 5)
    assert body["total"] == area("total", "total", 8, 5, 6, 5)
    # Every village count is 1-4: hidden, and so is every rate built on one.
    assert body["villages"][0] == {
        "key": "V1",
        "name": "东村卫生室",
        "residents": None,
        "contracted": None,
        "rate": None,
        "keyResidents": None,
        "keyContracted": None,
        "coverage": None,
    }
    assert body["fulfilment"] == {
        "active": 5,
        "served": None,
        "neverServed": None,
        "fulfilment": None,
        "neverServedShare": None,
        "withPackage": None,
        "fullyDelivered": None,
        "fullyDeliveredShare": None,
    }
    assert body["groups"][2] == GROUPS[2]  # zero is not suppressed
    assert (body["changes"]["new"], body["changes"]["renewals"]) == (5, None)
    # No identifiable row anywhere: the answer holds no patient or contract reference.
    assert "Patient/" not in r.text and "Contract/" not in r.text


async def test_access_and_bad_input(
    auth_app: FastAPI, county: dict[str, httpx.AsyncClient]
) -> None:
    for who in ("gp1", "lead1"):
        r = await county[who].get("/api/contracting/analytics")
        assert r.status_code == 403, who
        assert r.json()["resourceType"] == "OperationOutcome"
    for params in ({"at": "18/11/2026"}, {"windowDays": "0"}, {"windowDays": "x"}):
        r = await county["analyst"].get("/api/contracting/analytics", params=params)
        assert r.status_code == 400, params


counts = st.integers(min_value=0, max_value=40)


@given(residents=counts, contracted=counts, served=counts, active=counts)
def test_suppression_never_leaks_a_small_count(
    residents: int, contracted: int, served: int, active: int
) -> None:
    served = min(served, active)
    row = {
        "residents": residents,
        "contracted": contracted,
        "rate": analytics.rate(contracted, residents),
        "active": active,
        "served": served,
        "neverServed": active - served,
        "fulfilment": analytics.rate(served, active),
    }
    out = analytics.suppress(row, 5)
    for key in ("residents", "contracted", "active", "served", "neverServed"):
        assert out[key] is None or not 0 < out[key] < 5
        assert out[key] in (None, row[key])
    if 0 < active - served < 5 or 0 < served < 5:
        assert out["served"] is None and out["neverServed"] is None and out["fulfilment"] is None
    if 0 < contracted < 5 or 0 < residents < 5:
        assert out["rate"] is None
