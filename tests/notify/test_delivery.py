"""Delivery steps run at least once but act once; a job that keeps crashing is not lost."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from smartmed.fhir.context import FhirEngine
from smartmed.jobs import JobContext
from smartmed.notify import notify
from smartmed.notify.channels import wechat
from smartmed.notify.flows import deliver_step
from smartmed.notify.preferences import Preferences, do_set_preferences
from smartmed.notify.tasks import deliver
from tests.notify.conftest import (
    Endpoints,
    communication,
    person,
    settle,
    state,
    unique_phone,
)

BP = {"patient": "张三", "systolic": 182, "diastolic": 110, "measured_at": "2026-11-22T01:30:00Z"}


async def _held(engine: FhirEngine, recipient: str) -> str:
    """A routine notification held by quiet hours: its job will not run during the test."""
    local = datetime.now(UTC).astimezone(ZoneInfo("Asia/Shanghai"))
    prefs = Preferences(
        quiet_start=(local - timedelta(hours=1)).strftime("%H:%M"),
        quiet_end=(local + timedelta(hours=1)).strftime("%H:%M"),
    )
    async with engine.db.write() as conn:
        await do_set_preferences(conn, recipient, prefs)
        return await notify(
            engine, conn, recipient=recipient, template="bp-alert", data=BP, channels=("sms",)
        )


async def test_a_repeated_step_sends_once(engine: FhirEngine, endpoints: Endpoints) -> None:
    phone = unique_phone()
    recipient = await person(engine, "Patient", phone=phone)
    nid = await _held(engine, recipient)
    await deliver_step(engine, nid, 0, 1)
    await deliver_step(engine, nid, 0, 1)  # the job ran again (crash before it was marked done)
    assert (await state(engine, nid)).status == "delivered"
    assert len(endpoints.http.sms_to(phone)) == 1


async def test_a_job_failing_on_its_last_attempt_records_undeliverable(
    engine: FhirEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipient = await person(engine, "Patient", phone=unique_phone())
    nid = await _held(engine, recipient)

    def broken(_engine: FhirEngine) -> dict[str, object]:
        raise RuntimeError("provider table corrupt")

    monkeypatch.setattr("smartmed.notify.flows.build_channels", broken)
    payload = {"id": nid, "step": 0, "attempt": 1}
    early = JobContext(engine, 1, "notify.deliver", 1, 5, None)
    with pytest.raises(RuntimeError):
        await deliver(early, payload)
    assert (await state(engine, nid)).status == "queued"  # the job runner will retry
    last = JobContext(engine, 1, "notify.deliver", 5, 5, None)
    with pytest.raises(RuntimeError):
        await deliver(last, payload)
    row = await state(engine, nid)
    assert (row.status, row.reason) == (
        "undeliverable",
        "delivery failed with an internal error: RuntimeError: provider table corrupt",
    )
    comm = await communication(engine, row)
    assert comm["status"] == "not-done"
    assert comm["statusReason"]["coding"][0]["code"] == "system-error"


async def test_stale_wechat_token_is_renewed(engine: FhirEngine, endpoints: Endpoints) -> None:
    key = (engine.settings.wechat_api_base.rstrip("/"), "wx-app")
    wechat._tokens[key] = wechat._Token("stale-token", time.monotonic() + 3600)
    tokens_before = endpoints.http.tokens
    openid = f"o-stale-{unique_phone()[-6:]}"
    recipient = await person(engine, "Patient", openid=openid)
    async with engine.db.write() as conn:
        nid = await notify(
            engine, conn, recipient=recipient, template="bp-alert", data=BP, channels=("wechat",)
        )
    row = await settle(engine, nid)
    assert row.status == "delivered"
    assert endpoints.http.tokens == tokens_before + 1
    assert len(endpoints.http.wechat_to(openid)) == 1  # the stale-token call was refused
