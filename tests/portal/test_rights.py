"""Role rights: the editor changes what the FHIR API lets a role do, who may use it, CSRF,
validation in both languages, history and audit, and other processes following an edit."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from html import unescape

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.exc import OperationalError

import smartmed.audit
from smartmed.access.guard import AccessControl
from smartmed.access.policy import load_policy
from smartmed.access.policy_store import (
    CATEGORIES,
    CHECK_SECONDS,
    PolicyStore,
    PolicySync,
    Rights,
    apply_rights,
    changes,
    rights_of,
    sync_of,
)
from smartmed.app import create_app
from smartmed.fhir.definitions.locate import locate_definitions
from smartmed.identity.principal import Role
from smartmed.identity.service import get_identity
from smartmed.portal.admin.rights import parse_matrix
from tests.portal.conftest import BASE, browser, csrf_of, fhir, login, make_user

EN = {"Accept-Language": "en"}
ZH = {"Accept-Language": "zh-CN"}
REASON = "Ward policy review 2026-11"


def checked(html: str) -> dict[str, list[str]]:
    """The matrix as the browser would submit it: checked boxes by field name."""
    out: dict[str, list[str]] = {}
    for tag in re.findall(r"<input[^>]*type=\"checkbox\"[^>]*>", html):
        if " checked" not in tag:
            continue
        name = unescape(re.search(r'name="([^"]+)"', tag).group(1))  # type: ignore[union-attr]
        value = re.search(r'value="([^"]+)"', tag).group(1)  # type: ignore[union-attr]
        out.setdefault(name, []).append(value)
    return out


def form_of(matrix: dict[str, list[str]], **fields: str) -> dict[str, list[str] | str]:
    return {**matrix, **fields}


def base_of(html: str) -> str:
    found = re.search(r'name="base" value="(\d+)"', html)
    assert found, "no base version in the form"
    return found.group(1)


async def _restore(app: FastAPI) -> None:
    """Leave the shared app with the shipped rights (other tests use it)."""
    sync = sync_of(app.state.fhir.access)
    assert sync is not None
    await sync.refresh(force=True)
    if rights_of(sync.control.policy) != rights_of(sync.shipped):
        stored = await sync.store.save(
            rights_of(sync.shipped),
            base_version=sync.version,
            author="test",
            author_name="test",
            reason="test clean-up: shipped default",
            restored_default=True,
        )
        sync.apply(stored)


@pytest.fixture
async def clean(demo_app: FastAPI) -> AsyncIterator[FastAPI]:
    await _restore(demo_app)
    yield demo_app
    await _restore(demo_app)


async def _nurse(app: FastAPI) -> httpx.AsyncClient:
    """An API client with the demo nurse's token (user scopes; the policy decides)."""
    identity = get_identity(app)
    found = await identity.accounts.login("nurse1", "Demo-Pass-2026!")
    assert found.account is not None, found.error
    account = found.account
    token, _ = await identity.tokens.access_token(
        issuer=BASE,
        audience=f"{BASE}/fhir/R4",
        subject=account.id,
        client_id="rights-test",
        scope="openid fhirUser user/*.cruds",
        fhir_user=account.fhir_user,
        roles=[{"role": str(r.role), "organization": r.organization or ""} for r in account.roles],
    )
    return browser(app, Authorization=f"Bearer {token}")


