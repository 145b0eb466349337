"""Basic information management over HTTP: lists (search, filters, sorting, paging) on the
demo county, forms with validation messages, and what the forms store as FHIR."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from html import unescape

import httpx
import orjson
import pytest
from fastapi import FastAPI

from smartmed.identity.principal import Role
from tests.portal.conftest import User, browser, csrf_of, fhir, follow, login, make_user

EN = {"Accept-Language": "en"}


@pytest.fixture
async def admin(demo_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A logged-in platform administrator's browser, in English."""
    user = await make_user(demo_app, (Role.PLATFORM_ADMIN, None), prefix="admin")
    async with browser(demo_app, **EN) as c:
        await login(c, user)
        yield c


def rows(html: str) -> list[str]:
    body = html.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [unescape(re.sub(r"<[^>]+>", " ", r)) for r in body.split("<tr")[1:]]


def range_text(html: str) -> str:
    found = re.search(r'data-testid="range">([^<]*)<', html)
    assert found
    return unescape(found.group(1))


async def test_practitioner_list_pages_through_the_demo_staff(
    demo_app: FastAPI, admin: httpx.AsyncClient
) -> None:
    total = (await fhir(demo_app, "Practitioner", _summary="count"))["total"]
    assert total > 20
    first = await admin.get("/admin/practitioners")
    assert first.status_code == 200
    assert len(rows(first.text)) == 20
    assert range_text(first.text) == f"1–20 of {total:,}"
    assert 'rel="next"' in first.text and 'rel="prev"' not in first.text
    last_page = (total + 19) // 20
    last = await admin.get("/admin/practitioners", params={"page": str(last_page)})
    assert len(rows(last.text)) == total - 20 * (last_page - 1)
    assert 'rel="next"' not in last.text and 'rel="prev"' in last.text
    # Sorted by family name, and reversed.
    up = await admin.get("/admin/practitioners", params={"sort": "name"})
    down = await admin.get("/admin/practitioners", params={"sort": "-name"})
    assert 'aria-sort="ascending"' in up.text and 'aria-sort="descending"' in down.text
    assert rows(up.text)[0] != rows(down.text)[0]


async def test_organisation_search_and_filters(demo_app: FastAPI, admin: httpx.AsyncClient) -> None:
    clinics = await fhir(
        demo_app, "Organization", type="urn:smartmed:org-type|village-clinic", _summary="count"
    )
    r = await admin.get("/admin/organizations", params={"kind": "village-clinic"})
    assert range_text(r.text).endswith(f"of {clinics['total']}")
    assert all("Village clinic" in row for row in rows(r.text))
    hospital = await fhir(demo_app, "Organization", type="urn:smartmed:org-type|county-hospital")
    name = hospital["entry"][0]["resource"]["name"]
    r = await admin.get("/admin/organizations", params={"q": name[:4]})
    assert any(name in row for row in rows(r.text))
    # Departments are listed on their own page, with their institution.
    r = await admin.get("/admin/departments")
    depts = await fhir(
        demo_app, "Organization", type="urn:smartmed:org-type|department", _summary="count"
    )
    assert range_text(r.text) == f"1–{depts['total']} of {depts['total']}"
    assert all(name in row for row in rows(r.text))
    # htmx asks for the results only.
    partial = await admin.get(
        "/admin/organizations", params={"q": "zzz-nothing"}, headers={"HX-Request": "true"}
    )
    assert "<html" not in partial.text and "Nothing found." in partial.text


async def test_form_errors_in_the_users_language_store_nothing(
    demo_app: FastAPI, admin: httpx.AsyncClient
) -> None:
    before = (await fhir(demo_app, "Organization", _summary="count"))["total"]
    page = await admin.get("/admin/organizations/new")
    r = await admin.post(
        "/admin/organizations/new",
        data={"csrf": csrf_of(page.text), "name": "", "kind": "castle", "phone": "call me"},
    )
    assert r.status_code == 422
    errors = dict(re.findall(r'id="e-([a-z_-]+)">([^<]+)<', r.text))
    assert errors == {
        "name": "This field is required.",
        "kind": "This choice is not valid.",
        "level": "Please choose one.",
        "phone": "Enter a phone number: digits, spaces or dashes.",
    }
    assert 'aria-invalid="true"' in r.text
    # Same form in Chinese.
    r = await admin.post("/lang", data={"csrf": csrf_of(page.text), "lang": "zh_CN"})
    r = await admin.post("/admin/organizations/new", data={"csrf": csrf_of(page.text), "name": ""})
    assert "此项为必填项。" in r.text
    await admin.post("/lang", data={"csrf": csrf_of(page.text), "lang": "en"})
    assert (await fhir(demo_app, "Organization", _summary="count"))["total"] == before


