"""Browser tests: Debian's Chromium driven by Playwright against a live server.

The server runs in a thread (uvicorn) on a free port with a temporary SQLite database
holding a small demo county. Screenshots of every page visited are kept in
``test-artifacts/portal/``. Every request a page makes must go to the server itself, and
the console must stay free of errors (a Content-Security-Policy violation is one).
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest
import uvicorn
from playwright.sync_api import expect
from pydantic import SecretStr
from sqlalchemy import select

from smartmed.app import create_app
from smartmed.config import Settings
from smartmed.demo.load import load_demo
from smartmed.fhir.storage.database import Database
from smartmed.fhir.storage.tables import resource
from smartmed.identity.accounts import Accounts
from smartmed.identity.crypto import Box
from smartmed.identity.principal import Role, RoleAssignment
from tests.conftest import ROOT, need

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts" / "portal"
PASSWORD = "Browser-Test-2026"
SECRET = "synthetic-browser-test-secret-0123456789"


@dataclass
class Live:
    base: str
    totp: dict[str, str | None] = field(default_factory=dict)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _prepare(url: str) -> dict[str, str | None]:
    settings = Settings(database_url=url, secret_key=SecretStr(SECRET))
    await load_demo(settings, residents=40, seed=5, if_empty=False)
    db = Database(url)
    try:
        # The resident is a demo patient with a family doctor.
        async with db.read() as conn:
            rows = await conn.execute(
                select(resource.c.id, resource.c.content).where(resource.c.type == "Patient")
            )
            patient = next(r.id for r in rows if "generalPractitioner" in str(r.content))
        accounts = Accounts(db, Box(SECRET.encode()))
        secrets: dict[str, str | None] = {}
        for name, role, staff, link in (
            ("browser-admin", Role.PLATFORM_ADMIN, True, None),
            ("browser-nurse", Role.NURSE, True, None),
            ("browser-resident", Role.RESIDENT, False, f"Patient/{patient}"),
        ):
            _account, secret = await accounts.create(
                name,
                PASSWORD,
                fhir_user=link,
                roles=[RoleAssignment(role, None)],
                with_totp=staff,
            )
            secrets[name] = secret
        return secrets
    finally:
        await db.dispose()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    need(CHROMIUM.is_file(), "Debian's chromium is not installed (scripts/setup --dev)")
    need((ROOT / "node_modules" / "htmx.org").is_dir(), "run `npm ci` first")
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('browser')}/smartmed.db"
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
    # Chromium treats localhost as a secure context: the Secure cookies work over http.
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
        # A form answered 422 (validation messages) is expected; a missing file is not.
        if response.status >= 400 and response.request.resource_type != "document":
            self.errors.append(f"{response.status} {response.url}")

    def _console(self, message: Any) -> None:
        # Chromium also logs each non-2xx document as "Failed to load resource": the
        # response handler above judges those.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.errors.append(message.text)

    def check(self) -> None:
        assert self.foreign == []
        assert self.errors == []


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def sign_in(page: Any, live: Live, username: str) -> None:
    """Through the provider's login page, in whichever language it speaks."""
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


def test_administrator_creates_an_organisation(live: Live, chromium: Any) -> None:
    context = chromium.new_context(locale="zh-CN", viewport={"width": 1280, "height": 900})
    page = context.new_page()
    watch = Watch(page, live.base)
    page.goto(live.base + "/")
    shot(page, "landing-zh")
    sign_in(page, live, "browser-admin")
    page.get_by_test_id("stats").wait_for()
    page.locator(".chart svg").first.wait_for()  # ECharts drew the chart
    shot(page, "home-admin-zh")
    # The language switch changes the page to English.
    page.get_by_label("语言").select_option("en")
    page.wait_for_load_state("load")
    page.get_by_role("heading", name="Hello, browser-admin").wait_for()
    assert page.locator("html").get_attribute("lang") == "en"
    shot(page, "home-admin-en")
    page.get_by_role("navigation", name="Main navigation").get_by_role(
        "link", name="Organisations"
    ).click()
    page.get_by_role("link", name="New organisation").click()
    page.get_by_role("button", name="Save").click()  # empty: validation messages
    page.get_by_test_id("form-errors").wait_for()
    assert page.locator("#e-name").inner_text() == "This field is required."
    shot(page, "organisation-form-errors")
    page.get_by_label("Name").fill("Browser Test Health Centre")
    page.get_by_label("Kind").select_option("township-health-centre")
    page.get_by_label("Administrative level").select_option("township")
    page.get_by_label("Institution code").fill("BT-1")
    page.get_by_label("Address").fill("1 Test Road")
    page.get_by_role("button", name="Save").click()
    page.get_by_text("Saved: Browser Test Health Centre").wait_for()
    # Live search (htmx) narrows the list to the new organisation.
    page.get_by_label("Search").fill("Browser Test")
    # (expect polls from outside the page: the CSP forbids the eval of wait_for_function)
    expect(page.locator("[data-testid=results] tbody tr")).to_have_count(1)
    row = page.locator("[data-testid=results] tbody tr").first
    assert "Browser Test Health Centre" in row.inner_text()
    assert "Township health centre" in row.inner_text()
    shot(page, "organisations-search")
    watch.check()
    context.close()
    found = httpx.get(
        f"{live.base}/fhir/R4/Organization", params={"identifier": "urn:smartmed:org|BT-1"}
    )
    assert found.json()["total"] == 1


