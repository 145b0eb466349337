"""WeChat template messages through a local server speaking the official API's shape."""

from __future__ import annotations

import uuid

from smartmed.fhir.context import FhirEngine
from smartmed.notify import notify
from smartmed.notify.channels.wechat import parse_templates
from tests.notify.conftest import WECHAT_TOKEN, Endpoints, person, settle, state, unique_phone

BP = {"patient": "张三", "systolic": 182, "diastolic": 110, "measured_at": "2026-11-22T01:30:00Z"}


async def test_template_message_sent(engine: FhirEngine, endpoints: Endpoints) -> None:
    openid = f"o-{uuid.uuid4().hex[:12]}"
    recipient = await person(engine, "Patient", openid=openid)
    async with engine.db.write() as conn:
        nid = await notify(
            engine, conn, recipient=recipient, template="bp-alert", data=BP, channels=("wechat",)
        )
    row = await settle(engine, nid)
    assert row.status == "delivered"
    [sent] = endpoints.http.wechat_to(openid)
    assert sent == {
        "touser": openid,
        "template_id": "TPL-BP",
        "client_msg_id": f"{nid}:wechat",
        "data": {
            "first": {"value": "血压异常提醒"},
            "keyword1": {"value": "张三"},
            "keyword2": {"value": "182/110 mmHg"},
            "keyword3": {"value": "2026年11月22日 09:30"},
            "remark": {"value": "请及时查看并处理。"},
        },
    }


async def test_not_subscribed_falls_back_to_sms(engine: FhirEngine, endpoints: Endpoints) -> None:
    openid = f"o-unsub-{uuid.uuid4().hex[:8]}"
    phone = unique_phone()
    recipient = await person(engine, "Patient", openid=openid, phone=phone)
    async with engine.db.write() as conn:
        nid = await notify(
            engine,
            conn,
            recipient=recipient,
            template="bp-alert",
            data=BP,
            channels=("wechat", "sms"),
        )
    row = await settle(engine, nid)
    assert (row.status, row.delivered_by) == ("delivered", '["sms"]')
    assert len(endpoints.http.wechat_to(openid)) == 1
    assert len(endpoints.http.sms_to(phone)) == 1


async def test_busy_is_retried(engine: FhirEngine, endpoints: Endpoints) -> None:
    openid = f"o-busy-{uuid.uuid4().hex[:8]}"
    recipient = await person(engine, "Patient", openid=openid)
    async with engine.db.write() as conn:
        nid = await notify(
            engine, conn, recipient=recipient, template="bp-alert", data=BP, channels=("wechat",)
        )
    row = await settle(engine, nid)
    assert row.status == "undeliverable"
    assert len(endpoints.http.wechat_to(openid)) == 3
    assert row.reason == "wechat failed after 3 attempt(s): WeChat errcode -1: system error"


async def test_template_without_wechat_id_skips_wechat(engine: FhirEngine) -> None:
    recipient = await person(engine, "Patient", openid=f"o-{uuid.uuid4().hex[:8]}")
    data = {"name": "李四", "team": "城关镇一队", "ends": "2026-12-31"}
    async with engine.db.write() as conn:
        nid = await notify(
            engine,
            conn,
            recipient=recipient,
            template="contract-renewal",
            data=data,
            channels=("wechat",),
        )
    row = await state(engine, nid)
    assert (row.status, row.reason) == (
        "undeliverable",
        "no reachable channel: wechat: no WeChat template_id for 'contract-renewal' "
        "in SMARTMED_WECHAT_TEMPLATES",
    )


def test_template_mapping_parse() -> None:
    assert parse_templates(" a=1, b = 2 ,bad, =3, c=") == {"a": "1", "b": "2"}
    assert WECHAT_TOKEN  # the local server only accepts the token it issued
