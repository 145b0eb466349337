"""The inbox, preferences and undeliverable endpoints; who may call them."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from smartmed.fhir.context import FhirEngine
from smartmed.notify import notify
from tests.notify.conftest import person, settle, token

BP = {"patient": "张三", "systolic": 182, "diastolic": 110, "measured_at": "2026-11-22T01:30:00Z"}


async def send_inapp(engine: FhirEngine, recipient: str, **kwargs: Any) -> str:
    async with engine.db.write() as conn:
        nid = await notify(
            engine,
            conn,
            recipient=recipient,
            template="bp-alert",
            data=BP,
            channels=("inapp",),
            **kwargs,
        )
    await settle(engine, nid)
    return nid


def outcome(response: httpx.Response) -> tuple[int, str, str | None]:
    issue = response.json()["issue"][0]
    return response.status_code, issue["diagnostics"], (issue.get("expression") or [None])[0]


async def test_no_token_is_401(api: httpx.AsyncClient) -> None:
    r = await api.get("/api/notifications")
    assert outcome(r) == (401, "sign in to the portal or send a bearer access token", None)
    r = await api.get("/api/notifications", headers={"Authorization": "Basic abc"})
    assert outcome(r) == (401, "the Authorization header must be 'Bearer <token>'", None)
    r = await api.get("/api/notifications", headers={"Authorization": "Bearer not-a-jwt"})
    assert r.status_code == 401


async def test_account_without_person_has_no_inbox(
    api: httpx.AsyncClient, notify_app: FastAPI
) -> None:
    r = await api.get("/api/notifications", headers=await token(notify_app, None))
    assert outcome(r) == (
        403,
        "this account is not linked to a person (no fhirUser), so has no inbox",
        None,
    )


async def test_inbox_and_mark_read(
    api: httpx.AsyncClient, notify_app: FastAPI, engine: FhirEngine
) -> None:
    me = await person(engine, "Patient", language="en")
    other = await person(engine, "Patient")
    first = await send_inapp(engine, me)
    second = await send_inapp(engine, me, urgency="urgent")
    theirs = await send_inapp(engine, other)
    auth = await token(notify_app, me, ["resident"])

    r = await api.get("/api/notifications", headers=auth)
    assert r.status_code == 200
    body = r.json()
    assert body["unread"] == 2
    assert [i["id"] for i in body["items"]] == [second, first]
    second_seq = body["items"][0]["seq"]
    item = body["items"][1]
    assert {k: item[k] for k in ("recipient", "template", "urgency", "subject", "read")} == {
        "recipient": me,
        "template": "bp-alert",
        "urgency": "routine",
        "subject": "Blood pressure alert: 张三",
        "read": None,
    }
    assert item["body"] == (
        "张三 had a blood pressure of 182/110 mmHg at 22 Nov 2026, 09:30, "
        "outside the set range. Please review."
    )

    r = await api.post(f"/api/notifications/{first}/read", headers=auth)
    assert r.status_code == 204
    r = await api.get("/api/notifications", params={"unread": "true"}, headers=auth)
    assert [i["id"] for i in r.json()["items"]] == [second]
    assert r.json()["unread"] == 1

    r = await api.post(f"/api/notifications/{theirs}/read", headers=auth)
    assert outcome(r) == (404, f"no message {theirs} in your inbox", None)
    r = await api.get("/api/notifications", headers=await token(notify_app, other))
    assert r.json()["unread"] == 1  # still unread: my call did not touch it

    r = await api.post("/api/notifications/read-all", headers=auth)
    assert r.json() == {"updated": 1}
    r = await api.get("/api/notifications", params={"before": second_seq}, headers=auth)
    assert [i["id"] for i in r.json()["items"]] == [first]
    r = await api.get("/api/notifications", params={"limit": 0}, headers=auth)
    assert r.status_code == 400


async def test_preferences_roundtrip_and_bad_input(
    api: httpx.AsyncClient, notify_app: FastAPI, engine: FhirEngine
) -> None:
    me = await person(engine, "Practitioner")
    auth = await token(notify_app, me, ["family-doctor"])
    r = await api.get("/api/notifications/preferences", headers=auth)
    assert r.json() == {
        "channels": {"inapp": True, "email": True, "sms": True, "wechat": True},
        "quietHours": None,
        "timezone": "Asia/Shanghai",
    }
    wanted = {
        "channels": {"sms": False, "email": True},
        "quietHours": {"start": "22:30", "end": "06:45"},
        "timezone": "Asia/Urumqi",
    }
    r = await api.put("/api/notifications/preferences", json=wanted, headers=auth)
    assert r.status_code == 200
    expected = {
        "channels": {"inapp": True, "email": True, "sms": False, "wechat": True},
        "quietHours": {"start": "22:30", "end": "06:45"},
        "timezone": "Asia/Urumqi",
    }
    assert r.json() == expected
    assert (await api.get("/api/notifications/preferences", headers=auth)).json() == expected

    bad = [
        (
            {"channels": {"pager": True}},
            "unknown channel 'pager' (channels: inapp, email, sms, wechat)",
            "channels.pager",
        ),
        (
            {"channels": {"inapp": False}},
            "the in-app inbox cannot be switched off: it keeps every notification",
            "channels.inapp",
        ),
        (
            {"quietHours": {"start": "9pm", "end": "07:00"}},
            "quiet hours start '9pm' is not a time like 22:00",
            "quietHours.start",
        ),
        ({"timezone": "Nowhere/City"}, "unknown time zone 'Nowhere/City'", "timezone"),
    ]
    for body, text, where in bad:
        r = await api.put("/api/notifications/preferences", json=body, headers=auth)
        assert outcome(r) == (400, text, where)
    r = await api.put("/api/notifications/preferences", json={"colour": "red"}, headers=auth)
    assert r.status_code == 400
    assert (await api.get("/api/notifications/preferences", headers=auth)).json() == expected


@pytest.mark.parametrize(
    ("roles", "status"),
    [
        (["family-doctor"], 200),
        (["nurse"], 200),
        (["institution-admin"], 200),
        (["platform-admin"], 200),
        (["resident"], 403),
        (["family-representative"], 403),
        (["health-authority-analyst"], 403),
        (["audit-admin"], 403),
        ([], 403),
    ],
)
async def test_undeliverable_list_is_for_staff(
    api: httpx.AsyncClient,
    notify_app: FastAPI,
    engine: FhirEngine,
    roles: list[str],
    status: int,
) -> None:
    nobody = await person(engine, "Patient")
    async with engine.db.write() as conn:
        nid = await notify(
            engine,
            conn,
            recipient=nobody,
            template="bp-alert",
            data=BP,
            channels=("sms", "email"),
            urgency="urgent",
        )
    auth = await token(notify_app, "Practitioner/someone", roles)
    r = await api.get("/api/notifications/undeliverable", params={"limit": 500}, headers=auth)
    assert r.status_code == status
    if status != 200:
        assert outcome(r) == (403, "only staff may list undeliverable notifications", None)
        return
    [item] = [i for i in r.json()["items"] if i["id"] == nid]
    assert {k: v for k, v in item.items() if k not in ("created", "notBefore", "finished")} == {
        "id": nid,
        "recipient": nobody,
        "template": "bp-alert",
        "urgency": "urgent",
        "locale": "zh-CN",
        "status": "undeliverable",
        "reason": f"no reachable channel: sms: {nobody} has no sms address; "
        f"email: {nobody} has no email address",
        "skipped": {
            "sms": f"{nobody} has no sms address",
            "email": f"{nobody} has no email address",
        },
        "plan": [],
        "deliveredBy": [],
        "communication": item["communication"],
        "attempts": [],
    }
    assert item["communication"].startswith("Communication/")


async def test_portal_session_principal_and_csrf(notify_app: FastAPI, engine: FhirEngine) -> None:
    from smartmed.identity.principal import Principal, Role, RoleAssignment
    from smartmed.identity.scopes import ScopeSet

    me = await person(engine, "Patient")
    nid = await send_inapp(engine, me)
    principal = Principal(
        subject="account-1",
        client_id="portal",
        scopes=ScopeSet.parse(""),
        roles=(RoleAssignment(Role.RESIDENT),),
        fhir_user=me,
    )

    async def portal_session(scope: Any, receive: Any, send: Any) -> None:
        # What the portal's session middleware leaves for a signed-in resident.
        scope.setdefault("state", {})["principal"] = principal
        await notify_app(scope, receive, send)

    transport = httpx.ASGITransport(app=portal_session)
    async with httpx.AsyncClient(transport=transport, base_url="https://smartmed.test") as http:
        r = await http.get("/api/notifications")
        assert [i["id"] for i in r.json()["items"]] == [nid]
        r = await http.post(f"/api/notifications/{nid}/read")  # a cookie, but no CSRF token
        assert r.status_code == 403
        r = await http.get("/api/notifications")
        assert r.json()["unread"] == 1


async def test_delivery_detail_for_staff(
    api: httpx.AsyncClient, notify_app: FastAPI, engine: FhirEngine
) -> None:
    from tests.notify.conftest import unique_phone

    recipient = await person(engine, "Patient", phone=unique_phone("400"))
    async with engine.db.write() as conn:
        nid = await notify(
            engine,
            conn,
            recipient=recipient,
            template="bp-alert",
            data=BP,
            channels=("inapp", "sms", "email"),
        )
    await settle(engine, nid)
    staff = await token(notify_app, "Practitioner/n1", ["nurse"])
    r = await api.get(f"/api/notifications/{nid}/delivery", headers=staff)
    assert r.status_code == 200
    body = r.json()
    assert (body["status"], body["plan"], body["deliveredBy"]) == ("delivered", ["sms"], ["inapp"])
    assert body["skipped"] == {"email": f"{recipient} has no email address"}
    assert [(a["channel"], a["attempt"], a["outcome"]) for a in body["attempts"]] == [
        ("inapp", 1, "sent"),
        ("sms", 1, "failed"),
    ]
    assert body["attempts"][1]["detail"] == (
        'SMS provider answered 400: {"error": "invalid number"}'
    )
    assert body["reason"] == (
        'sms failed after 1 attempt(s): SMS provider answered 400: {"error": "invalid number"}; '
        f"email: {recipient} has no email address"
    )
    resident = await token(notify_app, recipient, ["resident"])
    r = await api.get(f"/api/notifications/{nid}/delivery", headers=resident)
    assert outcome(r) == (403, "only staff may see a notification's delivery", None)
    r = await api.get("/api/notifications/no-such-id/delivery", headers=staff)
    assert outcome(r) == (404, "no notification no-such-id", None)


async def test_staff_follow_up_closes_an_undeliverable(
    api: httpx.AsyncClient, notify_app: FastAPI, engine: FhirEngine
) -> None:
    from tests.notify.conftest import communication, state

    nobody = await person(engine, "Patient")
    async with engine.db.write() as conn:
        nid = await notify(
            engine,
            conn,
            recipient=nobody,
            template="bp-alert",
            data=BP,
            channels=("sms",),
            urgency="urgent",
        )
    nurse = await token(notify_app, "Practitioner/nurse-7", ["nurse"])
    url = f"/api/notifications/{nid}/follow-up"

    r = await api.post(
        url, json={"note": "x"}, headers=await token(notify_app, nobody, ["resident"])
    )
    assert outcome(r) == (403, "only staff may follow undeliverable notifications up", None)
    r = await api.post(url, json={"note": ""}, headers=nurse)
    assert r.status_code == 400
    assert (await state(engine, nid)).status == "undeliverable"  # nothing changed

    r = await api.post(url, json={"note": "电话通知了患者，已告知就诊"}, headers=nurse)
    assert r.status_code == 200
    assert r.json()["status"] == "followed-up"
    row = await state(engine, nid)
    comm = await communication(engine, row)
    assert comm["status"] == "not-done"
    [note] = comm["note"]
    assert (note["authorReference"], note["text"]) == (
        {"reference": "Practitioner/nurse-7"},
        "电话通知了患者，已告知就诊",
    )
    listing = await api.get(
        "/api/notifications/undeliverable", params={"limit": 500}, headers=nurse
    )
    assert nid not in [i["id"] for i in listing.json()["items"]]
    listing = await api.get(
        "/api/notifications/undeliverable",
        params={"limit": 500, "followedUp": "true"},
        headers=nurse,
    )
    assert [i["status"] for i in listing.json()["items"] if i["id"] == nid] == ["followed-up"]

    r = await api.post(url, json={"note": "again"}, headers=nurse)
    assert outcome(r) == (409, f"notification {nid} is followed-up, not undeliverable", "status")
    r = await api.post("/api/notifications/nope/follow-up", json={"note": "x"}, headers=nurse)
    assert outcome(r) == (404, "no notification nope", None)
    delivered = await send_inapp(engine, nobody)
    r = await api.post(
        f"/api/notifications/{delivered}/follow-up", json={"note": "x"}, headers=nurse
    )
    assert outcome(r) == (
        409,
        f"notification {delivered} is delivered, not undeliverable",
        "status",
    )