def test_resident_sees_a_phone_layout(live: Live, chromium: Any) -> None:
    context = chromium.new_context(
        locale="zh-CN", viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
    )
    page = context.new_page()
    watch = Watch(page, live.base)
    sign_in(page, live, "browser-resident")
    tabbar = page.locator("nav.tabbar")
    assert tabbar.is_visible()
    box = tabbar.bounding_box()
    assert box is not None and box["y"] + box["height"] == pytest.approx(844, abs=1)
    assert page.locator("#sidebar").count() == 0
    expect(page.get_by_test_id("family-doctor")).to_contain_text("我的家庭医生")
    assert page.get_by_test_id("doctor-name").inner_text()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    shot(page, "home-resident-phone")
    tabbar.get_by_role("link", name="我的信息").click()
    page.get_by_role("heading", name="我的信息").wait_for()
    shot(page, "me-resident-phone")
    watch.check()
    context.close()


def test_staff_menu_opens_from_the_keyboard_on_a_small_screen(live: Live, chromium: Any) -> None:
    context = chromium.new_context(locale="en", viewport={"width": 600, "height": 900})
    page = context.new_page()
    watch = Watch(page, live.base)
    sign_in(page, live, "browser-nurse")
    sidebar = page.locator("#sidebar")
    assert "show" not in (sidebar.get_attribute("class") or "")
    menu = page.get_by_role("button", name="Menu")
    menu.focus()
    page.keyboard.press("Enter")
    expect(sidebar).to_have_class(re.compile(r"\bshow\b"))
    assert menu.get_attribute("aria-expanded") == "true"
    shot(page, "staff-menu-open")
    sidebar.get_by_role("link", name="Directory").click()
    page.get_by_test_id("results").wait_for()
    assert page.locator("[data-testid=results] tbody tr").count() > 1
    shot(page, "directory")
    watch.check()
    context.close()


def test_language_switch_changes_every_visible_string(live: Live, chromium: Any) -> None:
    context = chromium.new_context(locale="zh-CN", viewport={"width": 1280, "height": 900})
    page = context.new_page()
    watch = Watch(page, live.base)
    page.goto(live.base + "/")
    assert "登录" in page.locator("body").inner_text()
    page.get_by_label("语言").select_option("en")
    page.get_by_role("heading", name="One portal for residents").wait_for()
    text = page.locator("body").inner_text()
    # Only the language selector's own "中文" option stays in Chinese.
    assert re.findall(r"[\u4e00-\u9fff]+", text) == ["中文"]
    assert page.title() == "Welcome · Health service portal"
    shot(page, "landing-en")
    watch.check()
    context.close()


