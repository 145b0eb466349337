"""Login security: password policy, lockout, TOTP for staff, rate limits, CLI clients."""

from __future__ import annotations

import asyncio
import re

import pytest
from fastapi import FastAPI
from typer.testing import CliRunner

from smartmed.cli import app as cli
from smartmed.config import get_settings
from smartmed.identity.accounts import AccountError
from smartmed.identity.passwords import policy_problems
from smartmed.identity.principal import Role, RoleAssignment
from smartmed.identity.ratelimit import TokenBucket
from smartmed.identity.service import Identity
from tests.identity.conftest import (
    PASSWORD,
    REDIRECT,
    browser_login,
    form_fields,
    http,
)

EN = {"Accept-Language": "en"}  # the login page speaks the portal's languages (zh-CN default)


def test_password_policy_messages() -> None:
    assert policy_problems("Correct-Horse-42", "alice") == []
    assert "at least 10 characters" in policy_problems("Ab1-", "alice")[0]
    assert any("two kinds" in p for p in policy_problems("aaaaaaaaaaaaaa", "bob"))
    assert any("account name" in p for p in policy_problems("xx-Alice-2024", "alice"))


async def test_weak_password_and_separated_admin_roles_are_refused(identity: Identity) -> None:
    with pytest.raises(AccountError, match="at least 10"):
        await identity.accounts.create("weak", "short1")
    with pytest.raises(AccountError, match="separation of duties"):
        await identity.accounts.create(
            "admin-both",
            PASSWORD,
            roles=[RoleAssignment(Role.SYSTEM_ADMIN), RoleAssignment(Role.AUDIT_ADMIN)],
            with_totp=True,
        )


async def _authorize_url(identity: Identity) -> str:
    client_id, _ = await identity.clients.create(
        "portal", "patient/*.rs launch/patient", redirect_uris=[REDIRECT], confidential=False
    )
    return (
        f"/oauth/authorize?response_type=code&client_id={client_id}&redirect_uri={REDIRECT}"
        f"&scope=patient/*.rs&code_challenge={'c' * 43}&code_challenge_method=S256&state=x"
    )


async def test_brute_force_locks_the_account(auth_app: FastAPI, identity: Identity) -> None:
    await identity.accounts.create(
        "resident-lock", PASSWORD, fhir_user="Patient/r1", roles=[RoleAssignment(Role.RESIDENT)]
    )
    url = await _authorize_url(identity)
    async with http(auth_app, headers=EN) as browser:
        page = await browser.get(url)
        fields = form_fields(page.text)
        for _ in range(5):
            r = await browser.post(
                "/oauth/login",
                data={**fields, "username": "resident-lock", "password": "Wrong-pass-1"},
            )
            assert r.status_code == 401
        assert "locked" in r.text
        # Even the right password is refused while locked.
        r = await browser.post(
            "/oauth/login", data={**fields, "username": "resident-lock", "password": PASSWORD}
        )
        assert r.status_code == 401 and "locked" in r.text


async def test_resident_logs_in_without_totp_and_gets_patient_context(
    auth_app: FastAPI, identity: Identity
) -> None:
    await identity.accounts.create(
        "resident-ok", PASSWORD, fhir_user="Patient/r2", roles=[RoleAssignment(Role.RESIDENT)]
    )
    url = await _authorize_url(identity)
    async with http(auth_app) as browser:
        final = await browser_login(browser, url, "resident-ok", PASSWORD, None)
    assert final.status_code == 302
    assert final.headers["location"].startswith(REDIRECT + "?code=")


async def test_staff_need_totp(auth_app: FastAPI, identity: Identity) -> None:
    await identity.accounts.create(
        "nurse-no-totp", PASSWORD, roles=[RoleAssignment(Role.NURSE, "Organization/h1")]
    )
    _, secret = await identity.accounts.create(
        "nurse-totp",
        PASSWORD,
        roles=[RoleAssignment(Role.NURSE, "Organization/h1")],
        with_totp=True,
    )
    url = await _authorize_url(identity)
    async with http(auth_app, headers=EN) as browser:
        page = await browser.get(url)
        r = await browser.post(
            "/oauth/login",
            data={**form_fields(page.text), "username": "nurse-no-totp", "password": PASSWORD},
        )
        assert r.status_code == 403 and "second factor" in r.text
    async with http(auth_app) as browser:
        page = await browser.get(url)
        r = await browser.post(
            "/oauth/login",
            data={**form_fields(page.text), "username": "nurse-totp", "password": PASSWORD},
        )
        r = await browser.get(r.headers["location"])
        assert 'name="code"' in r.text  # the TOTP step, no code issued yet
        bad = await browser.post("/oauth/totp", data={**form_fields(r.text), "code": "000000"})
        assert bad.status_code == 401


async def test_login_form_needs_csrf_and_sets_safe_cookies(
    auth_app: FastAPI, identity: Identity
) -> None:
    url = await _authorize_url(identity)
    async with http(auth_app) as browser:
        page = await browser.get(url)
        cookie = page.headers["set-cookie"].lower()
        assert "httponly" in cookie and "secure" in cookie and "samesite=strict" in cookie
        r = await browser.post(
            "/oauth/login",
            data={"csrf": "forged", "next": "", "username": "x", "password": "y"},
        )
        assert r.status_code == 403


async def test_token_endpoint_rate_limit(auth_app: FastAPI, identity: Identity) -> None:
    saved = identity.ip_limiter
    identity.ip_limiter = TokenBucket(60, burst=3)
    try:
        async with http(auth_app) as c:
            codes = [
                (
                    await c.post("/oauth/token", data={"grant_type": "client_credentials"})
                ).status_code
                for _ in range(5)
            ]
    finally:
        identity.ip_limiter = saved
    assert codes[:3] == [401, 401, 401]
    assert codes[-1] == 429


async def test_cli_client_create_gives_working_credentials(
    auth_app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = auth_app.state.fhir.settings.database_url
    monkeypatch.setenv("SMARTMED_DATABASE_URL", url)
    get_settings.cache_clear()
    try:
        result = await asyncio.to_thread(
            CliRunner().invoke,
            cli,
            ["client", "create", "--name", "lab-device", "--scope", "system/*.cruds"],
        )
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    client_id = re.search(r"client_id: (\S+)", result.output)
    secret = re.search(r"client_secret: (\S+)", result.output)
    assert client_id and secret
    async with http(auth_app) as c:
        r = await c.post(
            "/oauth/token",
            data={"grant_type": "client_credentials", "scope": "system/Observation.cruds"},
            auth=(client_id.group(1), secret.group(1)),
        )
        assert r.status_code == 200, r.text
        token = r.json()["access_token"]
        created = await c.post(
            "/fhir/R4/Observation",
            json={"resourceType": "Observation", "status": "final", "code": {"text": "x"}},
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"},
        )
    assert created.status_code == 201, created.text


async def test_session_idle_timeout_and_logout_everywhere(identity: Identity) -> None:
    account, _ = await identity.accounts.create(
        "resident-idle", PASSWORD, roles=[RoleAssignment(Role.RESIDENT)]
    )
    cookie = await identity.accounts.open_session(account.id, mfa_ok=True)
    assert await identity.accounts.session(cookie, idle_seconds=900) == (account.id, True)
    await asyncio.sleep(0.01)
    assert await identity.accounts.session(cookie, idle_seconds=0) is None  # idle: ended
    again = await identity.accounts.open_session(account.id, mfa_ok=True)
    await identity.accounts.logout_everywhere(account.id)
    assert await identity.accounts.session(again, idle_seconds=900) is None
