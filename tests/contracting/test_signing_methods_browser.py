"""Browser tests of the remaining signing methods, each through to a contract in force
and, where the payer may pay, a paid package:

- agent signing from the phone: a son (a RelatedPerson holding his mother's
  family-delegation Consent) signs for her, the team accepts, and he buys and pays her
  package (a RelatedPerson payer). A daughter who is herself a resident
  signs for her father, the team accepts, and she buys and pays his package;
- a doctor signs a resident present in person (typed name + consent box on the doctor's
  device), then the resident buys a package on the phone;
- a share link passed from one resident's phone to another's, applied, accepted, paid.

Same set-up as tests/contracting/test_browser.py and test_packages_browser.py (Debian's
Chromium driven by Playwright against a live uvicorn server on a temporary SQLite
database, the sandbox payment provider over HTTP; their helpers are reused). Screenshots
go to ``test-artifacts/contracting/``. Every contract is checked through the FHIR API.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from html import unescape
from typing import Any

import pytest
import segno
import uvicorn
from playwright.sync_api import expect
from pydantic import SecretStr

from smartmed.app import create_app
from smartmed.config import Settings
from smartmed.contracting import packages
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
    chromium,
    contracts,
    log_in,
    shot,
    sign_in,
)

__all__ = ["chromium"]

SIGNATURE_ZH = "签名：请输入签署人的姓名"
AGREE_ZH = "我已阅读并同意家庭医生签约服务协议"
SIGNATURE_EN = "Signature: type the full name of the person signing"
AGREE_EN = "I have read the family-doctor service agreement and agree to it."

ID_P8 = "330106198806150072"
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
    # p7 (born 1945) delegated signing to his daughter p5, herself a resident.
    {
        "resourceType": "Patient",
        "id": "p7",
        "name": [{"family": "王", "given": ["p7"]}],
        "birthDate": "1945-09-09",
    },
    {**delegation("p7", "Patient/p5", ("view-records", "sign-on-behalf")), "id": "consent7"},
    # p8 shared her records with the township health centre, so its doctors find her
    # (synthetic ID number with a valid check character, synthetic phone).
    {
        "resourceType": "Patient",
        "id": "p8",
        "identifier": [{"system": "urn:smartmed:id:resident", "value": ID_P8}],
        "name": [{"family": "王", "given": ["p8"]}],
        "telecom": [{"system": "phone", "value": "13800008888", "use": "mobile"}],
        "birthDate": "1988-06-15",
    },
    {
        "resourceType": "Consent",
        "id": "share-p8",
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [
            {"coding": [{"system": "urn:smartmed:consent-category", "code": "institution-sharing"}]}
        ],
        "patient": {"reference": "Patient/p8"},
        "provision": {
            "type": "permit",
            "period": {"start": "2020-01-01", "end": "2099-01-01"},
            "actor": [
                {
                    "role": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                "code": "IRCP",
                            }
                        ]
                    },
                    "reference": {"reference": "Organization/town"},
                }
            ],
        },
    },
]


async def _prepare(settings: Settings) -> dict[str, str | None]:
    engine = FhirEngine.build(settings)
    try:
        await migrate(engine.db)
        async with engine.db.write() as conn:
            repo = engine.repository(conn)
            for body in [*SEED, *EXTRA]:
                await repo.update(body["resourceType"], body["id"], body)
            await packages.ensure_catalogue(engine, conn)
        accounts = Accounts(engine.db, Box(SECRET.encode()))
        secrets: dict[str, str | None] = {}
        for name, role, link in (
            ("browser-doctor", Role.FAMILY_DOCTOR, "Practitioner/doc1"),
            ("browser-p1", Role.RESIDENT, "Patient/p1"),
            ("browser-p2", Role.RESIDENT, "Patient/p2"),
            ("browser-p3", Role.RESIDENT, "Patient/p3"),
            ("browser-p5", Role.RESIDENT, "Patient/p5"),
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
    """The server with the package catalogue and the sandbox payment provider on its own
    socket (as tests/contracting/test_packages_browser.py), so packages can be paid."""
    need(CHROMIUM.is_file(), "Debian's chromium is not installed (scripts/setup --dev)")
    need((ROOT / "node_modules" / "htmx.org").is_dir(), "run `npm ci` first")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    base = f"http://localhost:{sock.getsockname()[1]}"
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('signing-browser')}/smartmed.db",
        secret_key=SecretStr(SECRET),
        issuer=base,
        base_url=f"{base}/fhir/R4",
        auth_rate_per_minute=6000,
        jobs_poll_seconds=0.1,
        payments_sandbox_url=base,
        payments_signing_secret=SecretStr("signing-browser-shared-secret-0123456789"),
    )
    secrets = asyncio.run(_prepare(settings))
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), lifespan="on", log_config=None, access_log=False)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.1)
    yield Live(base, secrets)
    server.should_exit = True
    thread.join(timeout=30)
    sock.close()


def _buy_package(
    page: Any, live: Live, name: str, code: str = "hypertension", price: str = "¥120.00"
) -> None:
    """On the resident's phone: buy a paid package for the only contract shown, pay on
    the sandbox's checkout page, wait until the package is active."""
    page.goto(live.base + "/contracting/packages")
    expect(page.get_by_test_id("my-package").get_by_test_id("no-package")).to_be_visible()
    offer = page.locator(f"[data-testid=package][data-code={code}]")
    expect(offer.get_by_test_id("price")).to_have_text(price)
    offer.get_by_test_id("choose").click()
    page.wait_for_url(re.compile(r".*/sandbox/pay/checkout/.*"))
    expect(page.get_by_test_id("amount")).to_have_text(price)
    page.get_by_test_id("pay").click()
    page.wait_for_url(re.compile(r".*/payments/orders/.*/return.*"))
    deadline = time.monotonic() + 30
    while True:  # the package turns active once the paid handler ran (a job)
        page.goto(live.base + "/contracting/packages")
        if page.get_by_test_id("my-package").get_attribute("data-package") == code:
            break
        assert time.monotonic() < deadline, "the package did not become active"
        time.sleep(0.3)
    expect(page.get_by_test_id("usage").first).to_have_attribute("data-used", "0")
    shot(page, f"{name}-package-phone")


