"""Who may open the audit trail: the roles the access policy in force lets search the audit
category for everyone; institution administrators see their own organisations' staff."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from fastapi import FastAPI

import smartmed.audit
from smartmed.access.policy_store import rights_of, sync_of
from smartmed.fhir.hooks import AuditRecord
from smartmed.identity.principal import Role
from tests.portal.conftest import browser, fhir, login, make_user
from tests.portal.test_rights import _restore

EN = {"Accept-Language": "en"}


@pytest.fixture
async def app(demo_app: FastAPI) -> AsyncIterator[FastAPI]:
    await _restore(demo_app)
    yield demo_app
    await _restore(demo_app)


async def _grant_audit(app: FastAPI, *roles: str) -> None:
    sync = sync_of(app.state.fhir.access)
    assert sync is not None
    await sync.refresh(force=True)
    rights = rights_of(sync.control.policy)
    for role in roles:
        rights[role]["audit"] = "rs"
    stored = await sync.store.save(
        rights,
        base_version=sync.version,
        author="test",
        author_name="test",
        reason="audit view for administrators",
    )
    sync.apply(stored)


async def _read_by(app: FastAPI, practitioner: str, marker: str) -> None:
    engine = app.state.fhir
    await engine.audit.record(
        AuditRecord(
            action="R",
            subtype="read",
            outcome="0",
            recorded=datetime.now(UTC),
            agent=practitioner,
            account=f"acct-{marker}",
            roles=("family-doctor",),
            entities=("Organization/none",),
        )
    )
    await smartmed.audit.catch_up(engine)


async def _an_institution_and_an_outsider(app: FastAPI) -> tuple[str, str, str]:
    """An organisation with no sub-organisations, one of its staff, and someone with no
    role there."""
    orgs = (await fhir(app, "Organization", _count="1000", _elements="partOf"))["entry"]
    parents = {
        (o["resource"].get("partOf") or {}).get("reference", "").split("/")[-1] for o in orgs
    }
    roles = [e["resource"] for e in (await fhir(app, "PractitionerRole", _count="1000"))["entry"]]
    by_org: dict[str, set[str]] = {}
    for role in roles:
        org = (role.get("organization") or {}).get("reference", "")
        who = (role.get("practitioner") or {}).get("reference", "")
        if org and who:
            by_org.setdefault(org, set()).add(who)
    org = next(o for o in sorted(by_org) if o.split("/")[1] not in parents)
    inside = sorted(by_org[org])[0]
    outside = next(
        w for o, ws in sorted(by_org.items()) for w in sorted(ws) if w not in by_org[org]
    )
    return org, inside, outside


def _agents(html: str) -> set[str]:
    return set(re.findall(r"acct-[a-z]+", html))


async def test_audit_trail_follows_the_policy(app: FastAPI) -> None:
    org, inside, outside = await _an_institution_and_an_outsider(app)
    await _read_by(app, inside, "inside")
    await _read_by(app, outside, "outside")
    platform = await make_user(app, (Role.PLATFORM_ADMIN, None), prefix="auditpa")
    institution = await make_user(app, (Role.INSTITUTION_ADMIN, org), prefix="auditia")
    security = await make_user(app, (Role.SECURITY_ADMIN, None), prefix="auditsa")
    auditor = await make_user(app, (Role.AUDIT_ADMIN, None), prefix="auditaa")
    # As shipped: the audit administrator only (separation of duties).
    for user, allowed in ((platform, False), (institution, False), (security, False)):
        async with browser(app, **EN) as c:
            home = await login(c, user)
            assert ('href="/audit"' in home.text) is allowed
            assert (await c.get("/audit")).status_code == 403
    async with browser(app, **EN) as c:
        await login(c, auditor)
        r = await c.get("/audit", params={"subtype": "read"})
        assert r.status_code == 200 and {"acct-inside", "acct-outside"} <= _agents(r.text)
        assert 'data-testid="scoped"' not in r.text

    await _grant_audit(app, "platform-admin", "institution-admin")
    async with browser(app, **EN) as c:
        home = await login(c, platform)
        assert 'href="/audit"' in home.text
        r = await c.get("/audit", params={"subtype": "read"})
        assert r.status_code == 200 and {"acct-inside", "acct-outside"} <= _agents(r.text)
    async with browser(app, **EN) as c:
        home = await login(c, institution)
        assert 'href="/audit"' in home.text
        r = await c.get("/audit", params={"subtype": "read"})
        assert r.status_code == 200
        seen = _agents(r.text)
        assert "acct-inside" in seen and "acct-outside" not in seen
        assert 'data-testid="scoped"' in r.text
        # Asking for someone outside the organisation finds nothing.
        r = await c.get("/audit", params={"agent": outside})
        assert r.status_code == 200 and "acct-outside" not in r.text
        r = await c.get("/audit", params={"agent": inside})
        assert "acct-inside" in r.text
    async with browser(app, **EN) as c:
        await login(c, security)
        assert (await c.get("/audit")).status_code == 403  # not granted
