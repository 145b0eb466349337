"""SMS through a real HTTP gateway (local aiohttp): retries on 5xx, then the next channel."""

from __future__ import annotations

import uuid
from pathlib import Path

import orjson
from sqlalchemy import select

from smartmed.fhir.context import FhirEngine
from smartmed.notify import notify
from smartmed.notify.channels.base import Message
from smartmed.notify.channels.sms import FileSms, HttpSms
from smartmed.notify.tables import notify_attempt
from tests.notify.conftest import API_KEY, Endpoints, communication, person, settle, unique_phone

BP = {"patient": "张三", "systolic": 182, "diastolic": 110, "measured_at": "2026-11-22T01:30:00Z"}


async def attempts(engine: FhirEngine, nid: str) -> list[tuple[str, int, str]]:
    a = notify_attempt.c
    async with engine.db.read() as conn:
        rows = await conn.execute(
            select(a.channel, a.attempt, a.outcome).where(a.notification_id == nid).order_by(a.pk)
        )
        return [tuple(r) for r in rows]


async def test_sms_delivered_with_the_contract(engine: FhirEngine, endpoints: Endpoints) -> None:
    phone = unique_phone()
    recipient = await person(engine, "Practitioner", phone=phone)
    async with engine.db.write() as conn:
        nid = await notify(
            engine,
            conn,
            recipient=recipient,
            template="bp-alert",
            data=BP,
            channels=("sms", "email"),
            urgency="urgent",
        )
    row = await settle(engine, nid)
    assert row.status == "delivered"
    [sent] = endpoints.http.sms_to(phone)
    assert sent == {
        "id": nid,
        "to": phone,
        "text": "【智慧医疗】张三 血压 182/110 mmHg（2026年11月22日 09:30），"
        "超出设定范围，请及时处理。",
        "sender": "SMARTMED",
        "urgency": "urgent",
    }
    headers = endpoints.http.sms_headers[endpoints.http.sms.index(sent)]
    assert headers["Authorization"] == f"Bearer {API_KEY}"
    assert headers["Idempotency-Key"] == f"{nid}:sms"
    assert await attempts(engine, nid) == [("sms", 1, "sent")]
    comm = await communication(engine, row)
    assert (comm["status"], comm["priority"]) == ("completed", "urgent")
    assert comm["category"][0]["coding"][0]["code"] == "alert"
    assert [m["coding"][1]["code"] for m in comm["medium"]] == ["sms"]


async def test_5xx_is_retried_then_falls_back_to_email(
    engine: FhirEngine, endpoints: Endpoints
) -> None:
    phone = unique_phone("503")
    address = f"fallback-{uuid.uuid4().hex[:8]}@example.org"
    recipient = await person(engine, "Patient", phone=phone, email=address)
    async with engine.db.write() as conn:
        nid = await notify(
            engine,
            conn,
            recipient=recipient,
            template="bp-alert",
            data=BP,
            channels=("sms", "email"),
        )
    row = await settle(engine, nid)
    assert row.status == "delivered"
    assert len(endpoints.http.sms_to(phone)) == 3  # notify_max_attempts in the test settings
    assert len(endpoints.smtp.to(address)) == 1
    assert await attempts(engine, nid) == [
        ("sms", 1, "retry"),
        ("sms", 2, "retry"),
        ("sms", 3, "failed"),
        ("email", 1, "sent"),
    ]
    comm = await communication(engine, row)
    assert comm["status"] == "completed"
    assert [m["coding"][1]["code"] for m in comm["medium"]] == ["email"]


async def test_4xx_falls_back_at_once(engine: FhirEngine, endpoints: Endpoints) -> None:
    phone = unique_phone("400")
    address = f"fb4-{uuid.uuid4().hex[:8]}@example.org"
    recipient = await person(engine, "Patient", phone=phone, email=address)
    async with engine.db.write() as conn:
        nid = await notify(
            engine,
            conn,
            recipient=recipient,
            template="bp-alert",
            data=BP,
            channels=("sms", "email"),
        )
    row = await settle(engine, nid)
    assert row.status == "delivered"
    assert len(endpoints.http.sms_to(phone)) == 1
    assert await attempts(engine, nid) == [("sms", 1, "failed"), ("email", 1, "sent")]


async def test_every_channel_failing_is_undeliverable(
    engine: FhirEngine, endpoints: Endpoints
) -> None:
    phone = unique_phone("503")
    recipient = await person(engine, "Patient", phone=phone)
    async with engine.db.write() as conn:
        nid = await notify(
            engine,
            conn,
            recipient=recipient,
            template="bp-alert",
            data=BP,
            channels=("sms", "email"),
        )
    row = await settle(engine, nid)
    assert row.status == "undeliverable"
    assert len(endpoints.http.sms_to(phone)) == 3
    assert row.reason == (
        "sms failed after 3 attempt(s): SMS provider answered 503: "
        '{"error": "busy"}; '
        f"email: {recipient} has no email address"
    )
    comm = await communication(engine, row)
    assert comm["status"] == "not-done"
    assert comm["statusReason"]["coding"][0]["code"] == "recipient-unavailable"
    assert comm["statusReason"]["text"] == row.reason
    assert "medium" not in comm


def _message(phone: str) -> Message:
    return Message(
        notification_id="n-1",
        idempotency_key="n-1:sms",
        recipient="Patient/1",
        owner="Patient/1",
        address=phone,
        template="bp-alert",
        urgency="routine",
        locale="zh-CN",
        subject="s",
        body="b",
        sms="短信内容",
    )


async def test_file_provider_appends_json_lines(tmp_path: Path) -> None:
    provider = FileSms(tmp_path / "out" / "sms.jsonl")
    await provider.send(_message("+8613800000001"))
    await provider.send(_message("+8613800000002"))
    lines = [orjson.loads(x) for x in (tmp_path / "out" / "sms.jsonl").read_bytes().splitlines()]
    assert [(x["to"], x["text"], x["id"]) for x in lines] == [
        ("+8613800000001", "短信内容", "n-1"),
        ("+8613800000002", "短信内容", "n-1"),
    ]


async def test_http_provider_unreachable_is_temporary() -> None:
    from smartmed.notify.errors import TemporaryFailure

    provider = HttpSms("http://127.0.0.1:9/sms", "k", None, 2.0)
    try:
        await provider.send(_message("+8613800000003"))
    except TemporaryFailure as exc:
        assert str(exc) == "SMS provider unreachable: ConnectError"
    else:
        raise AssertionError("an unreachable gateway must fail")
    assert HttpSms(None, None, None, 1.0).unavailable("bp-alert") == "SMARTMED_SMS_URL is not set"
