"""Email reaches a real SMTP server (aiosmtpd), in the recipient's language."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from pydantic import SecretStr

from smartmed.config import Settings
from smartmed.fhir.context import FhirEngine
from smartmed.notify import PermanentFailure, TemporaryFailure, notify
from smartmed.notify.channels.base import Message
from smartmed.notify.channels.email import SmtpEmail
from tests.notify.conftest import Endpoints, SmtpSink, communication, free_port, person, settle

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


class _Login:
    """aiosmtpd authenticator accepting one user."""

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str, auth: Any) -> Any:
        from aiosmtpd.smtp import AuthResult

        ok = auth.login == b"smartmed" and auth.password == b"mail-secret"
        return AuthResult(success=ok, handled=False)  # aiosmtpd answers 535 itself


def _message(address: str) -> Message:
    return Message(
        notification_id=str(uuid.uuid4()),
        idempotency_key="k",
        recipient="Patient/1",
        owner="Patient/1",
        address=address,
        template="bp-alert",
        urgency="urgent",
        locale="en",
        subject="Subject",
        body="Body",
        sms="Body",
    )


# A test server without TLS must still ask for AUTH; aiosmtpd warns about exactly that.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
@pytest.mark.filterwarnings("ignore:Session.login_data is deprecated:DeprecationWarning")
async def test_smtp_login_and_refusals() -> None:
    sink = SmtpSink()
    port = free_port()
    controller = Controller(
        sink,
        hostname="127.0.0.1",
        port=port,
        authenticator=_Login(),
        auth_require_tls=False,
        auth_required=True,
    )
    controller.start()
    try:
        base = {"smtp_host": "127.0.0.1", "smtp_port": port, "smtp_starttls": False}
        good = SmtpEmail(
            Settings(**base, smtp_user="smartmed", smtp_password=SecretStr("mail-secret"))
        )
        await good.send(_message("ok@example.org"))
        [mail] = sink.to("ok@example.org")
        assert (mail["Subject"], mail["Importance"]) == ("Subject", "high")

        wrong = SmtpEmail(Settings(**base, smtp_user="smartmed", smtp_password=SecretStr("no")))
        with pytest.raises(PermanentFailure) as caught:
            await wrong.send(_message("no@example.org"))
        assert str(caught.value).startswith("SMTP answered 535")
        anonymous = SmtpEmail(Settings(**base))
        with pytest.raises(PermanentFailure):  # 530 authentication required
            await anonymous.send(_message("no@example.org"))
        assert sink.to("no@example.org") == []
    finally:
        controller.stop()
    down = SmtpEmail(Settings(smtp_host="127.0.0.1", smtp_port=port, smtp_starttls=False))
    with pytest.raises(TemporaryFailure) as caught:
        await down.send(_message("x@example.org"))
    assert str(caught.value).startswith("SMTP unreachable")