async def test_nurse_read_follows_the_edited_rights(clean: FastAPI) -> None:
    app = clean
    admin = await make_user(app, (Role.PLATFORM_ADMIN, None), prefix="rightsadmin")
    async with await _nurse(app) as nurse, browser(app, **EN) as c:
        found = (await nurse.get("/fhir/R4/Patient", params={"_count": "1"})).json()
        assert found.get("entry"), "the demo nurse reaches no patient"
        patient = found["entry"][0]["resource"]["id"]
        assert (await nurse.get(f"/fhir/R4/Patient/{patient}")).status_code == 200

        home = await login(c, admin)
        assert 'href="/admin/rights"' in home.text
        page = await c.get("/admin/rights")
        assert page.status_code == 200, page.text
        matrix = checked(page.text)
        assert matrix["p:nurse:clinical"] == ["c", "r", "u", "s"]
        matrix["p:nurse:clinical"].remove("r")
        r = await c.post(
            "/admin/rights",
            data=form_of(matrix, csrf=csrf_of(page.text), base=base_of(page.text), reason=REASON),
        )
        assert r.status_code == 303, r.text
        shown = await c.get("/admin/rights")
        assert "Rights saved as version" in shown.text
        assert checked(shown.text)["p:nurse:clinical"] == ["c", "u", "s"]
        assert REASON in shown.text and "nurse.clinical: crus → cus" in shown.text
        assert admin.username in shown.text  # who, in the history

        refused = await nurse.get(f"/fhir/R4/Patient/{patient}")
        assert refused.status_code == 403, refused.text
        assert refused.json()["resourceType"] == "OperationOutcome"
        # Search is a letter of its own: still allowed.
        assert (await nurse.get("/fhir/R4/Patient", params={"_count": "1"})).status_code == 200

        # The change is in the audit trail: who, the version, the cells, the reason.
        await smartmed.audit.catch_up(app.state.fhir)
        events = await fhir(app, "AuditEvent", subtype="access-policy", _sort="-date")
        event = events["entry"][0]["resource"]
        assert event["outcomeDesc"] == REASON
        assert event["agent"][0]["who"]["identifier"]["value"] == admin.account_id
        detail = {d["type"]: d["valueString"] for e in event["entity"] for d in e.get("detail", [])}
        assert "nurse.clinical: crus → cus" in detail["changes"]

        # Restoring the shipped default gives the nurse their read back.
        page = await c.get("/admin/rights")
        r = await c.post(
            "/admin/rights/restore",
            data={"csrf": csrf_of(page.text), "base": base_of(page.text), "reason": REASON},
        )
        assert r.status_code == 303, r.text
        assert (await nurse.get(f"/fhir/R4/Patient/{patient}")).status_code == 200
        shown = await c.get("/admin/rights")
        assert "Shipped default restored" in shown.text
        assert checked(shown.text)["p:nurse:clinical"] == ["c", "r", "u", "s"]


async def test_only_rights_administrators_open_or_post(clean: FastAPI) -> None:
    app = clean
    sync = sync_of(app.state.fhir.access)
    assert sync is not None
    before = await sync.store.latest_version()
    for role in (Role.NURSE, Role.SECURITY_ADMIN, Role.AUDIT_ADMIN, Role.INSTITUTION_ADMIN):
        user = await make_user(app, (role, None), prefix="norights")
        async with browser(app, **EN) as c:
            home = await login(c, user)
            assert 'href="/admin/rights"' not in home.text
            assert (await c.get("/admin/rights")).status_code == 403
            r = await c.post(
                "/admin/rights",
                data={"csrf": csrf_of(home.text), "base": "0", "reason": REASON},
            )
            assert r.status_code == 403
    async with browser(app) as anonymous:
        r = await anonymous.get("/admin/rights")
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
    assert await sync.store.latest_version() == before