def test_administrator_creates_a_team_an_account_and_imports_staff(
    live: Live, chromium: Any, tmp_path: Path
) -> None:
    context = chromium.new_context(locale="en", viewport={"width": 1280, "height": 900})
    page = context.new_page()
    watch = Watch(page, live.base)
    sign_in(page, live, "browser-admin")
    # A team with members.
    page.goto(live.base + "/admin/teams/new")
    page.get_by_label("Team name").fill("Browser Test Team")
    page.get_by_label("Managing institution").select_option(index=1)
    options = page.locator("#f-leader option")
    leader = options.nth(1).get_attribute("value")
    nurse = options.nth(2).get_attribute("value")
    page.get_by_label("Team leader").select_option(leader)
    page.get_by_label("General practitioners").select_option([leader])
    page.get_by_label("Nurses").select_option([nurse])
    shot(page, "team-form")
    page.get_by_role("button", name="Save").click()
    page.get_by_text("Saved: Browser Test Team").wait_for()
    shot(page, "teams")
    teams = httpx.get(
        f"{live.base}/fhir/R4/CareTeam", params={"participant": f"PractitionerRole/{nurse}"}
    ).json()
    team = next(
        e["resource"] for e in teams["entry"] if e["resource"]["name"] == "Browser Test Team"
    )
    assert len(team["participant"]) == 3
    # An account for a nurse: its TOTP secret is shown once.
    page.goto(live.base + "/admin/accounts/new")
    page.get_by_label("Account name").fill("browser-new-nurse")
    page.get_by_label("Initial password").fill("Nurse-Browser-88")
    page.get_by_label("Role").select_option("nurse")
    page.get_by_role("button", name="Save").click()
    page.get_by_test_id("totp-secret").wait_for()
    shot(page, "account-totp")
    page.get_by_role("link", name="Done").click()
    row = page.locator("[data-testid=results] tbody tr", has_text="browser-new-nurse")
    expect(row).to_contain_text("Nurse")
    # A CSV with errors: shown per row, nothing imported; the corrected file imports.
    bad = tmp_path / "staff.csv"
    header = "family_name,given_name,gender,staff_number,qualification,organization,role\n"
    org = httpx.get(
        f"{live.base}/fhir/R4/Organization",
        params={"type": "urn:smartmed:org-type|county-hospital"},
    ).json()["entry"][0]["resource"]["id"]
    bad.write_text(
        header + f"孙,悦,female,BR-1,nurse,{org},nurse\n" + "周,,male,BR-2,wizard,nowhere,doctor\n",
        encoding="utf-8",
    )
    page.goto(live.base + "/admin/import")
    page.get_by_label("File").set_input_files(str(bad))
    page.get_by_role("button", name="Preview").click()
    page.get_by_test_id("import-errors").wait_for()
    expect(page.locator("tr.row-error")).to_have_count(1)
    expect(page.locator("tr.row-error")).to_contain_text("given_name: This field is required.")
    assert page.get_by_role("button", name=re.compile("^Import")).count() == 0
    shot(page, "import-errors")
    search = {"identifier": "urn:smartmed:practitioner|BR-1", "_summary": "count"}
    assert httpx.get(f"{live.base}/fhir/R4/Practitioner", params=search).json()["total"] == 0
    good = tmp_path / "fixed.csv"
    good.write_text(
        header + f"孙,悦,female,BR-1,nurse,{org},nurse\n周,强,male,BR-2,physician,{org},doctor\n",
        encoding="utf-8",
    )
    page.get_by_label("File").set_input_files(str(good))
    page.get_by_role("button", name="Preview").click()
    page.get_by_test_id("import-ok").wait_for()
    shot(page, "import-preview")
    page.get_by_role("button", name="Import 2 staff members").click()
    page.get_by_text("Imported 2 staff members.").wait_for()
    assert httpx.get(f"{live.base}/fhir/R4/Practitioner", params=search).json()["total"] == 1
    watch.check()
    context.close()


@pytest.mark.parametrize(
    ("username", "heading", "nav"),
    [
        ("browser-resident", "您好，", ["我的信息", "访问记录", "家庭医生签约"]),
        ("browser-nurse", "您好，browser-nurse", ["家庭医生签约", "工作台", "团队报表", "通讯录"]),
        ("browser-admin", "您好，browser-admin", ["通讯录", "机构", "科室", "人员"]),
    ],
)
def test_each_role_sees_its_home(
    live: Live, chromium: Any, username: str, heading: str, nav: list[str]
) -> None:
    context = chromium.new_context(locale="zh-CN", viewport={"width": 1280, "height": 900})
    page = context.new_page()
    watch = Watch(page, live.base)
    sign_in(page, live, username)
    page.get_by_role("heading", name=heading).wait_for()
    tiles = page.get_by_test_id("tiles").locator("h2").all_inner_texts()
    assert tiles[: len(nav)] == nav
    shot(page, f"home-{username}")
    watch.check()
    context.close()


def test_language_can_be_changed_from_the_keyboard(live: Live, chromium: Any) -> None:
    context = chromium.new_context(locale="en", viewport={"width": 1280, "height": 900})
    page = context.new_page()
    watch = Watch(page, live.base)
    page.goto(live.base + "/")
    select = page.get_by_label("Language")
    select.focus()
    page.keyboard.press("ArrowUp")  # English -> 中文: nothing is submitted yet
    page.wait_for_timeout(300)
    assert page.locator("html").get_attribute("lang") == "en"
    page.keyboard.press("Tab")
    button = page.get_by_role("button", name="Change language")
    expect(button).to_be_focused()
    page.keyboard.press("Enter")
    page.get_by_role("heading", name="居民、家庭医生和医疗卫生机构的统一门户").wait_for()
    assert page.locator("html").get_attribute("lang") == "zh-CN"
    watch.check()
    context.close()


