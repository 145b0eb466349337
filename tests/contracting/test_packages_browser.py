"""Browser test of buying a service package from a resident's phone (390×844): the resident
browses the packages (price, items), buys the paid hypertension package, pays on the
sandbox's checkout page, and sees the package active on the contract with its used /
remaining counts; the doctor records a home visit and the resident's counts follow.

Debian's Chromium driven by Playwright against a live uvicorn server over real sockets:
the sandbox provider is reached and calls back by HTTP, the paid handler runs in the
server's own job runner (as tests/payments/test_live.py). Screenshots go to
``test-artifacts/contracting/``. No request leaves the server's origin, no console error.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pyotp
import pytest
import uvicorn
from playwright.sync_api import expect
from pydantic import SecretStr

from smartmed.app import create_app
from smartmed.config import Settings
from smartmed.contracting import packages, service
from smartmed.contracting.contracts import Signature
from smartmed.fhir.context import FhirEngine
from smartmed.fhir.storage.migrate import migrate
from smartmed.identity.accounts import Accounts
from smartmed.identity.crypto import Box
from smartmed.identity.principal import Role, RoleAssignment
from tests.conftest import ROOT, need
from tests.contracting.conftest import SEED
from tests.contracting.test_browser import CHROMIUM, PHONE, Watch, chromium, shot

__all__ = ["chromium"]
PASSWORD = "Package-Browser-2026"
SECRET = "synthetic-packages-browser-secret-0123456789"


@dataclass
class Live:
    base: str
    contract: str
    totp: dict[str, str | None]


async def _prepare(settings: Settings) -> tuple[str, dict[str, str | None]]:
    engine = FhirEngine.build(settings)
    try:
        await migrate(engine.db)
        async with engine.db.write() as conn:
            repo = engine.repository(conn)
            for body in SEED:
                await repo.update(body["resourceType"], body["id"], body)
            await packages.ensure_catalogue(engine, conn)
            contract = await service.do_sign_in_person(
                engine,
                conn,
                patient="Patient/p1",
                team="CareTeam/team1",
                doctor="Practitioner/doc1",
                signature=Signature("王 p1", True),
            )
        accounts = Accounts(engine.db, Box(SECRET.encode()))
        secrets: dict[str, str | None] = {}
        for name, role, link in (
            ("pkg-doctor", Role.FAMILY_DOCTOR, "Practitioner/doc1"),
            ("pkg-p1", Role.RESIDENT, "Patient/p1"),
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
        return str(contract["id"]), secrets
    finally:
        await engine.db.dispose()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    need(CHROMIUM.is_file(), "Debian's chromium is not installed (scripts/setup --dev)")
    need((ROOT / "node_modules" / "htmx.org").is_dir(), "run `npm ci` first")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    base = f"http://localhost:{sock.getsockname()[1]}"
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('pkg-browser')}/smartmed.db",
        secret_key=SecretStr(SECRET),
        issuer=base,
        base_url=f"{base}/fhir/R4",
        auth_rate_per_minute=6000,
        jobs_poll_seconds=0.1,
        payments_sandbox_url=base,
        payments_signing_secret=SecretStr("packages-browser-shared-secret-0123456789"),
    )
    contract, secrets = asyncio.run(_prepare(settings))
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), lifespan="on", log_config=None, access_log=False)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.1)
    yield Live(base, contract, secrets)
    server.should_exit = True
    thread.join(timeout=30)
    sock.close()


def sign_in(page: Any, live: Live, username: str) -> None:
    page.goto(live.base + "/")
    page.get_by_test_id("login").click()
    page.locator("#login-username").fill(username)
    page.locator("#login-password").fill(PASSWORD)
    page.locator("main form button[type=submit]").click()
    secret = live.totp.get(username)
    if secret:
        page.locator("#login-code").fill(pyotp.TOTP(secret).now())
        page.locator("main form button[type=submit]").click()
    page.wait_for_url(live.base + "/")


def test_resident_buys_a_package_on_the_phone_and_sees_it_active(live: Live, chromium: Any) -> None:
    context = chromium.new_context(locale="en", **PHONE)
    page = context.new_page()
    watch = Watch(page, live.base)
    sign_in(page, live, "pkg-p1")
    page.goto(live.base + "/contracting/packages")
    mine = page.get_by_test_id("my-package")
    expect(mine).to_have_count(1)
    expect(mine.get_by_test_id("no-package")).to_be_visible()
    hyper = page.get_by_test_id("package").filter(has_text="Hypertension care package")
    expect(hyper.get_by_test_id("price")).to_have_text("¥120.00")
    expect(hyper).to_contain_text("Blood pressure follow-up × 4")
    expect(hyper).to_contain_text("Home visit × 2")
    diabetes = page.get_by_test_id("package").filter(has_text="Diabetes care package")
    expect(diabetes).to_contain_text("HbA1c test × 2")
    expect(page.get_by_test_id("package").filter(has_text="Basic signing package")).to_contain_text(
        "Free"
    )
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    shot(page, "packages-phone-en")
    hyper.get_by_test_id("choose").click()
    # The sandbox's checkout page (same server, the provider's own page).
    page.wait_for_url(re.compile(r".*/sandbox/pay/checkout/.*"))
    expect(page.get_by_test_id("amount")).to_have_text("¥120.00")
    shot(page, "packages-checkout-en")
    page.get_by_test_id("pay").click()
    page.wait_for_url(re.compile(r".*/payments/orders/.*/return.*"))
    # The package becomes active once the paid handler ran (a job after the callback).
    deadline = time.monotonic() + 30
    while True:
        page.goto(live.base + "/contracting/packages")
        if page.get_by_test_id("my-package").get_attribute("data-package") == "hypertension":
            break
        assert time.monotonic() < deadline, "the package did not become active"
        time.sleep(0.3)
    expect(page.get_by_test_id("active-package")).to_have_text("Hypertension care package")
    visits = page.get_by_test_id("usage").and_(page.locator("[data-item=home-visit]"))
    expect(visits).to_have_attribute("data-remaining", "2")
    shot(page, "packages-active-en")
    watch.check()
    # The doctor records a home visit on the contract's service records page.
    doctor = chromium.new_context(locale="en", viewport={"width": 1280, "height": 900})
    doc_page = doctor.new_page()
    doc_watch = Watch(doc_page, live.base)
    sign_in(doc_page, live, "pkg-doctor")
    doc_page.goto(live.base + "/contracting/team")
    doc_page.get_by_test_id("services-link").first.click()
    doc_page.wait_for_url(re.compile(rf".*/contracting/services/{live.contract}$"))
    doc_page.locator("#item").select_option("home-visit")
    doc_page.get_by_role("button", name="Record", exact=True).click()
    expect(doc_page.get_by_test_id("done")).to_have_text("The service was recorded.")
    expect(doc_page.get_by_test_id("service")).to_have_count(1)
    shot(doc_page, "services-doctor-en")
    doc_watch.check()
    doctor.close()
    page.goto(live.base + "/contracting/packages")
    visits = page.get_by_test_id("usage").and_(page.locator("[data-item=home-visit]"))
    expect(visits).to_have_attribute("data-used", "1")
    expect(visits).to_have_attribute("data-remaining", "1")
    # The contract itself names the package (read through the API as the resident).
    cookies = {c["name"]: c["value"] for c in context.cookies()}
    got = httpx.get(f"{live.base}/api/contracting/me", cookies=cookies)
    assert got.status_code == 200, got.text
    current = got.json()["people"]["Patient/p1"]["current"]
    assert any(
        e.get("valueReference", {}).get("reference", "").startswith("PlanDefinition/")
        for e in current["extension"]
    )
    watch.check()
    context.close()
