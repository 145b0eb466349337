"""Browser tests of the remaining signing methods, each through to a contract in force:
a family representative (a RelatedPerson holding a family-delegation Consent) signing for
an elderly parent from the phone, a doctor signing a resident present in person, and a
share link passed from one resident to another.

Same set-up as tests/contracting/test_browser.py (Debian's Chromium driven by Playwright
against a live uvicorn server on a temporary SQLite database; its helpers are reused).
Screenshots go to ``test-artifacts/contracting/``. Every contract is checked afterwards
through the FHIR API.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
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
from tests.contracting.conftest import SEED, delegation
from tests.contracting.test_browser import (
    CHROMIUM,
    PASSWORD,
    PHONE,
    SECRET,
    Live,
    Watch,
    _free_port,
    chromium,
    contracts,
    shot,
    sign_in,
)

__all__ = ["chromium"]

SIGNATURE_ZH = "签名：请输入签署人的姓名"
AGREE_ZH = "我已阅读并同意家庭医生签约服务协议"
SIGNATURE_EN = "Signature: type the full name of the person signing"
AGREE_EN = "I have read the family-doctor service agreement and agree to it."

# p4 (born 1940) delegated signing to her son, a RelatedPerson with his own account.
EXTRA: list[dict[str, Any]] = [
    {
        "resourceType": "RelatedPerson",
        "id": "son4",
        "patient": {"reference": "Patient/p4"},
        "relationship": [
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "SON"}
                ]
            }
        ],
        "name": [{"family": "王", "given": ["子"]}],
    },
    {
        **delegation("p4", "RelatedPerson/son4", ("view-records", "sign-on-behalf")),
        "id": "consent-son4",
    },
]


async def _prepare(url: str) -> dict[str, str | None]:
    settings = Settings(database_url=url, secret_key=SecretStr(SECRET))
    engine = FhirEngine.build(settings)
    try:
        await migrate(engine.db)
        async with engine.db.write() as conn:
            repo = engine.repository(conn)
            for body in [*SEED, *EXTRA]:
                await repo.update(body["resourceType"], body["id"], body)
        accounts = Accounts(engine.db, Box(SECRET.encode()))
        secrets: dict[str, str | None] = {}
        for name, role, link in (
            ("browser-doctor", Role.FAMILY_DOCTOR, "Practitioner/doc1"),
            ("browser-p1", Role.RESIDENT, "Patient/p1"),
            ("browser-p2", Role.RESIDENT, "Patient/p2"),
            ("browser-son4", Role.FAMILY_REPRESENTATIVE, "RelatedPerson/son4"),
        ):
            staff = role not in (Role.RESIDENT, Role.FAMILY_REPRESENTATIVE)
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


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    need(CHROMIUM.is_file(), "Debian's chromium is not installed (scripts/setup --dev)")
    need((ROOT / "node_modules" / "htmx.org").is_dir(), "run `npm ci` first")
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('signing-browser')}/smartmed.db"
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


def _method(contract: dict[str, Any]) -> str:
    found = next(e for e in contract["extension"] if e["url"].endswith("signing-method"))
    return str(found["valueCode"])


def _doctor(chromium: Any, live: Live) -> tuple[Any, Any, Watch]:
    ctx = chromium.new_context(locale="en", viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    watch = Watch(page, live.base)
    sign_in(page, live, "browser-doctor")
    return ctx, page, watch


def _phone(chromium: Any, live: Live, username: str) -> tuple[Any, Any, Watch]:
    ctx = chromium.new_context(locale="zh-CN", **PHONE)
    page = ctx.new_page()
    watch = Watch(page, live.base)
    sign_in(page, live, username)
    return ctx, page, watch


def _accept(page: Any, live: Live, patient: str, method: str) -> None:
    page.goto(live.base + "/contracting/team")
    application = page.get_by_test_id("application").filter(has_text=patient)
    expect(application).to_have_count(1)
    expect(application).to_contain_text(method)
    application.get_by_role("button", name="Accept").click()
    expect(page.get_by_test_id("done")).to_contain_text("the contract is in force")
    expect(page.locator(f'[data-testid=resident][data-patient="{patient}"]')).to_have_count(1)


def test_family_representative_signs_for_a_parent(live: Live, chromium: Any) -> None:
    doctor_ctx, doctor, doctor_watch = _doctor(chromium, live)
    doctor.goto(live.base + "/contracting/team")
    doctor.get_by_test_id("card-button").first.click()
    link = doctor.get_by_test_id("card-link").get_attribute("href")
    assert link and link.startswith(live.base + "/contracting/apply?t=")

    phone_ctx, phone, phone_watch = _phone(chromium, live, "browser-son4")
    phone.goto(link)
    phone.get_by_role("heading", name="申请家庭医生签约").wait_for()
    # The son is no patient himself: the only choice is his mother, signed on her behalf.
    choices = phone.get_by_role("radio")
    expect(choices).to_have_count(1)
    mother = phone.get_by_role("radio", name="p4 王（由我代签）")
    expect(mother).to_be_checked()
    assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    shot(phone, "apply-as-representative-phone")
    phone.get_by_label(SIGNATURE_ZH).fill("王 子")
    phone.get_by_label(AGREE_ZH, exact=False).check()
    phone.get_by_role("button", name="提交签约申请").click()
    expect(phone.get_by_test_id("done")).to_have_text("您的申请已提交给团队。")
    person = phone.locator('[data-testid=person][data-patient="Patient/p4"]')
    expect(person.get_by_test_id("pending")).to_contain_text("待审核")
    (pending,) = contracts(live, "Patient/p4")
    assert pending["status"] == "offered"
    assert _method(pending) == "agent"

    _accept(doctor, live, "Patient/p4", "Signed by a family representative")
    shot(doctor, "team-after-agent-accept")

    phone.goto(live.base + "/contracting")
    expect(person.get_by_test_id("current-contract")).to_contain_text("已签约")
    shot(phone, "representative-contract-phone")
    (contract,) = contracts(live, "Patient/p4")
    assert contract["status"] == "executed"
    assert _method(contract) == "agent"
    signers = {s["type"]["code"]: s["party"]["reference"] for s in contract["signer"]}
    assert "RelatedPerson/son4" in signers.values()
    doctor_watch.check()
    phone_watch.check()
    doctor_ctx.close()
    phone_ctx.close()
