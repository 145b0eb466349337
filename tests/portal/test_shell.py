"""The portal shell over HTTP: landing page, SSO login, session cookie, CSRF, navigation
by role, role switch, language choice."""

from __future__ import annotations

import re

import orjson
from fastapi import FastAPI

from smartmed.identity.principal import Role
from smartmed.portal.session import COOKIE
from tests.portal.conftest import BASE, browser, csrf_of, follow, login, make_user


async def test_landing_page_for_visitors_in_the_default_language(portal_app: FastAPI) -> None:
    async with browser(portal_app) as c:
        r = await c.get("/")
    assert r.status_code == 200
    assert '<html lang="zh-CN">' in r.text
    assert 'href="/login"' in r.text and "登录" in r.text
    assert r.headers["content-security-policy"].startswith("default-src 'self'")
    # Every script and stylesheet comes from this server (no CDN; works offline).
    sources = re.findall(r'(?:src|href)="([^"]+)"', r.text)
    assert sources and all(s[0] in "/#" and not s.startswith("//") for s in sources)
    assert "<script>" not in r.text and "style=" not in r.text  # CSP: no inline code


async def test_accept_language_chooses_english(portal_app: FastAPI) -> None:
    async with browser(portal_app, **{"Accept-Language": "en-GB,en;q=0.9,zh;q=0.5"}) as c:
        r = await c.get("/")
    assert '<html lang="en">' in r.text and ">Log in<" in r.text


async def test_front_end_packages_are_served_locally(portal_app: FastAPI) -> None:
    async with browser(portal_app) as c:
        for path, kind in (
            ("/static/vendor/htmx.min.js", "javascript"),
            ("/static/vendor/alpine-csp.min.js", "javascript"),
            ("/static/vendor/bootstrap.min.css", "css"),
            ("/static/vendor/echarts.min.js", "javascript"),
            ("/static/portal/portal.css", "css"),
            ("/static/portal/portal.js", "javascript"),
        ):
            r = await c.get(path)
            assert r.status_code == 200, path
            assert kind in r.headers["content-type"]
        assert (await c.get("/static/vendor/package.json")).status_code == 404
        assert (await c.get("/static/portal/..%2Fsession.py")).status_code == 404


async def test_login_through_the_oidc_provider_with_totp(portal_app: FastAPI) -> None:
    doctor = await make_user(
        portal_app, (Role.FAMILY_DOCTOR, "Organization/x"), fhir_user="Practitioner/nobody"
    )
    async with browser(portal_app) as c:
        start = await c.get("/login", params={"next": "/directory/organizations"})
        assert start.status_code == 303
        assert start.headers["location"].startswith("/oauth/authorize?")
        assert "code_challenge_method=S256" in start.headers["location"]
        page = await login(c, doctor, next_path="/directory/organizations")
        assert page.status_code == 200
        assert str(page.url) == f"{BASE}/directory/organizations"
        cookie = next(x for x in c.cookies.jar if x.name == COOKIE)
        assert cookie.secure and cookie.path == "/"
        assert cookie.has_nonstandard_attr("HttpOnly")
        home = await c.get("/")
        assert doctor.username in home.text
        assert 'data-nav="directory"' in home.text and 'data-nav="organizations"' not in home.text


async def test_session_cookie_flags(portal_app: FastAPI) -> None:
    async with browser(portal_app) as c:
        r = await c.get("/")
    header = r.headers["set-cookie"]
    assert header.startswith(f"{COOKIE}=")
    for flag in ("HttpOnly", "Secure", "SameSite=Lax", "Path=/"):
        assert flag in header
    assert r.headers["cache-control"] == "no-store"


async def test_callback_with_a_wrong_state_is_refused(portal_app: FastAPI) -> None:
    async with browser(portal_app) as c:
        await c.get("/login")
        r = await c.get("/auth/callback", params={"code": "x", "state": "forged"})
        assert r.status_code == 400
        assert (await c.get("/")).text.count('href="/login"') >= 1  # still anonymous


async def test_next_never_leaves_the_site(portal_app: FastAPI) -> None:
    admin = await make_user(portal_app, (Role.PLATFORM_ADMIN, None))
    async with browser(portal_app) as c:
        page = await login(c, admin, next_path="//evil.example/steal")
        assert str(page.url) == f"{BASE}/"


