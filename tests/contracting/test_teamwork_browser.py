"""Browser tests of the team workbench, the team reports and the contract analytics page
(Debian's Chromium through Playwright against a live server on SQLite, on the fixture
county of test_teamwork.py). No request leaves the server's origin and no console error
(CSP included); screenshots in ``test-artifacts/contracting/``."""

from __future__ import annotations

import asyncio
import json
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
from smartmed.contracting import lifecycle, service
from smartmed.fhir.context import FhirEngine
from smartmed.fhir.storage.migrate import migrate
from smartmed.identity.accounts import Accounts
from smartmed.identity.crypto import Box
from smartmed.identity.principal import Role, RoleAssignment
from tests.conftest import ROOT, need
from tests.contracting.test_browser import (
    CHROMIUM,
    SECRET,
    Live,
    Watch,
    _free_port,
    shot,
    sign_in,
)
from tests.contracting.test_teamwork import SEED, SIG, at, service_record

PASSWORD = "Browser-Test-2026"  # as test_browser.py's log_in types it


async def _prepare(url: str) -> dict[str, str | None]:
    settings = Settings(database_url=url, secret_key=SecretStr(SECRET))
    engine = FhirEngine.build(settings)
    try:
        await migrate(engine.db)
        async with engine.db.write() as conn:
            repo = engine.repository(conn)
            for body in SEED:
                await repo.update(body["resourceType"], body["id"], body)
        ids: dict[str, str] = {}
        for patient, team, doctor, day in (
            ("a1", "teamA", "lead1", "2026-11-10"),
            ("a2", "teamA", "lead1", "2026-06-01"),
            ("b2", "teamA", "lead1", "2026-03-01"),
            ("c1", "teamB", "lead2", "2026-01-05"),
        ):
            async with engine.db.write() as conn:
                made = await service.do_sign_in_person(
                    engine,
                    conn,
                    patient=f"Patient/{patient}",
                    team=f"CareTeam/{team}",
                    doctor=f"Practitioner/{doctor}",
                    signature=SIG,
                    now=at(day),
                )
            ids[patient] = str(made["id"])
        async with engine.db.write() as conn:
            await lifecycle.do_terminate(
                engine,
                conn,
                contract_id=ids["b2"],
                actor="Practitioner/lead1",
                reason="moved-away",
                now=at("2026-11-12"),
            )
            repo = engine.repository(conn)
            record = service_record(
                "Encounter", "s-a1", "a1", f"Contract/{ids['a1']}", "bp-followup", "2026-11-12"
            )
            await repo.update("Encounter", "s-a1", record)
        accounts = Accounts(engine.db, Box(SECRET.encode()))
        secrets: dict[str, str | None] = {}
        for name, role, link, org in (
            ("wb-lead1", Role.FAMILY_DOCTOR, "Practitioner/lead1", "Organization/T1"),
            (
                "wb-analyst",
                Role.HEALTH_AUTHORITY_ANALYST,
                "Practitioner/outsider",
                "Organization/county",
            ),
            ("wb-admin", Role.INSTITUTION_ADMIN, "Practitioner/outsider", "Organization/county"),
        ):
            _account, secret = await accounts.create(
                name, PASSWORD, fhir_user=link, roles=[RoleAssignment(role, org)], with_totp=True
            )
            secrets[name] = secret
        return secrets
    finally:
        await engine.db.dispose()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    need(CHROMIUM.is_file(), "Debian's chromium is not installed (scripts/setup --dev)")
    need((ROOT / "node_modules" / "echarts").is_dir(), "run `npm ci` first")
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('teamwork-browser')}/smartmed.db"
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


