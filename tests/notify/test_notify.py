"""The notify() API: bad input, idempotency, in-app plus fallback, undeliverable recording."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import false, func, select

from smartmed.fhir.context import FhirEngine
from smartmed.fhir.errors import Forbidden, Invalid
from smartmed.fhir.hooks import current_access
from smartmed.fhir.storage.tables import resource
from smartmed.jobs.tables import job
from smartmed.notify import (
    UnknownChannel,
    UnknownRecipient,
    UnknownTemplate,
    UnusableData,
    notify,
)
from smartmed.notify.tables import notification, notify_inbox
from smartmed.notify.templates import template_names
from tests.notify.conftest import communication, create, person, settle, state, unique_phone

BP = {"patient": "张三", "systolic": 182, "diastolic": 110, "measured_at": "2026-11-22T01:30:00Z"}


async def counts(engine: FhirEngine) -> tuple[int, int, int]:
    """(notifications, Communications, notify jobs) in the store."""
    async with engine.db.read() as conn:
        n = await conn.scalar(select(func.count()).select_from(notification))
        c = await conn.scalar(
            select(func.count()).select_from(resource).where(resource.c.type == "Communication")
        )
        j = await conn.scalar(
            select(func.count()).select_from(job).where(job.c.kind == "notify.deliver")
        )
    return int(n or 0), int(c or 0), int(j or 0)


BAD: list[tuple[dict[str, Any], type[Invalid], str, str]] = [
    (
        {"template": "no-such-template"},
        UnknownTemplate,
        "template",
        "unknown notification template 'no-such-template' "
        f"(known: {', '.join(sorted(template_names()))})",
    ),
    (
        {"channels": ("inapp", "fax")},
        UnknownChannel,
        "channels",
        "unknown channel 'fax' (channels: inapp, email, sms, wechat)",
    ),
    (
        {"channels": ()},
        UnknownChannel,
        "channels",
        "channels must be a non-empty list of inapp, email, sms, wechat",
    ),
    (
        {"channels": "sms"},
        UnknownChannel,
        "channels",
        "channels must be a non-empty list of inapp, email, sms, wechat",
    ),
    (
        {"recipient": "Patient/does-not-exist"},
        UnknownRecipient,
        "recipient",
        "recipient Patient/does-not-exist does not exist",
    ),
    (
        {"recipient": "Observation/1"},
        UnknownRecipient,
        "recipient",
        "recipient 'Observation/1' is not a reference to one of Patient, RelatedPerson, "
        "Practitioner, PractitionerRole (such as 'Patient/123')",
    ),
    (
        {"recipient": "Patient/"},
        UnknownRecipient,
        "recipient",
        "recipient 'Patient/' is not a reference to one of Patient, RelatedPerson, "
        "Practitioner, PractitionerRole (such as 'Patient/123')",
    ),
    (
        {"data": {"patient": "x"}},
        UnusableData,
        "data",
        "template 'bp-alert' needs data it was not given: diastolic, measured_at, systolic",
    ),
    (
        {"data": {**BP, "measured_at": "yesterday"}},
        UnusableData,
        "data",
        "template 'bp-alert' cannot use the data given: Invalid isoformat string: 'yesterday'",
    ),
    (
        {"data": {**BP, "x": object()}},
        UnusableData,
        "data",
        "data is not JSON: Type is not JSON serializable: object",
    ),
    ({"urgency": "stat"}, Invalid, "urgency", "urgency must be routine or urgent, not 'stat'"),
    ({"key": ""}, Invalid, "key", "key must be 1-255 characters"),
    ({"key": "k" * 256}, Invalid, "key", "key must be 1-255 characters"),
]


@pytest.mark.parametrize(("change", "error", "where", "text"), BAD)
async def test_bad_input_is_refused_and_nothing_is_written(
    engine: FhirEngine,
    change: dict[str, Any],
    error: type[Invalid],
    where: str,
    text: str,
) -> None:
    recipient = await person(engine, "Patient", phone=unique_phone())
    args: dict[str, Any] = {
        "recipient": recipient,
        "template": "bp-alert",
        "data": BP,
        "channels": ("inapp", "sms"),
        **change,
    }
    before = await counts(engine)
    with pytest.raises(error) as caught:
        async with engine.db.write() as conn:
            await notify(engine, conn, **args)
    issue = caught.value.issues[0]
    assert (issue.diagnostics, issue.expression, issue.code) == (text, where, "invalid")
    assert await counts(engine) == before


async def test_same_key_is_one_notification(engine: FhirEngine) -> None:
    recipient = await person(engine, "Patient", phone=unique_phone())
    key = f"bp:{recipient}:obs-1"
    async with engine.db.write() as conn:
        first = await notify(
            engine, conn, recipient=recipient, template="bp-alert", data=BP, key=key
        )
    before = await counts(engine)
    async with engine.db.write() as conn:
        again = await notify(
            engine, conn, recipient=recipient, template="bp-alert", data=BP, key=key
        )
    assert again == first
    assert await counts(engine) == before
    await settle(engine, first)
    async with engine.db.read() as conn:
        inbox = await conn.scalar(
            select(func.count()).select_from(notify_inbox).where(notify_inbox.c.owner == recipient)
        )
    assert inbox == 1


async def test_key_reused_in_one_transaction(engine: FhirEngine) -> None:
    recipient = await person(engine, "Patient")
    async with engine.db.write() as conn:
        ids = [
            await notify(
                engine,
                conn,
                recipient=recipient,
                template="bp-alert",
                data=BP,
                channels=("inapp",),
                key="same-tx",
            )
            for _ in range(3)
        ]
    assert len(set(ids)) == 1


async def test_inapp_is_written_besides_the_first_channel_that_works(
    engine: FhirEngine,
) -> None:
    phone = unique_phone()
    recipient = await person(engine, "Patient", phone=phone)
    async with engine.db.write() as conn:
        nid = await notify(
            engine,
            conn,
            recipient=recipient,
            template="bp-alert",
            data=BP,
            channels=("inapp", "sms", "email"),
        )
    row = await settle(engine, nid)
    assert row.status == "delivered"
    assert row.delivered_by == '["inapp","sms"]'
    comm = await communication(engine, row)
    assert [m["coding"][1]["code"] for m in comm["medium"]] == ["inapp", "sms"]


async def test_no_reachable_channel_is_recorded_undeliverable(engine: FhirEngine) -> None:
    recipient = await person(engine, "RelatedPerson")  # no telecom, no openid
    async with engine.db.write() as conn:
        nid = await notify(
            engine,
            conn,
            recipient=recipient,
            template="bp-alert",
            data=BP,
            channels=("sms", "email", "wechat"),
            urgency="urgent",
        )
    row = await state(engine, nid)  # decided at once: no job is queued
    assert row.status == "undeliverable"
    assert row.reason == (
        f"no reachable channel: sms: {recipient} has no sms address; "
        f"email: {recipient} has no email address; "
        f"wechat: {recipient} has no wechat address"
    )
    async with engine.db.read() as conn:
        jobs = await conn.scalar(
            select(func.count()).select_from(job).where(job.c.key.like(f"notify:{nid}:%"))
        )
    assert jobs == 0
    comm = await communication(engine, row)
    assert comm["status"] == "not-done"
    assert comm["statusReason"]["text"] == row.reason
    assert comm["recipient"] == [{"reference": recipient}]
    assert comm["identifier"] == [{"system": "urn:smartmed:notification", "value": nid}]


async def test_practitioner_role_reaches_the_practitioner(engine: FhirEngine) -> None:
    phone = unique_phone()
    practitioner = await person(engine, "Practitioner", phone=phone, language="en")
    role = await create(
        engine,
        {"resourceType": "PractitionerRole", "practitioner": {"reference": practitioner}},
    )
    async with engine.db.write() as conn:
        nid = await notify(
            engine,
            conn,
            recipient=role,
            template="bp-alert",
            data=BP,
            channels=("inapp", "sms"),
        )
    row = await settle(engine, nid)
    assert (row.status, row.owner, row.recipient, row.locale) == (
        "delivered",
        practitioner,
        role,
        "en",
    )
    async with engine.db.read() as conn:
        owner = await conn.scalar(
            select(notify_inbox.c.owner).where(notify_inbox.c.notification_id == nid)
        )
    assert owner == practitioner


class DenyEverything:
    """An access guard (fhir.hooks.AccessGuard) under which the caller may do nothing."""

    async def ready(self, conn: Any) -> None:
        return None

    def read_condition(self, res: Any, type_: str) -> Any:
        return false()

    search_condition = read_condition

    def any_condition(self, res: Any) -> Any:
        return false()

    def denied_read(self, type_: str, id_: str) -> Exception:
        return Forbidden(f"no access to {type_}/{id_}")

    async def check_read(self, conn: Any, type_: str, id_: str) -> None:
        raise self.denied_read(type_, id_)

    async def check_write(self, conn: Any, type_: str, *args: Any, **kwargs: Any) -> None:
        raise Forbidden(f"may not write {type_}")


async def test_notify_acts_as_the_platform_not_as_the_caller(engine: FhirEngine) -> None:
    recipient = await person(engine, "Practitioner", phone=unique_phone())
    reset = current_access.set(DenyEverything())  # type: ignore[arg-type]
    try:
        async with engine.db.write() as conn:
            with pytest.raises(Forbidden):  # the guard is really in force for the caller
                await engine.repository(conn).read(*recipient.split("/"))
        async with engine.db.write() as conn:
            nid = await notify(
                engine, conn, recipient=recipient, template="bp-alert", data=BP, channels=("sms",)
            )
        assert isinstance(current_access.get(), DenyEverything)  # restored afterwards
    finally:
        current_access.reset(reset)
    assert (await settle(engine, nid)).status == "delivered"