async def test_logout_revokes_the_session_everywhere(portal_app: FastAPI) -> None:
    admin = await make_user(portal_app, (Role.PLATFORM_ADMIN, None))
    async with browser(portal_app) as c:
        home = await login(c, admin)
        stolen = c.cookies.get(COOKIE)
        r = await c.post("/logout", data={"csrf": csrf_of(home.text)})
        assert r.status_code == 303
        assert 'href="/login"' in (await c.get("/")).text
    # A copy of the cookie taken before logout no longer works: its token is revoked.
    async with browser(portal_app) as thief:
        thief.cookies.set(COOKIE, stolen or "", domain="testserver")
        r = await thief.get("/admin/organizations")
        assert r.status_code == 303 and r.headers["location"].startswith("/login")


async def test_unsafe_requests_without_csrf_token_are_refused(portal_app: FastAPI) -> None:
    admin = await make_user(portal_app, (Role.PLATFORM_ADMIN, None))
    name = "CSRF-Probe Hospital"
    async with browser(portal_app) as c:
        await login(c, admin)
        form = {"name": name, "kind": "county-hospital", "level": "county"}
        r = await c.post("/admin/organizations/new", data=form)
        assert r.status_code == 403
        r = await c.post("/admin/organizations/new", data={**form, "csrf": "0" * 64})
        assert r.status_code == 403
        r = await c.post("/logout")
        assert r.status_code == 403
        listing = await c.get("/admin/organizations", params={"q": "CSRF-Probe"})
    assert name not in listing.text
    async with browser(portal_app) as api:
        found = await api.get("/fhir/R4/Organization", params={"name": name})
    assert found.json()["total"] == 0


async def test_htmx_requests_carry_the_token_in_a_header(portal_app: FastAPI) -> None:
    admin = await make_user(portal_app, (Role.PLATFORM_ADMIN, None))
    async with browser(portal_app) as c:
        home = await login(c, admin)
        token = re.search(r'"X-CSRF-Token": "([0-9a-f]+)"', home.text)
        assert token is not None
        r = await c.post(
            "/lang",
            data={"lang": "en", "next": "/"},
            headers={"X-CSRF-Token": token.group(1), "HX-Request": "true"},
        )
        assert r.status_code == 303


NAV = ("me", "directory", "organizations", "departments", "practitioners", "teams", "import")


def nav_keys(html: str) -> set[str]:
    return set(re.findall(r'data-nav="([a-z-]+)"', html))


async def test_navigation_and_pages_follow_the_role(portal_app: FastAPI) -> None:
    resident = await make_user(portal_app, (Role.RESIDENT, None))
    nurse = await make_user(portal_app, (Role.NURSE, "Organization/x"))
    admin = await make_user(portal_app, (Role.INSTITUTION_ADMIN, "Organization/x"))
    platform = await make_user(portal_app, (Role.PLATFORM_ADMIN, None))
    auditor = await make_user(portal_app, (Role.AUDIT_ADMIN, None))
    # Contracting (issue 8): residents' contract and packages; team members' contracting
    # queue, workbench and team reports; administrators' packages and contract analytics.
    expected = {
        resident: {"me", "access", "contract", "package"},
        nurse: {"contracting", "workbench", "team-reports", "directory"},
        admin: {"directory", "organizations", "departments", "practitioners", "teams"}
        | {"import", "accounts", "packages", "contract-analytics", "refunds"},
        platform: {"directory", "organizations", "departments", "practitioners", "teams"}
        | {"import", "accounts", "rights", "packages", "refunds"},
        auditor: {"directory", "audit"},
    }
    for user, keys in expected.items():
        async with browser(portal_app) as c:
            home = await login(c, user)
            assert nav_keys(home.text) == keys, user
            tiles = set(re.findall(r'data-tile="([a-z-]+)"', home.text))
            assert tiles == keys
            for path, key in (
                ("/admin/organizations", "organizations"),
                ("/admin/accounts", "accounts"),
                ("/directory/teams", "directory"),
                ("/me", "me"),
                ("/audit", "audit"),
                ("/admin/rights", "rights"),
                ("/record-access", "access"),
                ("/payments/admin/refunds", "refunds"),
            ):
                r = await c.get(path)
                assert r.status_code == (200 if key in keys else 403), (user, path)
    # No entry without its page (planned entries are shown disabled, without a link).
    async with browser(portal_app) as c:
        home = await login(c, platform)
        assert 'href=""' not in home.text