def _package_of(contract: dict[str, Any]) -> list[str]:
    return [
        e["valueReference"]["reference"]
        for e in contract.get("extension", [])
        if e.get("valueReference", {}).get("reference", "").startswith("PlanDefinition/")
    ]


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
    # The son holds her sign-on-behalf delegation: he buys and pays her package.
    _buy_package(phone, live, "related-person", "elderly", "¥100.00")
    (contract,) = contracts(live, "Patient/p4")
    assert len(_package_of(contract)) == 1
    doctor_watch.check()
    phone_watch.check()
    doctor_ctx.close()
    phone_ctx.close()


def test_resident_signs_for_a_parent_and_pays_the_package(live: Live, chromium: Any) -> None:
    doctor_ctx, doctor, doctor_watch = _doctor(chromium, live)
    doctor.goto(live.base + "/contracting/card?team=CareTeam%2Fteam1")
    link = doctor.get_by_test_id("card-link").get_attribute("href")
    assert link

    phone_ctx, phone, phone_watch = _phone(chromium, live, "browser-p5")
    phone.goto(link)
    # Herself or her father: she picks him.
    expect(phone.get_by_role("radio")).to_have_count(2)
    expect(phone.get_by_role("radio", name="本人")).to_be_checked()
    phone.get_by_role("radio", name="p7 王（由我代签）").check()
    phone.get_by_label(SIGNATURE_ZH).fill("王 p5")
    phone.get_by_label(AGREE_ZH, exact=False).check()
    shot(phone, "apply-for-a-parent-phone")
    phone.get_by_role("button", name="提交签约申请").click()
    expect(phone.get_by_test_id("done")).to_have_text("您的申请已提交给团队。")
    assert contracts(live, "Patient/p5") == []

    _accept(doctor, live, "Patient/p7", "Signed by a family representative")
    _buy_package(phone, live, "representative", "elderly", "¥100.00")
    (contract,) = contracts(live, "Patient/p7")
    assert contract["status"] == "executed"
    assert _method(contract) == "agent"
    assert len(_package_of(contract)) == 1
    signers = [s["party"]["reference"] for s in contract["signer"]]
    assert "Patient/p5" in signers
    doctor_watch.check()
    phone_watch.check()
    doctor_ctx.close()
    phone_ctx.close()


