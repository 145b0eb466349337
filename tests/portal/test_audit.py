"""The audit views over HTTP: the audit administrator's list with its filters, the
resident's "who accessed my record", and who may open them."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from html import unescape

from fastapi import FastAPI

import smartmed.audit
from smartmed.fhir.hooks import AuditRecord
from smartmed.identity.principal import Role
from tests.portal.conftest import browser, fhir, login, make_user

EN = {"Accept-Language": "en"}


def rows(html: str) -> list[str]:
    body = html.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [unescape(re.sub(r"<[^>]+>", " ", r)) for r in body.split("<tr")[1:]]


async def _two_patients_and_a_doctor(app: FastAPI) -> tuple[str, str, str, str]:
    patients = await fhir(app, "Patient", _count="2", _sort="_id")
    first, second = (e["resource"]["id"] for e in patients["entry"][:2])
    doctor = (await fhir(app, "Practitioner", _count="1"))["entry"][0]["resource"]["id"]
    observation = await fhir(app, "Observation", subject=f"Patient/{first}", _count="1")
    what = (
        f"Observation/{observation['entry'][0]['resource']['id']}"
        if observation.get("entry")
        else f"Patient/{first}"
    )
    return first, second, doctor, what


async def _doctor_reads(
    app: FastAPI, doctor: str, patient: str, what: str, purpose: str = "TREAT"
) -> None:
    """The audit record the FHIR API writes when a doctor reads a patient's record."""
    engine = app.state.fhir
    await engine.audit.record(
        AuditRecord(
            action="R",
            subtype="read",
            outcome="0",
            recorded=datetime.now(UTC),
            agent=f"Practitioner/{doctor}",
            account="acct-doctor",
            roles=("family-doctor",),
            source_ip="10.0.0.7",
            purpose_of_use=purpose,
            entities=(what,),
            patients=(f"Patient/{patient}",),
        )
    )
    await smartmed.audit.catch_up(engine)


async def test_audit_admin_lists_and_filters_events(demo_app: FastAPI) -> None:
    first, second, doctor, what = await _two_patients_and_a_doctor(demo_app)
    await _doctor_reads(demo_app, doctor, first, what)
    await _doctor_reads(demo_app, doctor, second, f"Patient/{second}", purpose="ETREAT")
    auditor = await make_user(demo_app, (Role.AUDIT_ADMIN, None), prefix="auditor")
    async with browser(demo_app, **EN) as c:
        home = await login(c, auditor)
        assert 'href="/audit"' in home.text
        r = await c.get("/audit")
        assert r.status_code == 200, r.text
        assert 'aria-sort="descending"' in r.text  # newest first
        listed = rows(r.text)
        assert listed and "Nothing found." not in listed[0]
        # Filter by patient: only that patient's events.
        r = await c.get("/audit", params={"patient": f"Patient/{first}"})
        mine = rows(r.text)
        assert mine and all(f"Patient/{first}" in row for row in mine)
        assert "Emergency treatment" not in r.text  # the ETREAT read was of the other one
        assert any(what in row and "Family doctor" in row for row in mine)
        # By agent, action, event and outcome, and the emergency access is highlighted.
        r = await c.get(
            "/audit",
            params={
                "agent": f"Practitioner/{doctor}",
                "action": "R",
                "subtype": "read",
                "outcome": "0",
                "patient": second,
            },
        )
        found = rows(r.text)
        assert len(found) >= 1 and all(f"Patient/{second}" in row for row in found)
        assert 'data-emergency="true"' in r.text
        assert "Emergency treatment (break the glass)" in r.text
        # Dates: nothing before the epoch ends, a bad date is reported.
        r = await c.get("/audit", params={"to": "2000-01-01"})
        assert "Nothing found." in rows(r.text)[0]
        today = datetime.now(UTC).date().isoformat()
        r = await c.get("/audit", params={"from": today, "patient": first})
        assert rows(r.text) and "Nothing found." not in rows(r.text)[0]
        r = await c.get("/audit", params={"from": "yesterday"})
        assert r.status_code == 200 and 'aria-invalid="true"' in r.text
        # Ascending sort and the htmx fragment.
        r = await c.get(
            "/audit", params={"sort": "date", "patient": first}, headers={"HX-Request": "true"}
        )
        assert "<html" not in r.text and 'aria-sort="ascending"' in r.text


async def test_resident_sees_who_read_their_record(demo_app: FastAPI) -> None:
    first, second, doctor, what = await _two_patients_and_a_doctor(demo_app)
    await _doctor_reads(demo_app, doctor, first, what, purpose="ETREAT")
    await _doctor_reads(demo_app, doctor, second, f"Patient/{second}")
    resident = await make_user(demo_app, (Role.RESIDENT, None), fhir_user=f"Patient/{first}")
    async with browser(demo_app, **EN) as c:
        home = await login(c, resident)
        assert 'data-nav="access"' in home.text
        r = await c.get("/record-access")
        assert r.status_code == 200, r.text
        assert 'data-testid="access"' in r.text
        text = unescape(re.sub(r"<[^>]+>", " ", r.text))
        assert "Family doctor" in text and "Why:" in text
        assert 'data-emergency="true"' in r.text
        assert what.split("/", 1)[0] in text
        # Never another patient's events, even when asked for.
        assert f"Patient/{second}" not in r.text
        r = await c.get("/record-access", params={"patient": f"Patient/{second}"})
        assert f"Patient/{second}" not in r.text
        # The administrator's list is not theirs.
        assert (await c.get("/audit")).status_code == 403


async def test_a_doctor_may_not_open_the_audit_trail(demo_app: FastAPI) -> None:
    doctor = await make_user(
        demo_app, (Role.FAMILY_DOCTOR, "Organization/x"), fhir_user="Practitioner/nobody"
    )
    async with browser(demo_app, **EN) as c:
        home = await login(c, doctor)
        assert 'href="/audit"' not in home.text
        r = await c.get("/audit")
        assert r.status_code == 403
        assert 'data-testid="results"' not in r.text
        assert (await c.get("/record-access")).status_code == 403