async def test_anonymous_pages_redirect_to_login(portal_app: FastAPI) -> None:
    async with browser(portal_app) as c:
        r = await c.get("/admin/teams?page=2")
        assert r.status_code == 303
        assert r.headers["location"] == "/login?next=/admin/teams%3Fpage%3D2"


async def test_an_account_with_two_roles_switches_between_them(portal_app: FastAPI) -> None:
    user = await make_user(
        portal_app,
        (Role.FAMILY_DOCTOR, "Organization/x"),
        (Role.INSTITUTION_ADMIN, "Organization/x"),
    )
    async with browser(portal_app) as c:
        home = await login(c, user)
        assert nav_keys(home.text) == {"directory", "contracting", "workbench", "team-reports"}
        assert 'name="role"' in home.text
        r = await follow(
            c, await c.post("/role", data={"csrf": csrf_of(home.text), "role": "institution-admin"})
        )
        assert "organizations" in nav_keys(r.text)
        assert (await c.get("/admin/organizations")).status_code == 200
        # A role the account does not hold is ignored.
        r = await follow(
            c, await c.post("/role", data={"csrf": csrf_of(r.text), "role": "platform-admin"})
        )
        assert "organizations" in nav_keys(r.text)


async def test_language_is_the_accounts_setting_kept_in_fhir(portal_app: FastAPI) -> None:
    async with browser(portal_app) as api:
        created = await api.post(
            "/fhir/R4/Patient",
            content=orjson.dumps(
                {
                    "resourceType": "Patient",
                    "name": [{"family": "李", "given": ["秀英"]}],
                    "birthDate": "1956-03-09",
                }
            ),
            headers={"Content-Type": "application/fhir+json"},
        )
    patient_id = created.json()["id"]
    resident = await make_user(portal_app, (Role.RESIDENT, None), fhir_user=f"Patient/{patient_id}")
    async with browser(portal_app, **{"Accept-Language": "zh-CN"}) as c:
        home = await login(c, resident)
        assert "您好，李秀英" in home.text
        me = await c.get("/me")
        assert "1956年3月9日" in me.text
        r = await follow(
            c, await c.post("/lang", data={"csrf": csrf_of(me.text), "lang": "en", "next": "/me"})
        )
        assert '<html lang="en">' in r.text
        assert "March 9, 1956" in r.text and "Date of birth" in r.text
    async with browser(portal_app) as api:
        stored = (await api.get(f"/fhir/R4/Patient/{patient_id}")).json()
    assert stored["communication"] == [
        {
            "language": {
                "coding": [{"system": "urn:ietf:bcp:47", "code": "en"}],
                "text": "English",
            },
            "preferred": True,
        }
    ]
    # A new login on another browser that prefers Chinese follows the account's setting.
    async with browser(portal_app, **{"Accept-Language": "zh-CN"}) as other:
        home = await login(other, resident)
        assert '<html lang="en">' in home.text and "Hello, 李秀英" in home.text


async def test_resident_pages_are_phone_first(portal_app: FastAPI) -> None:
    resident = await make_user(portal_app, (Role.RESIDENT, None))
    async with browser(portal_app) as c:
        home = await login(c, resident)
    assert '<body class="resident"' in home.text
    assert 'class="tabbar' in home.text and 'id="sidebar"' not in home.text


async def test_other_modules_apis_use_the_portal_session(portal_app: FastAPI) -> None:
    admin = await make_user(portal_app, (Role.PLATFORM_ADMIN, None))
    nurse = await make_user(portal_app, (Role.NURSE, None), fhir_user="Practitioner/n1")
    async with browser(portal_app) as anonymous:
        assert (await anonymous.get("/api/admin/jobs")).status_code == 401
        assert (await anonymous.get("/api/notifications")).status_code == 401
    async with browser(portal_app) as c:
        await login(c, admin)
        assert (await c.get("/api/admin/jobs")).status_code == 200
    async with browser(portal_app) as c:
        await login(c, nurse)
        assert (await c.get("/api/admin/jobs")).status_code == 403
        inbox = await c.get("/api/notifications")
        assert inbox.status_code == 200, inbox.text