async def test_create_organisation_team_and_staff_visible_through_fhir(
    demo_app: FastAPI, admin: httpx.AsyncClient
) -> None:
    page = await admin.get("/admin/organizations/new")
    csrf = csrf_of(page.text)
    county = await fhir(demo_app, "Organization", type="urn:smartmed:org-type|county-hospital")
    parent_id = county["entry"][0]["resource"]["id"]
    r = await admin.post(
        "/admin/organizations/new",
        data={
            "csrf": csrf,
            "name": "青山镇卫生院",
            "kind": "township-health-centre",
            "level": "township",
            "parent": parent_id,
            "code": "TC-QS",
            "phone": "0571-8888000",
            "address": "青山镇卫生院路1号",
            "active": "true",
        },
    )
    assert r.status_code == 303, r.text
    listing = await follow(admin, r)
    assert "Saved: 青山镇卫生院" in listing.text
    found = await fhir(demo_app, "Organization", identifier="urn:smartmed:org|TC-QS")
    assert found["total"] == 1
    org = found["entry"][0]["resource"]
    assert org["partOf"] == {"reference": f"Organization/{parent_id}"}
    assert org["telecom"] == [{"system": "phone", "value": "0571-8888000", "use": "work"}]
    sites = await fhir(demo_app, "Location", organization=f"Organization/{org['id']}")
    assert [s["resource"]["name"] for s in sites["entry"]] == ["青山镇卫生院"]

    # A staff member with a role in it.
    r = await admin.post(
        "/admin/practitioners/new",
        data={
            "csrf": csrf,
            "family": "周",
            "given": "明远",
            "gender": "male",
            "birth_date": "1980-05-06",
            "code": "P-QS-1",
            "qualification": "physician",
            "organization": org["id"],
            "role": "doctor",
            "specialty": "394814009",
            "site": sites["entry"][0]["resource"]["id"],
            "active": "true",
        },
    )
    assert r.status_code == 303, r.text
    doctor = await fhir(
        demo_app,
        "PractitionerRole",
        organization=f"Organization/{org['id']}",
        _include="PractitionerRole:practitioner",
    )
    role = next(e["resource"] for e in doctor["entry"] if e["search"]["mode"] == "match")
    person = next(e["resource"] for e in doctor["entry"] if e["search"]["mode"] == "include")
    assert person["name"][0]["family"] == "周" and person["birthDate"] == "1980-05-06"
    assert role["specialty"][0]["coding"][0]["code"] == "394814009"
    assert role["location"] == [{"reference": f"Location/{sites['entry'][0]['resource']['id']}"}]

    # A family-doctor team led by them.
    nurse_role = (await fhir(demo_app, "PractitionerRole", role="nurse"))["entry"][0]["resource"]
    r = await admin.post(
        "/admin/teams/new",
        data={
            "csrf": csrf,
            "name": "青山镇家庭医生团队",
            "organization": org["id"],
            "status": "active",
            "leader": role["id"],
            "gp": [role["id"]],
            "nurse": [nurse_role["id"]],
            "area": [org["id"]],
        },
    )
    assert r.status_code == 303, r.text
    teams = await fhir(demo_app, "CareTeam", participant=f"PractitionerRole/{nurse_role['id']}")
    team = next(
        e["resource"] for e in teams["entry"] if e["resource"]["name"] == "青山镇家庭医生团队"
    )
    assert [
        (p["role"][0]["coding"][0]["code"], p["member"]["reference"]) for p in team["participant"]
    ] == [
        ("leader", f"PractitionerRole/{role['id']}"),
        ("gp", f"PractitionerRole/{role['id']}"),
        ("nurse", f"PractitionerRole/{nurse_role['id']}"),
    ]
    assert team["extension"] == [
        {
            "url": "urn:smartmed:extension:care-team-service-area",
            "valueReference": {"reference": f"Organization/{org['id']}"},
        }
    ]
    listing = await admin.get("/admin/teams", params={"q": "青山镇家庭医生团队"})
    assert [row for row in rows(listing.text) if "青山镇家庭医生团队" in row]


async def test_team_form_needs_a_general_practitioner(admin: httpx.AsyncClient) -> None:
    page = await admin.get("/admin/teams/new")
    r = await admin.post("/admin/teams/new", data={"csrf": csrf_of(page.text), "name": "X"})
    assert r.status_code == 422
    errors = dict(re.findall(r'id="e-([a-z_-]+)">([^<]+)<', r.text))
    assert errors["gp"] == "A team needs at least one general practitioner."
    assert errors["leader"] == "Please choose one."