def _sign_in_person(page: Any, live: Live, patient_id: str, name: str) -> None:
    """On the doctor's team page: the resident types their name and ticks the box."""
    page.goto(live.base + "/contracting/team")
    form = page.get_by_role("form", name="Sign a resident in person")
    form.get_by_label("Resident's record number (Patient id)").fill(patient_id)
    form.get_by_label(SIGNATURE_EN).fill(name)
    form.get_by_label(AGREE_EN, exact=False).check()
    form.get_by_role("button", name="Sign the contract").click()


def test_doctor_signs_a_resident_present_in_person(live: Live, chromium: Any) -> None:
    doctor_ctx, doctor, doctor_watch = _doctor(chromium, live)
    doctor.goto(live.base + "/contracting/team")
    form = doctor.get_by_role("form", name="Sign a resident in person")
    expect(form).to_be_visible()
    # The browser will not submit without the typed name and the ticked box.
    form.get_by_label("Resident's record number (Patient id)").fill("p1")
    form.get_by_role("button", name="Sign the contract").click()
    assert doctor.url == live.base + "/contracting/team"
    assert contracts(live, "Patient/p1") == []
    form.get_by_label(SIGNATURE_EN).fill("王 p1")
    assert form.get_by_label(SIGNATURE_EN).evaluate("e => e.form.checkValidity()") is False
    shot(doctor, "in-person-form")

    _sign_in_person(doctor, live, "p1", "王 p1")
    expect(doctor.get_by_test_id("done")).to_have_text("The contract was signed.")
    row = doctor.locator('[data-testid=resident][data-patient="Patient/p1"]')
    expect(row).to_have_count(1)
    expect(doctor.get_by_test_id("application")).to_have_count(0)  # no review step
    shot(doctor, "team-after-in-person")
    (contract,) = contracts(live, "Patient/p1")
    assert contract["status"] == "executed"
    assert _method(contract) == "in-person"
    assert [s["type"]["code"] for s in contract["signer"]] == ["PAT", "HPROV"]
    (signature,) = contract["signer"][0]["signature"]
    captured = json.loads(base64.b64decode(signature["data"]))
    assert captured["typedName"] == "王 p1"
    assert captured["capturedBy"] == "Practitioner/doc1"  # the doctor's device

    # A second in-person signing of the same resident is refused with a clear message.
    _sign_in_person(doctor, live, "p1", "王 p1")
    expect(doctor.get_by_test_id("contracting-error")).to_have_text(
        "There is already a contract with this team."
    )
    assert len(contracts(live, "Patient/p1")) == 1

    # The resident sees the contract on the phone.
    phone_ctx, phone, phone_watch = _phone(chromium, live, "browser-p1")
    phone.goto(live.base + "/contracting")
    expect(phone.get_by_test_id("current-contract")).to_contain_text("已签约")
    expect(phone.get_by_test_id("current-contract")).to_contain_text("第一团队")
    shot(phone, "in-person-contract-phone")
    _buy_package(phone, live, "in-person")
    (contract,) = contracts(live, "Patient/p1")
    assert contract["status"] == "executed"
    assert len(_package_of(contract)) == 1
    doctor_watch.check()
    phone_watch.check()
    doctor_ctx.close()
    phone_ctx.close()


