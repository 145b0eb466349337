"""An application with SMARTMED_AUTH_REQUIRED=true per backend, and helpers to get tokens."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from html import unescape

import httpx
import pyotp
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from smartmed.app import create_app
from smartmed.config import Settings
from smartmed.identity.principal import Role, RoleAssignment
from smartmed.identity.service import Identity, get_identity
from tests.conftest import ROOT, create_pg_database, drop_pg_database, need

BASE = "https://testserver"
FHIR = f"{BASE}/fhir/R4"
REDIRECT = "https://app.example.org/callback"
PASSWORD = "Correct-Horse-42"


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
async def auth_app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[FastAPI]:
    need((ROOT / "node_modules" / "hl7.fhir.r4.examples").is_dir(), "run `npm ci` first")
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('auth')}/smartmed.db"
    else:
        url = await create_pg_database()
    settings = Settings(
        database_url=url,
        auth_required=True,
        secret_key=SecretStr("synthetic-test-secret-key-0123456789"),
        auth_rate_per_minute=6000,
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application
    if request.param == "postgres":
        await drop_pg_database(url)


@pytest.fixture(scope="module")
def identity(auth_app: FastAPI) -> Identity:
    return get_identity(auth_app)


def http(app: FastAPI, **kwargs: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url=BASE,
        **kwargs,  # type: ignore[arg-type]
    )


async def system_token(app: FastAPI, scope: str = "system/*.cruds") -> str:
    identity = get_identity(app)
    client_id, secret = await identity.clients.create("seed", "system/*.cruds")
    async with http(app) as c:
        r = await c.post(
            "/oauth/token",
            data={"grant_type": "client_credentials", "scope": scope},
            auth=(client_id, secret or ""),
        )
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


_counter = iter(range(10**6))


async def staff_account(identity: Identity) -> tuple[str, str]:
    """A family doctor with TOTP: (username, TOTP secret)."""
    name = f"doctor{next(_counter)}"
    _, secret = await identity.accounts.create(
        name,
        PASSWORD,
        fhir_user="Practitioner/p1",
        roles=[RoleAssignment(Role.FAMILY_DOCTOR, "Organization/clinic1")],
        with_totp=True,
    )
    assert secret
    return name, secret


def form_fields(html: str) -> dict[str, str]:
    found = re.findall(r'name="(csrf|next)" value="([^"]*)"', html)
    return {name: unescape(value) for name, value in found}


async def browser_login(
    browser: httpx.AsyncClient, url: str, username: str, password: str, totp_secret: str | None
) -> httpx.Response:
    """Drive the login form from an authorize URL; the last response (redirect to the app)."""
    page = await browser.get(url)
    assert page.status_code == 200, page.text
    fields = form_fields(page.text)
    r = await browser.post(
        "/oauth/login", data={**fields, "username": username, "password": password}
    )
    while r.status_code in (302, 303) and r.headers["location"].startswith("/oauth/"):
        r = await browser.get(r.headers["location"])
    if totp_secret is not None and r.status_code == 200 and 'name="code"' in r.text:
        code = pyotp.TOTP(totp_secret).now()
        r = await browser.post("/oauth/totp", data={**form_fields(r.text), "code": code})
        while r.status_code in (302, 303) and r.headers["location"].startswith("/oauth/"):
            r = await browser.get(r.headers["location"])
    return r


def run_sync(func: object, *args: object) -> asyncio.Future[object]:
    return asyncio.get_running_loop().run_in_executor(None, func, *args)  # type: ignore[arg-type]