async def test_institution_admin_changes_only_their_institution(demo_app: FastAPI) -> None:
    township = await fhir(
        demo_app, "Organization", type="urn:smartmed:org-type|township-health-centre"
    )
    mine = township["entry"][0]["resource"]["id"]
    other = township["entry"][1]["resource"]["id"]
    user = await make_user(demo_app, (Role.INSTITUTION_ADMIN, f"Organization/{mine}"))
    async with browser(demo_app, **EN) as c:
        page = await login(c, user)
        form = {"csrf": csrf_of(page.text), "kind": "village-clinic", "level": "village"}
        r = await c.post("/admin/organizations/new", data={**form, "name": "A", "parent": other})
        assert r.status_code == 422
        assert "You may only add organisations under your own institution." in r.text
        r = await c.post(
            "/admin/organizations/new", data={**form, "name": "新村卫生室", "parent": mine}
        )
        assert r.status_code == 303
    assert (await fhir(demo_app, "Organization", name="新村卫生室"))["total"] == 1


async def test_accounts_created_with_roles_and_totp(
    demo_app: FastAPI, admin: httpx.AsyncClient
) -> None:
    page = await admin.get("/admin/accounts/new")
    csrf = csrf_of(page.text)
    weak = await admin.post(
        "/admin/accounts/new",
        data={"csrf": csrf, "username": "wang.fang", "password": "short", "role": "nurse"},
    )
    assert weak.status_code == 422 and "The password is too weak" in weak.text
    r = await admin.post(
        "/admin/accounts/new",
        data={
            "csrf": csrf,
            "username": "wang.fang",
            "password": "Nurse-Strong-77",
            "role": "nurse",
            "organization": "",
        },
    )
    assert r.status_code == 200
    secret = re.search(r'data-testid="totp-secret">([A-Z2-7]+)<', r.text)
    assert secret and "<svg" in r.text
    taken = await admin.post(
        "/admin/accounts/new",
        data={
            "csrf": csrf,
            "username": "wang.fang",
            "password": "Nurse-Strong-77",
            "role": "nurse",
        },
    )
    assert "This account name is taken." in taken.text
    listing = await admin.get("/admin/accounts", params={"q": "wang.f"})
    assert [row for row in rows(listing.text) if "wang.fang" in row and "Nurse" in row]
    account_id = re.search(r'href="/admin/accounts/([0-9a-f-]+)"', listing.text)
    assert account_id
    r = await admin.post(
        f"/admin/accounts/{account_id.group(1)}/roles",
        data={"csrf": csrf, "role": "family-doctor", "organization": ""},
    )
    assert r.status_code == 303
    detail = await admin.get(f"/admin/accounts/{account_id.group(1)}")
    assert "Family doctor" in detail.text and "Nurse" in detail.text
    # The new account logs in with the secret shown once.
    new_user = User("wang.fang", secret.group(1), account_id.group(1))
    async with browser(demo_app, **EN) as c:
        from tests.portal import conftest

        original, conftest.PASSWORD = conftest.PASSWORD, "Nurse-Strong-77"
        try:
            home = await login(c, new_user)
        finally:
            conftest.PASSWORD = original
        assert 'data-nav="directory"' in home.text and 'name="role"' in home.text


async def test_staff_directory_is_read_only(demo_app: FastAPI) -> None:
    nurse = await make_user(demo_app, (Role.NURSE, None))
    async with browser(demo_app, **EN) as c:
        await login(c, nurse)
        for path in ("/directory/organizations", "/directory/practitioners", "/directory/teams"):
            r = await c.get(path)
            assert r.status_code == 200
            assert f'href="{path}" aria-current="page"' in r.text  # the directory's tabs
            assert "/new" not in r.text and "/admin/" not in r.text
            assert len(rows(r.text)) > 1


async def test_resident_sees_their_family_doctor_and_team(demo_app: FastAPI) -> None:
    patients = await fhir(demo_app, "Patient", _count="50")
    patient = next(
        e["resource"] for e in patients["entry"] if e["resource"].get("generalPractitioner")
    )
    gp_id = patient["generalPractitioner"][0]["reference"].split("/", 1)[1]
    gp = await fhir(demo_app, f"Practitioner/{gp_id}")
    roles = await fhir(demo_app, "PractitionerRole", practitioner=f"Practitioner/{gp_id}")
    members = ",".join(f"PractitionerRole/{e['resource']['id']}" for e in roles["entry"])
    team = (await fhir(demo_app, "CareTeam", participant=members))["entry"][0]["resource"]
    resident = await make_user(
        demo_app, (Role.RESIDENT, None), fhir_user=f"Patient/{patient['id']}"
    )
    async with browser(demo_app, **{"Accept-Language": "zh-CN"}) as c:
        home = await login(c, resident)
    card = home.text.split('data-testid="family-doctor"', 1)[1].split("</section>", 1)[0]
    assert "我的家庭医生" in card
    assert (
        f'data-testid="doctor-name">{gp["name"][0]["family"]}{gp["name"][0]["given"][0]}<' in card
    )
    assert f'data-testid="team-name">{team["name"]}<' in card
    phone = gp["telecom"][0]["value"]
    assert f'href="tel:{phone}"' in card


