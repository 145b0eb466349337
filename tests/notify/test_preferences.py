"""Channel preferences and quiet hours: routine waits, urgent never does."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from smartmed.fhir.context import FhirEngine
from smartmed.fhir.errors import Invalid
from smartmed.jobs.tables import job
from smartmed.notify import notify
from smartmed.notify.preferences import (
    Preferences,
    check_preferences,
    do_set_preferences,
    quiet_until,
)
from tests.notify.conftest import Endpoints, person, settle, state, unique_phone

BP = {"patient": "张三", "systolic": 182, "diastolic": 110, "measured_at": "2026-11-22T01:30:00Z"}
SHANGHAI = ZoneInfo("Asia/Shanghai")


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.mark.parametrize(
    ("start", "end", "now", "until"),
    [
        # 22:00-07:00 Shanghai = 14:00-23:00 UTC
        ("22:00", "07:00", "2026-11-21T15:00:00", "2026-11-21T23:00:00"),  # 23:00 local
        ("22:00", "07:00", "2026-11-21T20:30:00", "2026-11-21T23:00:00"),  # 04:30 local
        ("22:00", "07:00", "2026-11-21T23:00:00", None),  # 07:00 local: over
        ("22:00", "07:00", "2026-11-21T13:59:00", None),  # 21:59 local
        ("22:00", "07:00", "2026-11-21T14:00:00", "2026-11-21T23:00:00"),  # 22:00 local
        ("12:00", "14:00", "2026-11-21T04:30:00", "2026-11-21T06:00:00"),  # noon nap
        ("12:00", "14:00", "2026-11-21T07:00:00", None),
    ],
)
def test_quiet_until(start: str, end: str, now: str, until: str | None) -> None:
    prefs = Preferences(quiet_start=start, quiet_end=end)
    expected = utc(until) if until else None
    assert quiet_until(prefs, utc(now), "Asia/Shanghai") == expected


def test_quiet_until_in_the_persons_own_zone() -> None:
    prefs = Preferences(quiet_start="22:00", quiet_end="07:00", timezone="Europe/London")
    # 23:00 UTC is 23:00 in London (winter): quiet until 07:00 UTC next day.
    assert quiet_until(prefs, utc("2026-11-21T23:00:00"), "Asia/Shanghai") == utc(
        "2026-11-22T07:00:00"
    )
    assert quiet_until(Preferences(), utc("2026-11-21T23:00:00"), "Asia/Shanghai") is None


@pytest.mark.parametrize(
    ("kwargs", "where", "text"),
    [
        ({"disabled": {"fax"}}, "channels.fax", "unknown channel 'fax' (channels: "),
        ({"disabled": {"inapp"}}, "channels.inapp", "the in-app inbox cannot be switched off"),
        ({"quiet_start": "22:00"}, "quietHours", "quiet hours need both start and end"),
        ({"quiet_start": "25:00", "quiet_end": "07:00"}, "quietHours.start", "quiet hours start"),
        ({"quiet_start": "22:00", "quiet_end": "7"}, "quietHours.end", "quiet hours end '7'"),
        ({"quiet_start": "22:00", "quiet_end": "22:00"}, "quietHours", "quiet hours start and"),
        ({"timezone": "Mars/Olympus"}, "timezone", "unknown time zone 'Mars/Olympus'"),
    ],
)
def test_bad_preferences(kwargs: dict[str, object], where: str, text: str) -> None:
    args: dict[str, object] = {
        "disabled": set(),
        "quiet_start": None,
        "quiet_end": None,
        "timezone": None,
        **kwargs,
    }
    with pytest.raises(Invalid) as caught:
        check_preferences(**args)  # type: ignore[arg-type]
    issue = caught.value.issues[0]
    assert issue.expression == where
    assert issue.diagnostics.startswith(text)


def _window_around_now() -> tuple[str, str, datetime]:
    """Quiet hours from an hour ago to an hour ahead (Shanghai); the end in naive UTC."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    local = now.astimezone(SHANGHAI)
    start = (local - timedelta(hours=1)).strftime("%H:%M")
    end_local = local + timedelta(hours=1)
    end = end_local.strftime("%H:%M")
    return start, end, end_local.astimezone(UTC).replace(tzinfo=None)


async def _quiet_person(engine: FhirEngine, phone: str, **prefs: object) -> str:
    recipient = await person(engine, "Patient", phone=phone)
    start, end, _ = _window_around_now()
    values = {"disabled": frozenset(), "quiet_start": start, "quiet_end": end, **prefs}
    async with engine.db.write() as conn:
        await do_set_preferences(conn, recipient, Preferences(**values))  # type: ignore[arg-type]
    return recipient


async def test_routine_waits_for_the_end_of_quiet_hours(
    engine: FhirEngine, endpoints: Endpoints
) -> None:
    phone = unique_phone()
    recipient = await _quiet_person(engine, phone)
    _, _, end = _window_around_now()
    async with engine.db.write() as conn:
        nid = await notify(
            engine, conn, recipient=recipient, template="bp-alert", data=BP, channels=("sms",)
        )
    await asyncio.sleep(0.5)  # the job runner polls every 0.05 s
    row = await state(engine, nid)
    assert row.status == "queued"
    assert abs((row.not_before - end).total_seconds()) < 61
    assert endpoints.http.sms_to(phone) == []
    async with engine.db.read() as conn:
        run_at = await conn.scalar(select(job.c.run_at).where(job.c.key == f"notify:{nid}:0:1"))
    assert run_at == row.not_before


async def test_urgent_is_never_delayed(engine: FhirEngine, endpoints: Endpoints) -> None:
    phone = unique_phone()
    recipient = await _quiet_person(engine, phone)
    async with engine.db.write() as conn:
        nid = await notify(
            engine,
            conn,
            recipient=recipient,
            template="bp-alert",
            data=BP,
            channels=("inapp", "sms"),
            urgency="urgent",
        )
    row = await settle(engine, nid)
    assert row.status == "delivered"
    assert row.not_before == row.created_at
    assert len(endpoints.http.sms_to(phone)) == 1


async def test_switched_off_channel(engine: FhirEngine, endpoints: Endpoints) -> None:
    phone = unique_phone()
    recipient = await person(engine, "Patient", phone=phone)
    async with engine.db.write() as conn:
        await do_set_preferences(conn, recipient, Preferences(disabled=frozenset({"sms"})))
    async with engine.db.write() as conn:
        routine = await notify(
            engine, conn, recipient=recipient, template="bp-alert", data=BP, channels=("sms",)
        )
        urgent = await notify(
            engine,
            conn,
            recipient=recipient,
            template="bp-alert",
            data=BP,
            channels=("sms",),
            urgency="urgent",
        )
    row = await state(engine, routine)
    assert (row.status, row.reason) == (
        "undeliverable",
        "no reachable channel: sms: switched off by the recipient",
    )
    # An urgent alert still uses a switched-off channel, as the last resort.
    assert (await settle(engine, urgent)).status == "delivered"
    assert [m["id"] for m in endpoints.http.sms_to(phone)] == [urgent]