def test_login_page_speaks_the_portal_languages(live: Live, chromium: Any) -> None:
    """The provider's login page: the portal's look and language (browser language, then
    the choice made in the portal), labelled fields, the TOTP step, errors translated."""
    context = chromium.new_context(locale="zh-CN", viewport={"width": 390, "height": 844})
    page = context.new_page()
    watch = Watch(page, live.base)
    page.goto(live.base + "/login")
    assert page.locator("html").get_attribute("lang") == "zh-CN"
    page.get_by_role("heading", name="登录").wait_for()
    # Styled by the portal's own stylesheets (served locally).
    assert page.locator("link[href='/static/portal/portal.css']").count() == 1
    page.get_by_label("账号名").fill("browser-nurse")
    page.get_by_label("密码").fill("wrong-password-1")
    page.get_by_role("button", name="登录").click()
    expect(page.get_by_role("alert")).to_have_text("账号或密码错误")
    assert page.get_by_label("密码").get_attribute("aria-invalid") == "true"
    shot(page, "login-error-zh")
    page.get_by_label("账号名").fill("browser-nurse")
    page.get_by_label("密码").fill(PASSWORD)
    page.get_by_role("button", name="登录").click()
    page.get_by_role("heading", name="第二步：输入验证码").wait_for()
    shot(page, "login-totp-zh")
    page.get_by_label("身份验证器应用中的验证码").fill("000000")
    page.get_by_role("button", name="验证").click()
    expect(page.get_by_role("alert")).to_have_text("验证码无效。")
    secret = live.totp["browser-nurse"]
    assert secret
    page.get_by_label("身份验证器应用中的验证码").fill(pyotp.TOTP(secret).now())
    page.get_by_role("button", name="验证").click()
    page.wait_for_url(live.base + "/")
    # Choosing English in the portal makes the next login page English.
    page.get_by_label("语言").select_option("en")
    page.get_by_role("button", name="Log out").click()
    page.goto(live.base + "/login")
    page.get_by_role("heading", name="Sign in").wait_for()
    assert page.locator("html").get_attribute("lang") == "en"
    text = page.locator("body").inner_text()
    assert re.findall(r"[\u4e00-\u9fff]+", text) == ["中文"]  # the switch's own name
    shot(page, "login-en")
    # The page's own switch goes back to Chinese.
    page.get_by_role("link", name="中文").click()
    page.get_by_role("heading", name="登录").wait_for()
    watch.check()
    context.close()


def test_administrator_edits_a_role_right(live: Live, chromium: Any) -> None:
    context = chromium.new_context(locale="en", viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    watch = Watch(page, live.base)
    sign_in(page, live, "browser-admin")
    page.get_by_role("navigation", name="Main navigation").get_by_role(
        "link", name="Role rights"
    ).click()
    page.get_by_role("heading", name="Role rights").wait_for()
    expect(page.get_by_test_id("in-force")).to_contain_text("the shipped default")
    read = page.get_by_role("checkbox", name="Nurse — Clinical records: read", exact=True)
    assert read.is_checked()
    read.uncheck()
    # Without a reason: the message next to the field, nothing saved, the edit kept.
    page.get_by_role("button", name="Save the rights").click()
    page.get_by_test_id("form-errors").wait_for()
    assert page.locator("#e-reason").inner_text() == "This field is required."
    assert not page.get_by_role(
        "checkbox", name="Nurse — Clinical records: read", exact=True
    ).is_checked()
    shot(page, "rights-errors")
    page.locator("#f-reason").fill("Nurses read clinical records only on the ward")
    page.get_by_role("button", name="Save the rights").click()
    page.get_by_text("Rights saved as version 1.").wait_for()
    assert not page.get_by_role(
        "checkbox", name="Nurse — Clinical records: read", exact=True
    ).is_checked()
    history = page.get_by_test_id("history")
    expect(history).to_contain_text("Nurses read clinical records only on the ward")
    expect(history).to_contain_text("nurse.clinical: crus → cus")
    expect(history).to_contain_text("browser-admin")
    shot(page, "rights-saved")
    # Restoring the shipped default.
    page.locator("#f-restore-reason").fill("Back to the shipped rights after the trial")
    page.get_by_role("button", name="Restore the default").click()
    page.get_by_text("Rights saved as version 2.").wait_for()
    assert page.get_by_role(
        "checkbox", name="Nurse — Clinical records: read", exact=True
    ).is_checked()
    expect(history).to_contain_text("Shipped default restored")
    shot(page, "rights-restored")
    watch.check()
    context.close()