def test_workbench_assign_filter_and_report(live: Live, chromium: Any) -> None:
    context = chromium.new_context(locale="en", viewport={"width": 1280, "height": 900})
    page = context.new_page()
    watch = Watch(page, live.base)
    sign_in(page, live, "wb-lead1")
    nav = page.get_by_role("navigation", name="Main navigation")
    nav.get_by_role("link", name="Workbench").click()
    expect(page.get_by_role("heading", name="Workbench")).to_be_visible()
    expect(page.get_by_test_id("resident")).to_have_count(0)  # nobody is assigned yet
    page.get_by_test_id("scope").select_option("unassigned")
    page.get_by_role("button", name="Filter").click()
    rows = page.get_by_test_id("resident")
    expect(rows).to_have_count(2)  # a1 and a2 (b2's contract ended)
    a1 = page.locator('[data-patient="Patient/a1"]')
    expect(a1.locator('[data-group="hypertension"]')).to_have_count(1)
    a2 = page.locator('[data-patient="Patient/a2"]')
    expect(a2.get_by_test_id("due")).to_have_text("Due")
    shot(page, "workbench-unassigned")
    a2.get_by_label("Responsible member").select_option("Practitioner/gp1")
    a2.get_by_role("button", name="Assign").click()
    expect(page.get_by_test_id("done")).to_contain_text("The resident was assigned.")
    expect(page.get_by_test_id("resident")).to_have_count(1)  # back on "not assigned"
    page.get_by_test_id("scope").select_option("team")
    page.get_by_label("Follow-up due only").check()
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_test_id("resident")).to_have_count(1)
    expect(page.locator('[data-patient="Patient/a2"]')).to_contain_text("医gp1")
    expect(page.get_by_test_id("task-count")).to_have_text("0")
    shot(page, "workbench-due")
    # Team reports: report this week now, see it, download it.
    nav.get_by_role("link", name="Team reports").click()
    page.get_by_test_id("generate").get_by_label("Period", exact=True).select_option("weekly")
    page.get_by_test_id("generate").get_by_label("A day in the period (default today)").fill(
        "2026-11-12"
    )
    page.get_by_role("button", name="Generate").click()
    expect(page.get_by_test_id("done")).to_contain_text("The report was generated.")
    figures = page.get_by_test_id("figures")
    expect(figures.locator('[data-figure="new-signings"] td')).to_have_text("1")  # a1
    expect(figures.locator('[data-figure="terminations"] td')).to_have_text("1")  # b2
    expect(page.get_by_test_id("services").locator('[data-item="bp-followup"]')).to_contain_text(
        "Blood pressure follow-up"
    )
    shot(page, "team-report")
    with page.expect_download() as download:
        page.get_by_test_id("csv").click()
    text = download.value.path().read_text(encoding="utf-8-sig")
    assert text.splitlines()[0] == "Figure,Service item,Value"
    assert "New signings,,1" in text.splitlines()
    watch.check()
    context.close()


def test_analytics_charts_and_language_switch(live: Live, chromium: Any) -> None:
    # An administrator of the county sees the exact figures and every chart, in Chinese,
    # then in English after the language switch.
    context = chromium.new_context(locale="zh-CN", viewport={"width": 1280, "height": 900})
    page = context.new_page()
    watch = Watch(page, live.base)
    sign_in(page, live, "wb-admin")
    page.get_by_role("navigation", name="主导航").get_by_role("link", name="签约分析").click()
    expect(page.get_by_role("heading", name="签约分析")).to_be_visible()
    page.goto(live.base + "/contracting/analytics?at=2026-11-18")
    # Eight residents, three contracts in force (a1, a2, c1): 37.5 %; a2 and c1 were
    # never served.
    expect(page.get_by_test_id("signing-rate")).to_have_text("37.5%")
    expect(page.get_by_test_id("never-served")).to_have_text("2")
    for chart in ("townships", "teams", "groups", "never"):
        page.locator(f'[data-testid="chart-{chart}"] svg').first.wait_for()  # ECharts drew it
    drawn = json.loads(page.get_by_test_id("chart-townships").get_attribute("data-chart") or "")
    assert drawn == {
        "name": "签约率（%）",
        "labels": ["东镇卫生院", "西镇卫生院"],
        "values": [33.3, 50.0],
    }
    expect(page.get_by_test_id("chart-townships")).to_contain_text("西镇卫生院")  # SVG text
    shot(page, "analytics-admin-zh")
    page.get_by_label("语言").select_option("en")
    page.wait_for_load_state("load")
    expect(page.get_by_role("heading", name="Contract analytics")).to_be_visible()
    assert page.locator("html").get_attribute("lang") == "en"
    page.locator('[data-testid="chart-teams"] svg').first.wait_for()
    drawn = json.loads(page.get_by_test_id("chart-teams").get_attribute("data-chart") or "")
    assert drawn == {
        "name": "Signing rate (%)",
        "labels": ["东镇团队", "西镇团队"],
        "values": [33.3, 50.0],
    }
    shot(page, "analytics-admin-en")
    page.goto(live.base + "/contracting/analytics?at=not-a-date")
    expect(page.get_by_test_id("contracting-error")).to_have_attribute("data-reason", "bad-day")
    watch.check()
    context.close()
    # The analyst sees aggregates only: counts under 5 as "<5", rates on them hidden.
    context = chromium.new_context(locale="en", viewport={"width": 1280, "height": 900})
    page = context.new_page()
    watch = Watch(page, live.base)
    sign_in(page, live, "wb-analyst")
    page.goto(live.base + "/contracting/analytics?at=2026-11-18")
    expect(page.get_by_test_id("suppressed-note")).to_be_visible()
    expect(page.get_by_test_id("signing-rate")).to_have_text("–")
    expect(page.get_by_test_id("headline")).to_contain_text("<5 / 8")
    expect(page.get_by_test_id("never-served")).to_have_text("<5")
    expect(page.get_by_test_id("townships").locator('[data-key="T1"]')).to_contain_text("<5")
    shot(page, "analytics-analyst-en")
    watch.check()
    context.close()
