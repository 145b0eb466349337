"""Browser test: a signed-in resident's page (Chromium, Playwright) receives the push.

A live server (uvicorn in a thread, SQLite, jobs running in the app) and a page that
opens ``EventSource('/api/notifications/stream')`` with the portal session cookie. The
notification is queued by a separate engine on the same database, so the message
travels the whole way: notify -> job -> inbox row -> wake-up -> SSE -> the page.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from pydantic import SecretStr

from smartmed.app import create_app
from smartmed.config import Settings
from smartmed.fhir.context import FhirEngine
from smartmed.fhir.storage.database import Database
from smartmed.identity.accounts import Accounts
from smartmed.identity.crypto import Box
from smartmed.identity.principal import Role, RoleAssignment
from smartmed.notify import notify
from tests.conftest import ROOT, need
from tests.notify.conftest import free_port

CHROMIUM = Path("/usr/bin/chromium")
PASSWORD = "Browser-Notify-2026"
SECRET = "synthetic-notify-browser-secret-0123456789"
BP = {"patient": "张三", "systolic": 182, "diastolic": 110, "measured_at": "2026-11-22T01:30:00Z"}


def _settings(url: str) -> Settings:
    return Settings(
        database_url=url,
        secret_key=SecretStr(SECRET),
        auth_rate_per_minute=6000,
        jobs_poll_seconds=0.1,
    )


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(base URL, database URL) of a running server."""
    need(CHROMIUM.is_file(), "Debian's chromium is not installed (scripts/setup --dev)")
    need((ROOT / "node_modules" / "htmx.org").is_dir(), "run `npm ci` first")
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('notify-browser')}/smartmed.db"
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(_settings(url)), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.1)
    # Chromium treats localhost as a secure context: the Secure cookies work over http.
    yield f"http://localhost:{port}", url
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


async def _resident(url: str, patient: str) -> None:
    db = Database(url)
    try:
        await Accounts(db, Box(SECRET.encode())).create(
            "notify-resident",
            PASSWORD,
            fhir_user=patient,
            roles=[RoleAssignment(Role.RESIDENT, None)],
        )
    finally:
        await db.dispose()


async def _send(url: str, patient: str) -> str:
    engine = FhirEngine.build(_settings(url))
    try:
        async with engine.db.write() as conn:
            return await notify(
                engine,
                conn,
                recipient=patient,
                template="bp-alert",
                data=BP,
                channels=("inapp",),
                urgency="urgent",
            )
    finally:
        await engine.db.dispose()


def off_thread(coroutine: Any) -> Any:
    """Run ``coroutine`` to the end on its own loop (Playwright's sync API owns this one)."""
    result: list[Any] = []
    worker = threading.Thread(target=lambda: result.append(asyncio.run(coroutine)))
    worker.start()
    worker.join(timeout=120)
    assert result, "the coroutine did not finish"
    return result[0]


def test_push_reaches_a_browser_page(live: tuple[str, str], chromium: Any) -> None:
    base, url = live
    r = httpx.post(
        f"{base}/fhir/R4/Patient",
        json={"resourceType": "Patient", "name": [{"text": "张三"}]},
        headers={"Content-Type": "application/fhir+json"},
    )
    assert r.status_code == 201, r.text
    patient = f"Patient/{r.json()['id']}"
    off_thread(_resident(url, patient))

    context = chromium.new_context(locale="zh-CN")
    page = context.new_page()
    page.goto(base + "/")
    page.get_by_test_id("login").click()
    # The login page speaks the browser's language (zh-CN here): fields by their ids.
    page.locator("#login-username").fill("notify-resident")
    page.locator("#login-password").fill(PASSWORD)
    page.locator("main form button[type=submit]").click()
    page.wait_for_url(base + "/")

    opened = page.evaluate(
        """() => new Promise((resolve) => {
            window.received = [];
            const source = new EventSource('/api/notifications/stream');
            source.addEventListener('notification', (e) => window.received.push(e.data));
            source.onopen = () => resolve(true);
            source.onerror = () => resolve(false);
        })"""
    )
    assert opened is True
    nid = off_thread(_send(url, patient))
    deadline = time.monotonic() + 20
    received: list[str] = []
    while time.monotonic() < deadline:
        received = page.evaluate("window.received")
        if received:
            break
        time.sleep(0.1)
    assert len(received) == 1
    message = orjson.loads(received[0])
    assert (message["id"], message["subject"], message["urgency"]) == (
        nid,
        "血压异常提醒：张三",
        "urgent",
    )
    context.close()
