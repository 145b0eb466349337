"""Email reaches a real SMTP server (aiosmtpd), in the recipient's language."""

from __future__ import annotations

import uuid

from smartmed.fhir.context import FhirEngine
from smartmed.notify import notify
from tests.notify.conftest import Endpoints, communication, person, settle

BP = {"patient": "张三", "systolic": 182, "diastolic": 110, "measured_at": "2026-11-22T01:30:00Z"}


async def test_email_in_chinese_by_default(engine: FhirEngine, endpoints: Endpoints) -> None:
    address = f"zh-{uuid.uuid4().hex[:8]}@example.org"
    recipient = await person(engine, "Practitioner", email=address)
    async with engine.db.write() as conn:
        nid = await notify(
            engine, conn, recipient=recipient, template="bp-alert", data=BP, channels=("email",)
        )
    row = await settle(engine, nid)
    assert row.status == "delivered"
    mails = endpoints.smtp.to(address)
    assert len(mails) == 1
    mail = mails[0]
    assert mail["Subject"] == "血压异常提醒：张三"
    assert mail["From"] == "smartmed <noreply@smartmed.test>"
    assert mail["Message-ID"] == f"<{nid}@smartmed>"
    assert mail["Content-Language"] == "zh-CN"
    text = mail.get_payload(decode=True).decode("utf-8")
    assert text.strip() == (
        "张三 于 2026年11月22日 09:30 测得血压 182/110 mmHg，超出设定范围，请及时查看并处理。"
    )
    comm = await communication(engine, row)
    assert comm["status"] == "completed"
    assert comm["recipient"] == [{"reference": recipient}]
    assert [m["coding"][1]["code"] for m in comm["medium"]] == ["email"]
    assert comm["medium"][0]["coding"][0]["code"] == "EMAILWRIT"
    assert comm["payload"] == [{"contentString": text.strip()}]
    assert comm["priority"] == "routine"
    assert comm["sent"].endswith("Z")


async def test_email_in_english_for_an_english_speaker(
    engine: FhirEngine, endpoints: Endpoints
) -> None:
    address = f"en-{uuid.uuid4().hex[:8]}@example.org"
    recipient = await person(engine, "Patient", email=address, language="en-GB")
    data = {"name": "Li Si", "doctor": "Wang", "due": "2026-12-01", "place": "Chengguan clinic"}
    async with engine.db.write() as conn:
        nid = await notify(
            engine,
            conn,
            recipient=recipient,
            template="followup-reminder",
            data=data,
            channels=("email",),
        )
    row = await settle(engine, nid)
    assert (row.status, row.locale) == ("delivered", "en")
    [mail] = endpoints.smtp.to(address)
    assert mail["Subject"] == "Follow-up reminder"
    assert mail["Content-Language"] == "en"
    assert mail.get_payload(decode=True).decode().strip() == (
        "Dear Li Si, your follow-up with Dr Wang is on December 1, 2026 at Chengguan clinic. "
        "Please come on time."
    )
    comm = await communication(engine, row)
    assert comm["subject"] == {"reference": recipient}
