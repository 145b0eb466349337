"""Browser tests of signing from a resident's phone: the doctor's business card (QR code)
and the doctor's invitation, each through the team's review to a contract in force.

Debian's Chromium driven by Playwright against a live uvicorn server on a temporary
SQLite database (as tests/portal/test_browser.py). Screenshots go to
``test-artifacts/contracting/``. Every page must stay on the server's own origin and log
no console error (CSP violations included).
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from html import unescape
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest
import segno
import uvicorn
from playwright.sync_api import expect
from pydantic import SecretStr

from smartmed.app import create_app
from smartmed.config import Settings
from smartmed.fhir.context import FhirEngine
from smartmed.fhir.storage.migrate import migrate
from smartmed.identity.accounts import Accounts
from smartmed.identity.crypto import Box
from smartmed.identity.principal import Role, RoleAssignment
from tests.conftest import ROOT, need
from tests.contracting.conftest import SEED

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts" / "contracting"
PASSWORD = "Browser-Test-2026"
SECRET = "synthetic-contracting-browser-secret-0123456789"
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}


@dataclass
class Live:
    base: str
    totp: dict[str, str | None] = field(default_factory=dict)


async def _prepare(url: str) -> dict[str, str | None]:
    settings = Settings(database_url=url, secret_key=SecretStr(SECRET))
    engine = FhirEngine.build(settings)
    try:
        await migrate(engine.db)
        async with engine.db.write() as conn:
            repo = engine.repository(conn)
            for body in SEED:
                await repo.update(body["resourceType"], body["id"], body)
        accounts = Accounts(engine.db, Box(SECRET.encode()))
        secrets: dict[str, str | None] = {}
        for name, role, link in (
            ("browser-doctor", Role.FAMILY_DOCTOR, "Practitioner/doc1"),
            ("browser-p1", Role.RESIDENT, "Patient/p1"),
            ("browser-p2", Role.RESIDENT, "Patient/p2"),
        ):
            staff = role != Role.RESIDENT
            _account, secret = await accounts.create(
                name,
                PASSWORD,
                fhir_user=link,
                roles=[RoleAssignment(role, "Organization/town" if staff else None)],
                with_totp=staff,
            )
            secrets[name] = secret
        return secrets
    finally:
        await engine.db.dispose()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    need(CHROMIUM.is_file(), "Debian's chromium is not installed (scripts/setup --dev)")
    need((ROOT / "node_modules" / "htmx.org").is_dir(), "run `npm ci` first")
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('contracting-browser')}/smartmed.db"
    secrets = asyncio.run(_prepare(url))
    settings = Settings(database_url=url, secret_key=SecretStr(SECRET), auth_rate_per_minute=6000)
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.1)
    yield Live(f"http://localhost:{port}", secrets)
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    need(CHROMIUM.is_file(), "Debian's chromium is not installed (scripts/setup --dev)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield browser
        browser.close()


class Watch:
    """Requests to other hosts and console errors of one page."""

    def __init__(self, page: Any, base: str) -> None:
        self.base = base
        self.foreign: list[str] = []
        self.errors: list[str] = []
        page.on("request", self._request)
        page.on("response", self._response)
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def _request(self, request: Any) -> None:
        if not request.url.startswith(self.base) and not request.url.startswith("data:"):
            self.foreign.append(request.url)

    def _response(self, response: Any) -> None:
        if response.status >= 400 and response.request.resource_type != "document":
            self.errors.append(f"{response.status} {response.url}")

    def _console(self, message: Any) -> None:
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.errors.append(message.text)

    def check(self) -> None:
        assert self.foreign == []
        assert self.errors == []


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def log_in(page: Any, live: Live, username: str) -> None:
    """Fill the provider's login form (the page must be showing it)."""
    page.locator("#login-username").fill(username)
    page.locator("#login-password").fill(PASSWORD)
    page.locator("main form button[type=submit]").click()
    secret = live.totp.get(username)
    if secret:
        page.locator("#login-code").fill(pyotp.TOTP(secret).now())
        page.locator("main form button[type=submit]").click()