async def test_csrf_and_validation(clean: FastAPI) -> None:
    app = clean
    sync = sync_of(app.state.fhir.access)
    assert sync is not None
    before = await sync.store.latest_version()
    admin = await make_user(app, (Role.PLATFORM_ADMIN, None), prefix="rightsadmin")
    async with browser(app, **ZH) as c:
        await login(c, admin)
        page = await c.get("/admin/rights")
        matrix = checked(page.text)
        matrix["p:nurse:clinical"].remove("r")
        # No CSRF token, a wrong one: refused, nothing stored.
        for token in (None, "forged"):
            fields = {"base": base_of(page.text), "reason": REASON}
            if token:
                fields["csrf"] = token
            r = await c.post("/admin/rights", data=form_of(matrix, **fields))
            assert r.status_code == 403
        r = await c.post("/admin/rights/restore", data={"base": "0", "reason": REASON})
        assert r.status_code == 403
        assert await sync.store.latest_version() == before
        csrf = csrf_of(page.text)
        base = base_of(page.text)
        # A reason that is too short, in Chinese (the browser's language).
        r = await c.post("/admin/rights", data=form_of(matrix, csrf=csrf, base=base, reason="x"))
        assert r.status_code == 422
        assert "请说明理由，至少 10 个字符。" in r.text and 'aria-invalid="true"' in r.text
        # What was submitted is shown again (not the rights in force).
        assert checked(r.text)["p:nurse:clinical"] == ["c", "u", "s"]
        # Nobody left to edit the rights.
        locked = checked(page.text)
        for role in ("platform-admin", "system-admin"):
            locked[f"p:{role}:system"] = ["c", "r", "d", "s"]
        r = await c.post("/admin/rights", data=form_of(locked, csrf=csrf, base=base, reason=REASON))
        assert r.status_code == 422 and "至少要有一个角色" in r.text
        # Nothing changed.
        same = checked(page.text)
        r = await c.post("/admin/rights", data=form_of(same, csrf=csrf, base=base, reason=REASON))
        assert r.status_code == 422 and "没有任何改动" in r.text
        # A tampered letter or role.
        bad = {**same, "p:nurse:clinical": ["r", "x"], "p:nobody:clinical": ["r"]}
        r = await c.post("/admin/rights", data=form_of(bad, csrf=csrf, base=base, reason=REASON))
        assert r.status_code == 422 and "该选项无效" in r.text
        assert await sync.store.latest_version() == before
    async with browser(app, **EN) as c:
        await login(c, admin)
        page = await c.get("/admin/rights")
        r = await c.post(
            "/admin/rights",
            data=form_of(checked(page.text), csrf=csrf_of(page.text), base="0", reason="x"),
        )
        assert r.status_code == 422
        assert "Give a reason of at least 10 characters." in r.text
        # Someone else saved meanwhile: the stale form is refused with the reason.
        matrix = checked(page.text)
        matrix["p:nurse:other"] = ["r", "s"]
        stale = str(int(base_of(page.text)) + 5)
        r = await c.post(
            "/admin/rights",
            data=form_of(matrix, csrf=csrf_of(page.text), base=stale, reason=REASON),
        )
        assert r.status_code == 422 and "Someone saved other rights meanwhile" in r.text
    assert await sync.store.latest_version() == before


async def test_another_process_follows_within_seconds(clean: FastAPI) -> None:
    """A second AccessControl on the same database (another app process) picks up a saved
    version at its next check, and not before."""
    app = clean
    engine = app.state.fhir
    mine = sync_of(engine.access)
    assert mine is not None
    other_control = AccessControl(mine.shipped, locate_definitions(engine.settings.definitions_dir))
    other = PolicySync(other_control, PolicyStore(engine.db), mine.shipped, check_seconds=0.3)
    await other.refresh()
    assert other.version == mine.version
    rights = rights_of(mine.control.policy)
    rights["nurse"]["other"] = "r"
    stored = await mine.store.save(
        rights, base_version=mine.version, author="test", author_name="test", reason=REASON
    )
    mine.apply(stored)
    await other.refresh()  # checked just now: no query, still the old rights
    assert other_control.policy.roles["nurse"].permissions["other"] == "crus"
    await asyncio.sleep(0.35)
    await other.refresh()
    assert other.version == stored.version
    assert other_control.policy.roles["nurse"].permissions["other"] == "r"
    # Relations and grant rules stay the document's.
    assert other_control.policy.roles["nurse"].patients == mine.shipped.roles["nurse"].patients
    assert other_control.policy.grants == mine.shipped.grants


