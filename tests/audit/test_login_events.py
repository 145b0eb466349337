"""Login, failed login (password and TOTP) and logout leave audit records, without secrets."""

from __future__ import annotations

import orjson
import pyotp
from fastapi import FastAPI

from smartmed.audit import catch_up
from smartmed.identity.principal import Role, RoleAssignment
from smartmed.identity.service import Identity
from tests.audit.conftest import rows
from tests.identity.conftest import PASSWORD, REDIRECT, form_fields, http


async def _records(app: FastAPI, account: str | None = None) -> list[dict[str, object]]:
    engine = app.state.fhir
    found = []
    for _, body, _, _ in await rows(engine):
        data = orjson.loads(body)
        if not data["subtype"].startswith("log"):
            continue
        if account is None or data.get("account") == account:
            found.append(data)
    return found


async def _authorize_url(identity: Identity) -> str:
    client_id, _ = await identity.clients.create(
        "portal", "patient/*.rs launch/patient", redirect_uris=[REDIRECT], confidential=False
    )
    return (
        f"/oauth/authorize?response_type=code&client_id={client_id}&redirect_uri={REDIRECT}"
        f"&scope=patient/*.rs&code_challenge={'c' * 43}&code_challenge_method=S256&state=x"
    )


async def test_password_login_failure_success_and_logout(
    auth_app: FastAPI, identity: Identity
) -> None:
    account, _ = await identity.accounts.create(
        "resident-audit", PASSWORD, fhir_user="Patient/ra1", roles=[RoleAssignment(Role.RESIDENT)]
    )
    url = await _authorize_url(identity)
    async with http(auth_app) as browser:
        page = await browser.get(url)
        fields = form_fields(page.text)
        bad = await browser.post(
            "/oauth/login",
            data={**fields, "username": "resident-audit", "password": "Wrong-pass-77"},
        )
        assert bad.status_code == 401
        good = await browser.post(
            "/oauth/login", data={**fields, "username": "resident-audit", "password": PASSWORD}
        )
        assert good.status_code in (302, 303)
        out = await browser.post("/oauth/logout-everywhere", data=fields)
        assert out.status_code == 204
    records = await _records(auth_app, account.id)
    assert [(r["subtype"], r["outcome"]) for r in records] == [
        ("login-failed", "4"),
        ("login", "0"),
        ("logout", "0"),
    ]
    for r in records:
        assert r["action"] == "E"
        assert r["source_ip"] == "127.0.0.1"
        allowed = {"action", "subtype", "outcome", "recorded", "account", "source_ip", "detail"}
        assert set(r) <= allowed
    text = orjson.dumps(records).decode()
    for secret in ("resident-audit", PASSWORD, "Wrong-pass-77", "Patient/ra1"):
        assert secret not in text
    # They become AuditEvents too (User Authentication, Login / Logout).
    engine = auth_app.state.fhir
    await catch_up(engine)
    seqs = [seq for seq, body, _, _ in await rows(engine) if account.id in body]
    async with engine.db.read() as conn:
        repo = engine.repository(conn)
        events = [
            orjson.loads((await repo.read("AuditEvent", f"audit-{seq}")).content or "{}")
            for seq in seqs
        ]
    assert [(e["type"]["code"], e["subtype"][0]["code"], e["outcome"]) for e in events] == [
        ("110114", "110122", "4"),
        ("110114", "110122", "0"),
        ("110114", "110123", "0"),
    ]


async def test_unknown_account_and_totp_failure(auth_app: FastAPI, identity: Identity) -> None:
    account, secret = await identity.accounts.create(
        "nurse-audit",
        PASSWORD,
        roles=[RoleAssignment(Role.NURSE, "Organization/h1")],
        with_totp=True,
    )
    assert secret
    before = len(await _records(auth_app))
    url = await _authorize_url(identity)
    async with http(auth_app) as browser:
        page = await browser.get(url)
        fields = form_fields(page.text)
        nobody = await browser.post(
            "/oauth/login", data={**fields, "username": "no-such-person", "password": PASSWORD}
        )
        assert nobody.status_code == 401
        r = await browser.post(
            "/oauth/login", data={**fields, "username": "nurse-audit", "password": PASSWORD}
        )
        r = await browser.get(r.headers["location"])
        assert 'name="code"' in r.text
        wrong = await browser.post("/oauth/totp", data={**form_fields(r.text), "code": "000000"})
        assert wrong.status_code == 401
        code = pyotp.TOTP(secret).now()
        right = await browser.post("/oauth/totp", data={**form_fields(r.text), "code": code})
        assert right.status_code in (302, 303)
    records = await _records(auth_app)
    new = records[before:]
    assert [(r["subtype"], r["outcome"], r.get("account")) for r in new] == [
        ("login-failed", "4", None),  # no such account: nothing personal recorded
        ("login-failed", "4", account.id),  # TOTP rejected
        ("login", "0", account.id),  # password and TOTP
    ]
    assert "no-such-person" not in orjson.dumps(new).decode()
    assert new[1]["detail"] == "second factor (TOTP) rejected"
