"""The policy document, grant rebuilding and the advertised security."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError
from sqlalchemy import delete, func, select

from smartmed.access.policy import load_policy
from smartmed.access.tables import access_grant


def test_shipped_policy_covers_every_role() -> None:
    from smartmed.identity.principal import Role

    policy = load_policy()
    assert {str(role) for role in Role} <= set(policy.roles)
    # Separation of duties: no administrator reads clinical records by virtue of the role.
    for name in ("system-admin", "security-admin", "audit-admin", "platform-admin"):
        assert not policy.roles[name].allows("clinical", "r"), name
    assert policy.roles["health-authority-analyst"].aggregate_only


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('{"roles": {"resident": {"permissions": {"clinical": "rx"}}}}', "unknown permission"),
        ('{"roles": {"resident": {"patients": ["neighbours"]}}}', "neighbours"),
        ('{"roles": {}, "unknown": 1}', "unknown"),
        ("not json", "json"),
    ],
)
def test_a_bad_policy_file_is_refused_clearly(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "policy.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises((ValidationError, ValueError)) as caught:
        load_policy(path)
    assert needle.lower() in str(caught.value).lower()


@pytest.mark.asyncio(loop_scope="session")
async def test_rebuild_derives_the_same_grants(
    auth_app: FastAPI, county: dict[str, httpx.AsyncClient]
) -> None:
    engine = auth_app.state.fhir
    async with engine.db.read() as conn:
        before = (await conn.execute(select(func.count()).select_from(access_grant))).scalar()
    async with engine.db.write() as conn:
        await conn.execute(delete(access_grant))
    assert (await county["doc1"].get("/fhir/R4/Observation/o1")).status_code == 403
    async with engine.db.write() as conn:
        rebuilt = await engine.access.deriver.rebuild(conn)
    assert rebuilt == before
    assert (await county["doc1"].get("/fhir/R4/Observation/o1")).status_code == 200


@pytest.mark.asyncio(loop_scope="session")
async def test_capability_statement_advertises_smart(county: dict[str, httpx.AsyncClient]) -> None:
    r = await county["doc1"].get("/fhir/R4/metadata")
    security = r.json()["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    uris = {e["url"]: e["valueUri"] for e in security["extension"][0]["extension"]}
    assert uris["token"].endswith("/oauth/token") and uris["authorize"].endswith("/oauth/authorize")


@pytest.mark.asyncio(loop_scope="session")
async def test_audit_events_are_append_only(
    county: dict[str, httpx.AsyncClient],
) -> None:
    event = {
        "resourceType": "AuditEvent",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110"},
        "recorded": "2026-01-01T00:00:00Z",
        "agent": [{"requestor": True, "who": {"reference": "Practitioner/doc1"}}],
        "source": {"observer": {"display": "forged"}},
    }
    headers = {"Content-Type": "application/fhir+json"}
    # Other systems may add their own AuditEvents, never change or delete one, and never
    # take the ids of the platform's own trail (not even a system client).
    created = await county["system"].post("/fhir/R4/AuditEvent", json=event, headers=headers)
    assert created.status_code == 201, created.text
    mine = created.json()["id"]
    again = {**event, "id": mine}
    assert (
        await county["system"].put(f"/fhir/R4/AuditEvent/{mine}", json=again, headers=headers)
    ).status_code == 403
    reserved = {**event, "id": "audit-99999999"}
    assert (
        await county["system"].put(
            "/fhir/R4/AuditEvent/audit-99999999", json=reserved, headers=headers
        )
    ).status_code == 403
    found = await county["auditor"].get("/fhir/R4/AuditEvent", params={"_count": "1"})
    if found.json().get("entry"):
        one = found.json()["entry"][0]["resource"]
        changed = await county["system"].put(
            f"/fhir/R4/AuditEvent/{one['id']}", json={**one, "outcome": "0"}, headers=headers
        )
        assert changed.status_code == 403
        gone = await county["system"].delete(f"/fhir/R4/AuditEvent/{one['id']}")
        assert gone.status_code == 403