def test_doctor_finds_the_resident_by_id_number_and_signs(live: Live, chromium: Any) -> None:
    doctor_ctx, doctor, doctor_watch = _doctor(chromium, live)
    doctor.goto(live.base + "/contracting/team")
    find = doctor.get_by_role("form", name="Find the resident")
    find.get_by_label("Resident ID number").fill(ID_P8)
    find.get_by_role("button", name="Search").click()
    found = doctor.locator('[data-testid=found][data-patient="Patient/p8"]')
    expect(found).to_have_count(1)
    expect(found.get_by_test_id("masked-id")).to_have_text("330***********0072")
    expect(found.get_by_test_id("masked-phone")).to_have_text("138****8888")
    assert ID_P8 not in doctor.content()
    form = doctor.get_by_role("form", name="Sign a resident in person")
    expect(form.get_by_role("radio", name=re.compile("王p8|p8 王|王 p8"))).to_be_checked()
    shot(doctor, "in-person-found")
    form.get_by_label(SIGNATURE_EN).fill("王 p8")
    form.get_by_label(AGREE_EN, exact=False).check()
    form.get_by_role("button", name="Sign the contract").click()
    expect(doctor.get_by_test_id("done")).to_have_text("The contract was signed.")
    (contract,) = contracts(live, "Patient/p8")
    assert contract["status"] == "executed" and _method(contract) == "in-person"
    # A resident the centre may not reach is not found, however exact the number.
    doctor.get_by_role("form", name="Find the resident").get_by_label("Resident ID number").fill(
        "110105196001010332"
    )
    doctor.get_by_role("form", name="Find the resident").get_by_role(
        "button", name="Search"
    ).click()
    expect(doctor.get_by_test_id("find-none")).to_be_visible()
    doctor_watch.check()
    doctor_ctx.close()


def test_share_link_from_one_resident_to_another(live: Live, chromium: Any) -> None:
    doctor_ctx, doctor, doctor_watch = _doctor(chromium, live)
    _sign_in_person(doctor, live, "p3", "王 p3")
    expect(doctor.get_by_test_id("done")).to_have_text("The contract was signed.")

    a_ctx, a, a_watch = _phone(chromium, live, "browser-p3")
    a.goto(live.base + "/contracting")
    share = a.get_by_test_id("share")
    expect(share).to_be_visible()
    link = share.get_by_role("textbox", name="分享链接").input_value()
    assert link.startswith(live.base + "/contracting/apply?t=")
    # The QR code is the share link.
    svg = share.get_by_role("img", name="分享链接的二维码").inner_html()
    expected = segno.make(unescape(link), error="m").svg_inline(scale=4, title="QR")
    drawn = re.findall(r'\bd="([^"]+)"', svg)
    assert drawn and drawn == re.findall(r'\bd="([^"]+)"', expected)
    assert a.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    shot(a, "share-link-phone")

    # Resident B opens it on another phone: the login comes first, then the application.
    b_ctx = chromium.new_context(locale="zh-CN", **PHONE)
    b = b_ctx.new_page()
    b_watch = Watch(b, live.base)
    b.goto(link)
    log_in(b, live, "browser-p2")
    b.get_by_role("heading", name="申请家庭医生签约").wait_for()
    expect(b.get_by_test_id("team-name")).to_have_text("第一团队")
    expect(b.get_by_role("radio", name="本人")).to_be_checked()
    shot(b, "apply-by-share-link-phone")
    b.get_by_label(SIGNATURE_ZH).fill("王 p2")
    b.get_by_label(AGREE_ZH, exact=False).check()
    b.get_by_role("button", name="提交签约申请").click()
    expect(b.get_by_test_id("done")).to_have_text("您的申请已提交给团队。")
    (pending,) = contracts(live, "Patient/p2")
    assert pending["status"] == "offered"
    assert _method(pending) == "share-link"

    _accept(doctor, live, "Patient/p2", "Shared link")
    b.goto(live.base + "/contracting")
    expect(b.get_by_test_id("current-contract")).to_contain_text("已签约")
    shot(b, "share-link-contract-phone")
    (contract,) = contracts(live, "Patient/p2")
    assert contract["status"] == "executed"
    assert _method(contract) == "share-link"
    assert [s["type"]["code"] for s in contract["signer"]] == ["PAT", "HPROV"]
    assert _package_of(contract) == []
    _buy_package(b, live, "share-link")
    (contract,) = contracts(live, "Patient/p2")
    assert contract["status"] == "executed"
    assert len(_package_of(contract)) == 1
    for watch in (doctor_watch, a_watch, b_watch):
        watch.check()
    for ctx in (doctor_ctx, a_ctx, b_ctx):
        ctx.close()