async def test_editing_an_institution_keeps_its_site_in_step(
    demo_app: FastAPI, admin: httpx.AsyncClient
) -> None:
    page = await admin.get("/admin/organizations/new")
    form = {
        "csrf": csrf_of(page.text),
        "name": "河口村卫生室",
        "kind": "village-clinic",
        "level": "village",
        "code": "VC-HK",
        "address": "河口村1号",
        "active": "true",
    }
    assert (await admin.post("/admin/organizations/new", data=form)).status_code == 303
    org = (await fhir(demo_app, "Organization", identifier="urn:smartmed:org|VC-HK"))["entry"][0]
    org_id = org["resource"]["id"]
    edit = await admin.get(f"/admin/organizations/{org_id}")
    assert 'value="河口村卫生室"' in edit.text and 'value="VC-HK"' in edit.text
    changed = {**form, "name": "河口村卫生服务站", "address": "河口村2号", "active": ""}
    r = await admin.post(f"/admin/organizations/{org_id}", data=changed)
    assert r.status_code == 303
    stored = await fhir(demo_app, f"Organization/{org_id}")
    assert stored["name"] == "河口村卫生服务站" and stored["active"] is False
    assert stored["meta"]["versionId"] == "2"
    sites = await fhir(demo_app, "Location", organization=f"Organization/{org_id}")
    assert sites["total"] == 1
    site = sites["entry"][0]["resource"]
    assert (site["name"], site["address"]["text"], site["status"]) == (
        "河口村卫生服务站",
        "河口村2号",
        "inactive",
    )


async def test_a_write_the_engine_refuses_is_shown_on_the_form(
    demo_app: FastAPI, admin: httpx.AsyncClient
) -> None:
    from smartmed.fhir.errors import Invalid

    def no_refused_names(body: dict[str, object]) -> None:
        if body.get("name") == "Refused Hospital":
            raise Invalid("this name is reserved", expression="Organization.name")

    demo_app.state.fhir.services.hooks.add_check("Organization", no_refused_names)
    page = await admin.get("/admin/organizations/new")
    form = {"csrf": csrf_of(page.text), "kind": "county-hospital", "level": "county"}
    r = await admin.post("/admin/organizations/new", data={**form, "name": "Refused Hospital"})
    assert r.status_code == 422
    assert "The record could not be saved: this name is reserved" in r.text
    assert 'value="Refused Hospital"' in r.text  # what was typed is kept
    assert (await fhir(demo_app, "Organization", name="Refused Hospital"))["total"] == 0


async def test_a_concurrent_change_is_not_overwritten(
    demo_app: FastAPI, admin: httpx.AsyncClient
) -> None:
    page = await admin.get("/admin/organizations/new")
    form = {
        "csrf": csrf_of(page.text),
        "name": "并发测试药店",
        "kind": "pharmacy",
        "level": "county",
        "code": "PH-CC",
        "active": "true",
    }
    assert (await admin.post("/admin/organizations/new", data=form)).status_code == 303
    org = (await fhir(demo_app, "Organization", identifier="urn:smartmed:org|PH-CC"))["entry"][0]
    org_id = org["resource"]["id"]
    edit = await admin.get(f"/admin/organizations/{org_id}")
    assert 'name="version" value="1"' in edit.text
    # Someone else changes it through the FHIR API meanwhile.
    changed = {**org["resource"], "name": "并发测试药店（已改名）"}
    async with browser(demo_app) as api:
        r = await api.put(
            f"/fhir/R4/Organization/{org_id}",
            content=orjson.dumps(changed),
            headers={"Content-Type": "application/fhir+json"},
        )
        assert r.status_code == 200
    r = await admin.post(
        f"/admin/organizations/{org_id}", data={**form, "name": "我的改动", "version": "1"}
    )
    assert r.status_code == 422
    assert "The record could not be saved" in r.text and "version 1" in r.text
    stored = await fhir(demo_app, f"Organization/{org_id}")
    assert stored["name"] == "并发测试药店（已改名）" and stored["meta"]["versionId"] == "2"