async def _status_until(client: httpx.AsyncClient, path: str, status: int, within: float) -> float:
    """Seconds until ``path`` answers ``status`` (fails after ``within``)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        r = await client.get(path)
        if r.status_code == status:
            return loop.time() - start
        assert loop.time() - start < within, (path, r.status_code, r.text[:200])
        await asyncio.sleep(0.1)


async def test_a_second_app_process_follows_an_edit(clean: FastAPI) -> None:
    """Two applications on one database (as several app processes run): an edit saved in
    one refuses the nurse's read in the other within the check interval."""
    first = clean
    sync = sync_of(first.state.fhir.access)
    assert sync is not None
    second = create_app(first.state.fhir.settings)
    async with second.router.lifespan_context(second), await _nurse(second) as nurse:
        found = (await nurse.get("/fhir/R4/Patient", params={"_count": "1"})).json()
        path = f"/fhir/R4/Patient/{found['entry'][0]['resource']['id']}"
        assert (await nurse.get(path)).status_code == 200
        rights = rights_of(sync.control.policy)
        rights["nurse"]["clinical"] = "cus"
        sync.apply(
            await sync.store.save(
                rights, base_version=sync.version, author="t", author_name="t", reason=REASON
            )
        )
        took = await _status_until(nurse, path, 403, CHECK_SECONDS + 2)
        assert took <= CHECK_SECONDS + 1
        await _restore(first)
        await _status_until(nurse, path, 200, CHECK_SECONDS + 2)


def test_apply_rights_keeps_the_document() -> None:
    shipped = load_policy()
    rights = rights_of(shipped)
    assert apply_rights(shipped, rights) == shipped
    rights["pharmacist"] = {"directory": "r"}
    edited = apply_rights(shipped, rights)
    assert edited.roles["pharmacist"].permissions == {"directory": "r"}
    assert edited.roles["pharmacist"].resources == ["pharmacy"]
    rights["pharmacist"] = {"directory": "rz"}  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="unknown permission letters z"):
        apply_rights(shipped, rights)


_ROLES = sorted(load_policy().roles)
_LETTERS = st.sets(st.sampled_from("cruds")).map(lambda chosen: "".join(sorted(chosen)))
_MATRICES = st.dictionaries(
    st.sampled_from(_ROLES), st.dictionaries(st.sampled_from(CATEGORIES), _LETTERS)
)


@settings(max_examples=200, deadline=None)
@given(_MATRICES)
def test_any_matrix_round_trips_through_the_form_and_the_policy(matrix: Rights) -> None:
    """Ticked boxes -> rights -> policy -> the guard's allows() -> the boxes shown again."""
    shipped = load_policy()
    form = {
        f"p:{role}:{category}": list(letters)
        for role, cats in matrix.items()
        for category, letters in cats.items()
    }
    parsed, bad = parse_matrix(form, _ROLES)
    assert bad == []
    policy = apply_rights(shipped, parsed)
    shown = rights_of(policy)
    for role in _ROLES:
        cells = matrix.get(role, {})
        for category in CATEGORIES:
            for letter in "cruds":
                wanted = letter in cells.get(category, "")
                assert policy.roles[role].allows(category, letter) is wanted
                assert (letter in shown[role].get(category, "")) is wanted
    assert (changes(rights_of(shipped), shown) == []) == (shown == rights_of(shipped))


class _FailingStore(PolicyStore):
    def __init__(self, message: str) -> None:
        self.message = message

    async def latest_version(self) -> int:
        raise OperationalError("SELECT max(version)", {}, Exception(self.message))


async def test_refresh_fails_closed_unless_the_table_is_missing() -> None:
    """A database error never leaves a process serving on the file's rights (they may have
    been edited away); only a database without the table (not migrated) uses the file."""
    shipped = load_policy()
    control = AccessControl(shipped, locate_definitions(None))
    down = PolicySync(control, _FailingStore("connection refused"), shipped)
    with pytest.raises(OperationalError):
        await down.refresh()
    unmigrated = PolicySync(control, _FailingStore("no such table: access_policy_version"), shipped)
    await unmigrated.refresh()
    assert unmigrated.version == 0 and control.policy is shipped
