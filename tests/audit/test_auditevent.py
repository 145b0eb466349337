"""Records as FHIR AuditEvents: valid R4, materialised once, searchable through the API."""

from __future__ import annotations

import asyncio
import base64
import uuid
from datetime import UTC, datetime

import httpx
import orjson
import pytest
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st

from smartmed.audit import AuditLog, catch_up
from smartmed.audit.auditevent import event_ids, to_audit_event, to_audit_events
from smartmed.audit.materialise import materialise
from smartmed.fhir.context import FhirEngine
from smartmed.fhir.definitions.locate import locate_definitions
from smartmed.fhir.hooks import AuditRecord
from smartmed.fhir.validate import get_validator
from tests.audit.conftest import rec, rows, seed
from tests.conftest import EXAMPLES, need

NOW = datetime(2026, 11, 22, 1, 2, 3, 4, tzinfo=UTC)

CASES = {
    "read": rec(1),
    "search": rec(2, subtype="search-type", query="Observation?code=8867-4", entities=()),
    "system-client": rec(3, agent=None, account="lab-1", client_id="lab-1", roles=()),
    "login": AuditRecord("E", "login", "0", NOW, account="acct-9", source_ip="10.0.0.9"),
    "login-failed": AuditRecord(
        "E", "login-failed", "4", NOW, source_ip="::1", detail="wrong account name or password"
    ),
    "logout": AuditRecord("E", "logout", "0", NOW, account="acct-9"),
    "export": rec(4, action="E", subtype="export", entities=("Group/g1",), patients=()),
    "break-glass": rec(
        5, action="E", subtype="break-glass", purpose_of_use="ETREAT", detail="unconscious"
    ),
    "odd-references": rec(6, agent="Group/1", entities=("not a reference", "Foo/1")),
    "extra": rec(7, extra={"consent": "Consent/c1"}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_kind_of_record_is_a_valid_audit_event(name: str) -> None:
    need(EXAMPLES.is_dir(), "run `npm ci` first")
    validator = get_validator(locate_definitions(None))
    event = to_audit_event(
        7, CASES[name], site="county-cloud", resource_types=validator.resource_types
    )
    issues = validator.validate(event, resource_type="AuditEvent")
    assert [i for i in issues if i.severity in ("error", "fatal")] == []
    assert event["id"] == "audit-7"
    assert event["source"]["site"] == "county-cloud"
    assert event["agent"][0]["requestor"] is True


def test_the_mapping_of_a_read() -> None:
    types = {"Patient", "Observation", "Practitioner"}
    event = to_audit_event(1, rec(1), site="s", resource_types=types)
    assert event["type"]["code"] == "rest"
    restful = "http://hl7.org/fhir/restful-interaction"
    assert event["subtype"] == [{"system": restful, "code": "read"}]
    agent = event["agent"][0]
    assert agent["who"] == {"reference": "Practitioner/d1"}
    assert agent["altId"] == "acct-d1"
    assert agent["network"] == {"address": "10.1.2.3", "type": "2"}
    assert agent["purposeOfUse"][0]["coding"][0]["code"] == "TREAT"
    assert event["agent"][1]["who"]["identifier"]["value"] == "portal"
    patient, observation = event["entity"]
    assert patient["what"] == {"reference": "Patient/p1"}
    assert patient["role"]["code"] == "1"
    assert observation["what"] == {"reference": "Observation/o1"}


def test_the_mapping_of_logins_and_queries() -> None:
    types = {"Patient", "Observation", "Practitioner"}
    login = to_audit_event(1, CASES["login"], site="s", resource_types=types)
    assert login["type"]["code"] == "110114"
    assert [c["code"] for c in login["subtype"]] == ["110122", "login"]
    assert login["agent"][0]["who"] == {
        "identifier": {"system": "urn:smartmed:account", "value": "acct-9"}
    }
    failed = to_audit_event(2, CASES["login-failed"], site="s", resource_types=types)
    assert failed["outcome"] == "4" and "who" not in failed["agent"][0]
    assert failed["outcomeDesc"] == "wrong account name or password"
    logout = to_audit_event(3, CASES["logout"], site="s", resource_types=types)
    assert [c["code"] for c in logout["subtype"]] == ["110123", "logout"]
    search = to_audit_event(4, CASES["search"], site="s", resource_types=types)
    query = search["entity"][-1]
    assert base64.b64decode(query["query"]).decode() == "Observation?code=8867-4"


async def test_chained_records_are_materialised_once(engine: FhirEngine) -> None:
    await seed(engine, 4)
    site = engine.settings.audit_site
    assert await materialise(engine, site=site, batch=3) == 4
    assert await materialise(engine, site=site) == 0
    await seed(engine, 2, start=5)
    assert await materialise(engine, site=site) == 2
    async with engine.db.read() as conn:
        repo = engine.repository(conn)
        stored = await repo.read("AuditEvent", "audit-6")
    event = orjson.loads(stored.content or "{}")
    assert event["entity"][1]["what"]["reference"] == "Observation/o6"
    issues = engine.services.validator.validate(event, resource_type="AuditEvent")
    assert [i for i in issues if i.severity == "error"] == []


async def test_materialisation_wins_over_a_squatter(engine: FhirEngine) -> None:
    squatter = {
        "resourceType": "AuditEvent",
        "type": {"code": "x"},
        "recorded": "2026-01-01T00:00:00Z",
        "agent": [{"requestor": True}],
        "source": {"observer": {"display": "x"}},
    }
    async with engine.db.write() as conn:
        await engine.repository(conn).create(squatter, id_="audit-2")
    await seed(engine, 3)
    assert await materialise(engine, site="s") == 3
    async with engine.db.read() as conn:
        stored = await engine.repository(conn).read("AuditEvent", "audit-2")
    assert orjson.loads(stored.content or "{}")["type"]["code"] == "rest"


async def test_audit_events_are_searchable_through_the_fhir_api(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    engine: FhirEngine = app.state.fhir
    audit = engine.audit
    assert isinstance(audit, AuditLog)  # installed by the application
    tag = uuid.uuid4().hex[:10]
    patient, other, doctor = f"Patient/a{tag}", f"Patient/b{tag}", f"Practitioner/d{tag}"
    await asyncio.gather(
        audit.record(rec(1, patients=(patient,), agent=doctor)),
        audit.record(rec(2, patients=(patient,), entities=(f"Observation/x{tag}",))),
        audit.record(rec(3, patients=(other,), agent=doctor)),
    )
    await catch_up(engine)
    seqs: dict[str, set[str]] = {patient: set(), other: set(), doctor: set()}
    for seq, body, _, _ in await rows(engine):
        for ref in seqs:
            if f'"{ref}"' in body:
                seqs[ref].add(f"audit-{seq}")
    assert (len(seqs[patient]), len(seqs[other]), len(seqs[doctor])) == (2, 1, 2)

    async def ids(**params: str) -> set[str]:
        r = await client.get("AuditEvent", params=params)
        assert r.status_code == 200, r.text
        return {e["resource"]["id"] for e in r.json().get("entry", [])}

    assert await ids(patient=patient) == seqs[patient]
    assert await ids(patient=other) == seqs[other]
    assert await ids(agent=doctor) == seqs[doctor]
    assert await ids(agent=doctor, patient=patient) == seqs[doctor] & seqs[patient]
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert await ids(patient=patient, date=f"ge{today}") == seqs[patient]
    assert await ids(patient=patient, date="lt2000-01-01") == set()
    assert await ids(patient=f"Patient/none{tag}") == set()


@given(
    patients=st.lists(st.sampled_from([f"Patient/p{n}" for n in range(6)]), max_size=6),
    others=st.lists(st.sampled_from(["Observation/o1", "Condition/c2", "Encounter/e3"])),
)
def test_a_record_of_several_patients_becomes_one_event_per_patient(
    patients: list[str], others: list[str]
) -> None:
    """IHE BALP: each patient's event names that patient only, never another one."""
    types = {"Patient", "Observation", "Condition", "Encounter", "Practitioner"}
    record = rec(
        1,
        subtype="search-type",
        query="Observation?code=8867-4",
        patients=tuple(patients),
        entities=(*patients, *others),
    )
    events = to_audit_events(9, record, site="s", resource_types=types)
    distinct = list(dict.fromkeys(patients))
    assert [e["id"] for e in events] == event_ids(9, record, types)
    if len(distinct) <= 1:
        assert events == [to_audit_event(9, record, site="s", resource_types=types)]
        return
    assert len(events) == len(distinct)
    for event, patient in zip(events, distinct, strict=True):
        text = orjson.dumps(event).decode()
        assert patient in text
        assert not any(p in text for p in distinct if p != patient)
        query = [e for e in event["entity"] if e.get("query")]
        assert base64.b64decode(query[0]["query"]).decode() == "Observation?code=8867-4"


def test_per_patient_events_are_valid_r4() -> None:
    need(EXAMPLES.is_dir(), "run `npm ci` first")
    validator = get_validator(locate_definitions(None))
    record = rec(1, patients=("Patient/a", "Patient/b"), entities=("Observation/o1",))
    for event in to_audit_events(3, record, site="s", resource_types=validator.resource_types):
        issues = validator.validate(event, resource_type="AuditEvent")
        assert [i for i in issues if i.severity in ("error", "fatal")] == []
