"""Against a live uvicorn server, over real sockets: the merchant side reaches the sandbox
by HTTP at its configured URL and the sandbox's signed callback comes back by HTTP,
delivered by the server's own job runner. Then the resident's phone in Chromium: signed
in to the portal, sent to the checkout page (amount, QR code, zh-CN), pays, comes back."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import SecretStr

from smartmed.app import create_app
from smartmed.config import Settings
from smartmed.fhir.context import FhirEngine
from smartmed.fhir.storage.migrate import migrate
from smartmed.identity.principal import Role, RoleAssignment
from smartmed.identity.service import Identity
from smartmed.payments import service
from tests.conftest import ROOT, need

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts" / "payments"
SECRET = "synthetic-live-payments-secret-0123456789"
PASSWORD = "Live-Pay-Test-2026"


@dataclass
class Live:
    base: str
    settings: Settings
    patient: str
    order_id: str
    token: str


async def _prepare(settings: Settings) -> tuple[str, str, str]:
    engine = FhirEngine.build(settings)
    try:
        await migrate(engine.db)
        async with engine.db.write() as conn:
            repo = engine.repository(conn)
            patient = await repo.create(
                {"resourceType": "Patient", "name": [{"family": "王", "given": ["小付"]}]}
            )
            contract = await repo.create(
                {
                    "resourceType": "Contract",
                    "status": "offered",
                    "subject": [{"reference": patient.reference}],
                }
            )
            order = await service.create_order(
                engine,
                conn,
                subject=patient.reference,
                target=contract.reference,
                description="糖尿病管理服务包",
                amount=Decimal("88.00"),
            )
        identity = Identity(engine.db, settings)
        await identity.accounts.create(
            "pay-resident",
            PASSWORD,
            fhir_user=patient.reference,
            roles=[RoleAssignment(Role.RESIDENT, None)],
            with_totp=False,
        )
        base = settings.payments_sandbox_url
        token, _ = await identity.tokens.access_token(
            issuer=base,
            audience=f"{base}/fhir/R4",
            subject=f"account-{uuid.uuid4().hex[:8]}",
            client_id="portal",
            scope="openid",
            fhir_user=patient.reference,
            roles=[{"role": "resident"}],
        )
        return patient.reference, order.id, token
    finally:
        await engine.db.dispose()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    need((ROOT / "node_modules" / "hl7.fhir.r4.examples").is_dir(), "run `npm ci` first")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    base = f"http://localhost:{port}"
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('live')}/smartmed.db",
        secret_key=SecretStr(SECRET),
        issuer=base,
        base_url=f"{base}/fhir/R4",
        auth_rate_per_minute=6000,
        jobs_poll_seconds=0.1,
        payments_sandbox_url=base,
        payments_signing_secret=SecretStr("live-test-shared-secret-0123456789"),
    )
    patient, order_id, token = asyncio.run(_prepare(settings))
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), lifespan="on", log_config=None, access_log=False)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.1)
    yield Live(base, settings, patient, order_id, token)
    server.should_exit = True
    thread.join(timeout=30)
    sock.close()


def wait_state(live: Live, order_id: str, want: str, timeout: float = 30) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {live.token}"}
    deadline = time.monotonic() + timeout
    while True:
        got = httpx.get(f"{live.base}/api/payments/orders/{order_id}", headers=headers)
        assert got.status_code == 200, got.text
        if got.json()["state"] == want:
            return dict(got.json())
        assert time.monotonic() < deadline, f"order is {got.json()['state']}, not {want}"
        time.sleep(0.2)


def test_api_order_pay_and_signed_callback_over_real_http(live: Live) -> None:
    headers = {"Authorization": f"Bearer {live.token}"}
    price = httpx.post(
        f"{live.base}/fhir/R4/ChargeItemDefinition",
        json={
            "resourceType": "ChargeItemDefinition",
            "url": "urn:smartmed:package:bp-followup",
            "status": "active",
            "title": "高血压随访包",
            "code": {"text": "高血压随访 × 4"},
            "propertyGroup": [
                {"priceComponent": [{"type": "base", "amount": {"value": 45.5, "currency": "CNY"}}]}
            ],
        },
        headers={"content-type": "application/fhir+json"},
    )
    assert price.status_code == 201, price.text
    product = f"ChargeItemDefinition/{price.json()['id']}"
    bad = httpx.post(
        f"{live.base}/api/payments/orders", json={"product": "Nothing/1"}, headers=headers
    )
    assert bad.status_code == 400 and bad.json()["resourceType"] == "OperationOutcome"
    anonymous = httpx.post(f"{live.base}/api/payments/orders", json={"product": product})
    assert anonymous.status_code == 401
    made = httpx.post(
        f"{live.base}/api/payments/orders", json={"product": product}, headers=headers
    )
    assert made.status_code == 201, made.text
    order = made.json()
    assert (order["state"], order["amount"], order["subject"]) == ("created", "45.50", live.patient)
    assert order["payUrl"].startswith(f"{live.base}/sandbox/pay/checkout/")
    with httpx.Client() as browser:
        page = browser.get(order["payUrl"], headers={"accept-language": "en"})
        assert "¥45.50" in page.text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf is not None
        paid = browser.post(f"{order['payUrl']}/pay", data={"csrf": csrf.group(1)})
    assert paid.status_code == 303
    final = wait_state(live, order["id"], "paid")  # the callback came back over HTTP
    assert (final["received"], final["refunded"]) == ("45.50", "0.00")


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    need(CHROMIUM.is_file(), "Debian's chromium is not installed (scripts/setup --dev)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield browser
        browser.close()


def test_resident_pays_on_the_sandbox_checkout_page(live: Live, chromium: Any) -> None:
    context = chromium.new_context(
        locale="zh-CN", viewport={"width": 390, "height": 844}, is_mobile=True
    )
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "response",
        lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None,
    )
    page.goto(live.base + "/")
    page.get_by_test_id("login").click()
    page.locator("#login-username").fill("pay-resident")
    page.locator("#login-password").fill(PASSWORD)
    page.locator("main form button[type=submit]").click()
    page.wait_for_url(live.base + "/")
    # The session's API calls follow the portal's CSRF convention.
    hx = page.locator("body").get_attribute("hx-headers") or "{}"
    csrf = json.loads(hx)["X-CSRF-Token"]
    sync = f"{live.base}/api/payments/orders/{live.order_id}/sync"
    assert page.request.post(sync).status == 403
    assert page.request.post(sync, headers={"X-CSRF-Token": csrf}).status == 200
    # An unknown order: a page in the payer's language, not a JSON error.
    missing = page.goto(f"{live.base}/payments/orders/{uuid.uuid4()}/pay")
    assert missing is not None and missing.status == 404
    assert page.get_by_test_id("missing").inner_text() == "没有这个订单。"
    errors.clear()  # that 404 was expected
    page.goto(f"{live.base}/payments/orders/{live.order_id}/pay")
    page.get_by_test_id("amount").wait_for()
    assert page.get_by_test_id("amount").inner_text() == "¥88.00"
    assert page.get_by_test_id("description").inner_text() == "糖尿病管理服务包"
    assert page.locator("[data-testid=qr] svg").count() == 1
    assert page.get_by_test_id("pay").inner_text() == "支付 ¥88.00"
    # Phone-sized: the pay button spans the card, nothing scrolls sideways.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "sandbox-checkout-zh.png"), full_page=True)
    page.get_by_test_id("pay").click()
    page.wait_for_url(re.compile(rf".*/payments/orders/{live.order_id}/return.*"))
    state = page.get_by_test_id("order-state")
    state.wait_for()
    if state.get_attribute("data-state") == "created":  # callback still on its way
        page.get_by_test_id("refresh").click()
    assert page.get_by_test_id("order-state").get_attribute("data-state") == "paid"
    assert "已收到付款" in page.get_by_test_id("order-state").inner_text()
    page.screenshot(path=str(ARTIFACTS / "order-paid-zh.png"), full_page=True)
    assert errors == []
    context.close()