def sign_in(page: Any, live: Live, username: str) -> None:
    page.goto(live.base + "/")
    page.get_by_test_id("login").click()
    log_in(page, live, username)
    page.wait_for_url(live.base + "/")


def contracts(live: Live, patient: str) -> list[dict[str, Any]]:
    found = httpx.get(f"{live.base}/fhir/R4/Contract", params={"subject": patient})
    assert found.status_code == 200, found.text
    return [e["resource"] for e in found.json().get("entry", [])]


def accept_first(page: Any, live: Live, patient: str) -> None:
    page.goto(live.base + "/contracting/team")
    application = page.get_by_test_id("application").filter(has_text=patient)
    expect(application).to_have_count(1)
    application.get_by_role("button", name="Accept").click()
    expect(page.get_by_test_id("done")).to_contain_text("the contract is in force")


def test_business_card_qr_code_to_contract(live: Live, chromium: Any) -> None:
    doctor_ctx = chromium.new_context(locale="en", viewport={"width": 1280, "height": 900})
    doctor = doctor_ctx.new_page()
    doctor_watch = Watch(doctor, live.base)
    sign_in(doctor, live, "browser-doctor")
    doctor.get_by_role("navigation", name="Main navigation").get_by_role(
        "link", name="Contracting"
    ).click()
    doctor.get_by_test_id("card-button").first.click()
    card = doctor.get_by_test_id("business-card")
    expect(card).to_contain_text("第一团队")
    link = doctor.get_by_test_id("card-link").get_attribute("href")
    assert link and link.startswith(live.base + "/contracting/apply?t=")
    # The QR code is the card's link: the same encoding segno makes of that URL.
    svg = doctor.get_by_test_id("card-qr").inner_html()
    expected = segno.make(unescape(link), error="m").svg_inline(scale=4, title="QR")
    drawn = re.findall(r'\bd="([^"]+)"', svg)
    assert drawn and drawn == re.findall(r'\bd="([^"]+)"', expected)
    shot(doctor, "business-card")

    # The resident scans it on the phone: not signed in yet, so the login comes first
    # and then the prefilled application.
    phone_ctx = chromium.new_context(locale="zh-CN", **PHONE)
    phone = phone_ctx.new_page()
    phone_watch = Watch(phone, live.base)
    phone.goto(link)
    log_in(phone, live, "browser-p2")
    phone.get_by_role("heading", name="申请家庭医生签约").wait_for()
    expect(phone.get_by_test_id("team-name")).to_have_text("第一团队")
    expect(phone.get_by_test_id("offer")).to_contain_text("名片二维码")
    assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    shot(phone, "apply-by-card-phone")
    phone.get_by_role("button", name="提交签约申请").click()  # nothing filled: refused
    assert phone.url.endswith("/contracting/apply") or "apply" in phone.url
    assert contracts(live, "Patient/p2") == []
    phone.get_by_label("签名：请输入签署人的姓名").fill("王 p2")
    phone.get_by_label("我已阅读并同意家庭医生签约服务协议", exact=False).check()
    phone.get_by_role("button", name="提交签约申请").click()
    expect(phone.get_by_test_id("done")).to_have_text("您的申请已提交给团队。")
    expect(phone.get_by_test_id("pending")).to_contain_text("待审核")
    shot(phone, "pending-phone")
    assert [c["status"] for c in contracts(live, "Patient/p2")] == ["offered"]

    accept_first(doctor, live, "Patient/p2")
    shot(doctor, "team-after-accept")
    resident_row = doctor.locator('[data-testid=resident][data-patient="Patient/p2"]')
    expect(resident_row).to_have_count(1)

    phone.goto(live.base + "/contracting")
    expect(phone.get_by_test_id("current-contract")).to_contain_text("已签约")
    expect(phone.get_by_test_id("current-contract")).to_contain_text("第一团队")
    expect(phone.get_by_test_id("share")).to_be_visible()  # can now recommend the team
    shot(phone, "contract-phone")
    (contract,) = contracts(live, "Patient/p2")
    assert contract["status"] == "executed"
    method = next(e for e in contract["extension"] if e["url"].endswith("signing-method"))
    assert method["valueCode"] == "qr-card"
    doctor_watch.check()
    phone_watch.check()
    doctor_ctx.close()
    phone_ctx.close()


def test_invitation_to_contract_and_a_bad_link(live: Live, chromium: Any) -> None:
    doctor_ctx = chromium.new_context(locale="zh-CN", viewport={"width": 1280, "height": 900})
    doctor = doctor_ctx.new_page()
    doctor_watch = Watch(doctor, live.base)
    sign_in(doctor, live, "browser-doctor")
    doctor.goto(live.base + "/contracting/team")
    team = doctor.get_by_test_id("team").first
    team.get_by_label("居民档案号（Patient id）").first.fill("p1")
    team.get_by_role("button", name="生成邀请").click()
    url = doctor.get_by_test_id("invitation-url").input_value()
    assert url.startswith(live.base + "/contracting/apply?t=")
    shot(doctor, "invitation-created")

    phone_ctx = chromium.new_context(locale="zh-CN", **PHONE)
    phone = phone_ctx.new_page()
    phone_watch = Watch(phone, live.base)
    phone.goto(live.base + "/")
    phone.get_by_test_id("login").click()
    log_in(phone, live, "browser-p1")
    phone.wait_for_url(live.base + "/")
    # A damaged link is refused with a clear message in the resident's language.
    phone.goto(url[:-3] + "xyz")
    expect(phone.get_by_test_id("contracting-error")).to_have_text(
        "该链接无效。请检查链接是否完整，或索取新的链接。"
    )
    shot(phone, "bad-link-phone")
    phone.goto(url)
    expect(phone.get_by_test_id("offer")).to_contain_text("医生邀请")
    phone.get_by_label("签名：请输入签署人的姓名").fill("王 p1")
    phone.get_by_label("我已阅读并同意家庭医生签约服务协议", exact=False).check()
    phone.get_by_role("button", name="提交签约申请").click()
    expect(phone.get_by_test_id("done")).to_have_text("您的申请已提交给团队。")

    doctor.goto(live.base + "/contracting/team")
    application = doctor.get_by_test_id("application").filter(has_text="Patient/p1")
    application.get_by_role("button", name="同意").click()
    expect(doctor.get_by_test_id("done")).to_contain_text("签约已生效")
    row = doctor.locator('[data-testid=resident][data-patient="Patient/p1"]')
    # p1: born 1950, hypertension (I10); the diabetes condition is resolved.
    expect(row.locator("[data-group]")).to_have_count(2)
    assert [g.get_attribute("data-group") for g in row.locator("[data-group]").all()] == [
        "elderly",
        "hypertension",
    ]
    shot(doctor, "team-residents-zh")

    phone.goto(live.base + "/contracting")
    expect(phone.get_by_test_id("current-contract")).to_contain_text("已签约")
    # The invitation cannot be used again.
    phone.goto(url)
    phone.get_by_label("签名：请输入签署人的姓名").fill("王 p1")
    phone.get_by_label("我已阅读并同意家庭医生签约服务协议", exact=False).check()
    phone.get_by_role("button", name="提交签约申请").click()
    expect(phone.get_by_test_id("contracting-error")).to_have_text("该邀请已被使用。")
    (contract,) = contracts(live, "Patient/p1")
    assert contract["status"] == "executed"
    assert [s["type"]["code"] for s in contract["signer"]] == ["PAT", "HPROV"]
    doctor_watch.check()
    phone_watch.check()
    doctor_ctx.close()
    phone_ctx.close()
